"""OneShotLandmarkLocator: label one image, find the same anatomical points in every other."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch.nn import functional as F

from . import matching
from .correspondence import fine_tune_correspondence
from .data import resize, to_tensor, working_shape
from .encoder import LocalDiscriminativeEncoder, resolve_encoder
from .inference import check_min_size, pad_to_multiple
from .io import ImageCollection
from .metrics import mean_radial_error
from .training import autocast, intensity_normalizer, normalize, resolve_device, resolve_precision

#: Encoder settings the locator pretrains with when it is given no encoder: no rotation
#: invariance and no mirror flips (anatomy that shares one orientation must not be matched to
#: its mirror image or to a turned copy; measured in docs/landmarks.md) and center-sensitive
#: Gaussian patch pooling (the paper's setting for this task).
ENCODER_DEFAULTS = dict(rotation=0.0, rot90=False, flips=False, patch_sigma=0.25, image_size=256, crop_size=160,
                        max_iter=600)

FEATURE_SETS = {"embedding": ("embed",), "multiscale": ("embed", 2, 3, 4), "encoder": (2, 3, 4)}


@dataclass
class _View:
    """Everything the matching needs from one image."""

    shape: tuple[int, int]  # input (H, W)
    work_shape: tuple[int, int]  # working (h, w)
    features: list  # unit-norm (C_i, h, w) maps, center-sensitive (smoothed)
    pyramid: dict  # refine scale -> (C, H_s, W_s) intensity image
    frame: torch.Tensor | None = None  # (C, H_f, W_f) the level fixed landmarks are searched at, or None


#: Gaussian sigma (pixels of the search level) of the blur that :meth:`_frame_search` subtracts:
#: a structure fixed to the device (an ear-rod ring) is thin and sharp, while the head behind
#: it, which moves, fills the low frequencies; left in, the moving head decides the correlation
#: (machine porion on the shared cephalograms, frame search alone: 53 px mean error on raw
#: intensities, 7.1 px with this sigma, 10.4 px with 3; docs/landmarks.md).
_FRAME_DETAIL_SIGMA = 1.5


def _fine_detail_patches(image: torch.Tensor, centres: np.ndarray, size: int) -> torch.Tensor:
    """(L, C, size, size) patches of ``image`` around ``(x, y)`` centres with their Gaussian
    blur (:data:`_FRAME_DETAIL_SIGMA`) subtracted. Blurred patch by patch, with a margin that
    is cropped off: only these pixels are needed, not the whole (about 1000 x 1300) level."""
    margin = math.ceil(3 * _FRAME_DETAIL_SIGMA)  # the blur kernel's radius
    c = torch.as_tensor(centres, dtype=torch.float32, device=image.device)
    wide = matching.sample_patches(image, c, size + 2 * margin)
    detail = wide - matching.gaussian_blur(wide, _FRAME_DETAIL_SIGMA)
    return detail[..., margin:margin + size, margin:margin + size]


class OneShotLandmarkLocator(BaseEstimator):
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
        A fitted encoder (used as it is), the path of one saved with ``joblib.dump``, an
        unfitted one (a copy is fitted on ``X_unlabeled`` and the templates), or None: fit
        pretrains one with :data:`ENCODER_DEFAULTS` updated by ``encoder_params``.
        ``sklearn.base.clone`` (grid searches, Pipelines) clones an encoder given as an
        estimator, which the next ``fit`` then retrains; wrap a fitted encoder in
        ``sklearn.frozen.FrozenEstimator``, or pass its path, to keep it.
    encoder_params : dict or None, default=None
        Parameters of the encoder pretrained when ``encoder=None`` (for example
        ``{"max_iter": 2000}``); ``random_state`` is passed on.
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
    prior_weight : float, default=1.0
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
        correspondence (:func:`skuld.correspondence.fine_tune_correspondence`; about 1.3 s a
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

    _parameter_constraints = {
        "encoder": [LocalDiscriminativeEncoder, FrozenEstimator, str, os.PathLike, None],
        "encoder_params": [dict, None],
        "features": [StrOptions(set(FEATURE_SETS))],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "search_radius": [Interval(Real, 0, None, closed="neither"), None],
        "shape_model": [StrOptions({"similarity", "affine"})],
        "refine_scales": [tuple, list],
        "refine_patch": [Interval(Integral, 3, None, closed="left"), tuple, list],
        "refine_radius": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "prior_weight": [Interval(Real, 0, None, closed="left")],
        "shape_tolerance": [Interval(Real, 0, None, closed="neither"), None],
        "correspondence_steps": [Interval(Integral, 0, None, closed="left")],
        "n_pseudo_templates": [Interval(Integral, 0, None, closed="left")],
        "fixed_landmarks": ["array-like", None],
        "fusion": [StrOptions({"median", "maps"})],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        encoder=None,
        encoder_params=None,
        features="encoder",
        sigma=0.03,
        search_radius=0.1,
        shape_model="similarity",
        refine_scales=(1, 2, 4),
        refine_patch=48,
        refine_radius=8,
        prior_weight=1.0,
        shape_tolerance=0.045,
        correspondence_steps=150,
        n_pseudo_templates=4,
        fixed_landmarks=None,
        fusion="median",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.encoder = encoder
        self.encoder_params = encoder_params
        self.features = features
        self.sigma = sigma
        self.search_radius = search_radius
        self.shape_model = shape_model
        self.refine_scales = refine_scales
        self.refine_patch = refine_patch
        self.refine_radius = refine_radius
        self.prior_weight = prior_weight
        self.shape_tolerance = shape_tolerance
        self.correspondence_steps = correspondence_steps
        self.n_pseudo_templates = n_pseudo_templates
        self.fixed_landmarks = fixed_landmarks
        self.fusion = fusion
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[skuld] {msg}", flush=True)

    def _check_landmarks(self, landmarks, shape, name: str) -> np.ndarray:
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(f"landmarks of {name} must be an (L, 2) array of (x, y) points with L >= 1, got shape {pts.shape}")
        if np.isinf(pts).any():
            raise ValueError(f"landmarks of {name} contain inf")
        missing = np.isnan(pts).any(axis=1)
        if missing.all():
            raise ValueError(f"every landmark of {name} is NaN")
        if missing.any():
            warnings.warn(f"{name}: landmarks {np.flatnonzero(missing).tolist()} are NaN and are ignored in this template",
                          stacklevel=3)
        h, w = shape
        ok = pts[~missing]
        outside = (ok[:, 0] < -0.5) | (ok[:, 0] > w - 0.5) | (ok[:, 1] < -0.5) | (ok[:, 1] > h - 0.5)
        if outside.any():
            idx = np.flatnonzero(~missing)[outside].tolist()
            raise ValueError(f"landmarks {idx} of {name} lie outside the {h} x {w} image "
                             "(expected (x, y) = (column, row) pixel coordinates)")
        return pts

    def _check_fixed_landmarks(self, n_landmarks: int) -> np.ndarray:
        mask = np.zeros(n_landmarks, bool)
        if self.fixed_landmarks is None:
            return mask
        idx = np.asarray(self.fixed_landmarks)
        if idx.ndim > 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"fixed_landmarks must be a list of landmark indices (ints), got {self.fixed_landmarks!r}")
        idx = idx.astype(int).ravel()
        bad = idx[(idx < 0) | (idx >= n_landmarks)]
        if bad.size:
            raise ValueError(f"fixed_landmarks {bad.tolist()} are not landmark indices (0 to {n_landmarks - 1}: "
                             f"the templates have {n_landmarks} landmarks)")
        mask[idx] = True
        return mask

    def _resolve_encoder(self, templates: ImageCollection, X_unlabeled) -> LocalDiscriminativeEncoder:
        enc = resolve_encoder(self.encoder)
        if enc is not None and hasattr(enc, "model_"):
            return enc  # fitted: used as it is
        if enc is None:
            params = dict(ENCODER_DEFAULTS)
            params.update(self.encoder_params or {})
            params.setdefault("random_state", self.random_state)
            params.setdefault("verbose", self.verbose)
            enc = LocalDiscriminativeEncoder(**params)
        unl = None if X_unlabeled is None else ImageCollection(X_unlabeled, n_channels=templates.n_channels)
        if unl is None:
            train = templates.paths if templates.from_files else [templates[i] for i in range(len(templates))]
        elif unl.from_files and templates.from_files:
            train = unl.paths + templates.paths  # files stay files: the encoder reads and caches them itself
        else:
            train = [unl[i] for i in range(len(unl))] + [templates[i] for i in range(len(templates))]
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
        for s in self.refine_scales:
            if not isinstance(s, Real) or s <= 0:
                raise ValueError(f"refine_scales must hold positive numbers, got {self.refine_scales}")
        self._per_level(self.refine_patch, "refine_patch")
        self._per_level(self.refine_radius, "refine_radius")
        single = not isinstance(template, (list, tuple))
        templates = ImageCollection([template] if single else list(template))
        marks = [landmarks] if single else list(landmarks)
        if len(marks) != len(templates):
            raise ValueError(f"{len(templates)} template images but {len(marks)} landmark arrays")
        pts = [self._check_landmarks(m, templates.shape(i), templates.describe(i)) for i, m in enumerate(marks)]
        if len({len(p) for p in pts}) != 1:
            raise ValueError(f"every template needs the same number of landmarks, got {[len(p) for p in pts]}")
        for i in range(len(templates)):
            check_min_size(*templates.shape(i), templates.describe(i))
        self.encoder_ = self._resolve_encoder(templates, X_unlabeled)
        if self.encoder_.n_channels_in_ != templates.n_channels:
            raise ValueError(f"the encoder takes {self.encoder_.n_channels_in_}-channel images but the template has "
                             f"{templates.n_channels}")
        self.n_landmarks_ = len(pts[0])
        self.fixed_landmarks_ = self._check_fixed_landmarks(self.n_landmarks_)
        if self.fixed_landmarks_.any() and not self.refine_scales and not isinstance(self.refine_patch, Integral):
            raise ValueError("fixed_landmarks with refine_scales=() need refine_patch as one int (the side of "
                             f"the correlated patch), got {self.refine_patch!r}")
        self.n_channels_in_ = templates.n_channels
        self.templates_ = [(templates[i], p) for i, p in enumerate(pts)]
        self.n_templates_ = len(pts)
        self._reset_cache()
        if self.correspondence_steps and X_unlabeled is not None:
            n_anatomical = int((~self.fixed_landmarks_).sum())
            if n_anatomical >= 3:
                self._fine_tune_on_correspondences(X_unlabeled)
            else:  # a thin-plate spline needs three points
                which = " not in fixed_landmarks" if self.fixed_landmarks_.any() else ""
                warnings.warn(f"correspondence fine-tuning needs at least 3 landmarks{which}, the templates have "
                              f"{n_anatomical}: skipped", stacklevel=2)
        if self.n_pseudo_templates and X_unlabeled is not None:
            self._add_pseudo_templates(X_unlabeled)
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fine_tune_on_correspondences(self, X_unlabeled) -> None:
        """Locate every unlabelled image, then fine-tune a copy of the encoder so that points
        the pseudo landmarks put in correspondence get the same descriptor."""
        pool = ImageCollection(X_unlabeled, n_channels=self.n_channels_in_)
        self._log(f"locating {len(pool)} unlabelled images for correspondence fine-tuning")
        images, marks = [], []

        def keep(img, pts):
            # At the working resolution: the fine-tuning sees no more, and 100 full-size
            # cephalograms would hold about 1 GB.
            shape = working_shape(*img.shape[:2], self.encoder_.image_size_)
            images.append(resize(to_tensor(img), shape).permute(1, 2, 0).numpy())
            # Fixed landmarks stay where the device holds them while the anatomy moves, so
            # they are no anatomical correspondence (keeping them made no measurable
            # difference on the cephalograms; docs/landmarks.md).
            marks.append(np.where(self.fixed_landmarks_[:, None], np.nan,
                                  matching.rescale_points(pts, img.shape[:2], shape)))

        for img, pts in self.templates_:
            keep(img, pts)
        for i in range(len(pool)):
            img = pool[i]
            keep(img, self._locate(img)[0])
        self.encoder_ = fine_tune_correspondence(
            self.encoder_, images, marks, steps=self.correspondence_steps, levels=FEATURE_SETS["encoder"],
            sigma=self.sigma, device=self._device(), random_state=self.random_state, verbose=self.verbose)
        self._reset_cache()

    def _add_pseudo_templates(self, X_unlabeled) -> None:
        """Self-training: add the unlabelled images whose predictions survive a round trip.

        Each candidate is located from the given templates; then, used as the only template,
        it locates the given templates' landmarks back. The candidates with the smallest
        round-trip (cycle) error join the templates with their predicted landmarks.
        """
        pool = ImageCollection(X_unlabeled, n_channels=self.n_channels_in_)
        self._log(f"choosing {self.n_pseudo_templates} pseudo templates among {len(pool)} images")
        given = self._templates()
        scored = []
        for i in range(len(pool)):
            img = pool[i]
            view = self._view(img)
            pts, _, _ = self._locate(img, view=view)
            candidate = [self._template(view, pts)]
            errors = []
            for (t_img, t_pts), (t_view, *_rest) in zip(self.templates_, given):
                back, _, _ = self._locate(t_img, templates=candidate, view=t_view)
                errors.append(np.nanmean(np.linalg.norm(back - t_pts, axis=1)))
            scored.append((float(np.mean(errors)), i, img, pts))
        scored.sort(key=lambda item: item[0])
        self.pseudo_template_errors_ = [s[0] for s in scored[: self.n_pseudo_templates]]
        for _, _, img, pts in scored[: self.n_pseudo_templates]:
            self.templates_.append((img, pts))
        self._reset_cache()

    # ------------------------------------------------------------------ features
    def _reset_cache(self) -> None:
        self._template_cache = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_template_cache"] = None
        return state

    def _device(self) -> torch.device:
        return resolve_device(self.device, fall_back=True)

    @torch.inference_mode()
    def _view(self, img: np.ndarray) -> _View:
        enc = self.encoder_
        device = self._device()
        model = enc.model_.to(device).eval()
        big_h, big_w = img.shape[:2]
        h, w = working_shape(big_h, big_w, enc.image_size_)
        full = to_tensor(img).to(device)
        x = resize(full, (h, w))
        mean, std = intensity_normalizer(enc.normalization, enc.n_channels_in_)
        xn, _, _ = pad_to_multiple(normalize(x[None], mean, std))
        if enc.channels_last:
            xn = xn.contiguous(memory_format=torch.channels_last)
        wanted = FEATURE_SETS[self.features]
        sigma = self.sigma * min(h, w)
        with autocast(device, resolve_precision(enc.precision, device)):
            stages = model.encoder(xn)
            raw = [model.embed(model.decoder(stages)) if level == "embed" else stages[level] for level in wanted]
        maps = []
        for level, m in zip(wanted, raw):
            # Smooth each map at its own stride (cheap for the coarse encoder maps), then
            # bring it to the working resolution.
            stride = 1 if level == "embed" else model.encoder.strides[level]
            m = matching.center_sensitive_map(m[0], sigma / stride)
            m = F.interpolate(m[None], size=xn.shape[-2:], mode="bilinear", align_corners=False)[0, :, :h, :w]
            maps.append(F.normalize(m, dim=0))
        pyramid = {}
        for s in self.refine_scales:
            ph, pw = working_shape(big_h, big_w, min(round(enc.image_size_ * s), min(big_h, big_w))) if enc.image_size_ else (big_h, big_w)
            pyramid[s] = resize(full, (ph, pw))
        frame = None
        if self.fixed_landmarks_.any():
            frame = pyramid[max(self.refine_scales)] if self.refine_scales else x
        return _View(shape=(big_h, big_w), work_shape=(h, w), features=maps, pyramid=pyramid, frame=frame)

    def _templates(self):
        """(view, landmarks at working resolution, valid mask, descriptors) per template."""
        # Template views depend on these parameters; set_params between calls must not reuse them.
        key = (self.features, self.sigma, tuple(self.refine_scales), str(self._device()),
               self.fixed_landmarks_.tobytes(), tuple(id(img) for img, _ in self.templates_))
        if getattr(self, "_template_cache", None) is None or self._template_key != key:
            self._template_key = key
            cache = [self._template(self._view(img), pts) for img, pts in self.templates_]
            self._template_cache = cache
        return self._template_cache

    @staticmethod
    def _template(view: _View, pts: np.ndarray):
        valid = ~np.isnan(pts).any(axis=1)
        work = matching.rescale_points(np.where(valid[:, None], pts, 0.0), view.shape, view.work_shape)
        t = torch.as_tensor(work, dtype=torch.float32, device=view.features[0].device)
        desc = [F.normalize(matching.sample_points(f, t), dim=1) for f in view.features]
        return view, work, valid, desc

    # ------------------------------------------------------------------ matching
    def _similarity_maps(self, view: _View, templates) -> torch.Tensor:
        """(L, h, w) mean cosine similarity over feature levels and templates."""
        total = None
        weight = torch.zeros(self.n_landmarks_, device=view.features[0].device)
        for _, _, valid, desc in templates:
            v = torch.as_tensor(valid, device=weight.device, dtype=torch.float32)
            for f, d in zip(view.features, desc):
                s = torch.einsum("lc,chw->lhw", d, f) * v[:, None, None]
                total = s if total is None else total + s
            weight += v * len(view.features)
        return total / weight.clamp_min(1)[:, None, None]

    def _locate(self, img: np.ndarray, return_similarity: bool = False, templates=None, view=None):
        """Landmarks of one image: ((L, 2) (x, y) at the input resolution, (L,) confidence, maps)."""
        templates = self._templates() if templates is None else templates
        view = self._view(img) if view is None else view
        if self.fusion == "maps" or len(templates) == 1:
            return self._locate_with(view, templates, return_similarity)
        # Each template votes on its own; the per-landmark median of the votes is robust to a
        # template that got a landmark wrong (missing landmarks do not vote).
        votes = [self._locate_with(view, [t], return_similarity) for t in templates]
        pts = np.stack([v[0] for v in votes])
        pts[~np.stack([t[2] for t in templates])] = np.nan
        conf = np.stack([v[1] for v in votes])
        maps = np.mean([v[2] for v in votes], axis=0) if return_similarity else None
        return np.nanmedian(pts, axis=0), np.median(conf, axis=0), maps

    def _locate_with(self, view: _View, templates, return_similarity: bool):
        h, w = view.work_shape
        sims = self._similarity_maps(view, templates)
        points, conf = matching.subpixel_argmax(sims)
        # Fixed landmarks do not move with the anatomy: no shape transform may be fitted to them.
        primary_pts, primary_valid = templates[0][1], templates[0][2] & ~self.fixed_landmarks_
        if self.search_radius is not None and primary_valid.any():
            radius = self.search_radius * min(h, w)
            found = points.cpu().double().numpy()
            tr, _ = matching.robust_transform(primary_pts[primary_valid], found[primary_valid], radius / 2,
                                              kind=self.shape_model)
            expected = matching.apply_transform(primary_pts, tr)
            # Landmarks missing from the primary template: use where they were found.
            expected = np.where(primary_valid[:, None], expected, found)
            ys = torch.arange(h, device=sims.device, dtype=torch.float32)
            xs = torch.arange(w, device=sims.device, dtype=torch.float32)
            e = torch.as_tensor(expected, dtype=torch.float32, device=sims.device)
            d2 = (xs[None, None, :] - e[:, 0, None, None]) ** 2 + (ys[None, :, None] - e[:, 1, None, None]) ** 2
            windowed = sims.masked_fill(d2 > radius**2, float("-inf"))
            points, conf = matching.subpixel_argmax(windowed)
        pts = points.cpu().double().numpy()
        confidence = conf.cpu().double().numpy()
        anatomical = primary_valid.any()
        if self.refine_scales and anatomical:
            pts, confidence = self._refine(view, pts, templates, sims, self.refine_scales)
        if self.shape_tolerance is not None and anatomical:
            pts, confidence = self._enforce_shape(view, pts, confidence, templates, sims)
        if self.fixed_landmarks_.any():
            found, peak = self._frame_search(view, templates)
            use = ~np.isnan(found[:, 0])  # a fixed landmark no template has keeps the coarse estimate
            pts[use], confidence[use] = found[use], peak[use]
        out = matching.rescale_points(pts, view.work_shape, view.shape)
        # A landmark is a point of the image: a shape transform may put it outside, the
        # answer stays inside (pixel centres from 0 to W - 1 and H - 1).
        out[:, 0] = out[:, 0].clip(0, view.shape[1] - 1)
        out[:, 1] = out[:, 1].clip(0, view.shape[0] - 1)
        return out, np.clip(confidence, 0, 1), (sims.cpu().numpy() if return_similarity else None)

    def _per_level(self, value, name: str) -> list[int]:
        n = len(self.refine_scales)
        values = [value] * n if isinstance(value, Integral) else list(value)
        if len(values) != n:
            raise ValueError(f"{name} must be an int or one int per refine_scales level ({n}), got {value}")
        return [int(v) for v in values]

    def _enforce_shape(self, view: _View, pts: np.ndarray, confidence: np.ndarray, templates, sims):
        """Replace landmarks that break the template's shape by the shape's prediction, refined
        at the finer levels only (so that the coarse look-alike cannot win again)."""
        t_pts, t_valid = templates[0][1], templates[0][2] & ~self.fixed_landmarks_
        tol = self.shape_tolerance * min(view.work_shape)
        tr, _ = matching.robust_transform(t_pts[t_valid], pts[t_valid], tol, kind="affine")
        expected = matching.apply_transform(t_pts, tr)
        off = t_valid & (np.linalg.norm(expected - pts, axis=1) > tol)
        if not off.any():
            return pts, confidence
        pts, confidence = pts.copy(), confidence.copy()
        fine = tuple(s for s in self.refine_scales if s > 1)
        fixed, conf = expected[off], np.zeros(off.sum())
        if fine:
            fixed, conf = self._refine(view, expected, templates, sims, fine)
            fixed, conf = fixed[off], conf[off]
        pts[off], confidence[off] = fixed, conf
        return pts, confidence

    def _refine(self, view: _View, work_pts: np.ndarray, templates, sims: torch.Tensor, scales):
        """Coarse-to-fine correlation refinement; points in and out at working resolution."""
        patch_sizes = self._per_level(self.refine_patch, "refine_patch")
        radii = self._per_level(self.refine_radius, "refine_radius")
        pts = work_pts
        conf = np.zeros(len(pts))
        for s in scales:
            level = list(self.refine_scales).index(s)
            p, r = patch_sizes[level], radii[level]
            q_img = view.pyramid[s]
            q_shape = tuple(q_img.shape[-2:])
            cur = matching.rescale_points(pts, view.work_shape, q_shape)
            cur_t = torch.as_tensor(cur, dtype=torch.float32, device=q_img.device)
            regions = matching.sample_patches(q_img, cur_t, p + 2 * r)
            total = torch.zeros((len(pts), 2 * r + 1, 2 * r + 1), device=q_img.device)
            count = torch.zeros(len(pts), device=q_img.device)
            for t_view, t_work, valid, _ in templates:
                t_img = t_view.pyramid[s]
                t_pts = matching.rescale_points(t_work, t_view.work_shape, tuple(t_img.shape[-2:]))
                moving = valid & ~self.fixed_landmarks_
                moving = moving if moving.any() else valid
                a, _ = matching.fit_transform(t_pts[moving], cur[moving], kind="similarity")
                inv = torch.as_tensor(np.linalg.inv(a), dtype=torch.float32, device=q_img.device)
                patches = matching.sample_patches(t_img, torch.as_tensor(t_pts, dtype=torch.float32, device=q_img.device),
                                                  p, linear=inv)
                v = torch.as_tensor(valid, dtype=torch.float32, device=q_img.device)
                total += matching.ncc_maps(regions, patches) * v[:, None, None]
                count += v
            ncc = total / count.clamp_min(1)[:, None, None]
            score = ncc
            if self.prior_weight:
                # The coarse similarity at every candidate keeps the correlation from jumping
                # to a look-alike that the descriptors, with their larger context, rule out.
                offs = torch.arange(-r, r + 1, device=q_img.device, dtype=torch.float32)
                grid = torch.stack(torch.meshgrid(offs, offs, indexing="xy"), -1)  # (dx, dy)
                cand = cur_t[:, None, None, :] + grid[None]
                sx = view.work_shape[1] / q_shape[1]
                sy = view.work_shape[0] / q_shape[0]
                cand_work = torch.stack([(cand[..., 0] + 0.5) * sx - 0.5, (cand[..., 1] + 0.5) * sy - 0.5], -1)
                h, w = view.work_shape
                g = torch.stack([(cand_work[..., 0] + 0.5) / w * 2 - 1, (cand_work[..., 1] + 0.5) / h * 2 - 1], -1)
                prior = F.grid_sample(sims[:, None], g, mode="bilinear", padding_mode="border", align_corners=False)
                score = score + self.prior_weight * prior[:, 0]
            peak, _ = matching.subpixel_argmax(score)
            cur = cur + (peak.cpu().double().numpy() - r)
            pts = matching.rescale_points(cur, q_shape, view.work_shape)
            # Confidence: the correlation alone at the chosen cell. The prior-weighted score
            # exceeds 1 wherever the coarse similarity is high, so clipped it said 1 nearly always.
            best = score.flatten(1).argmax(dim=1, keepdim=True)
            conf = ncc.flatten(1).gather(1, best)[:, 0].cpu().double().numpy()
        return pts, conf

    def _frame_search(self, view: _View, templates):
        """Fixed landmarks: each template's patch of fine detail correlated within
        ``search_radius`` of the template's own coordinates, scaled to the query's size (no
        shape transform: the device holds them still). Returns ((L, 2) points at working
        resolution, NaN for the other landmarks, (L,) correlation peaks); the per-landmark
        median over the templates that have the landmark."""
        idx = np.flatnonzero(self.fixed_landmarks_)
        q = view.frame
        q_shape = tuple(q.shape[-2:])
        # search_radius=None searches the whole image, as the coarse stage does.
        radius = max(q_shape) if self.search_radius is None else max(1, round(self.search_radius * min(q_shape)))
        if self.refine_scales:
            finest = list(self.refine_scales).index(max(self.refine_scales))
            size = self._per_level(self.refine_patch, "refine_patch")[finest]
        else:
            size = int(self.refine_patch)  # fit accepts only an int when there are no refinement levels
        votes, peaks = [], []
        for t_view, t_work, valid, _ in templates:
            t_frame = t_view.frame
            t_pts = matching.rescale_points(t_work[idx], t_view.work_shape, tuple(t_frame.shape[-2:]))
            centres = matching.rescale_points(t_work[idx], t_view.work_shape, q_shape)
            regions = _fine_detail_patches(q, centres, size + 2 * radius)
            patches = _fine_detail_patches(t_frame, t_pts, size)
            peak, value = matching.subpixel_argmax(matching.ncc_maps(regions, patches))
            found = centres + (peak.cpu().double().numpy() - radius)
            has = valid[idx]
            votes.append(np.where(has[:, None], found, np.nan))
            peaks.append(np.where(has, value.cpu().double().numpy(), np.nan))
        pts = np.full((self.n_landmarks_, 2), np.nan)
        conf = np.full(self.n_landmarks_, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no template has it
            pts[idx] = matching.rescale_points(np.nanmedian(votes, axis=0), q_shape, view.work_shape)
            conf[idx] = np.nanmedian(peaks, axis=0)
        return pts, conf

    # ------------------------------------------------------------------ predict
    def _collect(self, X) -> ImageCollection:
        check_is_fitted(self, "templates_")
        return ImageCollection(X, n_channels=self.n_channels_in_)

    def _predict_all(self, X, return_similarity=False):
        images = self._collect(X)
        coords = np.empty((len(images), self.n_landmarks_, 2))
        conf = np.empty((len(images), self.n_landmarks_))
        maps = []
        for i in range(len(images)):
            img = images[i]
            check_min_size(*img.shape[:2], images.describe(i))
            coords[i], conf[i], m = self._locate(img, return_similarity)
            maps.append(m)
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
            image (``0 <= x <= W - 1``, ``0 <= y <= H - 1``).
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
            level (or the coarse cosine similarity when refinement is off), clipped to [0, 1].
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
