"""Losses of Local Discrimination, as plain functions on tensors.

Notation (see ``docs/method.md``): ``z`` pixel embeddings ``(N, D, H, W)`` with unit L2 norm
along D; ``a`` cluster maps ``(N, K, H, W)`` summing to 1 along K; ``u`` patch features
``(M, D)`` with unit norm. All losses are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_EPS = 1e-12


def patch_weights(cell: int, sigma: float | None, device=None) -> torch.Tensor:
    """Pixel weights inside one square patch cell, summing to 1.

    Parameters
    ----------
    cell : int
        Side of the cell in pixels, >= 1.
    sigma : float or None
        None gives the flat average of the paper's patch discrimination. A float gives the
        "center-sensitive" Gaussian weighting centred on the cell, with standard deviation
        ``sigma * cell`` pixels, so that a patch feature is dominated by its centre.
    device : torch.device or str, optional

    Returns
    -------
    Tensor of shape (cell, cell), float32

    Examples
    --------
    >>> from skuld.nn.losses import patch_weights
    >>> patch_weights(2, None)
    tensor([[0.2500, 0.2500],
            [0.2500, 0.2500]])
    >>> w = patch_weights(5, 0.25)
    >>> bool(w[2, 2] == w.max()), round(float(w.sum()), 6)
    (True, 1.0)
    """
    if cell < 1:
        raise ValueError(f"patch cell size must be >= 1 pixel, got {cell}")
    if sigma is None:
        w = torch.ones(cell, cell, device=device)
    else:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        r = torch.arange(cell, device=device, dtype=torch.float32) - (cell - 1) / 2
        g = torch.exp(-0.5 * (r / (sigma * cell)) ** 2)
        w = g[:, None] * g[None, :]
    return w / w.sum()


def patch_features(z: torch.Tensor, grid: int = 8, sigma: float | None = None) -> torch.Tensor:
    """Pool pixel embeddings into a ``grid x grid`` map of unit patch features.

    Parameters
    ----------
    z : Tensor of shape (N, D, H, W)
        Pixel embeddings; H and W must be multiples of ``grid``.
    grid : int, default 8
        Patches per side (8 in the paper: 56 px patches at 448 px).
    sigma : float or None, default None
        None for flat averaging, else Gaussian weighting (see :func:`patch_weights`).

    Returns
    -------
    u : Tensor of shape (N, D, grid, grid), float32
        Unit L2 norm along D.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import patch_features
    >>> z = torch.nn.functional.normalize(torch.randn(2, 32, 64, 64), dim=1)
    >>> u = patch_features(z, grid=8, sigma=0.25)
    >>> u.shape, bool(torch.allclose(u.norm(dim=1), torch.ones(2, 8, 8)))
    (torch.Size([2, 32, 8, 8]), True)
    """
    n, d, h, w = z.shape
    if h % grid or w % grid:
        raise ValueError(f"embedding map {h} x {w} is not divisible into a {grid} x {grid} grid")
    ch, cw = h // grid, w // grid
    z = z.float()
    if sigma is None and ch == cw:
        pooled = F.avg_pool2d(z, ch)
    else:
        wts = patch_weights(ch, sigma, z.device) if ch == cw else _rect_weights(ch, cw, sigma, z.device)
        pooled = torch.einsum("ndahbw,hw->ndab", z.reshape(n, d, grid, ch, grid, cw), wts)
    return F.normalize(pooled, dim=1)


def _rect_weights(ch: int, cw: int, sigma: float | None, device) -> torch.Tensor:
    def axis(c):
        if sigma is None:
            return torch.ones(c, device=device)
        r = torch.arange(c, device=device, dtype=torch.float32) - (c - 1) / 2
        return torch.exp(-0.5 * (r / (sigma * c)) ** 2)

    w = axis(ch)[:, None] * axis(cw)[None, :]
    return w / w.sum()


def instance_spreading_loss(anchors: torch.Tensor, positives: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """The invariant-and-spreading criterion of Ye et al. (CVPR 2019) over a set of pairs.

    The set is ``V = [anchors; positives]`` (2M unit vectors); vector ``i``'s positive is its
    pair, every other vector of the set is a negative. With ``s_ij = exp(v_i . v_j / tau)``,
    ``Z_i = sum_{j != i} s_ij``, ``P_i = s_{i,pos(i)} / Z_i`` and ``Q_ij = s_ij / Z_i``::

        L = -(1 / 2M) sum_i [ log P_i + sum_{j not in {i, pos(i)}} log(1 - Q_ij) ]

    Parameters
    ----------
    anchors, positives : Tensor of shape (M, D), M >= 2
        Unit vectors; row m of ``anchors`` and row m of ``positives`` form a pair. Detach
        ``positives`` beforehand to make them fixed targets (hypersphere mixup).
    tau : float, default 0.1
        Temperature.

    Returns
    -------
    loss : scalar Tensor, float32, >= 0

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import instance_spreading_loss
    >>> v = torch.eye(4)                                    # 4 orthogonal unit vectors
    >>> matched = instance_spreading_loss(v, v)             # every pair identical
    >>> shuffled = instance_spreading_loss(v, v.roll(1, dims=0))
    >>> bool(matched < 0.01 < shuffled)
    True
    """
    if anchors.shape != positives.shape or anchors.ndim != 2:
        raise ValueError(
            f"anchors and positives must both be (M, D), got {tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    m = anchors.shape[0]
    if m < 2:
        raise ValueError("the criterion needs at least 2 pairs (negatives come from the other pairs)")
    v = torch.cat([anchors, positives]).float()
    logits = v @ v.T / tau
    eye = torch.eye(2 * m, dtype=torch.bool, device=v.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    log_q = logits - log_z  # log Q_ij (log P_i at the positive); -inf on the diagonal
    pos = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(v.device)
    log_p = log_q.gather(1, pos[:, None]).squeeze(1)
    neg_mask = ~eye
    neg_mask[torch.arange(2 * m, device=v.device), pos] = False
    # log(1 - Q) = log1p(-exp(log Q)); Q < 1 always holds since the positive has mass too.
    q = log_q.exp().clamp(max=1 - 1e-7)
    log_not_q = torch.log1p(-q).masked_fill(~neg_mask, 0.0)
    return -(log_p + log_not_q.sum(dim=1)).mean()


def hypersphere_mixup_targets(u1: torch.Tensor, u2: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Detached targets of hypersphere mixup: ``normalise(lam * u1 + (1 - lam) * u2)``.

    Parameters
    ----------
    u1, u2 : Tensor of shape (B, D, g, g)
        Unit patch features of the two mixed images.
    lam : Tensor of shape (B,)
        Mixing weight of ``u1`` per image, in [0, 1].

    Returns
    -------
    Tensor of shape (B, D, g, g)
        Unit vectors along D, without gradient.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import hypersphere_mixup_targets
    >>> u1 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    >>> u2 = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    >>> hypersphere_mixup_targets(u1, u2, torch.tensor([0.5])).flatten()
    tensor([0.7071, 0.7071])
    """
    lam = lam.reshape(-1, 1, 1, 1).to(u1.dtype)
    return F.normalize(lam * u1 + (1 - lam) * u2, dim=1).detach()


