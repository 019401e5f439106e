"""Ridge strength: a classical, label-free detector of thin tubular structures (vessels).

Used by :class:`skuld.ShapeGuidedSegmenter` as a source of pseudo-labels at the width of the
prior shapes, and by the benchmarks as the classical baseline. Images follow
:mod:`skuld.io`'s conventions; maps are float32 ``(H, W)``.
"""

from __future__ import annotations

import numpy as np

from ..io import to_float_image


def ridge_strength(image, sigmas=(1.0, 1.5, 2.0, 3.0), polarity: str = "dark") -> np.ndarray:
    """Scale-normalised Hessian ridge strength of every pixel.

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
        uint8/uint16/bool or float in [0, 1]. Colour images use their green channel (the
        channel of best vessel contrast in fundus photographs).
    sigmas : sequence of float, default (1.0, 1.5, 2.0, 3.0)
        Gaussian scales in pixels; a tube of width ``w`` answers most at about ``w / 2``.
    polarity : {"dark", "bright"}, default "dark"
        Whether the structures are darker (fundus vessels) or brighter than around them.

    Returns
    -------
    ndarray of shape (H, W), float32, >= 0
        ``max over sigma of sigma^2 * max(lambda, 0)`` where ``lambda`` is the Hessian
        eigenvalue across the ridge (sign flipped for bright ones), computed after
        contrast-limited histogram equalisation (CLAHE, clip 0.01). A flat image gives zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation.ridges import ridge_strength
    >>> img = np.full((32, 32), 200, np.uint8); img[:, 15:18] = 60      # a dark vertical line
    >>> v = ridge_strength(img)
    >>> v.shape, v.dtype, int(v.mean(axis=0).argmax())
    ((32, 32), dtype('float32'), 16)
    """
    from skimage import exposure, feature

    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    img = to_float_image(image)
    channel = img[..., 1] if img.shape[2] == 3 else img[..., 0]
    if np.ptp(channel) < 1e-6:  # flat: no ridges (CLAHE would invent tile patterns)
        return np.zeros(channel.shape, np.float32)
    eq = exposure.equalize_adapthist(channel.astype(np.float64), clip_limit=0.01)
    if polarity == "bright":
        eq = 1 - eq
    out = np.zeros(eq.shape, np.float32)
    for s in sigmas:
        # Reflected borders: zero padding would make every image border a ridge.
        hessian = feature.hessian_matrix(eq, sigma=float(s), order="rc", mode="reflect", use_gaussian_derivatives=False)
        across = feature.hessian_matrix_eigvals(hessian)[0]  # the larger eigenvalue: across a dark ridge
        np.maximum(out, (s * s * np.maximum(across, 0)).astype(np.float32), out=out)
    return out


def ridge_segmentation(image, region=None, sigmas=(1.0, 1.5, 2.0, 3.0), polarity: str = "dark") -> np.ndarray:
    """Thin structures found by :func:`ridge_strength` and a triangle threshold.

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
        As for :func:`ridge_strength`.
    region : array-like of shape (H, W), bool, optional
        Where to look, e.g. a field of view (default: everywhere). The threshold is computed
        inside it and nothing outside it is marked.
    sigmas : sequence of float, default (1.0, 1.5, 2.0, 3.0)
    polarity : {"dark", "bright"}, default "dark"

    Returns
    -------
    ndarray of shape (H, W), bool

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation.ridges import ridge_segmentation
    >>> img = np.full((48, 48), 0.7); img[:, 22:26] = 0.3      # a dark band, columns 22-25
    >>> np.flatnonzero(ridge_segmentation(img)[24])           # columns marked in row 24
    array([21, 22, 23, 24, 25, 26])
    """
    from skimage import filters

    v = ridge_strength(image, sigmas, polarity)
    region = np.ones(v.shape, bool) if region is None else np.asarray(region, bool)
    if not region.any():
        return np.zeros(v.shape, bool)
    return (v > filters.threshold_triangle(v[region])) & region


def ridge_pseudo_labels(image, region, sigmas=(1.0, 1.5, 2.0, 3.0), polarity: str = "dark", sure: float = 1.0,
                        unsure_value: int = 255, fraction_range: tuple[float, float] | None = None) -> np.ndarray:
    """Pseudo-labels from the ridge strength, with an "unsure" band around the threshold.

    With ``t`` the triangle threshold of the strength inside ``region``: structure where the
    strength exceeds ``t * sure``, background below ``t / sure``, unsure in between
    (``sure=1`` labels every pixel). Outside ``region`` is background.

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, 3)
        As for :func:`ridge_strength`.
    region : array-like of shape (H, W), bool
        Where to label (e.g. the field of view).
    sigmas : sequence of float, default (1.0, 1.5, 2.0, 3.0)
    polarity : {"dark", "bright"}, default "dark"
    sure : float >= 1, default 1.0
        Width of the unsure band, as a factor around ``t``.
    unsure_value : int, default 255
        Label of unsure pixels (use it as a segmenter's ``ignore_label``).
    fraction_range : (float, float), optional
        ``(low, high)``: ``t`` is moved where needed so that the fraction of ``region`` above
        it stays within that range (the triangle threshold fails on noise-dominated images).

    Returns
    -------
    ndarray of shape (H, W), uint8
        1 (structure), 0 (background) or ``unsure_value``.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation.ridges import ridge_pseudo_labels
    >>> img = np.full((48, 48), 0.7); img[:, 22:26] = 0.3      # a dark band, columns 22-25
    >>> region = np.ones((48, 48), bool); region[:, 40:] = False
    >>> labels = ridge_pseudo_labels(img, region, sure=1.5)
    >>> labels.dtype, labels[24, 18:30]
    (dtype('uint8'), array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=uint8))
    """
    from skimage import filters

    if sure < 1:
        raise ValueError(f"sure must be >= 1, got {sure}")
    region = np.asarray(region, bool)
    v = ridge_strength(image, sigmas, polarity)
    label = np.zeros(v.shape, np.uint8)
    if not region.any():
        return label
    inside = v[region]
    t = filters.threshold_triangle(inside)
    if fraction_range is not None:
        low, high = fraction_range
        above = float((inside > t).mean())
        if above > high:
            t = float(np.quantile(inside, 1 - high))
        elif above < low:
            t = float(np.quantile(inside, 1 - low))
    label[region] = unsure_value
    label[region & (v > t * sure)] = 1
    label[region & (v <= t / sure)] = 0
    return label
