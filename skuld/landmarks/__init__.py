"""One-shot landmark localisation: the matching pipeline and the correspondence fine-tuning.

:class:`skuld.OneShotLandmarkLocator` validates its parameters, describes its templates and
queries with :func:`describe_image`, and calls :func:`locate`; every stage is a plain
function of :mod:`skuld.landmarks.pipeline` that can be tested without an estimator.
"""

from .correspondence import CorrespondenceTask, correspondence_loss, fine_tune_correspondence, thin_plate_spline
from .features import (
    FEATURE_SETS,
    ImageFeatures,
    Template,
    describe_image,
    encoder_descriptor_maps,
    make_template,
    sample_descriptors,
)
from .pipeline import (
    FRAME_DETAIL_SIGMA,
    Located,
    MatchConfig,
    check_landmarks,
    coarse_points,
    enforce_shape,
    fixed_mask,
    frame_search,
    locate,
    locate_with,
    per_level,
    refine,
    round_trip_error,
    similarity_maps,
)

#: Encoder settings the locator pretrains with when it is given no encoder: no rotation
#: invariance and no mirror flips (anatomy that shares one orientation must not be matched to
#: its mirror image or to a turned copy; measured in docs/landmarks.md) and center-sensitive
#: Gaussian patch pooling (the paper's setting for this task).
ENCODER_DEFAULTS = dict(rotation=0.0, rot90=False, flips=False, patch_sigma=0.25, image_size=256, crop_size=160,
                        max_iter=600)

__all__ = [
    "ENCODER_DEFAULTS", "FEATURE_SETS", "FRAME_DETAIL_SIGMA", "CorrespondenceTask", "ImageFeatures", "Located",
    "MatchConfig", "Template", "check_landmarks", "coarse_points", "correspondence_loss", "describe_image",
    "encoder_descriptor_maps", "enforce_shape", "fine_tune_correspondence", "fixed_mask", "frame_search", "locate",
    "locate_with", "make_template", "per_level", "refine", "round_trip_error", "sample_descriptors",
    "similarity_maps", "thin_plate_spline",
]
