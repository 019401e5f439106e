"""skuld: self-supervised per-pixel embeddings for medical images, behind scikit-learn estimators.

Implements "Unsupervised Local Discrimination for Medical Images" (Chen et al., arXiv 2108.09440).
"""

from .encoder import LocalDiscriminativeEncoder
from .index import PixelIndex
from .locator import OneShotLandmarkLocator
from .pixels import PixelClassifier, PixelSampler
from .segmenter import TransferSegmenter
from .shape_guided import ShapeGuidedSegmenter

__version__ = "0.1.0"
__all__ = [
    "LocalDiscriminativeEncoder",
    "OneShotLandmarkLocator",
    "PixelClassifier",
    "PixelIndex",
    "PixelSampler",
    "ShapeGuidedSegmenter",
    "TransferSegmenter",
    "__version__",
]
