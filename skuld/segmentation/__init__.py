"""Segmentation algorithms under :class:`skuld.TransferSegmenter` and :class:`skuld.ShapeGuidedSegmenter`.

* :mod:`~skuld.segmentation.transfer`: few-label training of a U-Net as an engine task;
* :mod:`~skuld.segmentation.priors`: shape-prior masks and the adversarial shape term;
* :mod:`~skuld.segmentation.pseudo_labels`: label-free pseudo-labels (ridge, atlas, LD routes);
* :mod:`~skuld.segmentation.ridges`, :mod:`~skuld.segmentation.atlas`: the classical detectors
  behind the ridge and atlas routes; :mod:`~skuld.segmentation.fov`: the field of view.
"""

from .atlas import atlas_probability, shape_atlas
from .fov import field_of_view, fields_of_view, fundus_field_of_view
from .priors import ShapePriorTerm, check_priors, prior_zooms
from .pseudo_labels import (
    UNSURE,
    atlas_labels,
    ld_labels,
    ld_probabilities,
    ridge_labels,
    ridge_sigmas,
    structure_fraction,
)
from .ridges import ridge_pseudo_labels, ridge_segmentation, ridge_strength
from .transfer import SegmentationConfig, SegmentationTask, check_masks, mask_classes, training_data

__all__ = [
    "UNSURE", "SegmentationConfig", "SegmentationTask", "ShapePriorTerm", "atlas_labels", "atlas_probability",
    "check_masks", "check_priors", "field_of_view", "fields_of_view", "fundus_field_of_view", "ld_labels", "ld_probabilities",
    "mask_classes", "prior_zooms", "ridge_labels", "ridge_pseudo_labels", "ridge_segmentation", "ridge_sigmas",
    "ridge_strength", "shape_atlas", "structure_fraction", "training_data",
]
