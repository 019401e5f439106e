"""The training loop: steps, schedule, devices, mixed precision, checkpoints and progress.

It knows nothing of scikit-learn; :class:`skuld.LocalDiscriminativeEncoder` drives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import distributed
from .data import PairCropDataset, worker_init
from .io import ImageCollection, atomic_write
from .nn.network import LDNet
from .nn.objective import ObjectiveConfig, ld_objective
from .nn.views import ViewConfig, make_views

CHECKPOINT_NAME = "skuld-checkpoint.pt"
CHECKPOINT_FORMAT = 1


def resolve_device(device: str | torch.device, fall_back: bool = False) -> torch.device:
    """"auto" -> CUDA when available, else CPU.

    "cuda" without a GPU is an error that says so, or, with ``fall_back`` (inference with a
    model fitted on a GPU, loaded on a machine without one), a warning and the CPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        if fall_back:
            warnings.warn(f"device={str(device)!r} but torch sees no CUDA GPU here: running on the CPU", RuntimeWarning,
                          stacklevel=3)
            return torch.device("cpu")
        raise RuntimeError(f"device={str(device)!r} was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return dev


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, None meaning full float32.

    "auto" is bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, or a
    CPU with AVX512-BF16/AMX, where it is about 1.6x faster and takes a third less memory),
    float32 elsewhere. Losses are always computed in float32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def intensity_normalizer(normalization, n_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: "auto" is ImageNet statistics for RGB and 0.5 / 0.5 for gray."""
    if normalization == "auto":
        normalization = "imagenet" if n_channels == 3 else "half"
    if normalization == "imagenet":
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    elif normalization == "half":
        mean, std = (0.5,) * 3, (0.5,) * 3
    else:
        mean, std = normalization
        mean, std = tuple(np.broadcast_to(mean, 3)), tuple(np.broadcast_to(std, 3))
    return tuple(float(m) for m in mean[:n_channels]), tuple(float(s) for s in std[:n_channels])


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class Schedule:
    """PD warm-up for ``pd_steps`` steps, then LD; Adam's learning rate halves every
    ``halve_every`` steps within each stage (the paper: 10k of 100k steps)."""

    learning_rate: float
    pd_steps: int
    halve_every: int

    @classmethod
    def scaled(cls, learning_rate: float, max_iter: int, pd_fraction: float, n_halvings_span: int = 10):
        return cls(learning_rate, int(round(pd_fraction * max_iter)), max(1, int(round(max_iter / n_halvings_span))))

    def stage(self, step: int) -> str:
        return "pd" if step < self.pd_steps else "ld"

    def lr(self, step: int) -> float:
        in_stage = step if step < self.pd_steps else step - self.pd_steps
        return self.learning_rate * 0.5 ** (in_stage // self.halve_every)


@dataclass
class TrainConfig:
    batch_size: int
    crop_size: int
    image_size: int | None
    crop_scale: tuple[float, float]
    views: ViewConfig
    objective: ObjectiveConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int
    seed: int
    checkpoint_path: str | None = None
    checkpoint_every: int = 500
    verbose: int = 0
    report_every: int = 50


@dataclass
class TrainState:
    """Everything a checkpoint holds; the estimator keeps one between calls."""

    model: LDNet
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    step: int = 0
    history: list[dict] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None


def step_generators(seed: int, step: int, device: torch.device, rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """Generators of one step: the views of step t depend only on (seed, t, process rank)."""
    value = (seed * 1_000_003 + step + rank * 0x9E3779B97F4A7C) % (2**63 - 1)
    host = torch.Generator().manual_seed(value)
    if device.type == "cpu":
        return host, torch.Generator().manual_seed(value ^ 0x5DEECE66D)
    return torch.Generator(device=device).manual_seed(value), host


def save_checkpoint(path: str, state: TrainState, extra: dict) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": state.model.config(),
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": to_cpu(state.optimizer.state_dict()),
        "schedule": vars(state.schedule),
        "step": state.step,
        "history": state.history,
        **extra,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a skuld checkpoint of format {CHECKPOINT_FORMAT}")
    return payload


def to_cpu(obj):
    """Tensors inside nested dicts and lists, moved to the CPU (device-independent state)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj


class _Reporter:
    """Loss history and the ``verbose`` progress lines; reads device values only every few steps."""

    def __init__(self, state: TrainState, cfg: TrainConfig, stop: int):
        self.state, self.cfg, self.stop = state, cfg, stop
        self.pending: list[tuple[int, str, float, dict]] = []
        self.t0 = time.perf_counter()
        self.start = state.step

    def add(self, step: int, stage: str, lr: float, loss: torch.Tensor, parts: dict) -> None:
        self.pending.append((step, stage, lr, {"loss": loss.detach(), **parts}))

    def flush(self) -> None:
        if not self.pending:
            return
        keys = sorted({k for *_, p in self.pending for k in p})
        # One device->host copy for all pending values.
        values = torch.stack([torch.stack([p.get(k, torch.tensor(float("nan"), device=p["loss"].device)) for k in keys])
                              for *_, p in self.pending]).float().cpu().numpy()
        for (step, stage, lr, _), row in zip(self.pending, values):
            rec = {"step": step, "stage": stage, "lr": lr}
            rec.update({k: float(v) for k, v in zip(keys, row) if np.isfinite(v)})
            self.state.history.append(rec)
        self.pending.clear()
        if self.cfg.verbose:
            last = self.state.history[-1]
            done = last["step"] + 1
            rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            terms = " ".join(f"{k} {last[k]:.4f}" for k in ("patch", "mixup", "region", "entropy", "area", "shape", "discriminator")
                             if k in last)
            print(
                f"[skuld] step {done}/{self.stop} [{last['stage']}] loss {last['loss']:.4f} ({terms}) "
                f"lr {last['lr']:.2e} {rate:.2f} steps/s",
                file=sys.stderr,
                flush=True,
            )


class _TrainingForward(torch.nn.Module):
    """The network's training forward as one ``forward`` call, which DDP needs to hook into:
    embeddings of every image and cluster maps of the first ``n_cluster`` (or none)."""

    def __init__(self, net: LDNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, n_cluster: int | None):
        trunk = self.net.trunk(x)
        z = self.net.embed(trunk)
        a = self.net.cluster(trunk[:n_cluster]) if n_cluster is not None else None
        return z, a


def run_steps(
    state: TrainState,
    images: ImageCollection,
    cfg: TrainConfig,
    stop: int,
    on_step_begin: Callable[[int], None] | None = None,
    on_step_end: Callable[[int, Callable[[], dict]], bool] | None = None,
    checkpoint_extra: Callable[[], dict] | None = None,
    adversary=None,
) -> None:
    """Train ``state`` from ``state.step`` up to ``stop`` steps (exclusive).

    ``on_step_end(step, last_losses)`` may return True to stop early. On any exception,
    Ctrl-C included, the last completed step is checkpointed (when a checkpoint path is set)
    before the exception propagates: no finished step is lost.

    ``adversary`` (a :class:`skuld.nn.shape_prior.ShapeAdversary`, single process only) adds
    its shape loss on cluster 0 in the LD stage and updates its discriminator after each
    LD step.
    """
    model = state.model
    dev = cfg.device
    dataset = PairCropDataset(images, cfg.crop_size, cfg.image_size, cfg.crop_scale, cfg.seed, length=2**62)
    b = cfg.batch_size
    world, rank = distributed.world_size(), distributed.rank()
    # Global item j of step t is sample t * b * world + j; this process takes its b of them.
    sampler = range(state.step * b, stop * b) if world == 1 else [
        t * b * world + rank * b + j for t in range(state.step, stop) for j in range(b)
    ]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=b,
        sampler=sampler,
        num_workers=cfg.num_workers,
        worker_init_fn=worker_init if cfg.num_workers else None,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers else None,
        # The loader draws a base seed for its workers; from its own generator, not torch's
        # global one, so that fitting never changes the user's random stream.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    forward = None
    if world > 1:
        # DistributedDataParallel averages gradients over processes during backward; unused
        # parameters (the clustering head in the warm-up) are allowed.
        forward = torch.nn.parallel.DistributedDataParallel(
            _TrainingForward(model), device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True,
        )
    is_main = rank == 0
    reporter = _Reporter(state, cfg if is_main else dataclasses.replace(cfg, verbose=0), stop)
    extra = checkpoint_extra or (lambda: {})
    model.train()
    # Training crops all have one size: let cuDNN pick its fastest kernels once.
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or cudnn_benchmark
    buffers, step = None, state.step
    try:
        for pairs in loader:
            step = state.step
            buffers = {k: v.clone() for k, v in model.named_buffers()}  # batch-norm statistics: small
            if on_step_begin is not None:
                on_step_begin(step)
            stage, lr = state.schedule.stage(step), state.schedule.lr(step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            gen, host_gen = step_generators(cfg.seed, step, dev, rank)
            pairs = pairs.to(dev, non_blocking=True)
            views = make_views(pairs, cfg.views, gen, host_gen)
            x = normalize(views.images, cfg.mean, cfg.std).contiguous(memory_format=memory_format)
            shape_loss = None
            if adversary is not None and stage == "ld":
                shape_loss = functools.partial(adversary.generator_loss, images=views.images[: 4 * views.n_items])
            with autocast(dev, cfg.amp_dtype):
                loss, parts = ld_objective(model, x, views, stage, cfg.objective, forward=forward,
                                           shape_loss=shape_loss)
            state.optimizer.zero_grad(set_to_none=True)
            if state.scaler is not None:
                state.scaler.scale(loss).backward()
            else:
                loss.backward()
            if shape_loss is not None:
                # Before the network's update: an interruption here leaves both at the last step.
                parts["discriminator"] = adversary.discriminator_step(host_gen)
            if state.scaler is not None:
                state.scaler.step(state.optimizer)
                state.scaler.update()
            else:
                state.optimizer.step()
            state.step = step + 1
            reporter.add(step, stage, lr, loss, parts)
            last_step = state.step == stop
            if len(reporter.pending) >= cfg.report_every or last_step:
                reporter.flush()
            if is_main and cfg.checkpoint_path and (state.step % cfg.checkpoint_every == 0 or last_step):
                reporter.flush()
                save_checkpoint(cfg.checkpoint_path, state, extra())
            if on_step_end is not None:
                def last_losses():
                    reporter.flush()
                    return dict(state.history[-1])
                if on_step_end(step, last_losses):
                    break
    except BaseException:
        if buffers is not None and step == state.step:
            # The failed step's forward already moved the batch-norm statistics: undo that, so
            # the checkpoint is exactly the last completed step.
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
        reporter.pending = [p for p in reporter.pending if p[0] < state.step]
        reporter.flush()
        if is_main and cfg.checkpoint_path and state.step > 0:
            save_checkpoint(cfg.checkpoint_path, state, extra())
            if cfg.verbose:
                print(f"[skuld] interrupted at step {state.step}: checkpoint kept in {cfg.checkpoint_path}",
                      file=sys.stderr, flush=True)
        raise
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        reporter.flush()
        model.eval()
