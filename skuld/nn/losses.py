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
    """Pixel weights inside one patch cell, shape ``(cell, cell)``, summing to 1.

    ``sigma=None`` gives the flat average of the paper's patch discrimination. A float gives
    the "center-sensitive" Gaussian weighting centred on the cell, with standard deviation
    ``sigma * cell`` pixels, so that a patch feature is dominated by its centre.
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
    grid : int
        Patches per side (8 in the paper: 56 px patches at 448 px).
    sigma : float or None
        None for flat averaging, else Gaussian weighting (see :func:`patch_weights`).

    Returns
    -------
    u : Tensor of shape (N, D, grid, grid), float32, unit L2 norm along D.
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
    anchors, positives : Tensor of shape (M, D)
        Unit vectors; row m of ``anchors`` and row m of ``positives`` form a pair. Detach
        ``positives`` beforehand to make them fixed targets (hypersphere mixup).
    tau : float
        Temperature.

    Returns
    -------
    loss : scalar Tensor, float32, >= 0.
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

    ``u1``, ``u2``: ``(B, D, g, g)`` patch features of the two mixed images; ``lam``: ``(B,)``.
    Returns ``(B, D, g, g)`` unit vectors without gradient.
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
    z : Tensor of shape (N, D, H, W)

    Returns
    -------
    r : Tensor of shape (N, K, D), float32, unit norm along D.
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
    tau : float
        Temperature (0.2 in the paper).
    gather : callable, optional
        Concatenates region features ``(N, K, D)`` from every process (distributed training),
        so that centres and the loss are those of the global batch.

    Returns
    -------
    loss : scalar Tensor, float32, between ``log(1 + (K-1) e^{-2/tau})`` and ``log K + 2/tau``.
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
    """Mean binary entropy in bits of every element of ``a`` (values in [0, 1]); in [0, 1]."""
    a = a.float().clamp(1e-7, 1 - 1e-7)
    return -(a * torch.log2(a) + (1 - a) * torch.log2(1 - a)).mean()


def area_balance_loss(a: torch.Tensor, mean_over_processes=None) -> torch.Tensor:
    """Prior that every cluster covers about 1/K of the pixels of the batch.

    ``K * sum_k (mean area_k - 1/K)^2``: 0 for balanced clusters, at most ``K - 1`` when one
    cluster takes every pixel. ``a``: ``(N, K, H, W)`` summing to 1 along K.
    ``mean_over_processes`` (distributed training) turns local areas into global ones.
    """
    k = a.shape[1]
    area = a.float().mean(dim=(0, 2, 3))
    if mean_over_processes is not None:
        area = mean_over_processes(area)
    return k * ((area - 1.0 / k) ** 2).sum()


def region_loss_bounds(n_clusters: int, tau: float) -> tuple[float, float]:
    """Lower and upper bound of :func:`region_discrimination_loss` for unit vectors."""
    lo = math.log1p((n_clusters - 1) * math.exp(-2 / tau))
    hi = math.log(n_clusters) + 2 / tau
    return lo, hi
