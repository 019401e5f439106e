"""The training engine: one loop, one checkpoint format, one resume rule for every network skuld trains.

* :func:`train` runs a :class:`Task` on a :class:`TrainingState` (see :mod:`skuld.engine.loop`);
* :class:`LossTerm` adds a loss, or a second player with its own optimiser, to any task;
* :class:`Callback` sees every step and may stop a run;
* :mod:`skuld.engine.checkpoint` writes and resumes runs; :mod:`skuld.engine.runtime`
  resolves devices and precision.

The engine knows nothing of scikit-learn or of what a task learns.
"""

from .checkpoint import CHECKPOINT_FORMAT, Checkpointing, load_checkpoint, read_resumable, restore, save_checkpoint
from .loop import Callback, EngineConfig, LossTerm, Step, Task, TrainingState, log, train
from .runtime import (
    Runtime,
    autocast,
    cpu_has_native_bf16,
    optimizer_to,
    resolve_device,
    resolve_precision,
    step_generators,
    to_cpu,
)

__all__ = [
    "CHECKPOINT_FORMAT", "Callback", "Checkpointing", "EngineConfig", "LossTerm", "Runtime", "Step", "Task",
    "TrainingState", "autocast", "cpu_has_native_bf16", "load_checkpoint", "log", "optimizer_to", "read_resumable",
    "resolve_device", "resolve_precision", "restore", "save_checkpoint", "step_generators", "to_cpu", "train",
]
