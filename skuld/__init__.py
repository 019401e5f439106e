"""skuld: self-supervised per-pixel embeddings for medical images, behind scikit-learn estimators.

Implements "Unsupervised Local Discrimination for Medical Images" (Chen et al., arXiv 2108.09440).
"""

from .estimators import (
    ClusterCollapseWarning,
    LocalDiscriminativeEncoder,
    OneShotLandmarkLocator,
    PixelClassifier,
    PixelIndex,
    PixelSampler,
    ShapeGuidedSegmenter,
    TransferSegmenter,
)
from .estimators.persistence import load, save

__version__ = "0.1.0"
__all__ = [
    "ClusterCollapseWarning",
    "LocalDiscriminativeEncoder",
    "OneShotLandmarkLocator",
    "PixelClassifier",
    "PixelIndex",
    "PixelSampler",
    "ShapeGuidedSegmenter",
    "TransferSegmenter",
    "__version__",
    "load",
    "save",
]
