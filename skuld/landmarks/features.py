"""What the landmark matching knows of one image: its descriptor maps, pyramid and templates.

:func:`describe_image` runs an encoder once on an image and keeps everything the matching
stages need (:class:`ImageFeatures`): center-sensitive descriptor maps at working resolution
for the coarse stage, the intensity pyramid of the refinement levels, and the level on which
landmarks fixed to the device are searched. A :class:`Template` is such an image with its
landmarks and their descriptors. Points are ``(x, y)`` pixel coordinates (x the column),
origin at the top-left pixel's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .. import matching
from ..engine.runtime import Runtime
from ..nn.network import LDNet
from ..preprocessing import InputSpec, pad_to_multiple, resize, to_tensor, working_shape

#: The coarse stage's descriptors: encoder stages (by index; strides 4, 8, 16) and/or the
#: final per-pixel embedding ("embed").
FEATURE_SETS = {"embedding": ("embed",), "multiscale": ("embed", 2, 3, 4), "encoder": (2, 3, 4)}


@dataclass
class ImageFeatures:
    """Everything the matching needs from one image.

    Attributes
    ----------
    shape : (int, int)
        The input's ``(H, W)``.
    work_shape : (int, int)
        ``(h, w)`` at working resolution.
    features : list of Tensor of shape (C_i, h, w)
        Unit-norm, center-sensitive (Gaussian-smoothed) descriptor maps.
    pyramid : dict float -> Tensor of shape (C, H_s, W_s)
        The intensity image at each refinement scale.
    frame : Tensor of shape (C, H_f, W_f) or None
        The level fixed landmarks are searched on (None when there are none).

    Examples
    --------
    >>> import torch
    >>> from skuld.landmarks import ImageFeatures
    >>> ImageFeatures((100, 80), (50, 40), [torch.zeros(4, 50, 40)], {}).work_shape
    (50, 40)
    """

    shape: tuple[int, int]
    work_shape: tuple[int, int]
    features: list
    pyramid: dict
    frame: torch.Tensor | None = None


@dataclass
class Template:
    """A labelled image as the matching uses it.

    Attributes
    ----------
    image : ImageFeatures
    points : float64 array of shape (L, 2)
        ``(x, y)`` at working resolution (0 for missing landmarks).
    valid : bool array of shape (L,)
        False for missing (NaN) landmarks.
    descriptors : list of Tensor of shape (L, C_i)
        Each landmark's unit descriptor in each feature map.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, make_template
    >>> img = ImageFeatures((100, 80), (50, 40), [torch.nn.functional.normalize(torch.rand(4, 50, 40), dim=0)], {})
    >>> t = make_template(img, np.array([[10.0, 20.0], [np.nan, np.nan]]))
    >>> t.points.tolist(), t.valid.tolist(), tuple(t.descriptors[0].shape)
    ([[4.75, 9.75], [-0.25, -0.25]], [True, False], (2, 4))
    """

    image: ImageFeatures
    points: np.ndarray
    valid: np.ndarray
    descriptors: list


@torch.inference_mode()
def describe_image(model: LDNet, spec: InputSpec, runtime: Runtime, img: np.ndarray, features: str = "encoder", *,
                   sigma: float = 0.03, refine_scales=(1, 2, 4), with_frame: bool = False) -> ImageFeatures:
    """Run the encoder once on ``img`` and keep what the matching stages need.

    Parameters
    ----------
    model : LDNet
        In eval mode, on ``runtime.device``.
    spec : InputSpec
        The model's input path.
    runtime : Runtime
    img : float32 array of shape (H, W, C), values in [0, 1]
    features : {"encoder", "multiscale", "embedding"}, default="encoder"
        Key of :data:`FEATURE_SETS`.
    sigma : float, default=0.03
        Center-sensitive smoothing, as a fraction of the working image's shorter side.
    refine_scales : tuple of float, default=(1, 2, 4)
        Pyramid scales as multiples of the working resolution (capped at the input's own).
    with_frame : bool, default=False
        Keep the finest level (the working image without refinement) for fixed landmarks.

    Returns
    -------
    ImageFeatures

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.landmarks import describe_image
    >>> from skuld.nn import LDNet
    >>> from skuld.preprocessing import InputSpec
    >>> f = describe_image(LDNet(1, width=0.25).eval(), InputSpec.from_params(1, 64), Runtime.resolve("cpu", "fp32"),
    ...                    np.zeros((80, 96, 1), np.float32))
    >>> f.work_shape, [tuple(m.shape) for m in f.features], {s: tuple(p.shape) for s, p in f.pyramid.items()}
    ((64, 77), [(16, 64, 77), (32, 64, 77), (32, 64, 77)], {1: (1, 64, 77), 2: (1, 80, 96), 4: (1, 80, 96)})
    """
    device = runtime.device
    big_h, big_w = img.shape[:2]
    h, w = spec.working_shape(big_h, big_w)
    full = to_tensor(img).to(device)
    x = resize(full, (h, w))
    xn, _, _ = pad_to_multiple(spec.normalize(x[None]))
    if runtime.channels_last:
        xn = xn.contiguous(memory_format=torch.channels_last)
    wanted = FEATURE_SETS[features]
    smoothing = sigma * min(h, w)
    with runtime.autocast():
        stages = model.encoder(xn)
        raw = [model.embed(model.decoder(stages)) if level == "embed" else stages[level] for level in wanted]
    maps = []
    for level, m in zip(wanted, raw):
        # Smooth each map at its own stride (cheap for the coarse encoder maps), then bring it
        # to the working resolution.
        stride = 1 if level == "embed" else model.encoder.strides[level]
        m = matching.center_sensitive_map(m[0], smoothing / stride)
        m = F.interpolate(m[None], size=xn.shape[-2:], mode="bilinear", align_corners=False)[0, :, :h, :w]
        maps.append(F.normalize(m, dim=0))
    pyramid = {}
    for s in refine_scales:
        size = (working_shape(big_h, big_w, min(round(spec.image_size * s), min(big_h, big_w))) if spec.image_size
                else (big_h, big_w))
        pyramid[s] = resize(full, size)
    frame = None
    if with_frame:
        frame = pyramid[max(refine_scales)] if refine_scales else x
    return ImageFeatures(shape=(big_h, big_w), work_shape=(h, w), features=maps, pyramid=pyramid, frame=frame)


def make_template(image: ImageFeatures, points: np.ndarray) -> Template:
    """A template from an image's features and its ``(L, 2)`` landmarks at input resolution (NaN: missing).

    Parameters
    ----------
    image : ImageFeatures
    points : float array of shape (L, 2)

    Returns
    -------
    Template

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, make_template
    >>> f = ImageFeatures((80, 100), (40, 50), [torch.nn.functional.normalize(torch.rand(4, 40, 50), dim=0)], {})
    >>> make_template(f, np.array([[20.0, 40.0]])).points.tolist()      # at working resolution
    [[9.75, 19.75]]
    """
    valid = ~np.isnan(points).any(axis=1)
    work = matching.rescale_points(np.where(valid[:, None], points, 0.0), image.shape, image.work_shape)
    t = torch.as_tensor(work, dtype=torch.float32, device=image.features[0].device)
    descriptors = [F.normalize(matching.sample_points(f, t), dim=1) for f in image.features]
    return Template(image, work, valid, descriptors)


def encoder_descriptor_maps(model: LDNet, x: torch.Tensor, levels, sigma: float) -> list[tuple[torch.Tensor, int]]:
    """Unit-norm, Gaussian-smoothed encoder maps of one ``(1, C, H, W)`` image, at their own strides.

    Parameters
    ----------
    model : LDNet
    x : Tensor of shape (1, C, H, W)
        Normalised, padded to a multiple of 16.
    levels : sequence of int
        Encoder stages.
    sigma : float
        Smoothing in working pixels.

    Returns
    -------
    list of (Tensor of shape (C_i, H / s_i, W / s_i), stride s_i)

    Examples
    --------
    >>> import torch
    >>> from skuld.landmarks import encoder_descriptor_maps
    >>> from skuld.nn import LDNet
    >>> maps = encoder_descriptor_maps(LDNet(1, width=0.25).eval(), torch.zeros(1, 1, 64, 96), (2, 3), sigma=4.0)
    >>> [(tuple(m.shape), s) for m, s in maps]
    [((16, 16, 24), 4), ((32, 8, 12), 8)]
    """
    stages = model.encoder(x)
    out = []
    for level in levels:
        stride = model.encoder.strides[level]
        out.append((matching.center_sensitive_map(stages[level][0], sigma / stride), stride))
    return out


def sample_descriptors(maps, points: np.ndarray) -> torch.Tensor:
    """The ``(N, sum C_i)`` descriptor of working-resolution ``(x, y)`` points: each level unit
    norm, the whole unit norm too.

    Parameters
    ----------
    maps : list of (Tensor, stride)
        From :func:`encoder_descriptor_maps`.
    points : float array of shape (N, 2)

    Returns
    -------
    Tensor of shape (N, sum C_i)

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import sample_descriptors
    >>> d = sample_descriptors([(torch.rand(4, 16, 24), 4), (torch.rand(8, 8, 12), 8)], np.array([[10.0, 20.0]]))
    >>> tuple(d.shape), round(float(d.norm()), 4)
    ((1, 12), 1.0)
    """
    parts = []
    for m, stride in maps:
        q = torch.as_tensor((points + 0.5) / stride - 0.5, dtype=torch.float32, device=m.device)
        parts.append(F.normalize(matching.sample_points(m, q), dim=1))
    return torch.cat(parts, dim=1) / len(parts) ** 0.5
