"""skuld's scikit-learn estimators: thin classes that validate, call the functional core and store fitted state.

:mod:`~skuld.estimators.base` holds what they share (parameter constraints, runtime, seeds,
checkpointing, persistence); :mod:`~skuld.estimators.auto` every ``"auto"`` rule.
"""

from ..pretraining import task as _pretraining_task
from . import encoder, index, legacy, locator, pixels, segmenter, shape_guided
from .encoder import LocalDiscriminativeEncoder
from .index import PixelIndex
from .locator import OneShotLandmarkLocator
from .pixels import PixelClassifier, PixelSampler
from .segmenter import TransferSegmenter
from .shape_guided import ClusterCollapseWarning, ShapeGuidedSegmenter

# Models pickled by skuld 0.1.0 name these module paths; they still load with joblib.load (for
# one release: skuld.estimators.legacy).
legacy.register_old_module_paths({
    "skuld.encoder": encoder, "skuld.segmenter": segmenter, "skuld.shape_guided": shape_guided,
    "skuld.locator": locator, "skuld.index": index, "skuld.pixels": pixels, "skuld.training": _pretraining_task,
})

__all__ = ["ClusterCollapseWarning", "LocalDiscriminativeEncoder", "OneShotLandmarkLocator", "PixelClassifier",
           "PixelIndex", "PixelSampler", "ShapeGuidedSegmenter", "TransferSegmenter"]
