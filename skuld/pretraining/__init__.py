"""Local Discrimination pretraining: the data it samples and the task the engine runs.

:class:`skuld.LocalDiscriminativeEncoder` validates its parameters, builds a
:class:`LocalDiscriminationTask` and hands it to :func:`skuld.engine.train`.
"""

from .data import PairCropDataset, random_resized_crop_box, worker_init
from .task import LocalDiscriminationTask, PretrainingConfig, Schedule, pretraining_config

__all__ = ["LocalDiscriminationTask", "PairCropDataset", "PretrainingConfig", "Schedule", "pretraining_config",
           "random_resized_crop_box", "worker_init"]
