"""skuld's scikit-learn estimators: thin classes that validate, call the functional core and store fitted state.

:mod:`~skuld.estimators.base` holds what they share (parameter constraints, runtime, seeds,
checkpointing, persistence); :mod:`~skuld.estimators.auto` every ``"auto"`` rule.
"""

from .encoder import LocalDiscriminativeEncoder
from .index import PixelIndex
from .locator import OneShotLandmarkLocator
from .pixels import PixelClassifier, PixelSampler
from .segmenter import TransferSegmenter
from .shape_guided import ClusterCollapseWarning, ShapeGuidedSegmenter

__all__ = ["ClusterCollapseWarning", "LocalDiscriminativeEncoder", "OneShotLandmarkLocator", "PixelClassifier",
           "PixelIndex", "PixelSampler", "ShapeGuidedSegmenter", "TransferSegmenter"]
