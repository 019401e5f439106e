"""Shape priors: masks of a structure from another modality, and the adversarial term that uses them.

The prior masks are validated and scaled to the target images here (:func:`check_priors`,
:func:`prior_zooms`); :class:`ShapePriorTerm` is the adversarial shape prior of the paper as
a loss term of the training engine: a discriminator (:class:`skuld.nn.shape_prior.ShapeDiscriminator`)
learns to tell crops of the priors from the cluster-0 maps of the training views, and the
network is trained to make them indistinguishable. All masks are ``(N, 1, S, S)`` float
tensors in [0, 1] (1 = structure).
"""

from __future__ import annotations

import copy
import hashlib
import os

import numpy as np
import torch
from torch.nn import functional as F

from ..engine import LossTerm, Step, optimizer_to, to_cpu
from ..io import expand_paths, read_image
from ..nn.shape_prior import PriorSampler, ShapeDiscriminator, structure_width


def check_priors(shape_priors) -> list[np.ndarray]:
    """Validated prior masks as a list of 2-D bool arrays (foreground: the larger value).

    Parameters
    ----------
    shape_priors : list of 2-D arrays of any sizes, array (n, H, W), list of paths, or a
        directory / glob
        Binary masks (bool, 0/1 or 0/255).

    Returns
    -------
    list of bool arrays (H_i, W_i)
        ``ValueError`` naming the mask for a missing, empty, non-binary, too small (under
        16 x 16) or all-foreground one.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import check_priors
    >>> m = np.zeros((20, 20), np.uint8); m[5:9] = 255
    >>> [int(p.sum()) for p in check_priors([m])]
    [80]
    """
    if shape_priors is None:
        raise ValueError("ShapeGuidedSegmenter requires y to be passed, but the target y is None: give "
                         "shape_priors, binary masks of the structure")
    if isinstance(shape_priors, (str, os.PathLike)):
        shape_priors = expand_paths(shape_priors)
    if isinstance(shape_priors, np.ndarray) and shape_priors.dtype != object:
        if shape_priors.ndim == 2:
            raise ValueError("shape_priors must be a list of masks (or an array (n, H, W)), got one 2-D mask; "
                             "wrap it in a list")
        if shape_priors.ndim != 3:
            raise ValueError(f"shape_priors must be 2-D binary masks; got an array of shape {shape_priors.shape}")
    priors = list(shape_priors)
    if not priors:
        raise ValueError("shape_priors is empty: give at least one binary mask of the structure")
    out = []
    for i, p in enumerate(priors):
        name = f"shape prior {i}"
        if isinstance(p, (str, os.PathLike)):
            name = f"shape prior {os.fspath(p)}"
            p = read_image(p)
            if p.ndim == 3 and p.shape[2] in (3, 4) and np.all(p[..., :3] == p[..., :1]):
                p = p[..., 0]  # a mask saved as gray RGB(A)
        p = np.asarray(p)
        if p.ndim != 2:
            raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {p.shape}")
        if min(p.shape) < 16:
            raise ValueError(f"{name} is {p.shape[0]} x {p.shape[1]} pixels; priors need at least 16 x 16")
        if p.dtype.kind not in "biuf":
            raise ValueError(f"{name} has dtype {p.dtype}; priors are binary masks")
        values = np.unique(p)
        if p.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"{name} contains NaN or infinity")
        if len(values) > 2:
            raise ValueError(f"{name} is not binary: it holds {len(values)} distinct values "
                             f"({values[:4].tolist()}...); threshold it first")
        mask = p == values.max() if len(values) == 2 else np.zeros(p.shape, bool)
        if not mask.any() or mask.all():
            raise ValueError(f"{name} is {'empty' if not mask.any() else 'all foreground'}; it shows no shape")
        out.append(mask)
    return out


def prior_zooms(priors: list[np.ndarray], prior_scale, frame_side: int) -> list[float]:
    """The zoom that brings each prior to the target images' working scale (prior px -> working px).

    Parameters
    ----------
    priors : list of bool arrays
    prior_scale : "frame" or float
        "frame": each prior's shorter side becomes ``frame_side`` (priors and images show the
        whole organ). A float: the structures' typical width in working pixels; each prior's
        median structure width (:func:`skuld.nn.shape_prior.structure_width`) is brought to it.
    frame_side : int
        The working images' shorter side.

    Returns
    -------
    list of float

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import prior_zooms
    >>> tube = np.zeros((100, 200), bool); tube[:, 10:14] = True
    >>> prior_zooms([tube], "frame", 50), prior_zooms([tube], 8.0, 50)
    ([0.5], [2.0])
    """
    if prior_scale == "frame":
        return [frame_side / min(p.shape) for p in priors]
    return [float(prior_scale) / max(structure_width(p), 1.0) for p in priors]


