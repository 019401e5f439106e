"""The full Local Discrimination objective of one batch of views: which loss sees which images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import gather_with_grad, global_mean, world_size
from .losses import (
    area_balance_loss,
    binary_entropy,
    hypersphere_mixup_targets,
    instance_spreading_loss,
    patch_features,
    region_discrimination_loss,
)
from .network import LDNet
from .views import Views, undo_rot90


@dataclass(frozen=True)
class ObjectiveConfig:
    """Weights and settings of the objective (paper values as defaults).

    ``patch_sigma=None`` pools patches by flat averaging; a float switches to the
    center-sensitive Gaussian pooling (standard deviation ``patch_sigma`` x patch size).

    Attributes
    ----------
    patch_grid : int
        Patches per side of a crop.
    patch_sigma : float or None
    tau_patch, tau_region : float
        Temperatures of patch and region discrimination.
    region_weight, entropy_weight, area_weight : float
        Weights of the LD stage's terms.

    Examples
    --------
    >>> from skuld.nn import ObjectiveConfig
    >>> ObjectiveConfig(patch_grid=4).region_weight
    10.0
    """

    patch_grid: int = 8
    patch_sigma: float | None = None
    tau_patch: float = 0.1
    tau_region: float = 0.2
    region_weight: float = 10.0
    entropy_weight: float = 0.1
    area_weight: float = 0.0


def ld_objective(
    model: LDNet, x: torch.Tensor, views: Views, stage: str, cfg: ObjectiveConfig, forward=None, shape_loss=None,
    outputs: dict | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch.

    Parameters
    ----------
    model : LDNet
    x : Tensor of shape (5B or 4B, C, S, S)
        ``views.images`` after intensity normalisation (and possibly channels-last).
    views : Views
        Geometry of the batch (quarter turns, mixup weights).
    stage : {"pd", "ld"}
        "pd": patch discrimination + mixup (warm-up); "ld": adds region discrimination,
        entropy and the optional area prior.
    cfg : ObjectiveConfig
    forward : callable, optional
        ``forward(x, n_cluster) -> (z, a)`` to use instead of the model's own methods (the
        DistributedDataParallel wrapper in multi-process training).
    shape_loss : callable, optional
        ``shape_loss(a0) -> scalar`` for the cluster-0 maps ``a0`` (4B, 1, S, S) of the
        non-mixup images, added in the LD stage (the adversarial shape prior of
        :class:`skuld.ShapeGuidedSegmenter`).
    outputs : dict, optional
        Filled with what the network produced, for loss terms computed outside (see
        :class:`skuld.engine.LossTerm`): ``"embeddings"`` (5B or 4B, D, S, S), ``"clusters"``
        (4B, K, S, S) in the LD stage, None in the PD stage.

    Returns
    -------
    loss : scalar Tensor (float32)
    parts : dict of detached scalar Tensors, one per term (kept on the device: reading them
        forces a synchronisation, so callers do it only when they report).

    Examples
    --------
    >>> import torch
    >>> from skuld.nn import LDNet, ObjectiveConfig, ViewConfig, ld_objective, make_views
    >>> views = make_views(torch.rand(2, 2, 1, 32, 32), ViewConfig(rot90=False))     # 2 items of 2 crops
    >>> loss, parts = ld_objective(LDNet(1, 8, 4, width=0.25), views.images * 2 - 1, views, "ld",
    ...                            ObjectiveConfig(patch_grid=4))
    >>> sorted(parts), loss.dtype
    (['entropy', 'mixup', 'patch', 'region'], torch.float32)
    """
    b = views.n_items
    n_pair = 4 * b  # two views of two images per item; the rest are mixup images
    if stage not in ("pd", "ld"):
        raise ValueError(f"stage must be 'pd' or 'ld', got {stage!r}")
    # The clustering head only runs on the non-mixup images: their region features are the
    # only ones any loss uses.
    n_cluster = n_pair if stage == "ld" else None
    if forward is not None:
        z, a = forward(x, n_cluster)
    else:
        trunk = model.trunk(x)
        z = model.embed(trunk)
        a = model.cluster(trunk[:n_cluster]) if n_cluster is not None else None
    if outputs is not None:
        outputs.update(embeddings=z, clusters=a)
    # The heads' outputs are float32; keep autocast from casting the losses' matrix
    # products back to half precision.
    with torch.autocast(x.device.type, enabled=False):
        return _losses(z, a, views, cfg, shape_loss)


def _losses(z, a, views, cfg, shape_loss=None):
    b = views.n_items
    n_pair = 4 * b
    u = patch_features(z, cfg.patch_grid, cfg.patch_sigma)  # (n, D, g, g)
    u1, u2 = u[: 2 * b], undo_rot90(u[2 * b : n_pair], views.rot90_k)
    d = u.shape[1]

    def flat(t):
        return t.permute(0, 2, 3, 1).reshape(-1, d)

    # Distributed: patches and regions of every process enter the losses (global batch);
    # a no-op in a single process.
    gather = gather_with_grad if world_size() > 1 else None
    g = gather or (lambda t: t)
    parts: dict[str, torch.Tensor] = {}
    loss = parts["patch"] = instance_spreading_loss(g(flat(u1)), g(flat(u2)), cfg.tau_patch)
    if views.mix_lambda is not None:
        targets = hypersphere_mixup_targets(u1[:b], u1[b:], views.mix_lambda)
        parts["mixup"] = instance_spreading_loss(g(flat(u[n_pair:])), g(flat(targets)), cfg.tau_patch)
        loss = loss + parts["mixup"]
    if a is not None:
        parts["region"] = region_discrimination_loss(a, z[:n_pair], cfg.tau_region, gather=gather)
        parts["entropy"] = binary_entropy(a)  # a mean per pixel: averaging over processes is exact
        loss = loss + cfg.region_weight * parts["region"] + cfg.entropy_weight * parts["entropy"]
        if cfg.area_weight:
            parts["area"] = area_balance_loss(a, global_mean if gather else None)
            loss = loss + cfg.area_weight * parts["area"]
        if shape_loss is not None:
            parts["shape"] = shape_loss(a[:, :1])
            loss = loss + parts["shape"]
    return loss, {k: v.detach() for k, v in parts.items()}
