"""ShapeGuidedSegmenter: segment a structure without labels in its modality, guided by shapes from another."""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .atlas import atlas_probability, shape_atlas
from .encoder import LocalDiscriminativeEncoder
from .io import ImageCollection, read_image
from .metrics import dice
from .nn.shape_prior import PriorSampler, ShapeAdversary, structure_width
from .segmenter import TransferSegmenter
from .training import resolve_device

#: Mask value of pixels left out of the refinement network's loss (not confident).
_UNSURE = 255


class ClusterCollapseWarning(UserWarning):
    """The shape-tied cluster covers almost nothing or almost everything: the run failed."""


class ShapeGuidedSegmenter(BaseEstimator):
    """Segment a structure in images without any labels of them, guided by shapes from elsewhere.

    Local Discrimination with ``n_clusters`` clusters is trained on the unlabelled images
    ``X``; cluster 0 is tied to the structure by an adversarial shape prior: a small CNN
    tells crops of the prior masks (from another modality: OCTA or angiography vessels for
    fundus vessels, lung outlines from another X-ray set, ...) from the cluster-0 maps, and
    the network learns to make them indistinguishable (Chen et al., arXiv 2108.09440,
    section "shape-guided segmentation"). A refinement stage then trains a U-Net, initialised
    from the same encoder, on the pixels whose pseudo-label is confident.

    On a CPU budget the adversarial stage alone does not find the structure (measured in
    ``docs/shape_guided.md``), so by default (``pseudo_labels="auto"``) the refinement's
    pseudo-labels come from a classical, label-free detector driven by the priors, which the
    refinement network then improves on: for thin structures a ridge detector at the width
    of the prior shapes; for thick structures of images in one orientation and framing
    (``rotation=0``, ``prior_scale="frame"``: lungs in chest X-rays) a shape atlas, the mean
    of the priors, that guides an intensity EM in each image (:mod:`skuld.atlas`).

    Parameters
    ----------
    n_clusters : int, default=8
        K, clusters of the clustering branch; cluster 0 is the structure.
    max_iter : int, default=900
        Training steps of the Local Discrimination network (patch-discrimination warm-up
        included). About 25 minutes on 2 CPU cores at the CPU defaults.
    batch_size : int, default=4
    crop_size : int or "auto", default="auto"
        Side of the square training crops in working pixels. Crops are cut at the working
        resolution, not shrunk from the whole image, so thin structures keep their width.
        "auto": 448 on a GPU, 160 on a CPU.
    image_size : int or None, default=512
        Working resolution (shorter side), for training and inference; outputs are at the
        input resolution. Thin structures need it high: 512 is the paper's for fundus.
    learning_rate : float, default=1e-3
    pd_fraction : float, default=0.2
        Fraction of ``max_iter`` spent in the patch-discrimination warm-up (no shape prior).
    lr_halvings : int, default=3
        How often the learning rate halves over ``max_iter`` (within each stage). The
        paper's 10 suits 100k steps; short runs stop learning long before the end with it.
    prior_weight : float, default=3.0
        Weight of the adversarial term ``BCE(D(a_0), real)`` in the LD loss (the paper: 1).
    prior_area_weight : float, default=0.0
        Weight of ``((mean(a_0) - f) / f)^2``, f the prior crops' foreground fraction: keeps
        cluster 0 from vanishing or taking over.
    binarize : bool, default=True
        Show the discriminator the top ``f`` fraction of each cluster-0 crop as a binary
        mask (straight-through gradient) instead of the soft map, so that it compares shapes
        of equal area and cannot win by seeing that a soft map is grey. Pixels on black
        frames (and 7 px around them: fundus rims, corners left empty by rotations) are left
        out with ``fov="auto"``.
    discriminator_lr : float, default=0.05
        The discriminator's learning rate as a fraction of ``learning_rate`` (the paper's 0.05).
    discriminator_slope : float, default=0.2
        LeakyReLU slope of the discriminator.
    spectral_norm : bool, default=True
        Spectral normalisation in the discriminator.
    prior_scale : "frame" or float, default="frame"
        How prior masks are brought to the images' scale. "frame": each prior is resized so
        that its shorter side equals the working resolution (priors and images show the
        whole organ). A float: the structures' typical width in working pixels; each prior
        is resized so that its median structure width (twice the distance to its background,
        on its skeleton) equals it. A random zoom in [0.8, 1.25] is added either way.
    rotation : float, default=180.0
        Rotation range in degrees of the training views and of the prior crops (180: any
        angle, for fundus). Use 0 for images with one orientation (chest X-rays).
    inference : {"similarity", "cluster"}, default="similarity"
        How the LD network labels a pixel: "cluster" is ``a_0 > 0.5``; "similarity"
        re-assigns each pixel to the cluster whose region feature in this image is most
        similar (``softmax_k(z . r_k / 0.2)``, channel 0 > 0.5). Both are available in
        :meth:`predict_proba` with ``mode=``.
    refine : bool, default=True
        Train a refinement U-Net on the confident pseudo-labels; :meth:`predict` then uses it.
    refine_iter : int, default=1000
        Training steps of the refinement network (about 4 minutes on 2 CPU cores).
    refine_confidence : float, default=0.5
        With "ld" pseudo-labels, a pixel's label is used when both inference modes agree on
        it and the mean of their probabilities ``p`` has ``|2p - 1| >= refine_confidence``;
        with "atlas" pseudo-labels, when the atlas probability ``p`` has it.
    pseudo_labels : {"auto", "ld", "ridge", "atlas"}, default="auto"
        Where the refinement's pseudo-labels come from. "ld": the LD network (the paper).
        "ridge": :func:`skuld.ridges.ridge_pseudo_labels` at scales from the priors' median
        structure width (``ridge_sigmas_``), every pixel of the field of view labelled but a
        10-pixel rim, thresholded by the triangle method kept within half and twice the
        priors' foreground fraction (``prior_fraction_``). "atlas":
        :func:`skuld.atlas.atlas_probability` with the priors' mean, stretched to each image's
        frame, as the spatial prior (``atlas_``), at 256 px; a pixel is labelled where
        ``|2p - 1| >= refine_confidence``. "auto": "ridge" when the priors are thin (median
        width at most 12 working pixels), else "atlas" when the images have one orientation
        and priors show the whole frame (``rotation=0`` and ``prior_scale="frame"``), else "ld".
    test_time_augmentation : {"auto", None, "flips", "dihedral"}, default="auto"
        Views of each image whose probabilities the refinement network averages at
        prediction (see :class:`skuld.TransferSegmenter`). "auto": "dihedral" (4 flips and
        their transposes) when the structure has no orientation (``rotation >= 90``, so the
        network was trained on quarter turns), else None (one view). On DRIVE (OCTA priors)
        "dihedral" adds 0.003-0.016 Dice at 8 times the prediction time
        (benchmarks/results/shape_guided.md); on lungs (``rotation=0``) "flips" did not help
        (0.771 against 0.774, benchmarks/results/shape_guided_lungs.md). Read at prediction
        only: ``set_params`` on a fitted model changes it. LD modes are not affected.
    ridge_polarity : {"dark", "bright"}, default="dark"
        Whether the thin structures are darker than their surroundings (fundus vessels).
    fov : {"auto"} or None, default="auto"
        Field of view. "auto": for colour images, the bright disc of a fundus photograph is
        found (largest bright connected region, holes filled); gray images use the whole
        image. None: always the whole image. A mask argument of :meth:`predict` overrides it.
    encoder_params : dict or None, default=None
        More parameters of the :class:`LocalDiscriminativeEncoder` trained inside (e.g.
        ``{"color_jitter": (0.2, 0.2, 0.2, 0.0), "area_weight": 1.0}``).
    device, precision, channels_last :
        As in :class:`LocalDiscriminativeEncoder`.
    checkpoint_dir : str or None, default=None
        Where the encoder's and the refinement network's checkpoints are kept; :meth:`fit`
        resumes from them.
    random_state : int, RandomState instance or None, default=None
        An int gives identical results on CPU.
    verbose : int, default=0

    Attributes
    ----------
    encoder_ : LocalDiscriminativeEncoder
        The trained LD network (cluster 0 = the structure): its embeddings and clusters can
        be used like any fitted encoder's.
    refiner_ : TransferSegmenter or None
        The refinement U-Net (None with ``refine=False`` or after a collapse of the "ld" route).
    cluster_fraction_ : float
        Fraction of the training images' field of view assigned to the structure by the LD
        network (``inference`` mode). Near 0 or 1 means the run collapsed.
    collapsed_ : bool
        True when ``cluster_fraction_`` is below 0.2 % or above 60 %. With "ld" pseudo-labels
        a :class:`ClusterCollapseWarning` is issued and refinement skipped; the "ridge" and
        "atlas" routes do not depend on the LD clusters, and warn only with ``refine=False``
        (when :meth:`predict` answers from the LD network).
    prior_zooms_ : list of float
        Zoom applied to each prior mask before random crops (prior pixels -> working pixels).
    prior_fraction_ : float
        Foreground fraction of the prior crops the discriminator sees.
    pseudo_labels_ : {"ld", "ridge", "atlas"}
        The source of the refinement's pseudo-labels ("auto" resolved).
    ridge_sigmas_ : tuple of float
        Ridge scales in working pixels (with "ridge" pseudo-labels).
    atlas_ : float32 array (128, 128)
        Mean of the prior masks over the stretched frame (with "atlas" pseudo-labels).
    pseudo_label_fraction_ : float
        Fraction of the training pixels whose pseudo-label was confident enough to train on.
    n_channels_in_ : int
    fit_time_ : dict
        Seconds spent in "pretraining" and "refinement".

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import ShapeGuidedSegmenter
    >>> from skuld.datasets import load_cxr_tiny
    >>> data = load_cxr_tiny()                     # 4 X-rays (512, 512) uint8 and lung masks
    >>> seg = ShapeGuidedSegmenter(max_iter=4, refine_iter=2, image_size=128, crop_size=64,
    ...                            rotation=0, random_state=0)  # lungs: the atlas route; a few steps
    ...                                                         # only to show the calls
    >>> seg.fit(data.images[:3], shape_priors=[data.masks[3]]).predict(data.images[:1]).shape
    (1, 512, 512)
    """

    _parameter_constraints = {  # noqa: RUF012 (scikit-learn's convention)
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "crop_size": [Interval(Integral, 32, None, closed="left"), StrOptions({"auto"})],
        "image_size": [Interval(Integral, 32, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "pd_fraction": [Interval(Real, 0, 1, closed="left")],
        "lr_halvings": [Interval(Integral, 1, None, closed="left")],
        "prior_weight": [Interval(Real, 0, None, closed="neither")],
        "prior_area_weight": [Interval(Real, 0, None, closed="left")],
        "binarize": ["boolean"],
        "discriminator_lr": [Interval(Real, 0, None, closed="neither")],
        "discriminator_slope": [Interval(Real, 0, 1, closed="left")],
        "spectral_norm": ["boolean"],
        "prior_scale": [StrOptions({"frame"}), Interval(Real, 0, None, closed="neither")],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "inference": [StrOptions({"similarity", "cluster"})],
        "refine": ["boolean"],
        "refine_iter": [Interval(Integral, 1, None, closed="left")],
        "refine_confidence": [Interval(Real, 0, 1, closed="left")],
        "pseudo_labels": [StrOptions({"auto", "ld", "ridge", "atlas"})],
        "test_time_augmentation": [StrOptions({"auto", "flips", "dihedral"}), None],
        "ridge_polarity": [StrOptions({"dark", "bright"})],
        "fov": [StrOptions({"auto"}), None],
        "encoder_params": [dict, None],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "channels_last": ["boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters=8,
        max_iter=900,
        batch_size=4,
        crop_size="auto",
        image_size=512,
        learning_rate=1e-3,
        pd_fraction=0.2,
        lr_halvings=3,
        prior_weight=3.0,
        prior_area_weight=0.0,
        binarize=True,
        discriminator_lr=0.05,
        discriminator_slope=0.2,
        spectral_norm=True,
        prior_scale="frame",
        rotation=180.0,
        inference="similarity",
        refine=True,
        refine_iter=1000,
        refine_confidence=0.5,
        pseudo_labels="auto",
        test_time_augmentation="auto",
        ridge_polarity="dark",
        fov="auto",
        encoder_params=None,
        device="auto",
        precision="auto",
        channels_last=True,
        checkpoint_dir=None,
        random_state=None,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.pd_fraction = pd_fraction
        self.lr_halvings = lr_halvings
        self.prior_weight = prior_weight
        self.prior_area_weight = prior_area_weight
        self.binarize = binarize
        self.discriminator_lr = discriminator_lr
        self.discriminator_slope = discriminator_slope
        self.spectral_norm = spectral_norm
        self.prior_scale = prior_scale
        self.rotation = rotation
        self.inference = inference
        self.refine = refine
        self.refine_iter = refine_iter
        self.refine_confidence = refine_confidence
        self.pseudo_labels = pseudo_labels
        self.test_time_augmentation = test_time_augmentation
        self.ridge_polarity = ridge_polarity
        self.fov = fov
        self.encoder_params = encoder_params
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ input
    @staticmethod
    def _priors(shape_priors) -> list[np.ndarray]:
        """Validated prior masks as a list of 2-D bool arrays."""
        if shape_priors is None:
            raise ValueError("ShapeGuidedSegmenter requires y to be passed, but the target y is None: give "
                             "shape_priors, binary masks of the structure")
        if isinstance(shape_priors, (str, os.PathLike)):
            from .io import expand_paths

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

    def _resolved_crop(self) -> int:
        gpu = resolve_device(self.device).type == "cuda"
        crop = (448 if gpu else 160) if self.crop_size == "auto" else self.crop_size
        if crop % 16:
            raise ValueError(f"crop_size must be a multiple of 16, got {crop}")
        return crop

    def _crop_scale(self, crop: int) -> tuple[float, float]:
        """Crop area as a fraction of the working image, so that crops are not shrunk."""
        if self.image_size is None:
            return (0.9, 1.0)  # native resolution: sizes unknown until images are read; whole-image crops
        f = min(1.0, (crop / self.image_size) ** 2)
        return (min(1.0, 0.8 * f), min(1.0, 1.25 * f))

    def _make_encoder(self, crop: int, seed: int) -> LocalDiscriminativeEncoder:
        params = dict(
            n_clusters=self.n_clusters, max_iter=self.max_iter, batch_size=self.batch_size, crop_size=crop,
            image_size=self.image_size, learning_rate=self.learning_rate, pd_fraction=self.pd_fraction,
            crop_scale=self._crop_scale(crop), rotation=float(self.rotation), rot90=self.rotation >= 90,
            device=self.device, precision=self.precision, channels_last=self.channels_last,
            checkpoint_dir=self.checkpoint_dir, random_state=seed, verbose=self.verbose,
        )
        extra = dict(self.encoder_params or {})
        unknown = set(extra) - set(LocalDiscriminativeEncoder().get_params())
        if unknown:
            raise ValueError(f"encoder_params has unknown LocalDiscriminativeEncoder parameters: {sorted(unknown)}")
        params.update(extra)
        return LocalDiscriminativeEncoder(**params)

    def _zooms(self, priors: list[np.ndarray], images: ImageCollection) -> list[float]:
        if self.prior_scale == "frame":
            side = self.image_size if self.image_size is not None else min(images.shape(0))
            return [side / min(p.shape) for p in priors]
        zooms = []
        for p in priors:
            w = structure_width(p)
            zooms.append(float(self.prior_scale) / max(w, 1.0))
        return zooms

    # ------------------------------------------------------------------ fit
    def fit(self, X, shape_priors=None):
        """Learn to segment the structure in ``X`` from ``X`` (unlabelled) and the prior masks.

        Parameters
        ----------
        X : array (n, H, W) or (n, H, W, 3), list of arrays of any sizes, list of file paths,
            or a directory / glob
            Unlabelled images of the target modality (uint8, uint16, bool or float in [0, 1]).
        shape_priors : list of 2-D arrays of any sizes, array (n, H, W), list of paths, or a
            directory / glob
            Binary masks of the structure from another modality or dataset (bool, 0/1 or
            0/255; foreground is the larger value).

        Returns
        -------
        self
        """
        self._validate_params()
        # A failed fit must not look fitted, nor keep the attributes of an earlier route.
        for attr in ("encoder_", "refiner_", "collapsed_", "atlas_", "ridge_sigmas_"):
            self.__dict__.pop(attr, None)
        if shape_priors is None:
            self._priors(None)  # the named error, before X is looked at
        images = ImageCollection(X)
        priors = self._priors(shape_priors)
        self.n_channels_in_ = images.n_channels
        crop = self._resolved_crop()
        seed = int(self.random_state) if isinstance(self.random_state, Integral) else int(
            check_random_state(self.random_state).randint(0, 2**31 - 1))
        self.prior_zooms_ = self._zooms(priors, images)
        sampler = PriorSampler(priors, self.prior_zooms_, rotation=float(self.rotation), flips=True)
        base_lr = float((self.encoder_params or {}).get("learning_rate", self.learning_rate))
        adversary = ShapeAdversary(sampler, weight=self.prior_weight, learning_rate=self.discriminator_lr * base_lr,
                                   slope=self.discriminator_slope, spectral_norm=self.spectral_norm, seed=seed + 1,
                                   area_weight=self.prior_area_weight, crop_size=crop, binarize=self.binarize,
                                   dark_threshold=0.04 if self.fov == "auto" else None)
        self.prior_fraction_ = adversary.area
        enc = self._make_encoder(crop, seed)
        enc._adversary = adversary
        enc._lr_halvings = self.lr_halvings
        self.fit_time_ = {}
        t0 = time.perf_counter()
        self._log(f"training Local Discrimination with a shape prior on {len(images)} images, "
                  f"{len(priors)} prior masks, {enc.max_iter} steps")
        # Decoded once: in-memory images are converted here and shared by both fits.
        train = X if images.from_files else [images[i] for i in range(len(images))]
        try:
            enc.fit(train)
        finally:
            enc.__dict__.pop("_adversary", None)
            enc.__dict__.pop("_lr_halvings", None)
        self.fit_time_["pretraining"] = time.perf_counter() - t0
        self.encoder_ = enc
        self.refiner_ = None

        source = self._pseudo_source(priors)
        ld_labels = source == "ld"
        if source == "ridge":
            classical_label = functools.partial(self._ridge_label, sigmas=self._ridge_sigmas(priors))
        elif source == "atlas":
            self.atlas_ = shape_atlas(priors)
            classical_label = self._atlas_label
        modes, fovs, classical = [], [], []
        for i in range(len(images)):
            img = images[i] if images.from_files else train[i]
            fovs.append(self._fov(img))
            modes.append(self._ld_proba(img))
            if self.refine and not ld_labels:
                classical.append(classical_label(img, fovs[-1]))
        inside = np.concatenate([m[self.inference][f] for m, f in zip(modes, fovs)])
        self.cluster_fraction_ = float((inside > 0.5).mean()) if inside.size else 0.0
        self.collapsed_ = not 0.002 <= self.cluster_fraction_ <= 0.6
        if self.collapsed_:
            message = (f"cluster 0 covers {100 * self.cluster_fraction_:.2f} % of the field of view: the shape "
                       "prior did not take (collapse). Try more steps, another prior_scale, or a higher prior_weight")
            if ld_labels or not self.refine:
                warnings.warn(message + ("; refinement is skipped." if ld_labels and self.refine else "."),
                              ClusterCollapseWarning, stacklevel=2)
                if ld_labels:
                    return self
            else:
                # The answer will come from the refinement network trained on the classical
                # pseudo-labels, which do not depend on cluster 0: a warning on every such fit
                # would be noise. Only the LD modes of predict are affected.
                self._log(message.split(":")[0] + f"; predict uses the network trained on {source} pseudo-labels, "
                          "only mode='cluster' / 'similarity' are affected")
        if self.refine:
            t0 = time.perf_counter()
            pseudo = [self._pseudo_label(m, f) for m, f in zip(modes, fovs)] if ld_labels else classical
            self.pseudo_label_fraction_ = float(np.mean([np.mean(p != _UNSURE) for p in pseudo]))
            self._log(f"refinement on {self.pseudo_label_fraction_ * 100:.1f} % confident pixels "
                      f"({self.pseudo_labels_} pseudo-labels), {self.refine_iter} steps")
            refiner = TransferSegmenter(
                encoder=FrozenEstimator(enc), freeze="none", max_iter=self.refine_iter, batch_size=self.batch_size,
                crop_size=crop, image_size=enc.image_size_, loss="dice+bce", rotation=float(min(self.rotation, 180)),
                ignore_label=_UNSURE, device=self.device, precision=self.precision,
                channels_last=self.channels_last, checkpoint_dir=self.checkpoint_dir, random_state=seed + 2,
                verbose=self.verbose,
            )
            if not any((p == 1).any() for p in pseudo) or not any((p == 0).any() for p in pseudo):
                warnings.warn(f"the {self.pseudo_labels_} pseudo-labels have no confident "
                              f"{'structure' if not any((p == 1).any() for p in pseudo) else 'background'} pixel: "
                              "refinement is skipped", ClusterCollapseWarning, stacklevel=2)
                return self
            refiner.fit(train, pseudo)  # both classes present: checked above
            self.refiner_ = refiner
            self.fit_time_["refinement"] = time.perf_counter() - t0
        return self

    def _pseudo_source(self, priors: list[np.ndarray]) -> str:
        """"ld", "ridge" or "atlas"; "auto" picks ridges for thin priors (median width at most 12
        working px), the atlas for thick ones in a fixed orientation and framing, else LD."""
        if self.pseudo_labels != "auto":
            self.pseudo_labels_ = self.pseudo_labels
        else:
            widths = [structure_width(p) * z for p, z in zip(priors, self.prior_zooms_)]
            if float(np.nanmedian(widths)) <= 12:
                self.pseudo_labels_ = "ridge"
            elif self.rotation == 0 and self.prior_scale == "frame":
                self.pseudo_labels_ = "atlas"
            else:
                self.pseudo_labels_ = "ld"
        return self.pseudo_labels_

    def _ridge_sigmas(self, priors: list[np.ndarray]) -> tuple[float, ...]:
        """Ridge scales in working pixels from the priors' median structure width there
        (a tube of width w answers most near sigma = w / 2)."""
        widths = [structure_width(p) * z for p, z in zip(priors, self.prior_zooms_)]
        top = max(1.5, 0.75 * float(np.nanmedian(widths)))
        self.ridge_sigmas_ = tuple(float(v) for v in np.geomspace(1.0, top, 4))
        return self.ridge_sigmas_

    def _ridge_label(self, img: np.ndarray, fov: np.ndarray, sigmas) -> np.ndarray:
        """Ridge pseudo-labels of one float (H, W, C) image at its own resolution: the working
        scales are converted to its pixels; a 10-working-pixel rim inside the field of view
        (whose edge is a strong false ridge) is left unsure."""
        from scipy import ndimage as ndi

        from .ridges import ridge_pseudo_labels

        scale = 1.0 if self.image_size is None else min(img.shape[:2]) / self.image_size
        inner = ndi.binary_erosion(fov, iterations=max(1, int(round(10 * scale)))) if not fov.all() else fov
        label = ridge_pseudo_labels(img, inner, sigmas=[s * scale for s in sigmas], polarity=self.ridge_polarity,
                                    unsure_value=_UNSURE,
                                    fraction_range=(0.5 * self.prior_fraction_, 2 * self.prior_fraction_))
        label[fov & ~inner] = _UNSURE
        return label

    def _atlas_label(self, img: np.ndarray, fov: np.ndarray) -> np.ndarray:
        """Atlas pseudo-labels of one float (H, W, C) image at its own resolution: 1 structure,
        0 background, unsure where ``|2p - 1| < refine_confidence``; outside the field of view 0."""
        p = atlas_probability(img, self.atlas_, fov, working_size=256)
        label = (p > 0.5).astype(np.uint8)
        label[np.abs(2 * p - 1) < self.refine_confidence] = _UNSURE
        label[~fov] = 0
        return label

    def _pseudo_label(self, modes: dict[str, np.ndarray], fov: np.ndarray) -> np.ndarray:
        a, s = modes["cluster"], modes["similarity"]
        mean = (a + s) / 2
        label = (mean > 0.5).astype(np.uint8)
        sure = ((a > 0.5) == (s > 0.5)) & (np.abs(2 * mean - 1) >= self.refine_confidence)
        label[~sure] = _UNSURE
        label[~fov] = 0  # outside the field of view is background, and certain
        return label

    # ------------------------------------------------------------------ inference
    def _fov(self, img: np.ndarray) -> np.ndarray:
        if self.fov == "auto" and img.shape[2] == 3:
            return fundus_field_of_view(img)
        return np.ones(img.shape[:2], bool)

    def _ld_proba(self, img: np.ndarray) -> dict[str, np.ndarray]:
        """Both LD inference modes for one float (H, W, C) image: P(structure) (H, W) each."""
        enc = self.encoder_
        out = enc._infer([img], ("embed", "cluster"))
        z, a = out["embed"][0], out["cluster"][0]  # (H, W, D), (H, W, K)
        flat_z = z.reshape(-1, z.shape[-1])
        flat_a = a.reshape(-1, a.shape[-1])
        regions = flat_a.T @ flat_z  # (K, D)
        regions /= np.maximum(np.linalg.norm(regions, axis=1, keepdims=True), 1e-12)
        logits = (flat_z @ regions.T) / 0.2
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        sim = (e[:, 0] / e.sum(axis=1)).reshape(z.shape[:2])
        return {"cluster": a[..., 0].copy(), "similarity": sim.astype(np.float32)}

    def _regions(self, images: ImageCollection, mask) -> list[np.ndarray]:
        if mask is None:
            return [self._fov(images[i]) for i in range(len(images))]
        masks = list(mask) if not (isinstance(mask, np.ndarray) and mask.ndim == 2) else [mask]
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} field-of-view masks for {len(images)} images")
        out = []
        for i, m in enumerate(masks):
            m = np.asarray(m)
            if m.shape != images.shape(i):
                raise ValueError(f"field-of-view mask {i} is {m.shape} but {images.describe(i)} is "
                                 f"{images.shape(i)}")
            out.append(m.astype(bool))
        return out

    def predict_proba(self, X, mask=None, mode=None):
        """Probability of background and structure for every pixel, at the input resolution.

        Parameters
        ----------
        X : images, as in :meth:`fit`
        mask : bool array (n, H, W) or list of (H_i, W_i), optional
            Field of view; pixels outside it get probability 0 for the structure. Default:
            the ``fov`` parameter's.
        mode : {"refined", "similarity", "cluster"} or None
            Which model answers: the refinement U-Net, or the LD network by similarity
            re-assignment or by its cluster-0 map. None: "refined" when there is a
            refinement network, else the ``inference`` parameter.

        Returns
        -------
        P : float32 array (n, H, W, 2) (a list of (H_i, W_i, 2) for list input);
            ``P[..., 1]`` is the structure's probability, ``P[..., 0] = 1 - P[..., 1]``.
        """
        check_is_fitted(self, "encoder_")
        mode = self._mode(mode)
        images = ImageCollection(X, n_channels=self.n_channels_in_)
        regions = self._regions(images, mask)
        results = []
        for i in range(len(images)):
            img = images[i]
            if mode == "refined":
                p = self.refiner_._proba([img], self._test_time_views())[0][..., 1]
            else:
                p = self._ld_proba(img)[mode]
            p = np.where(regions[i], p, 0.0).astype(np.float32)
            results.append(np.stack([1 - p, p], axis=-1))
        if images.is_ragged:
            return results
        return np.stack(results) if results else np.empty((0, 0, 0, 2), np.float32)

    def _test_time_views(self):
        tta = self.test_time_augmentation
        if tta == "auto":
            return "dihedral" if self.rotation >= 90 else None
        if tta not in (None, "flips", "dihedral"):
            raise ValueError(f"test_time_augmentation must be 'auto', None, 'flips' or 'dihedral', got {tta!r}")
        return tta

    def _mode(self, mode):
        if mode is None:
            return "refined" if getattr(self, "refiner_", None) is not None else self.inference
        if mode not in ("refined", "similarity", "cluster"):
            raise ValueError(f"mode must be 'refined', 'similarity', 'cluster' or None, got {mode!r}")
        if mode == "refined" and getattr(self, "refiner_", None) is None:
            raise ValueError("no refinement network: fitted with refine=False or the run collapsed")
        return mode

    def predict(self, X, mask=None, mode=None):
        """Boolean masks of the structure at each input's resolution.

        Parameters
        ----------
        X : images, as in :meth:`fit`
        mask : bool array (n, H, W) or list of (H_i, W_i), optional
            Field of view, as in :meth:`predict_proba`.
        mode : {"refined", "similarity", "cluster"} or None
            Which model answers, as in :meth:`predict_proba`.

        Returns
        -------
        ndarray of shape (n, H, W), bool
            False outside the field of view (a list of (H_i, W_i) arrays for list input).
        """
        proba = self.predict_proba(X, mask=mask, mode=mode)
        if isinstance(proba, list):
            return [p[..., 1] > 0.5 for p in proba]
        return proba[..., 1] > 0.5

    def score(self, X, y, mask=None, mode=None):
        """Mean Dice over images, inside the field of view.

        Parameters
        ----------
        X : images
        y : bool masks (n, H, W) or list of (H_i, W_i): the true structure
        mask : field of view as in :meth:`predict_proba` (also restricts the true masks)

        Returns
        -------
        float in [0, 1]
        """
        images = ImageCollection(X, n_channels=self.n_channels_in_)
        truth = [np.asarray(t).astype(bool) for t in (list(y) if not isinstance(y, np.ndarray) or y.ndim == 3
                                                       else [y])]
        if len(truth) != len(images):
            raise ValueError(f"{len(truth)} masks for {len(images)} images")
        regions = self._regions(images, mask)
        pred = self.predict(X, mask=regions, mode=mode)
        return dice(list(pred), truth, mask=regions)

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[skuld] {msg}", file=sys.stderr, flush=True)

    def __setstate__(self, state):
        state.setdefault("test_time_augmentation", None)  # models saved before the parameter existed
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags


def fundus_field_of_view(image, erosion: int = 3) -> np.ndarray:
    """The field of view of a fundus photograph: the bright disc inside the black frame.

    Parameters
    ----------
    image : array (H, W, 3) or (H, W), uint8/uint16/float in [0, 1]
    erosion : int
        Pixels removed along the border of the disc (its edge is not anatomy).

    Returns
    -------
    bool array (H, W): True inside the field of view. The largest connected region brighter
    than 15 % of the image's 99th-percentile intensity, with holes filled; the whole image
    when that region covers more than 98 % of it or less than 10 % (no black frame).

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.shape_guided import fundus_field_of_view
    >>> yy, xx = np.mgrid[:100, :120]
    >>> photo = np.zeros((100, 120, 3), np.uint8)
    >>> photo[(yy - 50) ** 2 + (xx - 60) ** 2 < 45 ** 2] = (180, 90, 40)   # a disc in a black frame
    >>> fov = fundus_field_of_view(photo, erosion=0)
    >>> fov.shape, bool(fov[50, 60]), bool(fov[2, 2])
    ((100, 120), True, False)
    """
    from scipy import ndimage as ndi

    from .io import to_float_image

    img = to_float_image(image)
    gray = img.mean(axis=2)
    threshold = max(0.02, 0.15 * float(np.percentile(gray, 99)))
    bright = gray > threshold
    labels, n = ndi.label(bright)
    if n == 0:
        return np.ones(gray.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    region = ndi.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    fraction = region.mean()
    if fraction > 0.98 or fraction < 0.10:
        return np.ones(gray.shape, bool)
    if erosion:
        region = ndi.binary_erosion(region, iterations=int(erosion))
    return region
