"""The demo: pretrain on the bundled chest X-rays and draw what the network learned."""

from __future__ import annotations

import os
import time

import numpy as np

from .datasets import load_cxr_tiny
from .estimators import LocalDiscriminativeEncoder
from .io import atomic_write
from .render import cluster_overlay, heatmap_overlay, mark, side_by_side

#: Settings for the bundled sample: chest X-rays share one orientation, so no rotation
#: invariance; small crops at half resolution so that it trains in about two CPU minutes.
DEMO_PARAMS = dict(
    max_iter=300, batch_size=2, crop_size=128, image_size=256, rotation=0.0, rot90=False, n_clusters=8,
    area_weight=1.0, random_state=0,
)


def _write_png(path: str, rgb: np.ndarray) -> None:
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, rgb, extension=".png"))


def run_demo(out_dir: str = "skuld-demo", max_iter: int | None = None, verbose: int = 1) -> dict:
    """Fit on the four bundled radiographs, then write cluster maps and a similarity heatmap.

    Returns a dict with the written ``files``, the fitted ``encoder`` and two checks of what
    the embeddings show: ``lung_hit_rate`` (share of the 5 % most similar pixels to a lung
    query, over the three other images, that lie inside the lungs) and ``lung_fraction``
    (share of all pixels in the lungs: what chance would give).
    """
    sample = load_cxr_tiny()
    X, masks = sample.images, sample.masks
    params = dict(DEMO_PARAMS, verbose=verbose)
    if max_iter is not None:
        params["max_iter"] = max_iter
    t0 = time.perf_counter()
    enc = LocalDiscriminativeEncoder(**params).fit(X)
    fit_seconds = time.perf_counter() - t0
    E = enc.transform(X)
    labels = enc.predict(X)

    os.makedirs(out_dir, exist_ok=True)
    files = []
    clusters_path = os.path.join(out_dir, "clusters.png")
    _write_png(clusters_path, side_by_side([cluster_overlay(x, lab) for x, lab in zip(X, labels)]))
    files.append(clusters_path)

    # Query: the centre of the lung on the image's left in radiograph 1.
    rows, cols = np.nonzero(masks[0][:, : X.shape[2] // 2])
    qr, qc = int(np.median(rows)), int(np.median(cols))
    query = E[0, qr, qc]
    sims = E @ query  # (n, H, W) cosine similarity
    lo = float(np.quantile(sims, 0.02))  # one colour scale for all panels
    panels = [mark(heatmap_overlay(X[0], sims[0], vmin=lo, vmax=1), qr, qc, radius=10)]
    panels += [heatmap_overlay(x, s, vmin=lo, vmax=1) for x, s in zip(X[1:], sims[1:])]
    sim_path = os.path.join(out_dir, "similarity.png")
    _write_png(sim_path, side_by_side(panels))
    files.append(sim_path)

    others = sims[1:]
    top = others >= np.quantile(others, 0.95)
    hit_rate = float(masks[1:][top].mean())
    coverage = np.bincount(labels.ravel(), minlength=enc.n_clusters) / labels.size
    return {
        "files": files, "encoder": enc, "fit_seconds": fit_seconds, "lung_hit_rate": hit_rate,
        "lung_fraction": float(masks[1:].mean()), "cluster_coverage": coverage,
        "final_loss": enc.loss_history_[-1]["loss"], "first_loss": enc.loss_history_[0]["loss"],
    }
