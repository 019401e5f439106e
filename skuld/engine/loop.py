"""The one training loop: every network skuld trains goes through :func:`train`.

:func:`train` runs the steps of a :class:`Task` (what is learned: its batches, its loss, its
learning-rate schedule) on a :class:`TrainingState` (network, optimiser, step, history) and
owns everything around the loss: devices, autocast precision, gradient scaling, compilation,
synchronised BatchNorm across processes, extra loss terms with their own optimiser (an
adversary: :class:`LossTerm`), progress lines, callbacks that see every step and may stop
it, and checkpoints that a later run resumes exactly (:mod:`skuld.engine.checkpoint`).

A step, in order: batch-norm statistics are noted (an interrupted step restores them), the
callbacks' ``on_step_begin``, the learning rate set, the task's input prepared (in float32),
its loss under autocast plus every term's loss in float32, one backward, every term's own update (its second optimiser), the
network's optimiser step, the history, a checkpoint when due, the callbacks' ``on_step_end``.
On any exception, Ctrl-C included, the last completed step is checkpointed before the
exception propagates: no finished step is lost.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..nn.network import compiled_modules
from .checkpoint import Checkpointing, save_checkpoint
from .runtime import autocast, step_generators


@dataclass
class Step:
    """One training step as a task and its loss terms see it.

    Attributes
    ----------
    index : int
        0-based step number of the run.
    stage : str
        The task's stage at this step (``Task.stage``).
    lr : float
        The learning rate of this step.
    generator : torch.Generator
        Seeded by (seed, index, rank) on the task's ``random_device``.
    host_generator : torch.Generator
        A second, independent generator on the CPU.

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import Step
    >>> Step(0, "train", 1e-3, torch.Generator(), torch.Generator()).index
    0
    """

    index: int
    stage: str
    lr: float
    generator: torch.Generator
    host_generator: torch.Generator


@dataclass
class TrainingState:
    """What a run trains and where it stands: everything a checkpoint holds but the task's own state.

    Attributes
    ----------
    model : torch.nn.Module
    optimizer : torch.optim.Optimizer
    step : int
        Steps completed.
    history : list of dict
        One record per step: ``step``, ``stage``, ``lr``, ``loss`` and each loss part.
    scaler : torch.amp.GradScaler or None
        Gradient scaling (float16 autocast only).

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import TrainingState
    >>> net = torch.nn.Linear(2, 1)
    >>> TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.1)).step
    0
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None


