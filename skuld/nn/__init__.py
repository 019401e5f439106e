"""Torch modules and the functional core of Local Discrimination.

Tensors are ``(N, C, H, W)``; see each function for the exact shapes it takes and returns.
"""

from .losses import (
    area_balance_loss,
    binary_entropy,
    hypersphere_mixup_targets,
    instance_spreading_loss,
    patch_features,
    patch_weights,
    region_discrimination_loss,
    region_features,
)
from .network import SIZE_MULTIPLE, LDNet, SegmentationUNet, UNetDecoder, VGGEncoder, count_parameters
from .objective import ObjectiveConfig, ld_objective
from .views import ViewConfig, Views, color_jitter, make_views, undo_rot90

__all__ = [
    "SIZE_MULTIPLE",
    "LDNet",
    "ObjectiveConfig",
    "SegmentationUNet",
    "UNetDecoder",
    "VGGEncoder",
    "ViewConfig",
    "Views",
    "area_balance_loss",
    "binary_entropy",
    "color_jitter",
    "count_parameters",
    "hypersphere_mixup_targets",
    "instance_spreading_loss",
    "ld_objective",
    "make_views",
    "patch_features",
    "patch_weights",
    "region_discrimination_loss",
    "region_features",
    "undo_rot90",
]
