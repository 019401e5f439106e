"""skuld's scikit-learn estimators: thin classes that validate, call the functional core and store fitted state.

:mod:`~skuld.estimators.base` holds what they share (parameter constraints, runtime, seeds,
checkpointing, persistence); :mod:`~skuld.estimators.auto` every ``"auto"`` rule.
"""

import sys

from ..pretraining import task as _pretraining_task
from . import encoder, index, locator, pixels, segmenter, shape_guided
from .encoder import LocalDiscriminativeEncoder
from .index import PixelIndex
from .locator import OneShotLandmarkLocator
from .pixels import PixelClassifier, PixelSampler
from .segmenter import TransferSegmenter
from .shape_guided import ClusterCollapseWarning, ShapeGuidedSegmenter

#: Where skuld 0.1.0 defined the classes its pickles name: models it saved still load with
#: ``joblib.load`` (their state is upgraded by ``_upgrade_state``). Kept for one release.
LEGACY_MODULES = {"skuld.encoder": encoder, "skuld.segmenter": segmenter, "skuld.shape_guided": shape_guided,
                  "skuld.locator": locator, "skuld.index": index, "skuld.pixels": pixels,
                  "skuld.training": _pretraining_task}
for _name, _module in LEGACY_MODULES.items():
    sys.modules.setdefault(_name, _module)

__all__ = ["ClusterCollapseWarning", "LocalDiscriminativeEncoder", "OneShotLandmarkLocator", "PixelClassifier",
           "PixelIndex", "PixelSampler", "ShapeGuidedSegmenter", "TransferSegmenter"]