class Task:
    """What the engine trains. Subclasses implement :meth:`batches` and :meth:`loss`.

    ``kind`` names the task in checkpoints (a checkpoint of another kind is never resumed).
    The defaults: one stage "train", a constant learning rate ``learning_rate``, the model in
    train mode, the whole model compiled when compilation is asked for, no state of its own.

    Parameters
    ----------
    learning_rate : float, default=1e-3
        The constant learning rate of the default :meth:`lr`.

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import EngineConfig, Task, TrainingState, train
    >>> class Regression(Task):
    ...     kind = "regression"
    ...     def batches(self, start, stop, device):
    ...         for t in range(start, stop):
    ...             g = torch.Generator().manual_seed(t)
    ...             x = torch.randn(16, 2, generator=g)
    ...             yield x, x @ torch.tensor([[2.0], [-1.0]])
    ...     def loss(self, model, batch, step):
    ...         x, y = batch
    ...         return torch.nn.functional.mse_loss(model(x), y), {}, {}
    >>> net = torch.nn.Linear(2, 1)
    >>> state = TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.1))
    >>> train(Regression(learning_rate=0.1), state, 200, EngineConfig(device=torch.device("cpu")))
    >>> state.step, round(state.history[-1]["loss"], 4)
    (200, 0.0)
    """

    kind = "task"
    #: Whether the task trains one model across processes (``torch.distributed``): its batches
    #: then differ by rank, BatchNorm is synchronised and :meth:`distribute` wraps the forward
    #: in DistributedDataParallel. Other tasks train the same model in every process.
    distributed = False
    #: Whether every step's input has one size (then cuDNN may pick its kernels once).
    same_size_inputs = True

    def __init__(self, learning_rate: float = 1e-3):
        self.learning_rate = learning_rate

    def random_device(self, device: torch.device) -> torch.device:
        """Device of the step's first generator (default: the training device)."""
        return device

    def batches(self, start: int, stop: int, device: torch.device) -> Iterator:
        """The batches of steps ``start`` to ``stop - 1``, in order; each depends only on its step."""
        raise NotImplementedError

    def stage(self, step: int) -> str:
        return "train"

    def lr(self, step: int) -> float:
        return self.learning_rate

    def begin_step(self, model: nn.Module, step: Step) -> None:
        """Set train/eval modes and what is frozen before the step's forward."""
        model.train()

    def prepare(self, model: nn.Module, batch, step: Step):
        """The step's input from its batch (views, crops, augmentations), computed outside
        autocast so that it is the same at every precision; default: the batch itself."""
        return batch

    def loss(self, model: nn.Module, inputs, step: Step):
        """``(loss, parts, outputs)`` of the prepared ``inputs``, under the run's autocast: the
        scalar loss (computed in float32), a dict of detached scalar parts for the history,
        and a dict of outputs the loss terms read (cluster maps, views, ...)."""
        raise NotImplementedError

    def compile_targets(self, model: nn.Module) -> list[nn.Module]:
        """The modules ``torch.compile`` compiles when the run asks for it."""
        return [model]

    def distribute(self, model: nn.Module, device: torch.device) -> None:
        """Prepare a multi-process run (wrap a forward in DistributedDataParallel); called once."""

    def end(self, model: nn.Module) -> None:
        """After the run, whatever happened: the model back in eval mode, nothing frozen."""
        model.requires_grad_(True)
        model.eval()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossTerm:
    """A loss added to a task's every step, optionally with a second player trained alongside.

    :meth:`loss` reads the task's outputs and returns a scalar (or None to add nothing this
    step), computed in float32. A term with an ``optimizer`` is a second player (the
    discriminator of an adversarial shape prior): after the network's backward and before its
    optimiser step, the engine takes :meth:`auxiliary_loss` and steps ``optimizer`` on it, so
    that an interrupted step leaves both players at the last completed step.

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import LossTerm
    >>> class L2(LossTerm):
    ...     name = "l2"
    ...     def loss(self, outputs, step):
    ...         return 0.01 * outputs["prediction"].pow(2).mean()
    >>> round(float(L2().loss({"prediction": torch.ones(3)}, None)), 6)
    0.01
    """

    name = "term"
    #: History key of the auxiliary loss (None: the term has no second player).
    auxiliary_name: str | None = None
    optimizer: torch.optim.Optimizer | None = None

    def loss(self, outputs: dict, step: Step) -> torch.Tensor | None:
        return None

    def auxiliary_loss(self, step: Step) -> torch.Tensor | None:
        return None

    def to(self, device: torch.device) -> "LossTerm":
        return self

    def fingerprint(self) -> dict:
        """What the term adds to the run's fingerprint (its settings and data): a checkpoint of a
        run with other settings is not resumed."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def snapshot(self):
        """A copy of the second player's state, where it lives, taken before each step; an
        interrupted step puts it back with :meth:`restore` (the default: a deep copy of
        :meth:`state_dict`)."""
        return copy.deepcopy(self.state_dict())

    def restore(self, snapshot) -> None:
        self.load_state_dict(snapshot)


class Callback:
    """Hooks around every step; :meth:`on_step_end` returns True to stop the run after that step.

    ``last_losses()`` flushes the pending history (a device synchronisation) and returns the
    step's record: call it only when needed.

    Examples
    --------
    >>> from skuld.engine import Callback
    >>> class StopAt(Callback):
    ...     def __init__(self, n):
    ...         self.n = n
    ...     def on_step_end(self, step, last_losses):
    ...         return step + 1 >= self.n
    >>> StopAt(3).on_step_end(2, dict)
    True
    """

    def on_step_begin(self, step: int) -> None:
        pass

    def on_step_end(self, step: int, last_losses: Callable[[], dict]) -> bool:
        return False


@dataclass
class EngineConfig:
    """How a run trains, as opposed to what it learns.

    Attributes
    ----------
    device : torch.device
    amp_dtype : torch.dtype or None, default=None
        Autocast dtype of the task's forward (None: float32); loss terms run in float32.
    seed : int, default=0
        Seeds the step generators: step t's draws depend only on (seed, t, rank).
    compile : bool, default=False
        ``torch.compile`` the task's ``compile_targets`` for the run (undone afterwards).
    checkpoint : Checkpointing or None, default=None
    verbose : int, default=0
        Progress lines on stderr every ``report_every`` steps when > 0.
    report_every : int, default=50
        Steps between reads of the loss from the device (and progress lines).
    name : str, default="training"
        What the progress lines call the run.

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import EngineConfig
    >>> EngineConfig(device=torch.device("cpu"), verbose=1).report_every
    50
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    seed: int = 0
    compile: bool = False
    checkpoint: Checkpointing | None = None
    verbose: int = 0
    report_every: int = 50
    name: str = "training"