class ShapePriorTerm(LossTerm):
    """The adversarial shape prior as a loss term: a discriminator and the generator's loss.

    In the LD stage, :meth:`loss` returns ``weight * BCE(D(a0), real)`` for the cluster-0 maps
    ``a0`` of the non-mixup views (plus an area term), and remembers ``a0``; the engine then,
    after the network's backward and before its optimiser step, trains the discriminator once on
    real prior crops against the remembered maps (:meth:`auxiliary_loss`, with its own Adam).

    Parameters
    ----------
    sampler : PriorSampler
        Source of real masks.
    weight : float, default=1.0
        Weight of the generator term in the network's loss.
    learning_rate : float, default=5e-5
        Adam learning rate of the discriminator (betas 0.5, 0.999).
    slope : float, default=0.2
        LeakyReLU slope of the discriminator.
    spectral_norm : bool, default=True
        Spectral normalisation of the discriminator's layers.
    seed : int, default=0
        Seeds the discriminator's initialisation and the area estimate.
    area_weight : float, default=0.0
        Weight of ``((mean(a0) - f) / f)^2``, f the prior crops' foreground fraction.
    crop_size : int, default=160
        Side of the crops used to estimate f.
    binarize : bool, default=False
        Show the discriminator the top-f pixels of ``a0`` as a 0/1 mask (straight-through
        gradient) instead of the soft map.
    dark_threshold : float or None, default=None
        Views at or below this intensity (black frames) are masked out of what the
        discriminator sees; None disables masking.
    margin : int, default=7
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
    >>> from skuld.engine import Step
    >>> from skuld.nn.shape_prior import PriorSampler
    >>> from skuld.segmentation import ShapePriorTerm
    >>> tube = np.zeros((100, 100), bool); tube[:, 45:55] = True
    >>> term = ShapePriorTerm(PriorSampler([tube], scales=[1.0]), weight=3.0, crop_size=64)
    >>> a0 = torch.rand(2, 1, 64, 64, requires_grad=True)     # cluster-0 maps of a batch
    >>> loss = term.generator_loss(a0)                         # added to the network's loss
    >>> step = Step(0, "ld", 1e-3, torch.Generator(), torch.Generator().manual_seed(0))
    >>> d_loss = term.auxiliary_loss(step)                     # the engine trains D on it
    >>> loss.requires_grad, d_loss.requires_grad
    (True, True)
    """

    name = "shape"
    auxiliary_name = "discriminator"

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

    def to(self, device: torch.device) -> "ShapePriorTerm":
        self.discriminator.to(device)
        self.sampler.to(device)
        optimizer_to(self.optimizer, device)
        return self

    def valid_region(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) float: 1 where the view shows the image, 0 on black frames (fundus
        surroundings, the corners a rotation leaves empty) and ``margin`` pixels around them,
        whose sharp edges would otherwise pass for thin structures."""
        dark = (images.amax(dim=1, keepdim=True) <= self.dark_threshold).float()
        if self.margin:
            dark = F.max_pool2d(dark, 2 * self.margin + 1, stride=1, padding=self.margin)
        return 1 - dark

    def loss(self, outputs: dict, step: Step) -> torch.Tensor | None:
        """The generator's loss on the task's cluster maps; None in the warm-up (no clusters)."""
        clusters = outputs.get("clusters")
        if clusters is None:
            return None
        views = outputs["views"]
        return self.generator_loss(clusters[:, :1], images=views.images[: 4 * views.n_items])

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

    def auxiliary_loss(self, step: Step) -> torch.Tensor | None:
        """The discriminator's loss (real and fake BCE summed) on real prior crops against the
        maps the last :meth:`generator_loss` saw; None when there were none this step."""
        if self._fake is None:
            return None
        fake = self._fake.float()
        self._fake = None
        real = self.sampler.sample(fake.shape[0], fake.shape[-1], step.host_generator)
        logits = self.discriminator(torch.cat([real, fake]))
        target = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, target) * 2

    def fingerprint(self) -> dict:
        """The term's settings and a digest of the prior masks and their zooms."""
        digest = hashlib.sha256()
        for prior, zoom in zip(self.sampler.priors, self.sampler.scales):
            digest.update(prior.detach().cpu().numpy().tobytes())
            digest.update(repr((tuple(prior.shape), zoom)).encode())
        return {"weight": self.weight, "area_weight": self.area_weight, "binarize": self.binarize,
                "dark_threshold": self.dark_threshold, "margin": self.margin, "rotation": self.sampler.rotation,
                "learning_rate": self.optimizer.defaults["lr"], "priors": digest.hexdigest()[:16]}

    def state_dict(self) -> dict:
        return {"discriminator": to_cpu(self.discriminator.state_dict()), "optimizer": to_cpu(self.optimizer.state_dict())}

    def snapshot(self):
        """Copies on the discriminator's device (no transfer to the CPU at every step)."""
        return ({k: v.detach().clone() for k, v in self.discriminator.state_dict().items()},
                copy.deepcopy(self.optimizer.state_dict()))

    def restore(self, snapshot) -> None:
        weights, optimizer = snapshot
        self.discriminator.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
