"""Every ``"auto"`` rule of skuld's estimators, in one table.

A parameter left at ``"auto"`` is resolved in :meth:`fit` by the function that :data:`RULES`
names for it, from facts known only then (the device training runs on, the images, the
priors). The functions are plain and small; :mod:`tests.estimators.test_auto` checks that every
``"auto"`` default of every estimator has its row here.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..engine.runtime import resolve_device, resolve_precision
from ..preprocessing import intensity_normalizer
from ..retrieval import auto_factory
from ..segmentation import field_of_view


def crop_size(device: torch.device) -> int:
    """Training crop side: the paper's 448 px on a GPU, 160 px on a CPU (minutes, not hours).

    Parameters
    ----------
    device : torch.device
        Where training runs.

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from skuld.estimators.auto import crop_size
    >>> crop_size(torch.device("cpu")), crop_size(torch.device("cuda"))
    (160, 448)
    """
    return 448 if device.type == "cuda" else 160


def image_size(device: torch.device) -> int:
    """Working resolution (shorter side): the paper's 512 px on a GPU, 256 px on a CPU.

    Parameters
    ----------
    device : torch.device

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from skuld.estimators.auto import image_size
    >>> image_size(torch.device("cpu"))
    256
    """
    return 512 if device.type == "cuda" else 256


def compile_network(device: torch.device, n_steps: int) -> bool:
    """``torch.compile`` costs about a minute once and pays on GPUs: on CUDA for 500 steps or more.

    Parameters
    ----------
    device : torch.device
    n_steps : int
        Steps the run will train.

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch
    >>> from skuld.estimators.auto import compile_network
    >>> compile_network(torch.device("cuda"), 600), compile_network(torch.device("cpu"), 600)
    (True, False)
    """
    return device.type == "cuda" and n_steps >= 500


def loader_workers(from_files: bool) -> int:
    """Data-loader workers: none for images in memory or on a machine of two cores or fewer
    (decoded images are cached, so workers would only compete with training for the cores);
    otherwise up to 4, half the cores.

    Parameters
    ----------
    from_files : bool
        Whether the images are read from files (in memory: nothing to decode).

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.estimators.auto import loader_workers
    >>> loader_workers(from_files=False)
    0
    """
    cores = os.cpu_count() or 1
    if not from_files or cores <= 2:
        return 0
    return min(4, cores // 2)


def native_crop_scale(crop: int, image_size: int | None) -> tuple[float, float]:
    """``crop_scale="native"``: crops of about ``crop`` working pixels cut from the working
    image, not a larger area shrunk to it, so that thin structures keep their width (the crop
    area as a fraction of a square working image, jittered by 0.8-1.25). Whole-image crops at
    native resolution, whose size is unknown until the images are read.

    Parameters
    ----------
    crop : int
        Crop side in working pixels.
    image_size : int or None
        Working resolution (shorter side).

    Returns
    -------
    (float, float)

    Examples
    --------
    >>> from skuld.estimators.auto import native_crop_scale
    >>> native_crop_scale(160, 512)
    (0.078125, 0.1220703125)
    """
    if image_size is None:
        return (0.9, 1.0)
    f = min(1.0, (crop / image_size) ** 2)
    return (min(1.0, 0.8 * f), min(1.0, 1.25 * f))


def segmenter_image_size(encoder) -> int | None:
    """TransferSegmenter's working resolution: the pretrained encoder's, native without one.

    Parameters
    ----------
    encoder : fitted LocalDiscriminativeEncoder or None

    Returns
    -------
    int or None

    Examples
    --------
    >>> from skuld.estimators.auto import segmenter_image_size
    >>> segmenter_image_size(None) is None
    True
    """
    return encoder.input_spec_.image_size if encoder is not None else None


def pseudo_label_route(prior_widths, rotation: float, prior_scale) -> str:
    """ShapeGuidedSegmenter's pseudo-labels: "ridge" for thin priors (median width at most 12
    working px), "atlas" for thick ones in a fixed orientation and framing (``rotation=0`` and
    ``prior_scale="frame"``: lungs in chest X-rays), else "ld" (the paper's: the LD clusters).

    Parameters
    ----------
    prior_widths : sequence of float
        The priors' median structure widths in working pixels.
    rotation : float
    prior_scale : "frame" or float

    Returns
    -------
    {"ridge", "atlas", "ld"}

    Examples
    --------
    >>> from skuld.estimators.auto import pseudo_label_route
    >>> pseudo_label_route([5.0], 180, "frame"), pseudo_label_route([40.0], 0, "frame")
    ('ridge', 'atlas')
    """
    if float(np.nanmedian(prior_widths)) <= 12:
        return "ridge"
    if rotation == 0 and prior_scale == "frame":
        return "atlas"
    return "ld"


def test_time_views(rotation: float) -> str | None:
    """ShapeGuidedSegmenter's test-time views: all 8 flips and quarter turns when the structure
    has no orientation (``rotation >= 90``: the network was trained on quarter turns), else one.
    Measured: DRIVE +0.003-0.016 Dice; lungs no gain (benchmarks/results/shape_guided*.md).

    Parameters
    ----------
    rotation : float

    Returns
    -------
    "dihedral" or None

    Examples
    --------
    >>> from skuld.estimators.auto import test_time_views
    >>> test_time_views(180), test_time_views(0)
    ('dihedral', None)
    """
    return "dihedral" if rotation >= 90 else None


#: (estimator, parameter) -> the function that resolves its "auto".
RULES = {
    ("LocalDiscriminativeEncoder", "crop_size"): crop_size,
    ("LocalDiscriminativeEncoder", "image_size"): image_size,
    ("LocalDiscriminativeEncoder", "compile"): compile_network,
    ("LocalDiscriminativeEncoder", "num_workers"): loader_workers,
    ("LocalDiscriminativeEncoder", "crop_scale"): native_crop_scale,
    ("TransferSegmenter", "crop_size"): crop_size,
    ("TransferSegmenter", "image_size"): segmenter_image_size,
    ("ShapeGuidedSegmenter", "pseudo_labels"): pseudo_label_route,
    ("ShapeGuidedSegmenter", "test_time_augmentation"): test_time_views,
}

#: Parameters whose "auto" means the same in every estimator that has them, resolved by the
#: layer that owns the concept.
SHARED_RULES = {
    "device": resolve_device,
    "precision": resolve_precision,
    "normalization": intensity_normalizer,
    "index": auto_factory,
    "fov": field_of_view,
}
