"""A deliberately naive implementation of the published LD objective, the benchmarks' baseline.

It follows the formulation as published and as the authors' code computes it: float32,
contiguous (NCHW) tensors, the clustering head and region features computed for every image
of the batch (the mixup images' regions are computed, then discarded), and region features by
broadcasting an ``N x K x D x H x W`` product before summing over pixels.
The loss value equals :func:`skuld.nn.ld_objective` on the same batch (tested), so any
difference in speed or memory comes from how it is computed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from skuld.nn.losses import (
    area_balance_loss,
    binary_entropy,
    hypersphere_mixup_targets,
    instance_spreading_loss,
    patch_features,
)
from skuld.nn.views import undo_rot90


def naive_region_discrimination(a, z, tau):
    r = F.normalize((a[:, :, None] * z[:, None]).sum(dim=(-1, -2)), dim=2, eps=1e-12)  # N x K x D x H x W
    c = F.normalize(r.mean(0), dim=1, eps=1e-12)
    logits = (r[:, :, None, :] * c[None, None]).sum(-1) / tau
    k = r.shape[1]
    target = torch.arange(k, device=r.device).expand(r.shape[0], k)
    return F.cross_entropy(logits.reshape(-1, k), target.reshape(-1))


def naive_objective(model, x, views, stage, cfg):
    b = views.n_items
    n_pair = 4 * b
    z, a = model(x)  # both heads on all 5B images
    u = patch_features(z, cfg.patch_grid, cfg.patch_sigma)
    u1, u2 = u[: 2 * b], undo_rot90(u[2 * b : n_pair], views.rot90_k)
    d = u.shape[1]

    def flat(t):
        return t.permute(0, 2, 3, 1).reshape(-1, d)

    loss = instance_spreading_loss(flat(u1), flat(u2), cfg.tau_patch)
    if views.mix_lambda is not None:
        targets = hypersphere_mixup_targets(u1[:b], u1[b:], views.mix_lambda)
        loss = loss + instance_spreading_loss(flat(u[n_pair:]), flat(targets), cfg.tau_patch)
    if stage == "ld":
        _ = naive_region_discrimination(a[n_pair:], z[n_pair:], cfg.tau_region)  # mixup regions, unused
        a, z = a[:n_pair], z[:n_pair]
        loss = loss + cfg.region_weight * naive_region_discrimination(a, z, cfg.tau_region)
        loss = loss + cfg.entropy_weight * binary_entropy(a)
        if cfg.area_weight:
            loss = loss + cfg.area_weight * area_balance_loss(a)
    return loss
