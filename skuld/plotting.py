"""Pictures for notebooks: embeddings, clusters, similarity maps, landmarks, retrieval, losses.

Needs matplotlib (``pip install "skuld[plot]"``). Every function draws into ``ax`` (a new
figure when None) and returns the Axes, or the Figure for multi-panel pictures, so that
callers can keep styling it. Images follow skuld's conventions (``docs/conventions.md``):
``(H, W)`` gray or ``(H, W, 3)`` RGB, pixel ``(row, col)`` at ``image[row, col]``; points
are ``(x, y)`` = ``(col, row)``.
"""

from __future__ import annotations

import numpy as np

from .render import PALETTE, gray_rgb


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError('skuld.plotting needs matplotlib: pip install "skuld[plot]"') from exc
    return plt


def _axes(ax):
    if ax is None:
        _, ax = _plt().subplots()
    return ax


def _show_image(ax, image):
    ax.imshow(gray_rgb(image))
    ax.set_axis_off()


def embedding_rgb(embeddings: np.ndarray, n_fit: int = 50_000, random_state: int = 0) -> np.ndarray:
    """Per-pixel embeddings ``(H, W, D)`` -> RGB ``(H, W, 3)`` float in [0, 1].

    The first three principal components of the embeddings (fitted on at most ``n_fit``
    random pixels), each stretched to its 1st-99th percentile range: pixels with similar
    embeddings get similar colours.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 3:
        raise ValueError(f"embeddings must be (H, W, D), got shape {e.shape}")
    flat = e.reshape(-1, e.shape[-1])
    rng = np.random.default_rng(random_state)
    sample = flat[rng.choice(len(flat), size=min(n_fit, len(flat)), replace=False)]
    mean = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    comps = vt[: min(3, vt.shape[0])]
    proj = (flat - mean) @ comps.T
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(e.shape[0], e.shape[1], 3)


def plot_embedding(embeddings: np.ndarray, ax=None, title: str | None = "embeddings (PCA as RGB)"):
    """Show :func:`embedding_rgb` of ``(H, W, D)`` embeddings; returns the Axes."""
    ax = _axes(ax)
    ax.imshow(embedding_rgb(embeddings))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_clusters(image: np.ndarray, labels: np.ndarray, ax=None, alpha: float = 0.5, legend: bool = True):
    """Cluster labels ``(H, W)`` (from ``predict``) coloured over the image; returns the Axes."""
    ax = _axes(ax)
    labels = np.asarray(labels)
    if labels.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {np.asarray(image).shape[:2]} differ in size")
    _show_image(ax, image)
    colours = PALETTE[labels % len(PALETTE)] / 255.0
    ax.imshow(np.concatenate([colours, np.full(labels.shape + (1,), alpha)], axis=-1))
    if legend:
        from matplotlib.patches import Patch

        present, counts = np.unique(labels, return_counts=True)
        handles = [Patch(color=PALETTE[k % len(PALETTE)] / 255.0, label=f"{k}: {100 * c / labels.size:.0f} %")
                   for k, c in zip(present, counts)]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    return ax


def similarity_map(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity ``(H, W)`` of every pixel's unit embedding to a query vector ``(D,)``."""
    q = np.asarray(query, dtype=np.float32)
    return np.asarray(embeddings, dtype=np.float32) @ (q / np.linalg.norm(q))


def plot_similarity(image: np.ndarray, embeddings: np.ndarray, query: np.ndarray | tuple, ax=None,
                    alpha: float = 0.6, cmap: str = "viridis", colorbar: bool = True):
    """Heatmap of the similarity of every pixel to a query, over the image; returns the Axes.

    ``query`` is a vector ``(D,)`` or a pixel ``(row, col)`` of this image (then marked).
    """
    ax = _axes(ax)
    marked = None
    if isinstance(query, tuple) and len(query) == 2:
        marked = query
        query = np.asarray(embeddings)[query[0], query[1]]
    sim = similarity_map(embeddings, query)
    _show_image(ax, image)
    im = ax.imshow(sim, cmap=cmap, alpha=alpha, vmin=-1, vmax=1)
    if marked is not None:
        ax.plot(marked[1], marked[0], "o", ms=10, mfc="none", mec="red", mew=2)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    return ax


