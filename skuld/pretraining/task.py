"""Local Discrimination pretraining as a task of the training engine.

Each step draws ``batch_size`` items of two crops (two images) from the data loader, makes the
paper's views of them on the training device (:func:`skuld.nn.make_views`), and takes the
objective of the stage the schedule is in (:func:`skuld.nn.ld_objective`): patch
discrimination with mixup in the warm-up, region discrimination with the clustering branch
after it. The engine (:func:`skuld.engine.train`) does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed
from ..engine import Step, Task
from ..io import ImageCollection
from ..nn.network import SIZE_MULTIPLE, LDNet
from ..nn.objective import ObjectiveConfig, ld_objective
from ..nn.views import ViewConfig, make_views
from ..preprocessing import InputSpec
from .data import PairCropDataset, worker_init


@dataclass
class Schedule:
    """Patch discrimination for ``pd_steps`` steps, then Local Discrimination; Adam's learning
    rate halves every ``halve_every`` steps within each stage (the paper: 10k of 100k steps).

    Attributes
    ----------
    learning_rate : float
    pd_steps : int
    halve_every : int

    Examples
    --------
    >>> from skuld.pretraining import Schedule
    >>> s = Schedule.scaled(1e-3, max_iter=100, pd_fraction=0.2)
    >>> s.stage(19), s.stage(20), s.lr(0), s.lr(30)
    ('pd', 'ld', 0.001, 0.0005)
    """

    learning_rate: float
    pd_steps: int
    halve_every: int

    @classmethod
    def scaled(cls, learning_rate: float, max_iter: int, pd_fraction: float, n_halvings_span: int = 10) -> "Schedule":
        """The paper's schedule shrunk to ``max_iter`` steps: ``pd_fraction`` of them in the
        warm-up, and ``n_halvings_span`` halvings' worth of steps per ``max_iter``."""
        return cls(learning_rate, int(round(pd_fraction * max_iter)), max(1, int(round(max_iter / n_halvings_span))))

    def stage(self, step: int) -> str:
        return "pd" if step < self.pd_steps else "ld"

    def lr(self, step: int) -> float:
        in_stage = step if step < self.pd_steps else step - self.pd_steps
        return self.learning_rate * 0.5 ** (in_stage // self.halve_every)


@dataclass(frozen=True)
class PretrainingConfig:
    """What a pretraining step sees: batch, crops, views and the objective's settings.

    Attributes
    ----------
    batch_size : int
        Items per step (each two images, two views of each, one mixup image).
    crop_size : int
        Side of the square crops in working pixels.
    crop_scale : (float, float)
        Range of the fraction of the working image's area a crop covers.
    views : ViewConfig
    objective : ObjectiveConfig
    num_workers : int, default=0
        Data-loader processes.

    Examples
    --------
    >>> from skuld.nn import ObjectiveConfig, ViewConfig
    >>> from skuld.pretraining import PretrainingConfig
    >>> PretrainingConfig(4, 160, (0.9, 1.0), ViewConfig(), ObjectiveConfig()).batch_size
    4
    """

    batch_size: int
    crop_size: int
    crop_scale: tuple[float, float]
    views: ViewConfig
    objective: ObjectiveConfig
    num_workers: int = 0


def _pair(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    return lo, hi


def pretraining_config(*, batch_size: int, crop_size: int, crop_scale, flips: bool, rotation: float, rot90: bool,
                       view_rotation: float, color_jitter, grayscale_p: float, mixup, patch_grid: int, patch_sigma,
                       tau_patch: float, tau_region: float, region_weight: float, entropy_weight: float,
                       area_weight: float, num_workers: int = 0) -> PretrainingConfig:
    """A validated :class:`PretrainingConfig` from the flat settings of
    :class:`skuld.LocalDiscriminativeEncoder` (whose docstring describes each).

    Parameters
    ----------
    batch_size, crop_size : int
        ``crop_size`` a multiple of 16 and of ``patch_grid``.
    crop_scale : (float, float)
        ``0 < low <= high <= 1``.
    flips, rotation, rot90, view_rotation, grayscale_p
        The views' geometry and colour.
    color_jitter : (float, float, float, float)
        Brightness, contrast, saturation, hue: non-negative, hue at most 0.5.
    mixup : (float, float) or None
        A range within [0, 1].
    patch_grid, patch_sigma, tau_patch, tau_region, region_weight, entropy_weight, area_weight
        The objective's settings.
    num_workers : int, default=0

    Returns
    -------
    PretrainingConfig
        ``ValueError`` naming the setting that is out of its range.

    Examples
    --------
    >>> from skuld.pretraining import pretraining_config
    >>> cfg = pretraining_config(batch_size=2, crop_size=64, crop_scale=(0.9, 1.0), flips=True, rotation=0.0,
    ...                          rot90=False, view_rotation=2.0, color_jitter=(0.4, 0.4, 0.4, 0.02), grayscale_p=0.2,
    ...                          mixup=(0.2, 0.8), patch_grid=8, patch_sigma=None, tau_patch=0.1, tau_region=0.2,
    ...                          region_weight=10.0, entropy_weight=0.1, area_weight=0.0)
    >>> cfg.views.rot90, cfg.objective.patch_grid
    (False, 8)
    """
    if crop_size % SIZE_MULTIPLE:
        raise ValueError(f"crop_size must be a multiple of {SIZE_MULTIPLE}, got {crop_size}")
    if crop_size % patch_grid:
        raise ValueError(f"crop_size={crop_size} is not divisible by patch_grid={patch_grid}")
    lo, hi = _pair(crop_scale, "crop_scale")
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    if len(color_jitter) != 4 or any(v < 0 for v in color_jitter) or color_jitter[3] > 0.5:
        raise ValueError("color_jitter must be (brightness, contrast, saturation, hue) with non-negative values "
                         f"and hue <= 0.5, got {color_jitter}")
    if mixup is not None:
        m_lo, m_hi = _pair(mixup, "mixup")
        if not 0 <= m_lo <= m_hi <= 1:
            raise ValueError(f"mixup must be a range within [0, 1], got {mixup}")
        mixup = (m_lo, m_hi)
    b, c, s, h = (float(v) for v in color_jitter)
    views = ViewConfig(flips=flips, rotation=float(rotation), rot90=rot90, view_rotation=float(view_rotation),
                       brightness=b, contrast=c, saturation=s, hue=h, grayscale_p=float(grayscale_p), mixup=mixup)
    objective = ObjectiveConfig(patch_grid=patch_grid, patch_sigma=patch_sigma, tau_patch=tau_patch,
                                tau_region=tau_region, region_weight=region_weight, entropy_weight=entropy_weight,
                                area_weight=area_weight)
    return PretrainingConfig(batch_size, crop_size, (lo, hi), views, objective, num_workers)


class _TrainingForward(nn.Module):
    """The network's training forward as one ``forward`` call, which DistributedDataParallel
    hooks into: embeddings of every image and cluster maps of the first ``n_cluster`` (or none)."""

    def __init__(self, net: LDNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, n_cluster: int | None):
        trunk = self.net.trunk(x)
        z = self.net.embed(trunk)
        a = self.net.cluster(trunk[:n_cluster]) if n_cluster is not None else None
        return z, a


class LocalDiscriminationTask(Task):
    """The engine task of :class:`skuld.LocalDiscriminativeEncoder`.

    Parameters
    ----------
    images : ImageCollection
        The unlabelled images.
    config : PretrainingConfig
    schedule : Schedule
    spec : InputSpec
        Working resolution and normalisation of the network's input.
    channels_last : bool, default=True
        Memory format of the views fed to the network.
    seed : int, default=0
        Seeds the crops (sample i of the loader depends only on (seed, i)).

    Notes
    -----
    Global item j of step t is loader sample ``t * batch_size * world + j``; each process
    takes its ``batch_size`` of them, so the crops of a step depend only on the seed and the
    step, never on the number of workers or where a run resumed. The loss terms read
    ``outputs["clusters"]`` (cluster maps of the 4B non-mixup views, None in the warm-up) and
    ``outputs["views"]``.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skuld.engine import EngineConfig, TrainingState, train
    >>> from skuld.io import ImageCollection
    >>> from skuld.nn import LDNet, ObjectiveConfig, ViewConfig
    >>> from skuld.preprocessing import InputSpec
    >>> from skuld.pretraining import LocalDiscriminationTask, PretrainingConfig, Schedule
    >>> images = ImageCollection(np.random.default_rng(0).random((3, 48, 48), dtype=np.float32))
    >>> config = PretrainingConfig(1, 32, (0.9, 1.0), ViewConfig(rot90=False), ObjectiveConfig(patch_grid=4))
    >>> task = LocalDiscriminationTask(images, config, Schedule.scaled(1e-3, 2, 0.5),
    ...                                InputSpec.from_params(1, None), seed=0)
    >>> net = LDNet(in_channels=1, embedding_dim=8, n_clusters=4, width=0.25)
    >>> state = TrainingState(net, torch.optim.Adam(net.parameters()))
    >>> train(task, state, 2, EngineConfig(device=torch.device("cpu")))
    >>> [h["stage"] for h in state.history]
    ['pd', 'ld']
    """

    kind = "pretraining"
    distributed = True

    def __init__(self, images: ImageCollection, config: PretrainingConfig, schedule: Schedule, spec: InputSpec,
                 channels_last: bool = True, seed: int = 0):
        super().__init__(schedule.learning_rate)
        self.images, self.config, self.schedule, self.spec = images, config, schedule, spec
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.seed = seed
        self._forward = None

    def batches(self, start: int, stop: int, device: torch.device):
        cfg = self.config
        dataset = PairCropDataset(self.images, cfg.crop_size, self.spec.image_size, cfg.crop_scale, self.seed,
                                  length=2**62)
        b, world, rank = cfg.batch_size, distributed.world_size(), distributed.rank()
        sampler = range(start * b, stop * b) if world == 1 else [
            t * b * world + rank * b + j for t in range(start, stop) for j in range(b)
        ]
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=b, sampler=sampler, num_workers=cfg.num_workers,
            worker_init_fn=worker_init if cfg.num_workers else None, pin_memory=device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
            # The loader draws a base seed for its workers; from its own generator, not torch's
            # global one, so that fitting never changes the user's random stream.
            generator=torch.Generator().manual_seed(self.seed),
        )
        for pairs in loader:
            yield pairs.to(device, non_blocking=True)

    def stage(self, step: int) -> str:
        return self.schedule.stage(step)

    def lr(self, step: int) -> float:
        return self.schedule.lr(step)

    def prepare(self, model: LDNet, pairs: torch.Tensor, step: Step):
        views = make_views(pairs, self.config.views, step.generator, step.host_generator)
        return views, self.spec.normalize(views.images).contiguous(memory_format=self.memory_format)

    def loss(self, model: LDNet, inputs, step: Step):
        views, x = inputs
        outputs = {"views": views}
        loss, parts = ld_objective(model, x, views, step.stage, self.config.objective, forward=self._forward,
                                   outputs=outputs)
        return loss, parts, outputs

    def compile_targets(self, model: LDNet) -> list[nn.Module]:
        return model.parts()

    def distribute(self, model: LDNet, device: torch.device) -> None:
        # DistributedDataParallel averages gradients over processes during backward; unused
        # parameters (the clustering head in the warm-up) are allowed.
        self._forward = nn.parallel.DistributedDataParallel(
            _TrainingForward(model), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def state_dict(self) -> dict:
        return {"schedule": vars(self.schedule).copy()}

    def load_state_dict(self, state: dict) -> None:
        if "schedule" in state:
            self.schedule = Schedule(**state["schedule"])