def log(message: str, verbose=1) -> None:
    """Print ``[skuld] message`` to stderr when ``verbose``: skuld's one progress stream.

    Parameters
    ----------
    message : str
    verbose : int or bool, default=1

    Returns
    -------
    None

    Examples
    --------
    >>> from skuld.engine import log
    >>> log("resuming at step 3", verbose=0)              # quiet: nothing printed
    """
    if verbose:
        print(f"[skuld] {message}", file=sys.stderr, flush=True)


class _History:
    """Loss records of the run; reads device values only every few steps (one copy for all)."""

    def __init__(self, state: TrainingState, config: EngineConfig, stop: int, verbose: int):
        self.state, self.config, self.stop, self.verbose = state, config, stop, verbose
        self.pending: list[tuple[int, str, float, dict]] = []
        self.order: list[str] = []
        self.t0 = time.perf_counter()
        self.start = state.step

    def add(self, step: Step, loss: torch.Tensor, parts: dict) -> None:
        for k in parts:
            if k not in self.order:
                self.order.append(k)
        self.pending.append((step.index, step.stage, step.lr, {"loss": loss.detach(), **parts}))

    def drop_after(self, completed: int) -> None:
        self.pending = [p for p in self.pending if p[0] < completed]

    def flush(self) -> None:
        if not self.pending:
            return
        keys = sorted({k for *_, p in self.pending for k in p})
        nan = torch.tensor(float("nan"), device=self.pending[0][3]["loss"].device)
        values = torch.stack([torch.stack([p.get(k, nan).float() for k in keys])
                              for *_, p in self.pending]).cpu().numpy()
        for (index, stage, lr, _), row in zip(self.pending, values):
            record = {"step": index, "stage": stage, "lr": lr}
            record.update({k: float(v) for k, v in zip(keys, row) if np.isfinite(v)})
            self.state.history.append(record)
        self.pending.clear()
        if self.verbose:
            last = self.state.history[-1]
            done = last["step"] + 1
            rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            terms = " ".join(f"{k} {last[k]:.4f}" for k in self.order if k in last)
            log(f"{self.config.name} step {done}/{self.stop} [{last['stage']}] loss {last['loss']:.4f}"
                f"{f' ({terms})' if terms else ''} lr {last['lr']:.2e} {rate:.2f} steps/s")


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}  # batch-norm statistics: small


def _term_states(terms: Sequence[LossTerm]) -> list:
    """Snapshots of the second players (a small discriminator and its Adam): a step interrupted
    after their forward (spectral norm's power iteration) or update restores them."""
    return [t.snapshot() if t.optimizer is not None else None for t in terms]


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(saved[k])


