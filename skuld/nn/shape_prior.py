"""Adversarial shape prior: tie one cluster of the clustering branch to masks from another modality.

A small CNN (the discriminator) learns to tell crops of real prior masks from the cluster-0
maps ``a_0`` of the training crops; the network is trained to make ``a_0`` look real
(``BCE(D(a_0), 1)`` added to the Local Discrimination loss). All masks are ``(N, 1, S, S)``
float tensors in [0, 1] (1 = structure).
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


class ShapeAdversary:
    """The discriminator, its optimiser and prior sampler, and the two losses of a step.

    ``generator_loss(a0)`` (inside the network's step) returns ``weight * BCE(D(a0), 1)`` and
    remembers ``a0``; ``discriminator_step(generator)`` (before the network's optimiser step,
    so that an interrupted step leaves both unchanged) trains the discriminator once on real
    prior crops against the remembered maps.

    Parameters
    ----------
    sampler : PriorSampler
        Source of real masks.
    weight : float, default 1.0
        Weight of the generator term in the network's loss.
    learning_rate : float, default 5e-5
        Adam learning rate of the discriminator (betas 0.5, 0.999).
    slope : float, default 0.2
        LeakyReLU slope of the discriminator.
    spectral_norm : bool, default True
        Spectral normalisation of the discriminator's layers.
    seed : int, default 0
        Seeds the discriminator's initialisation and the area estimate.
    area_weight : float, default 0.0
        Weight of ``((mean(a0) - f) / f)^2``, f the prior crops' foreground fraction.
    crop_size : int, default 160
        Side of the crops used to estimate f.
    binarize : bool, default False
        Show the discriminator the top-f pixels of ``a0`` as a 0/1 mask (straight-through
        gradient) instead of the soft map.
    dark_threshold : float or None, default None
        Views at or below this intensity (black frames) are masked out of what the
        discriminator sees; None disables masking.
    margin : int, default 7
        Pixels around dark frames also masked.

    Attributes
    ----------
    discriminator : ShapeDiscriminator
    optimizer : torch.optim.Adam
    area : float
        f, the prior crops' foreground fraction.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skuld.nn.shape_prior import PriorSampler, ShapeAdversary
    >>> tube = np.zeros((100, 100), bool); tube[:, 45:55] = True
    >>> adversary = ShapeAdversary(PriorSampler([tube], scales=[1.0]), weight=3.0, crop_size=64)
    >>> a0 = torch.rand(2, 1, 64, 64, requires_grad=True)     # cluster-0 maps of a batch
    >>> loss = adversary.generator_loss(a0)                   # added to the network's loss
    >>> d_loss = adversary.discriminator_step(torch.Generator().manual_seed(0))
    >>> loss.requires_grad, d_loss.requires_grad
    (True, False)
    """

    def __init__(self, sampler: PriorSampler, weight: float = 1.0, learning_rate: float = 5e-5, slope: float = 0.2,
                 spectral_norm: bool = True, seed: int = 0, area_weight: float = 0.0, crop_size: int = 160,
                 binarize: bool = False, dark_threshold: float | None = None, margin: int = 7):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.discriminator = ShapeDiscriminator(slope=slope, spectral_norm=spectral_norm)
        self.sampler = sampler
        self.weight = float(weight)
        self.area_weight = float(area_weight)
        self.binarize = binarize
        self.dark_threshold = dark_threshold
        self.margin = int(margin)
        # Foreground fraction of prior crops: the area cluster 0 is pulled towards.
        with torch.random.fork_rng(devices=[]):
            self.area = float(sampler.sample(64, crop_size, torch.Generator().manual_seed(seed)).mean())
        self.area = max(self.area, 1e-3)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.999))
        self._fake: torch.Tensor | None = None

    def to(self, device: torch.device) -> "ShapeAdversary":
        self.discriminator.to(device)
        self.sampler.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(device)
        return self

    def valid_region(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) float: 1 where the view shows the image, 0 on black frames (fundus
        surroundings, the corners a rotation leaves empty) and ``margin`` pixels around them,
        whose sharp edges would otherwise pass for thin structures."""
        dark = (images.amax(dim=1, keepdim=True) <= self.dark_threshold).float()
        if self.margin:
            dark = F.max_pool2d(dark, 2 * self.margin + 1, stride=1, padding=self.margin)
        return 1 - dark

    def generator_loss(self, a0: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """``weight * BCE(D(a0), real)`` for cluster-0 maps ``a0`` (N, 1, S, S), float32 (with
        ``images``, the views (N, C, S, S) in [0, 1], and a ``dark_threshold``, ``a0`` is zeroed
        outside :meth:`valid_region` first), plus
        ``area_weight * ((mean(a0) - f) / f)^2`` where f is the prior crops' foreground fraction
        (keeps cluster 0 from collapsing to nothing or everything)."""
        if images is not None and self.dark_threshold is not None:
            a0 = a0 * self.valid_region(images).to(a0.dtype)
        soft = a0
        if self.binarize:
            a0 = self._binarized(a0)
        self._fake = a0.detach()
        # Eval mode: spectral norm's power iteration advances only in the discriminator's own
        # step, so that a step interrupted after this point leaves the discriminator as it was.
        self.discriminator.requires_grad_(False).eval()
        try:
            logits = self.discriminator(a0.float())
        finally:
            self.discriminator.requires_grad_(True).train()
        loss = self.weight * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if self.area_weight:
            loss = loss + self.area_weight * ((soft.float().mean() - self.area) / self.area) ** 2
        return loss

    def _binarized(self, a0: torch.Tensor) -> torch.Tensor:
        """The ``area`` fraction of highest pixels of each map set to 1, the rest to 0, with the
        gradient of the identity (straight-through): the discriminator then compares shapes of
        equal area, not how confident the cluster map is."""
        flat = a0.detach().float().flatten(1)
        k = max(1, int(round((1 - self.area) * flat.shape[1])))
        threshold = flat.kthvalue(k, dim=1).values.view(-1, 1, 1, 1)
        hard = (a0.detach() > threshold).to(a0.dtype)
        return hard + a0 - a0.detach()

    def discriminator_step(self, generator: torch.Generator) -> torch.Tensor:
        """One update of the discriminator; returns its loss (detached; real and fake BCE summed)."""
        if self._fake is None:
            raise RuntimeError("generator_loss must run before discriminator_step")
        fake = self._fake.float()
        real = self.sampler.sample(fake.shape[0], fake.shape[-1], generator)
        logits = self.discriminator(torch.cat([real, fake]))
        target = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target) * 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._fake = None
        return loss.detach()

    def state_dict(self) -> dict:
        from ..training import to_cpu

        return {"discriminator": to_cpu(self.discriminator.state_dict()), "optimizer": to_cpu(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
