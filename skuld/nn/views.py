"""Positive-pair views generated on batched tensors, on whatever device the batch lives.

A training batch holds ``B`` items, each two different images ``I1, I2`` already cropped to
``S x S`` by the data loader. :func:`make_views` returns ``5B`` images ordered as

``[view 1 of I1 (B), view 1 of I2 (B), view 2 of I1 (B), view 2 of I2 (B), mixup (B)]``

so that image ``j < 2B`` and image ``2B + j`` are two views of one image whose pixel grids
coincide once :func:`undo_rot90` has been applied to the second view's features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ViewConfig:
    """Which augmentations make the two views (every one can be switched off).

    Attributes
    ----------
    flips : bool
        Random horizontal and vertical mirror flips shared by both views.
    rotation : float
        Shared rotation drawn from U(-rotation, rotation) degrees (180 in the paper; 0 for
        images that share one orientation such as chest X-rays and cephalograms).
    rot90 : bool
        The second view is also turned by k * 90 degrees (k random), undone on the features.
        Teaches rotation invariance: off for images with a common orientation.
    view_rotation : float
        Extra per-view rotation from U(-view_rotation, view_rotation) degrees (2 in the paper).
    brightness, contrast, saturation, hue : float
        Per-view colour jitter strengths (0.4, 0.4, 0.4, 0.02 in the paper); hue is a
        fraction of a full turn of the chroma plane.
    grayscale_p : float
        Per-view probability of converting an RGB view to gray.
    mixup : tuple of float or None
        Range of the mixing weight ``l`` of the mixup image; None drops the mixup images.

    Examples
    --------
    >>> from skuld.nn.views import ViewConfig
    >>> xray = ViewConfig(flips=False, rotation=0.0, rot90=False)   # one shared orientation
    >>> xray.mixup
    (0.2, 0.8)
    """

    flips: bool = True
    rotation: float = 180.0
    rot90: bool = True
    view_rotation: float = 2.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.02
    grayscale_p: float = 0.2
    mixup: tuple[float, float] | None = (0.2, 0.8)


@dataclass
class Views:
    """Output of :func:`make_views`.

    Attributes
    ----------
    images : Tensor of shape (5B, C, S, S), or (4B, C, S, S) without mixup
        Float views in [0, 1], in the order given in the module docstring.
    rot90_k : list of int, length 2B
        Quarter turns applied to the second views (undo them with :func:`undo_rot90`).
    mix_lambda : Tensor of shape (B,) or None
        Weight of I1 in each mixup image.
    n_items : int
        B (a property).

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.views import ViewConfig, make_views
    >>> views = make_views(torch.rand(3, 2, 1, 32, 32), ViewConfig())
    >>> views.images.shape, views.n_items, len(views.rot90_k), views.mix_lambda.shape
    (torch.Size([15, 1, 32, 32]), 3, 6, torch.Size([3]))
    """

    images: torch.Tensor
    rot90_k: list
    mix_lambda: torch.Tensor | None

    @property
    def n_items(self) -> int:
        return len(self.rot90_k) // 2


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _rotation_grid(angles_deg, flip_x, flip_y, size, device):
    """Sampling grids that rotate by ``angles_deg`` then mirror; one per image."""
    t = angles_deg * (math.pi / 180)
    cos, sin = torch.cos(t), torch.sin(t)
    sx = 1 - 2 * flip_x.float()
    sy = 1 - 2 * flip_y.float()
    theta = torch.stack(
        [torch.stack([cos * sx, -sin * sy, torch.zeros_like(t)], 1), torch.stack([sin * sx, cos * sy, torch.zeros_like(t)], 1)],
        1,
    )
    return F.affine_grid(theta, [len(t), 1, size, size], align_corners=False)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _gray(x):
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness, contrast, saturation, hue jitter and random grayscale.

    Saturation, hue and grayscale apply to RGB images only; strengths come from ``cfg``.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W), C in {1, 3}
        Float images in [0, 1].
    cfg : ViewConfig
    generator : torch.Generator, optional
        On ``x``'s device; makes the jitter reproducible.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        Clamped to [0, 1].

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.views import ViewConfig, color_jitter
    >>> x = torch.full((4, 3, 8, 8), 0.5)
    >>> y = color_jitter(x, ViewConfig(), torch.Generator().manual_seed(0))
    >>> y.shape, bool(0 <= y.min() and y.max() <= 1), bool((y != x).any())
    (torch.Size([4, 3, 8, 8]), True, True)
    """
    n, c = x.shape[:2]
    dev = x.device

    def factor(s):
        return _uniform(n, max(0.0, 1 - s), 1 + s, generator, dev).view(n, 1, 1, 1)

    if cfg.brightness:
        x = x * factor(cfg.brightness)
    if cfg.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(cfg.contrast) + mean
    if c == 3:
        if cfg.saturation:
            g = _gray(x)
            x = (x - g) * factor(cfg.saturation) + g
        if cfg.hue:
            # Rotate the chroma (I, Q) plane of YIQ: a linear stand-in for an HSV hue shift.
            ang = _uniform(n, -cfg.hue, cfg.hue, generator, dev) * 2 * math.pi
            m, m_inv = _RGB_TO_YIQ.to(dev), _YIQ_TO_RGB.to(dev)
            rot = torch.zeros(n, 3, 3, device=dev)
            rot[:, 0, 0] = 1
            rot[:, 1, 1] = torch.cos(ang)
            rot[:, 1, 2] = -torch.sin(ang)
            rot[:, 2, 1] = torch.sin(ang)
            rot[:, 2, 2] = torch.cos(ang)
            full = m_inv @ rot @ m  # (n, 3, 3)
            x = torch.einsum("nij,njhw->nihw", full, x)
        if cfg.grayscale_p:
            to_gray = torch.rand(n, generator=generator, device=dev) < cfg.grayscale_p
            x = torch.where(to_gray.view(n, 1, 1, 1), _gray(x).expand_as(x), x)
    return x.clamp(0, 1)


