"""Shape-prior modules: the discriminator on masks, prior crops, and the width of a structure.

The adversarial term that trains the discriminator against the clustering branch is
:class:`skuld.segmentation.ShapePriorTerm`. All masks are ``(N, 1, S, S)`` float tensors in
[0, 1] (1 = structure).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ShapeDiscriminator(nn.Module):
    """Patch discriminator on masks: four strided 4x4 convolutions, LeakyReLU, global average.

    Its receptive field is 46 px, so it judges the local shape of a structure (tubes,
    branchings, blobs, borders), not where in the crop it lies.

    Parameters
    ----------
    widths : tuple of int
        Channels of the four convolutions.
    slope : float
        Negative slope of the LeakyReLU (the authors' code had 1.0, an identity: the
        discriminator was then a linear function of the mask).
    spectral_norm : bool
        Spectral normalisation of every layer (keeps the discriminator Lipschitz, which
        stabilises short adversarial runs).

    Notes
    -----
    The forward pass maps masks ``(N, 1, S, S)`` in [0, 1], S >= 16, to logits ``(N,)``
    (real > 0).

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.shape_prior import ShapeDiscriminator
    >>> D = ShapeDiscriminator()
    >>> D(torch.zeros(3, 1, 64, 64)).shape                   # one logit per mask
    torch.Size([3])
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), slope: float = 0.2, spectral_norm: bool = True):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        c = 1
        for w in widths:
            layers += [wrap(nn.Conv2d(c, w, kernel_size=4, stride=2, padding=1)), nn.LeakyReLU(slope)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(c, 1))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(2 * masks - 1).mean(dim=(2, 3))).squeeze(1)


def structure_width(mask: np.ndarray) -> float:
    """Median width of a binary structure in pixels.

    Twice the distance to the background, read on the structure's skeleton (the medial axis),
    so that the width of thin tubes is not dominated by their edges.

    Parameters
    ----------
    mask : array-like of shape (H, W), bool

    Returns
    -------
    float
        In pixels; NaN for an empty mask.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.nn.shape_prior import structure_width
    >>> tube = np.zeros((40, 40), bool); tube[:, 10:16] = True     # 6 px wide
    >>> structure_width(tube)
    6.0
    """
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    dist = ndi.distance_transform_edt(mask)
    skeleton = skeletonize(mask)
    values = dist[skeleton] if skeleton.any() else dist[mask]
    return float(2 * np.median(values))


class PriorSampler:
    """Random crops of prior masks: flips, rotations, rescaling, binarised.

    Parameters
    ----------
    priors : list of bool arrays (H_i, W_i)
        The prior masks, any sizes.
    scales : list of float
        Per prior, the zoom that brings it to the target images' working scale (a prior
        pixel becomes ``scales[i]`` working pixels).
    rotation : float
        Rotations are drawn from ``U(-rotation, rotation)`` degrees (180: any angle).
    flips : bool
        Random mirror flips.
    scale_jitter : (float, float)
        Extra zoom, log-uniform in this range.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skuld.nn.shape_prior import PriorSampler
    >>> tube = np.zeros((100, 100), bool); tube[:, 48:53] = True    # a 5 px wide vertical tube
    >>> sampler = PriorSampler([tube], scales=[2.0], rotation=0.0, flips=False, scale_jitter=(1.0, 1.0))
    >>> crops = sampler.sample(4, 64, torch.Generator().manual_seed(0))
    >>> crops.shape, sorted(crops.unique().tolist())
    (torch.Size([4, 1, 64, 64]), [0.0, 1.0])
    """

    def __init__(self, priors: list[np.ndarray], scales: list[float], rotation: float = 180.0, flips: bool = True,
                 scale_jitter: tuple[float, float] = (0.8, 1.25)):
        if len(priors) != len(scales) or not priors:
            raise ValueError("need one scale per prior and at least one prior")
        self.priors = [torch.from_numpy(np.asarray(p, np.float32))[None, None] for p in priors]
        self.scales = [float(s) for s in scales]
        self.rotation = float(rotation)
        self.flips = flips
        self.scale_jitter = scale_jitter

    def to(self, device: torch.device) -> "PriorSampler":
        """Move the prior masks to ``device``; returns ``self``.
        """
        self.priors = [p.to(device) for p in self.priors]
        return self

    def sample(self, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` crops of ``size`` x ``size`` working pixels, (n, 1, size, size) float in {0, 1}.

        ``generator`` is a CPU generator: the draws are the same on every device.
        """
        out = []
        lo, hi = (math.log(v) for v in self.scale_jitter)
        for _ in range(n):
            j = int(torch.randint(len(self.priors), (1,), generator=generator))
            prior = self.priors[j]
            h, w = prior.shape[-2:]
            u = torch.rand(5, generator=generator).tolist()
            zoom = self.scales[j] * math.exp(lo + (hi - lo) * u[0])
            angle = math.radians(self.rotation * (2 * u[1] - 1))
            flip = -1.0 if self.flips and u[2] < 0.5 else 1.0
            # Crop centre anywhere inside the prior; its size in prior pixels is size / zoom.
            cy, cx = (u[3] * 2 - 1) * 0.8, (u[4] * 2 - 1) * 0.8
            half = size / zoom  # crop side in prior pixels
            cos, sin = math.cos(angle), math.sin(angle)
            # Output normalised coords -> input normalised coords (x by width, y by height).
            theta = torch.tensor([
                [flip * cos * half / w, -sin * half / w, cx],
                [flip * sin * half / h, cos * half / h, cy],
            ], dtype=prior.dtype, device=prior.device)[None]
            grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
            src = prior
            if zoom < 0.5:  # shrinking a lot: average first so that thin structures do not vanish
                factor = int(1 / zoom)
                src = F.avg_pool2d(prior, factor, ceil_mode=True)  # normalised coordinates unchanged
            out.append(F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        return (torch.cat(out) > 0.5).to(self.priors[0].dtype)
