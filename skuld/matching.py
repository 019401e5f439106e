"""Point matching between images: the functional core of :class:`skuld.OneShotLandmarkLocator`.

Conventions
-----------
* Points are ``(L, 2)`` arrays or tensors of ``(x, y)`` pixel coordinates: x is the column,
  y the row, the origin is the top-left corner and pixel centres sit on integers (the point
  ``(0, 0)`` is the centre of the top-left pixel).
* Images and feature maps are tensors of shape ``(C, H, W)``.
* A 2-D transform is a pair ``(A, t)`` of a ``(2, 2)`` matrix and a ``(2,)`` vector acting
  on row points: ``p' = p @ A.T + t``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def rescale_points(points, from_shape, to_shape):
    """Map ``(x, y)`` points from an image of shape ``from_shape`` to one of shape ``to_shape``.

    Pixel areas are preserved (the convention of bilinear resizing with
    ``align_corners=False``): ``x' = (x + 0.5) * W' / W - 0.5``, and the same for y.

    Parameters
    ----------
    points : array-like of shape (..., 2)
        ``(x, y)`` pixel coordinates in the source image (x = column, y = row).
    from_shape, to_shape : tuple of int
        ``(H, W)`` of the source and the target image.

    Returns
    -------
    ndarray of shape (..., 2), float64
        The points in the target image's pixels.

    Examples
    --------
    >>> from skuld.matching import rescale_points
    >>> rescale_points([[0.0, 0.0], [99.0, 49.0]], (50, 100), (100, 200))
    array([[  0.5,   0.5],
           [198.5,  98.5]])
    """
    p = np.asarray(points, dtype=np.float64)
    sx = to_shape[1] / from_shape[1]
    sy = to_shape[0] / from_shape[0]
    out = np.empty_like(p)
    out[..., 0] = (p[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (p[..., 1] + 0.5) * sy - 0.5
    return out


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps over ``[-ceil(3 sigma), ceil(3 sigma)]`` (at least 3 taps).

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, > 0.
    device : torch.device or str, optional
        Where the taps are created.
    dtype : torch.dtype, default torch.float32

    Returns
    -------
    Tensor of shape (2 * ceil(3 sigma) + 1,)
        Non-negative taps summing to 1.

    Examples
    --------
    >>> from skuld.matching import gaussian_kernel1d
    >>> k = gaussian_kernel1d(1.0)
    >>> k.shape, round(float(k.sum()), 6)
    (torch.Size([7]), 1.0)
    """
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of feature maps (reflected borders).

    This is the paper's "center-sensitive averaging": each output pixel is a
    Gaussian-weighted mean of its neighbourhood.

    Parameters
    ----------
    x : Tensor of shape (C, H, W) or (N, C, H, W)
        Maps to smooth, any float dtype.
    sigma : float
        Standard deviation in pixels; 0 returns ``x`` unchanged.

    Returns
    -------
    Tensor
        Same shape, dtype and device as ``x``.

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import gaussian_blur
    >>> x = torch.zeros(1, 9, 9); x[0, 4, 4] = 1.0
    >>> y = gaussian_blur(x, 1.0)
    >>> y.shape, round(float(y.sum()), 4), bool(y[0, 4, 4] == y.max())
    (torch.Size([1, 9, 9]), 1.0, True)
    """
    if sigma <= 0:
        return x
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    n, c, h, w = x.shape
    k = gaussian_kernel1d(sigma, x.device, x.dtype)
    r = k.numel() // 2
    y = x.reshape(n * c, 1, h, w)
    mode = "reflect" if min(h, w) > r else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    y = y.reshape(n, c, h, w)
    return y[0] if squeeze else y


def center_sensitive_map(feature: torch.Tensor, sigma: float) -> torch.Tensor:
    """Center-sensitive descriptors of a feature map: unit norm per pixel, then Gaussian-smoothed.

    The one definition shared by the locator's matching and the correspondence fine-tuning
    that trains for it.

    Parameters
    ----------
    feature : Tensor of shape (C, H, W)
    sigma : float
        Standard deviation of the smoothing in pixels of this map.

    Returns
    -------
    Tensor of shape (C, H, W), float32
        Not unit norm after smoothing: normalise again where a cosine is wanted.

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import center_sensitive_map
    >>> center_sensitive_map(torch.full((2, 8, 8), 3.0), 1.5)[:, 4, 4]
    tensor([0.7071, 0.7071])
    """
    return gaussian_blur(F.normalize(feature.float(), dim=0), sigma)


def _grid(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(x, y) pixel points -> grid_sample's normalised coordinates (align_corners=False)."""
    gx = (points[..., 0] + 0.5) / width * 2 - 1
    gy = (points[..., 1] + 0.5) / height * 2 - 1
    return torch.stack([gx, gy], dim=-1)