def make_views(
    pairs: torch.Tensor,
    cfg: ViewConfig,
    generator: torch.Generator | None = None,
    host_generator: torch.Generator | None = None,
) -> Views:
    """Build the two views of both images of every item, and the mixup images.

    Parameters
    ----------
    pairs : Tensor of shape (B, 2, C, S, S)
        Float images in [0, 1]: ``pairs[b, 0]`` is I1 and ``pairs[b, 1]`` is I2 of item b.
    cfg : ViewConfig
    generator : torch.Generator, optional
        On the same device as ``pairs``; makes the views reproducible.
    host_generator : torch.Generator, optional
        A CPU generator for the quarter turns, drawn on the host so that the step never waits
        for the device to tell how to turn a view.

    Returns
    -------
    Views
        See the module docstring for the order of the images.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.views import ViewConfig, make_views
    >>> pairs = torch.rand(2, 2, 3, 64, 64)                  # B = 2 items of two RGB crops
    >>> views = make_views(pairs, ViewConfig(), torch.Generator().manual_seed(0),
    ...                    torch.Generator().manual_seed(1))
    >>> views.images.shape                                    # 2 views x 2 images x B + B mixups
    torch.Size([10, 3, 64, 64])
    """
    if pairs.ndim != 5 or pairs.shape[1] != 2 or pairs.shape[-1] != pairs.shape[-2]:
        raise ValueError(f"expected pairs of square crops (B, 2, C, S, S), got {tuple(pairs.shape)}")
    b, _, c, s, _ = pairs.shape
    dev = pairs.device
    images = pairs.transpose(0, 1).reshape(2 * b, c, s, s)  # [I1 of each item, I2 of each item]

    # Shared geometry (flip + large rotation) and per-view small rotation, in one resampling.
    n = 2 * b
    if cfg.flips:
        flip_x = torch.rand(n, generator=generator, device=dev) < 0.5
        flip_y = torch.rand(n, generator=generator, device=dev) < 0.5
    else:
        flip_x = flip_y = torch.zeros(n, dtype=torch.bool, device=dev)
    shared = _uniform(n, -cfg.rotation, cfg.rotation, generator, dev) if cfg.rotation else torch.zeros(n, device=dev)
    both = torch.cat([images, images])
    angles = torch.cat([shared, shared])
    if cfg.view_rotation:
        angles = angles + _uniform(2 * n, -cfg.view_rotation, cfg.view_rotation, generator, dev)
    fx, fy = torch.cat([flip_x, flip_x]), torch.cat([flip_y, flip_y])
    if cfg.rotation or cfg.view_rotation or cfg.flips:
        grid = _rotation_grid(angles, fx, fy, s, dev).to(both.dtype)
        both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    both = color_jitter(both, cfg, generator)

    if cfg.rot90:
        k = torch.randint(0, 4, (n,), generator=host_generator).tolist()
        second = both[n:]
        both = torch.cat([both[:n], torch.stack([torch.rot90(second[i], k[i], dims=(1, 2)) for i in range(n)])])
    else:
        k = [0] * n

    lam = None
    if cfg.mixup is not None:
        lam = _uniform(b, cfg.mixup[0], cfg.mixup[1], generator, dev)
        mix = lam.view(b, 1, 1, 1) * both[:b] + (1 - lam.view(b, 1, 1, 1)) * both[b:n]
        both = torch.cat([both, mix])
    return Views(images=both, rot90_k=k, mix_lambda=lam)


def undo_rot90(x: torch.Tensor, k: list) -> torch.Tensor:
    """Turn each ``x[i]`` back by ``-k[i]`` quarter turns.

    Applied to the patch-feature grid of the second views, this makes grid cell g of view 2
    match cell g of view 1 (pooling commutes with quarter turns when the grid divides the crop).

    Parameters
    ----------
    x : Tensor of shape (N, C, g, g)
    k : list of int, length N
        Quarter turns that were applied (``Views.rot90_k``).

    Returns
    -------
    Tensor of shape (N, C, g, g)

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.views import undo_rot90
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> bool(torch.equal(undo_rot90(torch.rot90(x, 1, dims=(2, 3)), [1]), x))
    True
    """
    if not any(k):
        return x
    return torch.stack([torch.rot90(x[i], -ki, dims=(1, 2)) for i, ki in enumerate(k)])