def plot_landmarks(image: np.ndarray, predicted: np.ndarray, true: np.ndarray | None = None, ax=None,
                   radius: float | None = None, labels: bool = True):
    """Predicted (and true) landmarks, ``(L, 2)`` arrays of (x, y), over the image.

    With ``true``, a line joins each prediction to its truth; with ``radius`` (pixels), a
    circle of that radius around each true point shows the tolerance (e.g. 20 px for SDR@20).
    Returns the Axes.
    """
    ax = _axes(ax)
    _show_image(ax, image)
    p = np.asarray(predicted, dtype=float).reshape(-1, 2)
    if true is not None:
        t = np.asarray(true, dtype=float).reshape(-1, 2)
        if t.shape != p.shape:
            raise ValueError(f"predicted {p.shape} and true {t.shape} landmarks differ")
        for (px, py), (tx, ty) in zip(p, t):
            ax.plot([px, tx], [py, ty], "-", color="yellow", lw=1)
        ax.plot(t[:, 0], t[:, 1], "o", color="lime", ms=4, label="true")
        if radius:
            from matplotlib.patches import Circle

            for tx, ty in t:
                ax.add_patch(Circle((tx, ty), radius, fill=False, color="lime", lw=0.8, alpha=0.7))
    ax.plot(p[:, 0], p[:, 1], "x", color="red", ms=6, mew=2, label="predicted")
    if labels:
        for i, (x, y) in enumerate(p):
            ax.annotate(str(i + 1), (x, y), xytext=(3, 3), textcoords="offset points", color="white", fontsize=7)
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_landmark_similarity(image: np.ndarray, similarity: np.ndarray, landmark: int, predicted=None, ax=None,
                             alpha: float = 0.6, cmap: str = "viridis", colorbar: bool = True):
    """One landmark's similarity map over the image; returns the Axes.

    ``similarity``: the ``(L, h, w)`` maps of one image from
    ``OneShotLandmarkLocator.predict(X, return_similarity=True)``, at the working resolution;
    they are stretched over the image's full extent (pixel edges aligned, the convention of
    :func:`skuld.matching.rescale_points`). ``predicted``: the ``(L, 2)`` (x, y) landmarks
    of this image, to mark landmark ``landmark`` (0-based).
    """
    ax = _axes(ax)
    _show_image(ax, image)
    h, w = np.asarray(image).shape[:2]
    im = ax.imshow(np.asarray(similarity)[landmark], cmap=cmap, alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    if predicted is not None:
        x, y = np.asarray(predicted, dtype=float)[landmark]
        ax.plot(x, y, "x", color="red", ms=10, mew=2)
    ax.set_title(f"landmark {landmark + 1}")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    return ax


def plot_retrieval(images, locations: np.ndarray, query_image=None, query_pixel=None, size: int = 96, n_cols: int = 5):
    """Thumbnails around the retrieved pixels, each hit marked; returns the Figure.

    ``images`` are the indexed images (a list or array, indexed by image number);
    ``locations`` is one query's ``(k, 3)`` rows of (image, row, col) from
    ``PixelIndex.kneighbors`` (rows of -1 are skipped). The query's own crop comes first
    when ``query_image`` and ``query_pixel`` (row, col) are given.
    """
    plt = _plt()
    locs = [tuple(int(v) for v in loc) for loc in np.asarray(locations).reshape(-1, 3) if loc[0] >= 0]
    tiles = []
    if query_image is not None and query_pixel is not None:
        tiles.append(("query", query_image, query_pixel))
    tiles += [(f"#{i + 1}: image {img}", images[img], (r, c)) for i, (img, r, c) in enumerate(locs)]
    n_rows = max(1, int(np.ceil(len(tiles) / n_cols)))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2 * n_cols, 2.2 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    half = size // 2
    for ax, (title, img, (r, c)) in zip(axes.ravel(), tiles):
        rgb = gray_rgb(img)
        padded = np.pad(rgb, ((half, half), (half, half), (0, 0)))
        ax.imshow(padded[r : r + size, c : c + size])
        ax.plot(half, half, "+", color="red", ms=12, mew=2)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def _trailing_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of each value and the k - 1 before it (fewer at the start; NaN stays NaN)."""
    out = np.full_like(values, np.nan)
    valid = ~np.isnan(values)
    v = values[valid]
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - k)
    out[valid] = (c[idx] - c[lo]) / (idx - lo)
    return out


def plot_loss(history, ax=None, terms=("loss", "patch", "mixup", "region", "entropy"), smooth: int = 10):
    """Training curves from ``loss_history_`` (a trailing mean over ``smooth`` steps), with
    the PD -> LD stage change marked; returns the Axes."""
    ax = _axes(ax)
    if not history:
        raise ValueError("the loss history is empty: fit the estimator first")
    steps = np.array([h["step"] for h in history])
    for term in terms:
        values = np.array([h.get(term, np.nan) for h in history], dtype=float)
        if np.isnan(values).all():
            continue
        sm = _trailing_mean(values, max(1, smooth))
        ax.plot(steps, sm, label=term)
    ld = [h["step"] for h in history if h.get("stage") == "ld"]
    if ld and ld[0] > steps[0]:
        ax.axvline(ld[0], color="gray", ls="--", lw=1)
        ax.text(ld[0], ax.get_ylim()[1], " LD", va="top", color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    return ax