def sample_points(feature: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of a feature map at sub-pixel ``(x, y)`` points.

    Points outside the map take the value of the nearest border pixel.

    Parameters
    ----------
    feature : Tensor of shape (C, H, W)
    points : Tensor of shape (L, 2)
        ``(x, y)`` pixel coordinates (pixel centres on integers).

    Returns
    -------
    Tensor of shape (L, C)
        Same dtype as ``feature``.

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import sample_points
    >>> ramp = torch.arange(4.0).repeat(3, 1)[None]       # (1, 3, 4): value = x
    >>> sample_points(ramp, torch.tensor([[1.5, 1.0], [9.0, 0.0]]))
    tensor([[1.5000],
            [3.0000]])
    """
    c, h, w = feature.shape
    grid = _grid(points.to(feature.dtype), h, w).view(1, 1, -1, 2)
    out = F.grid_sample(feature[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def sample_patches(image: torch.Tensor, centers: torch.Tensor, size: int, linear: torch.Tensor | None = None) -> torch.Tensor:
    """Square patches centred on ``(x, y)`` points, optionally seen through a linear warp.

    Patch pixel ``(i, j)`` is the image at ``center + linear @ (j - c, i - c)`` with
    ``c = (size - 1) / 2``: ``linear`` (default identity) resamples the neighbourhood through a
    rotation/scaling, which lets a template patch be seen in another image's geometry.
    Outside the image the border pixel is repeated.

    Parameters
    ----------
    image : Tensor of shape (C, H, W)
    centers : Tensor of shape (L, 2)
        ``(x, y)`` patch centres in pixels.
    size : int
        Side of the patches.
    linear : Tensor of shape (2, 2), optional
        Maps patch offsets ``(dx, dy)`` to image offsets.

    Returns
    -------
    Tensor of shape (L, C, size, size)

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import sample_patches
    >>> img = torch.arange(25.0).view(1, 5, 5)
    >>> sample_patches(img, torch.tensor([[2.0, 2.0]]), 3)[0, 0]
    tensor([[ 6.,  7.,  8.],
            [11., 12., 13.],
            [16., 17., 18.]])
    """
    c, h, w = image.shape
    centers = centers.to(image.dtype)
    half = (size - 1) / 2
    r = torch.arange(size, device=image.device, dtype=image.dtype) - half
    offsets = torch.stack(torch.meshgrid(r, r, indexing="xy"), dim=-1)  # (size, size, 2) as (dx, dy)
    if linear is not None:
        offsets = offsets @ linear.to(image.dtype).T
    pts = centers[:, None, None, :] + offsets[None]
    grid = _grid(pts, h, w)
    batch = image[None].expand(len(centers), -1, -1, -1)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def ncc_maps(regions: torch.Tensor, templates: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised cross-correlation of each template over its own search region.

    Parameters
    ----------
    regions : Tensor of shape (L, C, S, S)
        Search regions.
    templates : Tensor of shape (L, C, P, P), P <= S
        One template per region.
    eps : float, default 1e-6
        Windows or templates with a smaller standard deviation count as flat.

    Returns
    -------
    Tensor of shape (L, S - P + 1, S - P + 1), values in [-1, 1]
        Entry ``(l, i, j)`` is the Pearson correlation between ``templates[l]`` and
        ``regions[l, :, i:i+P, j:j+P]`` (over all channels). Flat windows or templates score 0.

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import ncc_maps
    >>> region = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> template = region[:, :, 5:10, 3:8]                 # cut at row 5, column 3
    >>> scores = ncc_maps(region, template)                # (1, 12, 12)
    >>> divmod(int(scores.flatten().argmax()), 12), round(float(scores.max()), 4)
    ((5, 3), 1.0)
    """
    n, c, s, _ = regions.shape
    p = templates.shape[-1]
    t0 = templates - templates.mean(dim=(1, 2, 3), keepdim=True)
    t_norm = t0.flatten(1).norm(dim=1).view(1, n, 1, 1)
    x = regions.reshape(1, n * c, s, s)
    num = F.conv2d(x, t0, groups=n)
    count = c * p * p
    local_sum = _box_sums(regions.sum(1), p)
    local_sq = _box_sums((regions * regions).sum(1), p)
    var = (local_sq - local_sum**2 / count).clamp_min(0)
    den = var.sqrt()[None] * t_norm
    out = torch.where(den > eps * count, num / den.clamp_min(eps), torch.zeros_like(num))
    return out[0].clamp(-1, 1)


def _box_sums(x: torch.Tensor, p: int) -> torch.Tensor:
    """Sums over every p x p window of ``(N, S, S)`` maps -> ``(N, S-p+1, S-p+1)``, from an
    integral image (cost independent of ``p``), in float64 so that the differences of large
    partial sums stay exact enough for variances."""
    ii = F.pad(x.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    out = ii[:, p:, p:] - ii[:, :-p, p:] - ii[:, p:, :-p] + ii[:, :-p, :-p]
    return out.to(x.dtype)


def subpixel_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak of each score map, refined by a parabola fitted along x and y around it.

    Parameters
    ----------
    scores : Tensor of shape (L, H, W)
        Score maps; ``-inf`` marks excluded cells.

    Returns
    -------
    points : Tensor of shape (L, 2)
        ``(x, y)`` of the peaks (sub-pixel offsets clipped to half a pixel).
    values : Tensor of shape (L,)
        The maximal scores.

    Examples
    --------
    >>> import torch
    >>> from skuld.matching import subpixel_argmax
    >>> x = torch.arange(9.0)
    >>> scores = -((x - 4.3) ** 2)[None, None, :].repeat(1, 3, 1)   # peak at x = 4.3; flat in y: first row
    >>> points, values = subpixel_argmax(scores)
    >>> [round(v, 3) for v in points[0].tolist()]
    [4.3, 0.0]
    """
    n, h, w = scores.shape
    flat = scores.reshape(n, -1)
    values, idx = flat.max(dim=1)
    ys, xs = idx // w, idx % w

    def offset(m1, c0, p1):
        denom = m1 - 2 * c0 + p1
        ok = torch.isfinite(denom) & (denom < 0)
        off = torch.where(ok, 0.5 * (m1 - p1) / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        return off.clamp(-0.5, 0.5)

    rows = torch.arange(n, device=scores.device)
    xm, xp = (xs - 1).clamp(0, w - 1), (xs + 1).clamp(0, w - 1)
    ym, yp = (ys - 1).clamp(0, h - 1), (ys + 1).clamp(0, h - 1)
    dx = offset(scores[rows, ys, xm], values, scores[rows, ys, xp])
    dy = offset(scores[rows, ym, xs], values, scores[rows, yp, xs])
    dx = torch.where((xs > 0) & (xs < w - 1), dx, torch.zeros_like(dx))
    dy = torch.where((ys > 0) & (ys < h - 1), dy, torch.zeros_like(dy))
    points = torch.stack([xs.to(scores.dtype) + dx, ys.to(scores.dtype) + dy], dim=1)
    return points, values


def apply_transform(points, transform):
    """Apply a 2-D transform ``(A, t)`` to row points: ``points @ A.T + t``.

    Parameters
    ----------
    points : array-like of shape (..., 2)
        ``(x, y)`` points.
    transform : tuple (A, t)
        ``A`` of shape (2, 2), ``t`` of shape (2,).

    Returns
    -------
    ndarray of shape (..., 2), float64

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.matching import apply_transform
    >>> apply_transform([[1.0, 0.0]], (np.array([[0.0, -1.0], [1.0, 0.0]]), np.array([10.0, 0.0])))
    array([[10.,  1.]])
    """
    a, t = transform
    return np.asarray(points, dtype=np.float64) @ np.asarray(a).T + np.asarray(t)


def fit_transform(src, dst, weights=None, kind: str = "similarity"):
    """Least-squares 2-D transform mapping ``src`` onto ``dst``.

    Parameters
    ----------
    src, dst : array-like of shape (L, 2)
        Corresponding ``(x, y)`` points.
    weights : array-like of shape (L,), optional
        Non-negative point weights (at least one positive).
    kind : {"translation", "similarity", "affine"}, default "similarity"
        "similarity" is rotation, uniform scale and translation (Umeyama's closed form);
        a degenerate affine problem falls back to it.

    Returns
    -------
    tuple (A, t)
        ``A`` float64 (2, 2), ``t`` float64 (2,), such that ``dst ~ src @ A.T + t``.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.matching import fit_transform
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> A, t = fit_transform(src, 2 * src + [3.0, 4.0])
    >>> np.allclose(A, [[2.0, 0.0], [0.0, 2.0]]), np.allclose(t, [3.0, 4.0])   # scale 2, shift (3, 4)
    (True, True)
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("fit_transform needs at least one point with positive weight")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    if kind == "translation":
        a = np.eye(2)
    elif kind == "similarity":
        cov = (d0 * w[:, None]).T @ s0
        u, sing, vt = np.linalg.svd(cov)
        sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
        var_s = (w * (s0**2).sum(1)).sum()
        scale = (sing * np.diag(sign)).sum() / var_s if var_s > 0 else 1.0
        a = scale * (u @ sign @ vt)
    elif kind == "affine":
        sw = s0 * w[:, None]
        gram = sw.T @ s0
        if abs(np.linalg.det(gram)) < 1e-9 * max(1.0, np.trace(gram)) ** 2:
            return fit_transform(src, dst, weights, "similarity")
        a = np.linalg.solve(gram, sw.T @ d0).T
    else:
        raise ValueError(f"kind must be 'translation', 'similarity' or 'affine', got {kind!r}")
    return a, mu_d - mu_s @ a.T


def robust_transform(src, dst, threshold: float, weights=None, kind: str = "similarity"):
    """Fit ``src -> dst`` while ignoring outliers: exhaustive two-point similarity hypotheses.

    Every pair of points proposes a similarity transform; the one whose inliers (residual
    below ``threshold``) carry the largest total weight wins and is refitted (as ``kind``) on
    its inliers, then once more on the refined transform's inliers. Deterministic.

    Parameters
    ----------
    src, dst : array-like of shape (L, 2)
        Corresponding ``(x, y)`` points.
    threshold : float
        Inlier residual in pixels.
    weights : array-like of shape (L,), optional
        Non-negative point weights.
    kind : {"translation", "similarity", "affine"}, default "similarity"

    Returns
    -------
    transform : tuple (A, t)
        As returned by :func:`fit_transform`.
    inliers : ndarray of shape (L,), bool

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.matching import robust_transform
    >>> src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    >>> dst = src + 5.0
    >>> dst[3] = [100.0, -40.0]                            # one wrong correspondence
    >>> (A, t), inliers = robust_transform(src, dst, threshold=2.0)
    >>> inliers, np.round(t, 6)
    (array([ True,  True,  True, False]), array([5., 5.]))
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n < 2:
        tr = fit_transform(src, dst, w, "translation")
        return tr, np.ones(n, bool)
    # Every pair (i, j) proposes the similarity z * p + t with, in complex notation,
    # z = (dst_j - dst_i) / (src_j - src_i): all hypotheses at once.
    i, j = np.triu_indices(n, k=1)
    sc = src[:, 0] + 1j * src[:, 1]
    dc = dst[:, 0] + 1j * dst[:, 1]
    ds = sc[j] - sc[i]
    keep = np.abs(ds) > 1e-9
    i, j, ds = i[keep], j[keep], ds[keep]
    z = (dc[j] - dc[i]) / ds
    t = dc[i] - z * sc[i]
    res = np.abs(z[:, None] * sc[None, :] + t[:, None] - dc[None, :])  # (hypotheses, L)
    best = None
    if len(z):
        inl = res < threshold
        best = inl[np.argmax(inl @ w)]
    if best is None or best.sum() < 2:
        best = np.ones(n, bool)
    tr = fit_transform(src[best], dst[best], w[best], kind if best.sum() >= 3 else "similarity")
    # One more round on the refined transform's inliers.
    res = np.linalg.norm(apply_transform(src, tr) - dst, axis=1)
    inl = res < threshold
    if inl.sum() >= 3:
        tr = fit_transform(src[inl], dst[inl], w[inl], kind)
        best = inl
    return tr, best
