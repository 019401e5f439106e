"""Make the pictures of the documentation from the bundled sample: ``python docs/figures.py``.

Every picture in ``docs/img/`` comes from this script (about three CPU minutes), so the
docs show what the code does today. Writes: ``clusters.png`` and ``similarity.png`` (the
``skuld demo`` pictures) and ``landmarks.png`` (one-shot landmarks on the bundled X-rays,
with landmarks read off their lung masks: apex and centroid of each lung).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMG = ROOT / "docs" / "img"
WIDTH = 1200  # pixels: small files, still sharp on a page


def shrink(src: str, dst: Path) -> None:
    im = Image.open(src)
    im.thumbnail((WIDTH, WIDTH))
    im.save(dst, optimize=True)


def lung_landmarks(mask: np.ndarray) -> np.ndarray:
    """(4, 2) (x, y): apex (top) and centroid of the lung in each half of the image."""
    pts = []
    half = mask.shape[1] // 2
    for lo, hi in ((0, half), (half, mask.shape[1])):
        rows, cols = np.nonzero(mask[:, lo:hi])
        top = rows.min()
        pts += [(cols[rows == top].mean() + lo, top), (cols.mean() + lo, rows.mean())]
    return np.array(pts, dtype=float)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skuld import OneShotLandmarkLocator, metrics, plotting
    from skuld.datasets import load_cxr_tiny
    from skuld.demo import run_demo

    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(tmp, verbose=0)
        for name in ("clusters.png", "similarity.png"):
            shrink(os.path.join(tmp, name), IMG / name)
    sample = load_cxr_tiny()
    truth = np.stack([lung_landmarks(m) for m in sample.masks])
    loc = OneShotLandmarkLocator(encoder=result["encoder"], n_pseudo_templates=0).fit(sample.images[0], truth[0])
    pred = loc.predict(sample.images[1:])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, img, p, t in zip(axes, sample.images[1:], pred, truth[1:]):
        plotting.plot_landmarks(img, p, t, radius=20, ax=ax)
        ax.set_axis_off()
    mre = metrics.mean_radial_error(pred, truth[1:])
    fig.suptitle(f"template: image 1; mean radial error {mre:.1f} px (circles: 20 px)")
    fig.tight_layout()
    fig.savefig(IMG / "landmarks.png", dpi=90)
    print(f"wrote {sorted(p.name for p in IMG.glob('*.png'))}; lung hit rate {result['lung_hit_rate']:.2f}, "
          f"landmark MRE {mre:.1f} px")


if __name__ == "__main__":
    main()
