"""ShapeGuidedSegmenter: segment a structure without labels in its modality, guided by shapes from another."""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..inference import predict_class_maps
from ..io import ImageCollection
from ..metrics import dice
from ..nn.shape_prior import PriorSampler, structure_width
from ..segmentation import (
    UNSURE,
    ShapePriorTerm,
    atlas_labels,
    check_priors,
    field_of_view,
    fields_of_view,
    ld_labels,
    ld_probabilities,
    prior_zooms,
    ridge_labels,
    ridge_sigmas,
    shape_atlas,
    structure_fraction,
)
from . import auto
from .base import SkuldEstimator, constraints, draw_seed
from .encoder import LocalDiscriminativeEncoder, resolve_encoder
from .segmenter import TransferSegmenter

#: The encoder :meth:`ShapeGuidedSegmenter.default_encoder` makes (with the estimator's own
#: rotation and runtime): the settings measured on DRIVE (docs/shape_guided.md).
ENCODER_DEFAULTS = dict(n_clusters=8, max_iter=900, batch_size=4, crop_size="auto", image_size=512, learning_rate=1e-3,
                        pd_fraction=0.2, lr_halvings=3, crop_scale="native")

#: Parameters of earlier releases that the ``encoder`` recipe now holds.
_DEPRECATED = ("n_clusters", "max_iter", "batch_size", "crop_size", "image_size", "learning_rate", "pd_fraction",
               "lr_halvings", "encoder_params")


class ClusterCollapseWarning(UserWarning):
    """The shape-tied cluster covers almost nothing or almost everything: the run failed.

    Examples
    --------
    >>> import warnings
    >>> from skuld import ClusterCollapseWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", ClusterCollapseWarning)   # e.g. in a grid search
    ...     warnings.warn("cluster 0 covers 0.00 %", ClusterCollapseWarning)
    """