def train(task: Task, state: TrainingState, stop: int, config: EngineConfig, terms: Sequence[LossTerm] = (),
          callbacks: Sequence[Callback] = ()) -> None:
    """Train ``state`` from ``state.step`` up to ``stop`` steps (exclusive).

    Parameters
    ----------
    task : Task
        Batches, loss, schedule.
    state : TrainingState
        Updated in place; the model must already be on ``config.device``.
    stop : int
        The step count to reach.
    config : EngineConfig
    terms : sequence of LossTerm, default=()
        Extra losses (and second players) added to the task's.
    callbacks : sequence of Callback, default=()
        Any ``on_step_end`` returning True stops the run after that step.

    Returns
    -------
    None
        ``state`` holds the last completed step, also after an exception (which is re-raised
        once the checkpoint, when there is one, is written).

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import Callback, EngineConfig, Task, TrainingState, train
    >>> class Mean(Task):
    ...     def batches(self, start, stop, device):
    ...         yield from (torch.full((4, 1), float(t)) for t in range(start, stop))
    ...     def loss(self, model, x, step):
    ...         return (model(x) - 1).pow(2).mean(), {}, {}
    >>> class StopAfter(Callback):
    ...     def on_step_end(self, step, last_losses):
    ...         return step == 4                              # stop after step 4 (the fifth)
    >>> net = torch.nn.Linear(1, 1)
    >>> state = TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.01))
    >>> train(Mean(), state, 10, EngineConfig(device=torch.device("cpu")), callbacks=[StopAfter()])
    >>> state.step, [h["step"] for h in state.history]
    (5, [0, 1, 2, 3, 4])
    """
    model, dev = state.model, config.device
    world, rank = distributed.world_size(), distributed.rank()
    is_main = rank == 0
    if not task.distributed:
        world, rank = 1, 0  # every process trains the same model on the same batches
    history = _History(state, config, stop, config.verbose if is_main else 0)
    spec = config.checkpoint if is_main else None
    gen_device = task.random_device(dev)
    for term in terms:
        term.to(dev)

    def checkpoint() -> None:
        history.flush()
        save_checkpoint(spec, state, task.state_dict(), {t.name: t.state_dict() for t in terms})

    # Training crops all have one size: let cuDNN pick its fastest kernels once.
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = (dev.type == "cuda" and task.same_size_inputs) or cudnn_benchmark
    sync_bn = distributed.synchronized_batch_norm(model, dev) if world > 1 else contextlib.nullcontext()
    buffers, term_states, index = None, None, state.step
    try:
        with sync_bn, compiled_modules(task.compile_targets(model), config.compile):
            if world > 1:
                task.distribute(model, dev)
            for batch in task.batches(state.step, stop, dev):
                index = state.step
                buffers, term_states = _buffers(model), _term_states(terms)
                for cb in callbacks:
                    cb.on_step_begin(index)
                generator, host_generator = step_generators(config.seed, index, gen_device, rank)
                step = Step(index, task.stage(index), task.lr(index), generator, host_generator)
                for group in state.optimizer.param_groups:
                    group["lr"] = step.lr
                task.begin_step(model, step)
                inputs = task.prepare(model, batch, step)
                with autocast(dev, config.amp_dtype):
                    loss, parts, outputs = task.loss(model, inputs, step)
                with torch.autocast(dev.type, enabled=False):  # losses are float32
                    for term in terms:
                        extra = term.loss(outputs, step)
                        if extra is not None:
                            parts[term.name] = extra.detach()
                            loss = loss + extra
                state.optimizer.zero_grad(set_to_none=True)
                if state.scaler is not None:
                    state.scaler.scale(loss).backward()
                else:
                    loss.backward()
                # The second players update before the network: an interruption in between
                # leaves both at the last completed step.
                for term in terms:
                    aux = term.auxiliary_loss(step) if term.optimizer is not None else None
                    if aux is not None:
                        term.optimizer.zero_grad(set_to_none=True)
                        aux.backward()
                        term.optimizer.step()
                        parts[term.auxiliary_name or f"{term.name}_auxiliary"] = aux.detach()
                if state.scaler is not None:
                    state.scaler.step(state.optimizer)
                    state.scaler.update()
                else:
                    state.optimizer.step()
                state.step = index + 1
                history.add(step, loss, parts)
                last = state.step == stop
                if len(history.pending) >= config.report_every or last:
                    history.flush()
                if spec is not None and (state.step % spec.every == 0 or last):
                    checkpoint()

                def last_losses():
                    history.flush()
                    return dict(state.history[-1])

                if any([cb.on_step_end(index, last_losses) for cb in callbacks]):
                    break
    except BaseException:
        if buffers is not None and index == state.step:
            # The failed step's forward already moved the batch-norm statistics (and maybe a
            # second player): undo that, so that the checkpoint is exactly the last completed step.
            _restore_buffers(model, buffers)
            for term, saved in zip(terms, term_states):
                if saved is not None:
                    term.restore(saved)
        history.drop_after(state.step)
        history.flush()
        if spec is not None and state.step > 0:
            checkpoint()
            log(f"interrupted at step {state.step}: checkpoint kept in {spec.path}", config.verbose)
        raise
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        history.flush()
        task.end(model)
