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
    """Euclidean distance between each predicted and true point, shape ``(..., L)``.

    ``spacing``: pixel size (a number, or (x, y) sizes) to get millimetres instead of pixels.
    NaN where either point is missing.
    """
    p, t = _pair(pred, true)
    d = p - t
    if spacing is not None:
        d = d * np.broadcast_to(np.asarray(spacing, dtype=float), (2,))
    return np.sqrt((d**2).sum(-1))


def mean_radial_error(pred, true, spacing=None) -> float:
    """Mean radial error over every non-missing point (pixels, or mm with ``spacing``)."""
    e = radial_errors(pred, true, spacing)
    if np.isnan(e).all():
        raise ValueError("every landmark is missing (NaN)")
    return float(np.nanmean(e))


def successful_detection_rate(pred, true, radii=(20, 25, 30, 40), spacing=None) -> dict[float, float]:
    """Fraction of non-missing points whose radial error is at most each radius: ``{radius: rate}``."""
    e = radial_errors(pred, true, spacing)
    e = e[~np.isnan(e)]
    if e.size == 0:
        raise ValueError("every landmark is missing (NaN)")
    return {float(r): float((e <= r).mean()) for r in radii}


def dice(pred, true, mask=None) -> float:
    """Mean Dice coefficient over images.

    ``pred``, ``true``: boolean masks ``(H, W)`` or ``(n, H, W)`` (or lists of masks of any
    sizes). ``mask``: optional boolean region of the same shape(s), e.g. a fundus field of
    view; only pixels inside it count. An image where both masks are empty (inside the
    region) counts as 1.
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
    """Dice of each class in ``classes``, averaged per image, then over images.

    ``pred``, ``true``: label maps ``(n, H, W)`` or lists of ``(H_i, W_i)`` arrays;
    ``classes``: the labels scored (usually every class but the background);
    ``sample_weight``: optional weight per image in the final mean; ``regions``: optional
    boolean masks like ``true``, only pixels inside them count.
    """
    if len(pred) != len(true) or (regions is not None and len(regions) != len(true)):
        raise ValueError(f"{len(pred)} predicted masks for {len(true)} true masks")
    regions = [None] * len(true) if regions is None else regions
    per_image = [np.mean([dice(np.asarray(p) == c, np.asarray(t) == c, r) for c in classes])
                 for p, t, r in zip(pred, true, regions)]
    return float(np.average(per_image, weights=sample_weight))
