"""OneShotLandmarkLocator: label one image, find the same anatomical points in every other."""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import matching
from ..engine import Runtime
from ..io import ImageCollection, combined
from ..landmarks import (
    ENCODER_DEFAULTS,
    FEATURE_SETS,
    MatchConfig,
    check_landmarks,
    describe_image,
    fine_tune_correspondence,
    fixed_mask,
    locate,
    make_template,
    per_level,
    round_trip_error,
)
from ..metrics import mean_radial_error
from ..preprocessing import check_min_size
from .base import SkuldEstimator, constraints
from .encoder import ENCODER_CONSTRAINT, LocalDiscriminativeEncoder, resolve_encoder


class OneShotLandmarkLocator(SkuldEstimator):
    """Find landmarks in new images from one (or a few) labelled images.

    Matching runs coarse to fine. (1) Coarse: every pixel of the query gets a
    center-sensitive descriptor (Gaussian-smoothed, L2-normalised feature maps of a
    :class:`LocalDiscriminativeEncoder`: by default its encoder's maps at strides 4-16, whose
    receptive fields give context; the paper's per-pixel embedding as an option); the cosine
    similarity with each template landmark's descriptor gives one similarity map per landmark
    (Chen et al., section on center-sensitive one-shot localisation). (2) Shape consistency:
    a similarity transform from the template's landmarks to the per-map maxima is fitted
    robustly (two-point hypotheses, inliers within ``search_radius / 2``); each landmark is
    then searched only within ``search_radius`` of where the transform puts it, so a
    look-alike far away cannot win. (3) Refinement: at each of ``refine_scales`` (multiples of the working resolution,
    finer each time), a template patch, resampled into the query's estimated geometry, is
    correlated (normalised cross-correlation) within ``refine_radius`` pixels of the current
    estimate; the peak is located to sub-pixel precision. (4) A robust affine shape check
    re-places outliers. With unlabelled images, ``fit`` also fine-tunes the encoder so that
    points put in correspondence by the pseudo landmarks look alike
    (``correspondence_steps``), and adds pseudo templates (``n_pseudo_templates``); several
    templates vote, and the per-landmark median of their votes is the answer. Landmarks fixed
    to the imaging device rather than to the anatomy (``fixed_landmarks``) skip (1)-(4): they
    are searched around the template's own image coordinates.

    Parameters
    ----------
    encoder : LocalDiscriminativeEncoder, FrozenEstimator, str, path or None, default=None
        A fitted encoder (used as it is), the path of one saved with :func:`skuld.save`, an
        unfitted one (a recipe: a copy is fitted on ``X_unlabeled`` and the templates, with this
        estimator's ``device`` and ``verbose`` and, when the recipe has none, its int
        ``random_state``), or None: the recipe :meth:`default_encoder`
        (:data:`skuld.landmarks.ENCODER_DEFAULTS`).
        ``sklearn.base.clone`` (grid searches, Pipelines) clones an encoder given as an
        estimator, which the next ``fit`` then retrains; wrap a fitted encoder in
        ``sklearn.frozen.FrozenEstimator``, or pass its path, to keep it.
    features : {"encoder", "multiscale", "embedding"}, default="encoder"
        Descriptors of the coarse stage: the encoder's feature maps at strides 4, 8 and 16
        (whose receptive fields give context), the final embedding only (the paper), or both
        (similarities averaged).
    sigma : float, default=0.03
        Standard deviation of the center-sensitive Gaussian averaging, as a fraction of the
        working image's shorter side (0.03 of 256 px is about 8 px).
    search_radius : float or None, default=0.1
        Radius of the coarse search around the shape-predicted position, as a fraction of the
        working image's shorter side. None searches the whole image (the paper).
    shape_model : {"similarity", "affine"}, default="similarity"
        Transform fitted (robustly) from the template landmarks to the coarse maxima when
        ``search_radius`` is set; "affine" also lets the head shear and stretch.
    refine_scales : tuple of float, default=(1, 2, 4)
        Scales, as multiples of the working resolution (capped at the input's own), of the
        correlation refinement levels; () turns refinement off.
    refine_patch : int, default=48
        Side of the correlated template patch in pixels of each refinement level.
    refine_radius : int, default=8
        Search radius of each refinement level in its own pixels.
    coarse_weight : float, default=1.0
        Weight of the coarse similarity map added to the correlation at every refinement
        level (0: correlation alone).
    shape_tolerance : float or None, default=0.045
        Final shape check: an affine transform from the template's landmarks to the refined
        ones is fitted robustly; a landmark farther than this (fraction of the working image's
        shorter side) from where the transform puts it is moved there and refined again at
        the levels finer than the working resolution. None turns the check off.
    correspondence_steps : int, default=150
        Cross-image fine-tuning (needs ``X_unlabeled`` and 3 or more landmarks; skipped with
        a warning with fewer): every unlabelled image is located from the given templates,
        then a copy of the encoder is trained for this many steps to give the same
        descriptor to points that thin-plate splines through these pseudo landmarks put in
        correspondence (:func:`skuld.landmarks.fine_tune_correspondence`; about 1.3 s a
        step on 2 CPU cores for 256-px working images). It trains the encoder's feature
        maps, the descriptors of ``features="encoder"``. 0 turns it off; a given encoder is
        never modified.
    n_pseudo_templates : int, default=4
        Self-training: after fitting, every image of ``X_unlabeled`` is located, then used as
        the only template to locate the given templates' landmarks back; the images with the
        smallest round-trip error join the templates with their predicted landmarks. Needs
        ``X_unlabeled``; without it only the given templates are used.
    fixed_landmarks : array-like of int or None, default=None
        Indices (0-based, into the L landmarks) of landmarks fixed to the imaging device, not
        to the anatomy: for example machine porion, the top of a cephalostat's ear rod, which
        holds still in the image while the skull around it moves. Each is found by normalised
        cross-correlation of the template's patch (``refine_patch`` pixels of the finest
        refinement level, fine detail only: a Gaussian blur of 1.5 px subtracted) within
        ``search_radius`` of the template's own coordinates, scaled to the query's size; they
        take no part in the shape transforms or the correspondence fine-tuning. Which
        landmarks these are is knowledge about the acquisition, not something the locator
        guesses: a landmark next to a fixed structure looks just as still (see
        docs/landmarks.md).
    fusion : {"median", "maps"}, default="median"
        How several templates are combined: "median" locates the landmarks from each
        template separately and takes the per-landmark median of the coordinates; "maps"
        averages their similarity and correlation maps and locates once (faster).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the encoder's pretraining.
    verbose : int, default=0
    encoder_params, prior_weight : deprecated
        ``encoder_params`` (the default encoder's parameters) and ``prior_weight`` (now
        ``coarse_weight``: ShapeGuidedSegmenter's ``prior_weight`` is another thing) still work,
        with a ``FutureWarning``, and will be removed in the next release; pass
        ``encoder=OneShotLandmarkLocator.default_encoder(max_iter=2000)`` instead.

    Attributes
    ----------
    encoder_ : LocalDiscriminativeEncoder
        The encoder used: the one given or pretrained here, fine-tuned on correspondences
        when ``correspondence_steps`` > 0 (then a copy, with ``correspondence_losses_``).
    n_landmarks_ : int
        L, landmarks per image.
    templates_ : list of (image, landmarks)
        The labelled images (as float32 (H, W, C) arrays) and their (L, 2) landmarks; pseudo
        templates come after the given ones.
    n_templates_ : int
        Templates given to :meth:`fit` (not counting pseudo templates).
    fixed_landmarks_ : ndarray of shape (L,), bool
        Which landmarks are searched in the image frame (``fixed_landmarks``).
    n_channels_in_ : int
    pseudo_template_errors_ : list of float
        Round-trip errors (pixels of the given templates) of the chosen pseudo templates.
    fit_time_ : float
        Seconds :meth:`fit` took, pretraining included.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import LocalDiscriminativeEncoder, OneShotLandmarkLocator
    >>> from skuld.datasets import load_cxr_tiny
    >>> X = load_cxr_tiny().images                          # (4, 512, 512) uint8
    >>> enc = LocalDiscriminativeEncoder(max_iter=5, image_size=128, crop_size=64, rotation=0,
    ...                                  rot90=False, random_state=0).fit(X)   # a real fit: ~600 steps
    >>> points = np.array([[150.0, 250.0], [360.0, 250.0]])   # (L, 2) (x, y) in image 0
    >>> loc = OneShotLandmarkLocator(encoder=enc).fit(X[0], points)
    >>> loc.predict(X[1:]).shape                            # (n, L, 2) (x, y) in each image's pixels
    (3, 2, 2)
    >>> np.round(loc.predict(X[:1]), 1)                     # the template finds its own points
    array([[[150., 250.],
            [360., 250.]]])
    """

    _parameter_constraints = constraints(
        "device", "random_state", "verbose",
        encoder=ENCODER_CONSTRAINT,
        features=[StrOptions(set(FEATURE_SETS))],
        sigma=[Interval(Real, 0, None, closed="left")],
        search_radius=[Interval(Real, 0, None, closed="neither"), None],
        shape_model=[StrOptions({"similarity", "affine"})],
        refine_scales=[tuple, list],
        refine_patch=[Interval(Integral, 3, None, closed="left"), tuple, list],
        refine_radius=[Interval(Integral, 1, None, closed="left"), tuple, list],
        coarse_weight=[Interval(Real, 0, None, closed="left")],
        shape_tolerance=[Interval(Real, 0, None, closed="neither"), None],
        correspondence_steps=[Interval(Integral, 0, None, closed="left")],
        n_pseudo_templates=[Interval(Integral, 0, None, closed="left")],
        fixed_landmarks=["array-like", None],
        fusion=[StrOptions({"median", "maps"})],
        encoder_params=[dict, None, StrOptions({"deprecated"})],
        prior_weight=[Interval(Real, 0, None, closed="left"), StrOptions({"deprecated"})],
    )

    def __init__(self, encoder=None, *, features="encoder", sigma=0.03, search_radius=0.1, shape_model="similarity",
                 refine_scales=(1, 2, 4), refine_patch=48, refine_radius=8, coarse_weight=1.0, shape_tolerance=0.045,
                 correspondence_steps=150, n_pseudo_templates=4, fixed_landmarks=None, fusion="median", device="auto",
                 random_state=None, verbose=0, encoder_params="deprecated", prior_weight="deprecated"):
        self.encoder = encoder
        self.features = features
        self.sigma = sigma
        self.search_radius = search_radius
        self.shape_model = shape_model
        self.refine_scales = refine_scales
        self.refine_patch = refine_patch
        self.refine_radius = refine_radius
        self.coarse_weight = coarse_weight
        self.shape_tolerance = shape_tolerance
        self.correspondence_steps = correspondence_steps
        self.n_pseudo_templates = n_pseudo_templates
        self.fixed_landmarks = fixed_landmarks
        self.fusion = fusion
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.encoder_params = encoder_params
        self.prior_weight = prior_weight

    @classmethod
    def default_encoder(cls, **params) -> LocalDiscriminativeEncoder:
        """The encoder recipe pretrained when ``encoder=None``, with ``params`` changed.

        Parameters
        ----------
        **params
            Any :class:`LocalDiscriminativeEncoder` parameters, over
            :data:`skuld.landmarks.ENCODER_DEFAULTS`.

        Returns
        -------
        LocalDiscriminativeEncoder
            Unfitted.
        """
        return LocalDiscriminativeEncoder(**{**ENCODER_DEFAULTS, **params})

    # ------------------------------------------------------------------ fit
    def _match_config(self) -> MatchConfig:
        """The matching settings, validated (names the parameter of a wrong per-level list)."""
        for s in self.refine_scales:
            if not isinstance(s, Real) or s <= 0:
                raise ValueError(f"refine_scales must hold positive numbers, got {self.refine_scales}")
        n = len(self.refine_scales)
        patches = per_level(self.refine_patch, n, "refine_patch")
        coarse_weight = self.coarse_weight if self.prior_weight == "deprecated" else self.prior_weight
        frame_patch = patches[list(self.refine_scales).index(max(self.refine_scales))] if n else self.refine_patch
        return MatchConfig(
            fixed=getattr(self, "fixed_landmarks_", np.zeros(0, bool)), search_radius=self.search_radius,
            shape_model=self.shape_model, refine_scales=tuple(self.refine_scales), refine_patch=patches,
            refine_radius=per_level(self.refine_radius, n, "refine_radius"), coarse_weight=coarse_weight,
            shape_tolerance=self.shape_tolerance, frame_patch=frame_patch, fusion=self.fusion)

    def _encoder_window(self):
        """The intensity range the encoder reads with, where known before it is resolved."""
        enc = getattr(self.encoder, "estimator", self.encoder)  # FrozenEstimator(encoder)
        spec = getattr(enc, "input_spec_", None)
        return spec.intensity_range if spec is not None else getattr(enc, "intensity_range", None)

    def _fit_encoder(self, templates: ImageCollection, X_unlabeled) -> LocalDiscriminativeEncoder:
        old = self._deprecated(["encoder_params"], "pass encoder=OneShotLandmarkLocator.default_encoder(...) instead")
        enc = resolve_encoder(self.encoder or self.default_encoder(**(old.get("encoder_params") or {})),
                              random_state=self.random_state, settings=dict(device=self.device, verbose=self.verbose))
        if hasattr(enc, "model_"):
            return enc  # fitted: used as it is
        parts = [templates] if X_unlabeled is None else [
            ImageCollection(X_unlabeled, n_channels=templates.n_channels, intensity_range=templates.intensity_range),
            templates]
        train = combined(*parts)
        self._log(f"pretraining an encoder on {len(train)} images for {enc.max_iter} steps")
        return enc.fit(train)

    def fit(self, template, landmarks, X_unlabeled=None):
        """Learn the landmarks of one or a few labelled images.

        Parameters
        ----------
        template : image or list of images
            One image (an ``(H, W)`` or ``(H, W, 3)`` array or a file path), or a list of a few
            labelled images (arrays of any sizes or paths).
        landmarks : array of shape (L, 2), or a list of such arrays (one per template)
            ``(x, y)`` pixel coordinates: x is the column, y the row, origin at the top-left
            pixel's centre. NaN rows are missing points (ignored, with a warning); every
            template has the same L.
        X_unlabeled : images, optional
            Unlabelled images of the same kind, used to pretrain the encoder when
            ``encoder=None`` and as the pool of pseudo templates.

        Returns
        -------
        self
        """
        start = time.perf_counter()
        self._validate_params()
        if landmarks is None:
            raise ValueError("OneShotLandmarkLocator requires y to be passed, but the target y is None: give the "
                             "templates' landmarks, an (L, 2) array of (x, y) points per template")
        self.__dict__.pop("fixed_landmarks_", None)
        if self._deprecated(["prior_weight"], "prior_weight is now coarse_weight", 3) and self.coarse_weight != 1.0:
            raise ValueError("give coarse_weight (prior_weight is its deprecated name), not both")
        self._match_config()  # the named errors before any long work
        single = not isinstance(template, (list, tuple))
        templates = ImageCollection([template] if single else list(template), intensity_range=self._encoder_window())
        marks = [landmarks] if single else list(landmarks)
        if len(marks) != len(templates):
            raise ValueError(f"{len(templates)} template images but {len(marks)} landmark arrays")
        pts = [check_landmarks(m, templates.shape(i), templates.describe(i)) for i, m in enumerate(marks)]
        if len({len(p) for p in pts}) != 1:
            raise ValueError(f"every template needs the same number of landmarks, got {[len(p) for p in pts]}")
        for i in range(len(templates)):
            check_min_size(*templates.shape(i), templates.describe(i))
        fixed = fixed_mask(self.fixed_landmarks, len(pts[0]))
        if fixed.any() and not self.refine_scales and not isinstance(self.refine_patch, Integral):
            raise ValueError("fixed_landmarks with refine_scales=() need refine_patch as one int (the side of "
                             f"the correlated patch), got {self.refine_patch!r}")
        self.encoder_ = self._fit_encoder(templates, X_unlabeled)
        if self.encoder_.n_channels_in_ != templates.n_channels:
            raise ValueError(f"the encoder takes {self.encoder_.n_channels_in_}-channel images but the template has "
                             f"{templates.n_channels}")
        if self.encoder_.input_spec_.intensity_range != templates.intensity_range:  # a saved encoder's own range
            templates = self.encoder_.input_spec_.collect([template] if single else list(template))
        self.n_landmarks_, self.fixed_landmarks_ = len(pts[0]), fixed
        self.n_channels_in_ = templates.n_channels
        self.templates_ = [(templates[i], p) for i, p in enumerate(pts)]
        self.n_templates_ = len(pts)
        self._template_cache = None
        if self.correspondence_steps and X_unlabeled is not None:
            n_anatomical = int((~fixed).sum())
            if n_anatomical >= 3:
                self._fine_tune_on_correspondences(self.encoder_.input_spec_.collect(X_unlabeled))
            else:  # a thin-plate spline needs three points
                which = " not in fixed_landmarks" if fixed.any() else ""
                warnings.warn(f"correspondence fine-tuning needs at least 3 landmarks{which}, the templates have "
                              f"{n_anatomical}: skipped", stacklevel=2)
        if self.n_pseudo_templates and X_unlabeled is not None:
            self._add_pseudo_templates(self.encoder_.input_spec_.collect(X_unlabeled))
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fine_tune_on_correspondences(self, pool: ImageCollection) -> None:
        """Locate every unlabelled image, then fine-tune a copy of the encoder so that points
        the pseudo landmarks put in correspondence get the same descriptor."""
        self._log(f"locating {len(pool)} unlabelled images for correspondence fine-tuning")
        spec, images, marks = self.encoder_.input_spec_, [], []

        def keep(img, pts):
            # At the working resolution: the fine-tuning sees no more, and 100 full-size
            # cephalograms would hold about 1 GB. Fixed landmarks stay where the device holds
            # them while the anatomy moves: no anatomical correspondence.
            images.append(spec.working_image(img).permute(1, 2, 0).numpy())
            marks.append(np.where(self.fixed_landmarks_[:, None], np.nan,
                                  matching.rescale_points(pts, img.shape[:2], images[-1].shape[:2])))

        for img, pts in self.templates_:
            keep(img, pts)
        for i in range(len(pool)):
            img = pool[i]
            keep(img, self._locate(img).points)
        self.encoder_ = fine_tune_correspondence(
            self.encoder_, images, marks, steps=self.correspondence_steps, levels=FEATURE_SETS["encoder"],
            sigma=self.sigma, device=self._runtime_for_matching().device, random_state=self.random_state,
            verbose=self.verbose)
        self._template_cache = None

    def _add_pseudo_templates(self, pool: ImageCollection) -> None:
        """Self-training: the unlabelled images whose predictions survive a round trip
        (:func:`skuld.landmarks.round_trip_error`) join the templates."""
        self._log(f"choosing {self.n_pseudo_templates} pseudo templates among {len(pool)} images")
        given, cfg = self._templates(), self._match_config()
        given_points = [p for _, p in self.templates_]
        scored = []
        for i in range(len(pool)):
            img = pool[i]
            features = self._describe(img)
            pts = locate(features, given, cfg).points
            scored.append((round_trip_error(make_template(features, pts), given, given_points, cfg), i, img, pts))
        scored.sort(key=lambda item: item[0])
        self.pseudo_template_errors_ = [s[0] for s in scored[: self.n_pseudo_templates]]
        self.templates_ += [(img, pts) for _, _, img, pts in scored[: self.n_pseudo_templates]]
        self._template_cache = None

    # ------------------------------------------------------------------ features
    def _runtime_for_matching(self) -> Runtime:
        enc = self.encoder_
        return Runtime.resolve(self.device, enc.precision, enc.channels_last, fall_back=True)

    def _describe(self, img: np.ndarray):
        runtime = self._runtime_for_matching()
        model = self.encoder_.model_.to(runtime.device, memory_format=runtime.memory_format).eval()
        return describe_image(model, self.encoder_.input_spec_, runtime, img, self.features, sigma=self.sigma,
                              refine_scales=tuple(self.refine_scales), with_frame=bool(self.fixed_landmarks_.any()))

    def _templates(self):
        """The templates as the matching uses them, cached (set_params between calls must not reuse them)."""
        key = (self.features, self.sigma, tuple(self.refine_scales), str(self._runtime_for_matching().device),
               self.fixed_landmarks_.tobytes(), tuple(id(img) for img, _ in self.templates_))
        if getattr(self, "_template_cache", None) is None or self._template_key != key:
            self._template_key = key
            self._template_cache = [make_template(self._describe(img), pts) for img, pts in self.templates_]
        return self._template_cache

    def _locate(self, img: np.ndarray, return_similarity: bool = False):
        return locate(self._describe(img), self._templates(), self._match_config(), return_similarity)

    def __getstate__(self):
        state = super().__getstate__()
        state["_template_cache"] = None
        return state


    # ------------------------------------------------------------------ predict
    def _predict_all(self, X, return_similarity=False):
        check_is_fitted(self, "templates_")
        images = self.encoder_.input_spec_.collect(X)
        coords = np.empty((len(images), self.n_landmarks_, 2))
        conf = np.empty((len(images), self.n_landmarks_))
        maps = []
        for i in range(len(images)):
            img = images[i]
            check_min_size(*img.shape[:2], images.describe(i))
            found = self._locate(img, return_similarity)
            coords[i], conf[i] = found.points, found.confidence
            maps.append(found.similarity)
        return coords, conf, maps

    def predict(self, X, return_similarity: bool = False):
        """Landmarks of every image.

        Parameters
        ----------
        X : images
            An ``(n, H, W)`` or ``(n, H, W, 3)`` array, a list of arrays of any sizes, paths,
            a directory or a glob pattern (as :meth:`LocalDiscriminativeEncoder.fit`).
        return_similarity : bool, default=False
            Also return the coarse stage's similarity maps.

        Returns
        -------
        landmarks : float64 array of shape (n, L, 2)
            ``(x, y)`` pixel coordinates in each input image's own resolution, within the
            image (``0 <= x <= W - 1``, ``0 <= y <= H - 1``); NaN for a landmark that no
            template has (given as NaN in every template).
        similarity : list of n float32 arrays of shape (L, h_i, w_i), only if ``return_similarity``
            Mean cosine similarity of every pixel to each template landmark at the working
            resolution ``(h_i, w_i)`` (shorter side ``encoder_.image_size_``); a working pixel
            ``(x, y)`` maps to the input by :func:`skuld.matching.rescale_points`.
        """
        coords, _, maps = self._predict_all(X, return_similarity)
        return (coords, maps) if return_similarity else coords

    def predict_confidence(self, X):
        """Landmarks and a confidence for each.

        Parameters
        ----------
        X : array of shape (n, H, W) or (n, H, W, C), list of arrays or paths, or str
            Images of any sizes.

        Returns
        -------
        landmarks : ndarray of shape (n, L, 2), float64
            ``(x, y)`` in each image's pixels, as :meth:`predict`.
        confidence : ndarray of shape (n, L), float64, in [0, 1]
            The similarity at the predicted point: the correlation of the last refinement
            level (or the coarse cosine similarity when refinement is off), clipped to [0, 1];
            NaN where the landmark is NaN.
        """
        coords, conf, _ = self._predict_all(X)
        return coords, conf

    def score(self, X, landmarks):
        """Negative mean radial error of :meth:`predict` on ``X`` (higher is better).

        Parameters
        ----------
        X : array of shape (n, H, W) or (n, H, W, C), list of arrays or paths, or str
        landmarks : array-like of shape (n, L, 2)
            True ``(x, y)`` in each image's pixels; NaN points are left out.

        Returns
        -------
        float
            Minus the mean radial error in pixels.
        """
        return -mean_radial_error(self.predict(X), np.asarray(landmarks, dtype=np.float64))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