class ShapeGuidedSegmenter(SkuldEstimator):
    """Segment a structure in images without any labels of them, guided by shapes from elsewhere.

    Local Discrimination (the ``encoder`` recipe) is trained on the unlabelled images
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
    of the priors, that guides an intensity EM in each image (:mod:`skuld.segmentation.atlas`).

    Parameters
    ----------
    encoder : LocalDiscriminativeEncoder or None, default=None
        The recipe of the Local Discrimination network trained here with the shape prior
        (unfitted: the shape prior is part of its training). None: :meth:`default_encoder`,
        which has ``n_clusters=8`` (cluster 0 is the structure), ``max_iter=900`` (about 25
        minutes on 2 CPU cores), ``image_size=512`` (thin structures need it high: the paper's
        for fundus), ``lr_halvings=3`` and crops cut at the working resolution
        (``crop_scale="native"``), so that thin structures keep their width.
        What the encoder learns comes from the recipe; where and how it runs (``device``,
        ``precision``, ``channels_last``, ``checkpoint_dir``, ``verbose``), the structure's
        orientation (``rotation``, with quarter turns when it is 90 or more) and, when the
        recipe has none, its ``random_state`` come from this estimator. Its crop size, batch
        size and working resolution are the refinement network's too.
    n_clusters, max_iter, batch_size, crop_size, image_size, learning_rate, pd_fraction, lr_halvings, encoder_params : deprecated
        The encoder's parameters, repeated here before ``encoder`` existed: they still work
        (with a ``FutureWarning``) and will be removed in the next release; pass
        ``encoder=ShapeGuidedSegmenter.default_encoder(...)`` with them instead.
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
        The discriminator's learning rate as a fraction of the encoder's ``learning_rate``
        (the paper's 0.05).
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
        "ridge": :func:`skuld.segmentation.ridges.ridge_pseudo_labels` at scales from the priors' median
        structure width (``ridge_sigmas_``), every pixel of the field of view labelled but a
        10-pixel rim, thresholded by the triangle method kept within half and twice the
        priors' foreground fraction (``prior_fraction_``). "atlas":
        :func:`skuld.segmentation.atlas.atlas_probability` with the priors' mean, stretched to each image's
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
    device, precision, channels_last :
        As in :class:`LocalDiscriminativeEncoder`: of the encoder trained here (whichever
        recipe) and of the refinement network.
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
    >>> encoder = ShapeGuidedSegmenter.default_encoder(max_iter=4, image_size=128, crop_size=64)
    >>> seg = ShapeGuidedSegmenter(encoder, refine_iter=2, rotation=0, random_state=0)
    >>> # lungs: the atlas route; a few steps only to show the calls
    >>> seg.fit(data.images[:3], shape_priors=[data.masks[3]]).predict(data.images[:1]).shape
    (1, 512, 512)
    """

    _parameter_constraints = constraints(
        "rotation", "device", "precision", "channels_last", "checkpoint_dir", "random_state", "verbose",
        encoder=[LocalDiscriminativeEncoder, None],
        prior_weight=[Interval(Real, 0, None, closed="neither")],
        prior_area_weight=[Interval(Real, 0, None, closed="left")],
        binarize=["boolean"],
        discriminator_lr=[Interval(Real, 0, None, closed="neither")],
        discriminator_slope=[Interval(Real, 0, 1, closed="left")],
        spectral_norm=["boolean"],
        prior_scale=[StrOptions({"frame"}), Interval(Real, 0, None, closed="neither")],
        inference=[StrOptions({"similarity", "cluster"})],
        refine=["boolean"],
        refine_iter=[Interval(Integral, 1, None, closed="left")],
        refine_confidence=[Interval(Real, 0, 1, closed="left")],
        pseudo_labels=[StrOptions({"auto", "ld", "ridge", "atlas"})],
        test_time_augmentation=[StrOptions({"auto", "flips", "dihedral"}), None],
        ridge_polarity=[StrOptions({"dark", "bright"})],
        fov=[StrOptions({"auto"}), None],
        **{name: "no_validation" for name in _DEPRECATED},
    )

    def __init__(self, encoder=None, *, prior_weight=3.0, prior_area_weight=0.0, binarize=True, discriminator_lr=0.05,
                 discriminator_slope=0.2, spectral_norm=True, prior_scale="frame", rotation=180.0,
                 inference="similarity", refine=True, refine_iter=1000, refine_confidence=0.5, pseudo_labels="auto",
                 test_time_augmentation="auto", ridge_polarity="dark", fov="auto", device="auto", precision="auto",
                 channels_last=True, checkpoint_dir=None, random_state=None, verbose=0, n_clusters="deprecated",
                 max_iter="deprecated", batch_size="deprecated", crop_size="deprecated", image_size="deprecated",
                 learning_rate="deprecated", pd_fraction="deprecated", lr_halvings="deprecated",
                 encoder_params="deprecated"):
        self.encoder = encoder
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
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.pd_fraction = pd_fraction
        self.lr_halvings = lr_halvings
        self.encoder_params = encoder_params

    @classmethod
    def default_encoder(cls, **params) -> LocalDiscriminativeEncoder:
        """The encoder recipe used when ``encoder=None``, with ``params`` changed.

        Parameters
        ----------
        **params
            Any :class:`LocalDiscriminativeEncoder` parameters, over :data:`ENCODER_DEFAULTS`.

        Returns
        -------
        LocalDiscriminativeEncoder
            Unfitted.
        """
        return LocalDiscriminativeEncoder(**{**ENCODER_DEFAULTS, **params})

    def _encoder_recipe(self) -> LocalDiscriminativeEncoder:
        """The encoder to train: the recipe (or the deprecated parameters') with this estimator's
        orientation and runtime (:func:`skuld.estimators.encoder.resolve_encoder`'s rule)."""
        old = self._deprecated(_DEPRECATED, "pass encoder=ShapeGuidedSegmenter.default_encoder(...) with them instead")
        if old and self.encoder is not None:
            raise ValueError(f"give the encoder's parameters in encoder=, not also as {sorted(old)}")
        if self.encoder is not None and hasattr(self.encoder, "model_"):
            raise ValueError("encoder is fitted, but the shape prior is part of its training: give an unfitted "
                             "LocalDiscriminativeEncoder (a recipe), e.g. ShapeGuidedSegmenter.default_encoder()")
        extra = dict(old.pop("encoder_params", None) or {})
        unknown = set(extra) - set(LocalDiscriminativeEncoder().get_params())
        if unknown:
            raise ValueError(f"encoder_params has unknown LocalDiscriminativeEncoder parameters: {sorted(unknown)}")
        settings = dict(device=self.device, precision=self.precision, channels_last=self.channels_last,
                        checkpoint_dir=self.checkpoint_dir, verbose=self.verbose, rotation=float(self.rotation),
                        rot90=self.rotation >= 90)
        recipe = resolve_encoder(self.encoder or self.default_encoder(**old), random_state=self.random_state,
                                 settings=settings)
        return recipe.set_params(**extra)  # encoder_params (deprecated) came last, as before

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
            check_priors(None)  # the named error, before X is looked at
        enc = self._encoder_recipe()
        images = ImageCollection(X, intensity_range=enc.intensity_range)
        priors = check_priors(shape_priors)
        self.n_channels_in_ = images.n_channels
        seed = draw_seed(self.random_state)
        device = self._runtime().device
        crop = auto.crop_size(device) if enc.crop_size == "auto" else enc.crop_size
        side = auto.image_size(device) if enc.image_size == "auto" else enc.image_size
        self.prior_zooms_ = prior_zooms(priors, self.prior_scale, side if side is not None else min(images.shape(0)))
        sampler = PriorSampler(priors, self.prior_zooms_, rotation=float(self.rotation), flips=True)
        term = ShapePriorTerm(sampler, weight=self.prior_weight, learning_rate=self.discriminator_lr * enc.learning_rate,
                              slope=self.discriminator_slope, spectral_norm=self.spectral_norm, seed=seed + 1,
                              area_weight=self.prior_area_weight, crop_size=crop, binarize=self.binarize,
                              dark_threshold=0.04 if self.fov == "auto" else None)
        self.prior_fraction_ = term.area
        self.fit_time_ = {}
        t0 = time.perf_counter()
        self._log(f"training Local Discrimination with a shape prior on {len(images)} images, "
                  f"{len(priors)} prior masks, {enc.max_iter} steps")
        # Decoded once: in-memory images are converted here and shared by both fits.
        train = X if images.from_files else [images[i] for i in range(len(images))]
        self.encoder_ = enc.fit(train, loss_terms=[term])
        self.fit_time_["pretraining"] = time.perf_counter() - t0
        self.refiner_ = None
        widths = [structure_width(p) * z for p, z in zip(priors, self.prior_zooms_)]  # in working pixels
        source = self.pseudo_labels_ = (auto.pseudo_label_route(widths, self.rotation, self.prior_scale)
                                        if self.pseudo_labels == "auto" else self.pseudo_labels)
        label = self._classical_labels(priors, widths, source) if source != "ld" else None
        fovs, modes, classical = [], [], []
        for i in range(len(images)):
            img = images[i] if images.from_files else train[i]
            fovs.append(field_of_view(img, self.fov))
            modes.append(self._ld_modes(img))
            if self.refine and label is not None:
                classical.append(label(img, fovs[-1]))
        if not self._check_collapse(modes, fovs, source):
            return self
        if self.refine:
            pseudo = [ld_labels(m, f, self.refine_confidence) for m, f in zip(modes, fovs)] if source == "ld" \
                else classical
            self._refine(train, pseudo, seed)
        return self

    def _classical_labels(self, priors: list[np.ndarray], widths: list[float], source: str):
        """The function ``(image, fov) -> pseudo-labels`` of the ridge or atlas route."""
        if source == "ridge":
            self.ridge_sigmas_ = ridge_sigmas(widths)
            bounds = (0.5 * self.prior_fraction_, 2 * self.prior_fraction_)
            image_size = self.encoder_.input_spec_.image_size
            return lambda img, fov: ridge_labels(img, fov, self.ridge_sigmas_, image_size, self.ridge_polarity, bounds)
        self.atlas_ = shape_atlas(priors)
        return lambda img, fov: atlas_labels(img, self.atlas_, fov, self.refine_confidence)

    def _check_collapse(self, modes, fovs, source: str) -> bool:
        """Record how much of the field of view cluster 0 takes; False when the "ld" route collapsed."""
        self.cluster_fraction_ = structure_fraction([m[self.inference] for m in modes], fovs)
        self.collapsed_ = not 0.002 <= self.cluster_fraction_ <= 0.6
        if not self.collapsed_:
            return True
        message = (f"cluster 0 covers {100 * self.cluster_fraction_:.2f} % of the field of view: the shape "
                   "prior did not take (collapse). Try more steps, another prior_scale, or a higher prior_weight")
        if source == "ld" or not self.refine:
            warnings.warn(message + ("; refinement is skipped." if source == "ld" and self.refine else "."),
                          ClusterCollapseWarning, stacklevel=3)
            return source != "ld"
        # The answer will come from the refinement network trained on the classical
        # pseudo-labels, which do not depend on cluster 0: a warning on every such fit would be
        # noise. Only the LD modes of predict are affected.
        self._log(message.split(":")[0] + f"; predict uses the network trained on {source} pseudo-labels, "
                  "only mode='cluster' / 'similarity' are affected")
        return True

    def _refine(self, train, pseudo: list[np.ndarray], seed: int) -> None:
        t0 = time.perf_counter()
        self.pseudo_label_fraction_ = float(np.mean([np.mean(p != UNSURE) for p in pseudo]))
        self._log(f"refinement on {self.pseudo_label_fraction_ * 100:.1f} % confident pixels "
                  f"({self.pseudo_labels_} pseudo-labels), {self.refine_iter} steps")
        missing = [name for name, value in (("structure", 1), ("background", 0))
                   if not any((p == value).any() for p in pseudo)]
        if missing:
            warnings.warn(f"the {self.pseudo_labels_} pseudo-labels have no confident {missing[0]} pixel: "
                          "refinement is skipped", ClusterCollapseWarning, stacklevel=3)
            return
        enc = self.encoder_
        refiner = TransferSegmenter(
            encoder=FrozenEstimator(enc), freeze="none", max_iter=self.refine_iter, batch_size=enc.batch_size,
            crop_size=enc.crop_size_, image_size=enc.image_size_, loss="dice+bce", rotation=float(min(self.rotation, 180)),
            ignore_label=UNSURE, device=self.device, precision=self.precision, channels_last=self.channels_last,
            checkpoint_dir=self.checkpoint_dir, random_state=seed + 2, verbose=self.verbose)
        self.refiner_ = refiner.fit(train, pseudo)
        self.fit_time_["refinement"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ inference
    def _ld_modes(self, img: np.ndarray) -> dict[str, np.ndarray]:
        """Both LD inference modes for one float (H, W, C) image: P(structure) (H, W) each."""
        E, P = self.encoder_.transform_with_clusters([img])
        return ld_probabilities(E[0], P[0])

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
        images = self.encoder_.input_spec_.collect(X)
        regions = fields_of_view(images, mask, self.fov)
        tta = auto.test_time_views(self.rotation) if self.test_time_augmentation == "auto" \
            else self.test_time_augmentation
        results = []
        for i in range(len(images)):
            img = images[i]
            if mode == "refined":
                r = self.refiner_
                p = predict_class_maps(r.net_, ImageCollection([img]), len(r.classes_), r.input_spec_,
                                       self._runtime(fall_back=True), tta)[0][..., 1]
            else:
                p = self._ld_modes(img)[mode]
            p = np.where(regions[i], p, 0.0).astype(np.float32)
            results.append(np.stack([1 - p, p], axis=-1))
        if images.is_ragged:
            return results
        return np.stack(results) if results else np.empty((0, 0, 0, 2), np.float32)

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
        mode : as in :meth:`predict_proba`

        Returns
        -------
        float in [0, 1]
        """
        check_is_fitted(self, "encoder_")
        images = self.encoder_.input_spec_.collect(X)
        truth = [np.asarray(t).astype(bool) for t in (list(y) if not isinstance(y, np.ndarray) or y.ndim == 3
                                                       else [y])]
        if len(truth) != len(images):
            raise ValueError(f"{len(truth)} masks for {len(images)} images")
        regions = fields_of_view(images, mask, self.fov)
        return dice(list(self.predict(X, mask=regions, mode=mode)), truth, mask=regions)


    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
