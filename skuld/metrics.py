"""Evaluation metrics: landmark errors (radial error, SDR) and segmentation overlap (Dice).

Landmarks are ``(..., L, 2)`` arrays of ``(x, y)`` pixel coordinates (x = column, y = row,
origin top-left). Missing points are NaN and are left out of every statistic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _pair(pred, true):
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if p.shape != t.shape or p.shape[-1:] != (2,):
        raise ValueError(f"predicted {p.shape} and true {t.shape} landmarks must both be (..., L, 2) arrays of (x, y)")
    return p, t


def radial_errors(pred, true, spacing: float | Sequence[float] | None = None) -> np.ndarray:
    """Euclidean distance between each predicted and true landmark.

    Parameters
    ----------
    pred, true : array-like of shape (..., L, 2)
        ``(x, y)`` pixel coordinates; NaN marks a missing point.
    spacing : float or (float, float), optional
        Pixel size (one number, or the x and y sizes) to get millimetres instead of pixels.

    Returns
    -------
    ndarray of shape (..., L), float64
        NaN where either point is missing.

    Examples
    --------
    >>> from skuld.metrics import radial_errors
    >>> radial_errors([[0, 0], [3, 4]], [[0, 1], [0, 0]])
    array([1., 5.])
    >>> radial_errors([[3, 4]], [[0, 0]], spacing=0.1)
    array([0.5])
    """
    p, t = _pair(pred, true)
    d = p - t
    if spacing is not None:
        d = d * np.broadcast_to(np.asarray(spacing, dtype=float), (2,))
    return np.sqrt((d**2).sum(-1))


def mean_radial_error(pred, true, spacing=None) -> float:
    """Mean radial error over every non-missing point.

    Parameters
    ----------
    pred, true : array-like of shape (..., L, 2)
        ``(x, y)`` pixel coordinates; NaN marks a missing point.
    spacing : float or (float, float), optional
        Pixel size, for millimetres.

    Returns
    -------
    float
        In pixels, or millimetres with ``spacing``. Raises ``ValueError`` if every point is missing.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.metrics import mean_radial_error
    >>> mean_radial_error([[0, 0], [3, 4]], [[0, 1], [np.nan, np.nan]])
    1.0
    """
    e = radial_errors(pred, true, spacing)
    if np.isnan(e).all():
        raise ValueError("every landmark is missing (NaN)")
    return float(np.nanmean(e))


def successful_detection_rate(pred, true, radii=(20, 25, 30, 40), spacing=None) -> dict[float, float]:
    """Successful detection rate: fraction of points found within each radius.

    Parameters
    ----------
    pred, true : array-like of shape (..., L, 2)
        ``(x, y)`` pixel coordinates; NaN marks a missing point (left out).
    radii : sequence of float, default (20, 25, 30, 40)
        In pixels, or millimetres with ``spacing``.
    spacing : float or (float, float), optional
        Pixel size.

    Returns
    -------
    dict of {float: float}
        ``{radius: rate}``, rates in [0, 1].

    Examples
    --------
    >>> from skuld.metrics import successful_detection_rate
    >>> successful_detection_rate([[0, 0], [30, 0]], [[0, 0], [0, 0]], radii=(20, 40))
    {20.0: 0.5, 40.0: 1.0}
    """
    e = radial_errors(pred, true, spacing)
    e = e[~np.isnan(e)]
    if e.size == 0:
        raise ValueError("every landmark is missing (NaN)")
    return {float(r): float((e <= r).mean()) for r in radii}


def dice(pred, true, mask=None) -> float:
    """Mean Dice coefficient over images.

    An image where both masks are empty (inside the region) counts as 1.

    Parameters
    ----------
    pred, true : array-like of shape (H, W) or (n, H, W), or lists of (H_i, W_i) masks
        Boolean (or 0/1) masks of matching shapes.
    mask : array-like or list, optional
        Boolean regions of the same shape(s), e.g. a fundus field of view; only pixels inside
        them count.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.metrics import dice
    >>> a = np.zeros((4, 4), bool); a[:2] = True              # 8 pixels
    >>> b = np.zeros((4, 4), bool); b[:1] = True              # 4 pixels, all inside a
    >>> round(dice(a, b), 4)
    0.6667
    """
    if isinstance(pred, (list, tuple)):
        if len(pred) != len(true) or (mask is not None and len(mask) != len(pred)):
            raise ValueError(f"{len(pred)} predicted masks for {len(true)} true masks"
                             + ("" if mask is None else f" and {len(mask)} regions"))
        regions = [None] * len(pred) if mask is None else mask
        return float(np.mean([dice(p, t, m) for p, t, m in zip(pred, true, regions)]))
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and true {t.shape} masks differ in shape")
    if p.ndim == 2:
        p, t = p[None], t[None]
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape[-2:] != p.shape[-2:] or m.ndim not in (2, 3) or (m.ndim == 3 and len(m) != len(p)):
            raise ValueError(f"region mask {m.shape} does not match masks {p.shape}")
        p, t = p & m, t & m
    inter = (p & t).sum(axis=(1, 2))
    total = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
    scores = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
    return float(scores.mean())


def class_dice(pred, true, classes, sample_weight=None, regions=None) -> float:
    """Dice of each class, averaged per image, then over images.

    Parameters
    ----------
    pred, true : array-like of shape (n, H, W), or lists of (H_i, W_i) label maps
        Integer labels.
    classes : sequence of int
        The labels scored (usually every class but the background).
    sample_weight : array-like of shape (n,), optional
        Weight of each image in the final mean.
    regions : list of boolean masks, optional
        Shaped like ``true``; only pixels inside them count.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.metrics import class_dice
    >>> true = np.array([[[0, 1, 1, 2]]])                     # one 1 x 4 image
    >>> pred = np.array([[[0, 1, 2, 2]]])
    >>> round(class_dice(pred, true, classes=[1, 2]), 4)      # class 1: 2/3, class 2: 2/3
    0.6667
    """
    if len(pred) != len(true) or (regions is not None and len(regions) != len(true)):
        raise ValueError(f"{len(pred)} predicted masks for {len(true)} true masks")
    regions = [None] * len(true) if regions is None else regions
    per_image = [np.mean([dice(np.asarray(p) == c, np.asarray(t) == c, r) for c in classes])
                 for p, t, r in zip(pred, true, regions)]
    return float(np.average(per_image, weights=sample_weight))
