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
    """Colour every pixel by its embedding: the first three principal components as RGB.

    Each component is stretched to its 1st-99th percentile range, so pixels with similar
    embeddings get similar colours.

    Parameters
    ----------
    embeddings : array-like of shape (H, W, D)
        One image's output of ``LocalDiscriminativeEncoder.transform``.
    n_fit : int, default 50000
        The components are fitted on at most this many random pixels.
    random_state : int, default 0
        Seeds that pixel sample.

    Returns
    -------
    ndarray of shape (H, W, 3), float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import embedding_rgb
    >>> E = np.random.default_rng(0).normal(size=(32, 48, 16)).astype(np.float32)
    >>> rgb = embedding_rgb(E)
    >>> rgb.shape, bool(rgb.min() >= 0 and rgb.max() <= 1)
    ((32, 48, 3), True)
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
    """Show :func:`embedding_rgb` of one image's embeddings.

    Parameters
    ----------
    embeddings : array-like of shape (H, W, D)
    ax : matplotlib Axes, optional
        Where to draw (a new figure when None).
    title : str or None, default "embeddings (PCA as RGB)"

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_embedding
    >>> ax = plot_embedding(np.random.default_rng(0).normal(size=(32, 32, 8)))
    >>> ax.get_title()
    'embeddings (PCA as RGB)'
    """
    ax = _axes(ax)
    ax.imshow(embedding_rgb(embeddings))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_clusters(image: np.ndarray, labels: np.ndarray, ax=None, alpha: float = 0.5, legend: bool = True):
    """Cluster labels coloured over the image, with a legend of each cluster's area.

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
    labels : array-like of shape (H, W), int
        E.g. one image of ``LocalDiscriminativeEncoder.predict``.
    ax : matplotlib Axes, optional
    alpha : float, default 0.5
        Opacity of the colours.
    legend : bool, default True

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_clusters
    >>> image = np.zeros((20, 30), np.uint8)
    >>> labels = np.repeat([0, 1, 2], 10)[None].repeat(20, axis=0)      # three vertical bands
    >>> ax = plot_clusters(image, labels)
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['0: 33 %', '1: 33 %', '2: 33 %']
    """
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
    """Cosine similarity of every pixel's unit embedding to a query vector.

    Parameters
    ----------
    embeddings : array-like of shape (H, W, D)
        Unit vectors (``transform``'s output).
    query : array-like of shape (D,)
        Any non-zero vector (normalised here).

    Returns
    -------
    ndarray of shape (H, W), float32, in [-1, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import similarity_map
    >>> E = np.zeros((2, 2, 3), np.float32); E[..., 0] = 1; E[1, 1] = [0, 1, 0]
    >>> similarity_map(E, [2.0, 0.0, 0.0])
    array([[1., 1.],
           [1., 0.]], dtype=float32)
    """
    q = np.asarray(query, dtype=np.float32)
    return np.asarray(embeddings, dtype=np.float32) @ (q / np.linalg.norm(q))


def plot_similarity(image: np.ndarray, embeddings: np.ndarray, query: np.ndarray | tuple, ax=None,
                    alpha: float = 0.6, cmap: str = "viridis", colorbar: bool = True):
    """Heatmap of every pixel's similarity to a query, over the image.

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
    embeddings : array-like of shape (H, W, D)
        This image's embeddings.
    query : array-like of shape (D,), or tuple (row, col)
        A vector, or a pixel of this image (then marked with a red circle).
    ax : matplotlib Axes, optional
    alpha : float, default 0.6
    cmap : str, default "viridis"
    colorbar : bool, default True

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_similarity
    >>> E = np.random.default_rng(0).normal(size=(32, 32, 8))
    >>> E /= np.linalg.norm(E, axis=-1, keepdims=True)
    >>> ax = plot_similarity(np.zeros((32, 32)), E, query=(10, 20))      # (row, col)
    >>> len(ax.images)                                                   # image and heatmap
    2
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
    """Predicted (and true) landmarks over the image.

    With ``true``, a line joins each prediction to its truth; with ``radius``, a circle of
    that radius around each true point shows the tolerance (e.g. 20 px for SDR@20).

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
    predicted : array-like of shape (L, 2)
        ``(x, y)`` pixel coordinates (x = column, y = row).
    true : array-like of shape (L, 2), optional
    ax : matplotlib Axes, optional
    radius : float, optional
        In pixels.
    labels : bool, default True
        Number the predicted points 1..L.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_landmarks
    >>> ax = plot_landmarks(np.zeros((64, 64)), [[10, 20], [40, 30]], true=[[12, 20], [40, 35]], radius=5)
    >>> len(ax.patches)                                                  # one circle per true point
    2
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
    """One landmark's similarity map over the image.

    The maps are at the locator's working resolution; they are stretched over the image's
    full extent (pixel edges aligned, the convention of :func:`skuld.matching.rescale_points`).

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
    similarity : array-like of shape (L, h, w)
        One image's maps from ``OneShotLandmarkLocator.predict(X, return_similarity=True)``.
    landmark : int
        Which landmark (0-based).
    predicted : array-like of shape (L, 2), optional
        This image's ``(x, y)`` landmarks, to mark landmark ``landmark``.
    ax : matplotlib Axes, optional
    alpha : float, default 0.6
    cmap : str, default "viridis"
    colorbar : bool, default True

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_landmark_similarity
    >>> maps = np.random.default_rng(0).uniform(-1, 1, size=(3, 16, 16))
    >>> ax = plot_landmark_similarity(np.zeros((64, 64)), maps, landmark=1, predicted=np.full((3, 2), 30.0))
    >>> ax.get_title(), ax.images[1].get_extent()
    ('landmark 2', [-0.5, 63.5, 63.5, -0.5])
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
    """Thumbnails around the retrieved pixels, each hit marked with a red cross.

    Parameters
    ----------
    images : sequence of images, or array of shape (n, H, W[, 3])
        The indexed images, indexed by image number.
    locations : array-like of shape (k, 3)
        One query's ``(image, row, col)`` rows from ``PixelIndex.kneighbors`` (rows of -1 are
        skipped).
    query_image : array-like of shape (H, W) or (H, W, 3), optional
    query_pixel : tuple (row, col), optional
        With ``query_image``, the query's own crop comes first.
    size : int, default 96
        Side of each thumbnail in pixels.
    n_cols : int, default 5

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.plotting import plot_retrieval
    >>> images = np.zeros((3, 64, 64), np.uint8)
    >>> fig = plot_retrieval(images, [[2, 10, 10], [0, 30, 40], [-1, -1, -1]],
    ...                      query_image=images[1], query_pixel=(32, 32), n_cols=3)
    >>> [ax.get_title() for ax in fig.axes]
    ['query', '#1: image 2', '#2: image 0']
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
    """Training curves from a fitted estimator's ``loss_history_``, smoothed.

    The PD -> LD stage change is marked with a dashed line.

    Parameters
    ----------
    history : list of dict
        ``loss_history_``: one dict per step with ``"step"``, ``"stage"`` and loss terms.
    ax : matplotlib Axes, optional
    terms : sequence of str, default ("loss", "patch", "mixup", "region", "entropy")
        Terms to draw (absent ones are skipped).
    smooth : int, default 10
        Trailing mean over this many steps.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> from skuld.plotting import plot_loss
    >>> history = [{"step": s, "stage": "pd" if s < 5 else "ld", "loss": 5.0 - 0.1 * s} for s in range(10)]
    >>> ax = plot_loss(history, smooth=3)
    >>> [line.get_label() for line in ax.get_lines()][:1]
    ['loss']
    """
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