def region_features(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Unit region features ``r_{n,k} = normalise(sum_p a_n(k, p) z_n(p))``.

    Computed as one contraction over pixels; the ``(N, K, D, H, W)`` broadcast of the
    published formulation is never formed.

    Parameters
    ----------
    a : Tensor of shape (N, K, H, W)
        Cluster maps.
    z : Tensor of shape (N, D, H, W)
        Pixel embeddings.

    Returns
    -------
    r : Tensor of shape (N, K, D), float32
        Unit norm along D.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import region_features
    >>> a = torch.softmax(torch.randn(2, 4, 16, 16), dim=1)
    >>> z = torch.nn.functional.normalize(torch.randn(2, 8, 16, 16), dim=1)
    >>> region_features(a, z).shape
    torch.Size([2, 4, 8])
    """
    if a.shape[0] != z.shape[0] or a.shape[2:] != z.shape[2:]:
        raise ValueError(f"cluster maps {tuple(a.shape)} and embeddings {tuple(z.shape)} do not match")
    n, k, h, w = a.shape
    r = torch.bmm(a.float().reshape(n, k, h * w), z.float().reshape(n, -1, h * w).transpose(1, 2))
    return F.normalize(r, dim=2, eps=_EPS)


def region_discrimination_loss(a: torch.Tensor, z: torch.Tensor, tau: float = 0.2, gather=None) -> torch.Tensor:
    """Region discrimination: each image's region k must be closest to the batch centre k.

    Centres ``c_k = normalise(mean_n r_{n,k})`` are computed from the batch itself (no memory
    bank) and gradients flow through them. The loss is the cross-entropy of
    ``softmax_j(r_{n,k} . c_j / tau)`` at ``j = k``, averaged over n and k.

    Parameters
    ----------
    a : Tensor of shape (N, K, H, W)
        Cluster maps (sum to 1 along K).
    z : Tensor of shape (N, D, H, W)
        Unit pixel embeddings.
    tau : float, default 0.2
        Temperature (0.2 in the paper).
    gather : callable, optional
        Concatenates region features ``(N, K, D)`` from every process (distributed training),
        so that centres and the loss are those of the global batch.

    Returns
    -------
    loss : scalar Tensor, float32
        Between ``log(1 + (K-1) e^{-2/tau})`` and ``log K + 2/tau`` (:func:`region_loss_bounds`).

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import region_discrimination_loss, region_loss_bounds
    >>> a = torch.softmax(torch.randn(2, 4, 16, 16), dim=1)
    >>> z = torch.nn.functional.normalize(torch.randn(2, 8, 16, 16), dim=1)
    >>> low, high = region_loss_bounds(4, 0.2)
    >>> low <= float(region_discrimination_loss(a, z)) <= high
    True
    """
    r = region_features(a, z)
    if gather is not None:
        r = gather(r)
    c = F.normalize(r.mean(dim=0), dim=1, eps=_EPS)  # (K, D)
    logits = torch.einsum("nkd,jd->nkj", r, c) / tau
    k = r.shape[1]
    target = torch.arange(k, device=r.device).expand(r.shape[0], k)
    return F.cross_entropy(logits.reshape(-1, k), target.reshape(-1))


def binary_entropy(a: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy, in bits, of every element of ``a``.

    Parameters
    ----------
    a : Tensor of any shape
        Values in [0, 1] (clamped away from 0 and 1 for a finite log).

    Returns
    -------
    scalar Tensor, float32, in [0, 1]
        0 for hard (0/1) values, 1 when every value is 0.5.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import binary_entropy
    >>> round(float(binary_entropy(torch.tensor([0.5, 0.5]))), 4), round(float(binary_entropy(torch.tensor([0.0, 1.0]))), 4)
    (1.0, 0.0)
    """
    a = a.float().clamp(1e-7, 1 - 1e-7)
    return -(a * torch.log2(a) + (1 - a) * torch.log2(1 - a)).mean()


def area_balance_loss(a: torch.Tensor, mean_over_processes=None) -> torch.Tensor:
    """Prior that every cluster covers about 1/K of the pixels of the batch.

    ``K * sum_k (mean area_k - 1/K)^2``: 0 for balanced clusters, at most ``K - 1`` when one
    cluster takes every pixel.

    Parameters
    ----------
    a : Tensor of shape (N, K, H, W)
        Cluster maps summing to 1 along K.
    mean_over_processes : callable, optional
        Distributed training: turns the local areas ``(K,)`` into global ones.

    Returns
    -------
    scalar Tensor, float32, in [0, K - 1]

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.losses import area_balance_loss
    >>> balanced = torch.full((1, 4, 8, 8), 0.25)
    >>> one_takes_all = torch.zeros(1, 4, 8, 8); one_takes_all[:, 0] = 1
    >>> float(area_balance_loss(balanced)), float(area_balance_loss(one_takes_all))
    (0.0, 3.0)
    """
    k = a.shape[1]
    area = a.float().mean(dim=(0, 2, 3))
    if mean_over_processes is not None:
        area = mean_over_processes(area)
    return k * ((area - 1.0 / k) ** 2).sum()


def region_loss_bounds(n_clusters: int, tau: float) -> tuple[float, float]:
    """Lower and upper bound of :func:`region_discrimination_loss` for unit vectors.

    Parameters
    ----------
    n_clusters : int
        K.
    tau : float
        Temperature.

    Returns
    -------
    (float, float)
        ``(log(1 + (K-1) e^{-2/tau}), log K + 2/tau)``.

    Examples
    --------
    >>> from skuld.nn.losses import region_loss_bounds
    >>> [round(b, 4) for b in region_loss_bounds(16, 0.2)]
    [0.0007, 12.7726]
    """
    lo = math.log1p((n_clusters - 1) * math.exp(-2 / tau))
    hi = math.log(n_clusters) + 2 / tau
    return lo, hi
