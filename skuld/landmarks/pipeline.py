"""The one-shot landmark matching pipeline, coarse to fine, as plain functions.

For a query image (:class:`~skuld.landmarks.ImageFeatures`) and templates
(:class:`~skuld.landmarks.Template`), :func:`locate` runs the stages with the settings of a
:class:`MatchConfig`:

1. :func:`similarity_maps`: the cosine similarity of every query pixel's descriptor with
   each template landmark's (the coarse stage);
2. :func:`coarse_points`: the maxima, searched within ``search_radius`` of where a robust
   similarity (or affine) transform from the template's landmarks puts them, so that a
   look-alike far away cannot win;
3. :func:`refine`: at each refinement level, normalised cross-correlation of template
   patches (resampled into the query's estimated geometry) around the estimate, plus the
   coarse similarity, to sub-pixel precision;
4. :func:`enforce_shape`: a robust affine check that re-places outliers;
5. :func:`frame_search`: landmarks fixed to the imaging device, searched around the
   template's own image coordinates instead;
6. fusion of several templates: the per-landmark median of their votes, or one pass on
   their averaged maps.

Points are ``(x, y)`` pixel coordinates (x the column), origin at the top-left pixel's
centre; "working" points are at the encoder's working resolution.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch
from torch.nn import functional as F

from .. import matching
from .features import ImageFeatures, Template

#: Gaussian sigma (pixels of the search level) of the blur that :func:`frame_search` subtracts:
#: a structure fixed to the device (an ear-rod ring) is thin and sharp, while the head behind
#: it, which moves, fills the low frequencies; left in, the moving head decides the correlation
#: (machine porion on the shared cephalograms, frame search alone: 53 px mean error on raw
#: intensities, 7.1 px with this sigma, 10.4 px with 3; docs/landmarks.md).
FRAME_DETAIL_SIGMA = 1.5


@dataclass(frozen=True)
class MatchConfig:
    """Settings of the matching stages (the locator's parameters, validated).

    Attributes
    ----------
    fixed : bool array of shape (L,)
        Landmarks fixed to the imaging device (searched by :func:`frame_search`).
    search_radius : float or None, default=0.1
        Coarse search radius around the shape-predicted position, as a fraction of the working
        image's shorter side; None searches the whole image.
    shape_model : {"similarity", "affine"}, default="similarity"
    refine_scales : tuple of float, default=(1, 2, 4)
    refine_patch, refine_radius : tuple of int, one per refinement level
    coarse_weight : float, default=1.0
        Weight of the coarse similarity added to the correlation at every level.
    shape_tolerance : float or None, default=0.045
    frame_patch : int, default=48
        Side of the patch correlated for fixed landmarks.
    fusion : {"median", "maps"}, default="median"

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.landmarks import MatchConfig
    >>> MatchConfig(fixed=np.zeros(3, bool)).refine_patch
    (48, 48, 48)
    """

    fixed: np.ndarray
    search_radius: float | None = 0.1
    shape_model: str = "similarity"
    refine_scales: tuple = (1, 2, 4)
    refine_patch: tuple = (48, 48, 48)
    refine_radius: tuple = (8, 8, 8)
    coarse_weight: float = 1.0
    shape_tolerance: float | None = 0.045
    frame_patch: int = 48
    fusion: str = field(default="median")


@dataclass
class Located:
    """Landmarks found in one image.

    Attributes
    ----------
    points : float64 array of shape (L, 2)
        ``(x, y)`` at the image's input resolution, inside the image.
    confidence : float64 array of shape (L,), in [0, 1]
    similarity : float32 array of shape (L, h, w) or None
        The coarse stage's maps at working resolution, when asked for.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.landmarks import Located
    >>> Located(np.zeros((19, 2)), np.ones(19)).points.shape
    (19, 2)
    """

    points: np.ndarray
    confidence: np.ndarray
    similarity: np.ndarray | None = None


def per_level(value, n_levels: int, name: str) -> tuple[int, ...]:
    """An int or one int per refinement level, as one int per level.

    Parameters
    ----------
    value : int or sequence of int
    n_levels : int
    name : str
        The parameter's name in the error.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> from skuld.landmarks import per_level
    >>> per_level(48, 3, "refine_patch"), per_level([64, 48], 2, "refine_patch")
    ((48, 48, 48), (64, 48))
    """
    values = [value] * n_levels if isinstance(value, Integral) else list(value)
    if len(values) != n_levels:
        raise ValueError(f"{name} must be an int or one int per refine_scales level ({n_levels}), got {value}")
    return tuple(int(v) for v in values)


def check_landmarks(landmarks, shape: tuple[int, int], name: str) -> np.ndarray:
    """Validated ``(L, 2)`` landmarks of an ``(H, W)`` image; NaN rows (missing) warn.

    Parameters
    ----------
    landmarks : array-like of shape (L, 2)
        ``(x, y)`` pixel coordinates.
    shape : (int, int)
    name : str
        How the image is named in messages.

    Returns
    -------
    float64 array of shape (L, 2)

    Examples
    --------
    >>> from skuld.landmarks import check_landmarks
    >>> check_landmarks([[10, 5]], (20, 20), "template").tolist()
    [[10.0, 5.0]]
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"landmarks of {name} must be an (L, 2) array of (x, y) points with L >= 1, got shape "
                         f"{pts.shape}")
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


def fixed_mask(indices, n_landmarks: int) -> np.ndarray:
    """The bool ``(L,)`` mask of landmark ``indices`` (0-based; None: none).

    Parameters
    ----------
    indices : array-like of int or None
    n_landmarks : int

    Returns
    -------
    bool array of shape (L,)

    Examples
    --------
    >>> from skuld.landmarks import fixed_mask
    >>> fixed_mask([1], 3).tolist()
    [False, True, False]
    """
    mask = np.zeros(n_landmarks, bool)
    if indices is None:
        return mask
    idx = np.asarray(indices)
    if idx.ndim > 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"fixed_landmarks must be a list of landmark indices (ints), got {indices!r}")
    idx = idx.astype(int).ravel()
    bad = idx[(idx < 0) | (idx >= n_landmarks)]
    if bad.size:
        raise ValueError(f"fixed_landmarks {bad.tolist()} are not landmark indices (0 to {n_landmarks - 1}: "
                         f"the templates have {n_landmarks} landmarks)")
    mask[idx] = True
    return mask


def similarity_maps(image: ImageFeatures, templates: list[Template]) -> torch.Tensor:
    """``(L, h, w)`` mean cosine similarity of every pixel to each landmark, over feature maps and
    templates (missing landmarks do not count).

    Parameters
    ----------
    image : ImageFeatures
    templates : list of Template

    Returns
    -------
    Tensor of shape (L, h, w)

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, make_template, similarity_maps
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.nn.functional.normalize(torch.randn(8, 40, 50), dim=0)], {})
    >>> sims = similarity_maps(f, [make_template(f, np.array([[10.0, 20.0]]))])
    >>> tuple(sims.shape), round(float(sims[0, 20, 10]), 4)      # 1 at the landmark itself
    ((1, 40, 50), 1.0)
    """
    total = None
    weight = torch.zeros(len(templates[0].valid), device=image.features[0].device)
    for t in templates:
        v = torch.as_tensor(t.valid, device=weight.device, dtype=torch.float32)
        for f, d in zip(image.features, t.descriptors):
            s = torch.einsum("lc,chw->lhw", d, f) * v[:, None, None]
            total = s if total is None else total + s
        weight += v * len(image.features)
    return total / weight.clamp_min(1)[:, None, None]


def coarse_points(image: ImageFeatures, templates: list[Template], sims: torch.Tensor, cfg: MatchConfig):
    """The coarse maxima, within ``search_radius`` of the shape-predicted positions.

    Parameters
    ----------
    image : ImageFeatures
    templates : list of Template
        The first one's landmarks fit the shape transform.
    sims : Tensor of shape (L, h, w)
        From :func:`similarity_maps`.
    cfg : MatchConfig

    Returns
    -------
    points : float64 array of shape (L, 2), working resolution
    confidence : float64 array of shape (L,)

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, coarse_points, make_template, similarity_maps
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.nn.functional.normalize(torch.randn(8, 40, 50), dim=0)], {})
    >>> t = make_template(f, np.array([[10.0, 20.0], [30.0, 5.0], [40.0, 33.0]]))
    >>> pts, conf = coarse_points(f, [t], similarity_maps(f, [t]), MatchConfig(fixed=np.zeros(3, bool)))
    >>> bool(np.abs(pts - t.points).max() < 0.5), conf.round(3).tolist()
    (True, [1.0, 1.0, 1.0])
    """
    h, w = image.work_shape
    points, conf = matching.subpixel_argmax(sims)
    # Fixed landmarks do not move with the anatomy: no shape transform may be fitted to them.
    primary_pts, primary_valid = templates[0].points, templates[0].valid & ~cfg.fixed
    if cfg.search_radius is not None and primary_valid.any():
        radius = cfg.search_radius * min(h, w)
        found = points.cpu().double().numpy()
        tr, _ = matching.robust_transform(primary_pts[primary_valid], found[primary_valid], radius / 2,
                                          kind=cfg.shape_model)
        expected = matching.apply_transform(primary_pts, tr)
        # Landmarks missing from the primary template: use where they were found.
        expected = np.where(primary_valid[:, None], expected, found)
        ys = torch.arange(h, device=sims.device, dtype=torch.float32)
        xs = torch.arange(w, device=sims.device, dtype=torch.float32)
        e = torch.as_tensor(expected, dtype=torch.float32, device=sims.device)
        d2 = (xs[None, None, :] - e[:, 0, None, None]) ** 2 + (ys[None, :, None] - e[:, 1, None, None]) ** 2
        points, conf = matching.subpixel_argmax(sims.masked_fill(d2 > radius**2, float("-inf")))
    return points.cpu().double().numpy(), conf.cpu().double().numpy()


def refine(image: ImageFeatures, work_pts: np.ndarray, templates: list[Template], sims: torch.Tensor,
           scales, cfg: MatchConfig):
    """Coarse-to-fine correlation refinement at the refinement levels ``scales``.

    Parameters
    ----------
    image : ImageFeatures
    work_pts : float array of shape (L, 2)
        Current estimates at working resolution.
    templates : list of Template
    sims : Tensor of shape (L, h, w)
        The coarse similarity (added with ``cfg.coarse_weight``).
    scales : sequence of float
        A subset of ``cfg.refine_scales``, coarse to fine.
    cfg : MatchConfig

    Returns
    -------
    points : float64 array of shape (L, 2), working resolution
    confidence : float64 array of shape (L,)
        The correlation alone at the chosen cell of the last level.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, make_template, refine, similarity_maps
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.ones(1, 40, 50)], {1: torch.rand(1, 40, 50)})
    >>> t = make_template(f, np.array([[12.0, 20.0], [30.0, 15.0]]))
    >>> cfg = MatchConfig(np.zeros(2, bool), refine_scales=(1,), refine_patch=(9,), refine_radius=(3,))
    >>> pts, conf = refine(f, t.points + 2, [t], similarity_maps(f, [t]), (1,), cfg)   # 2 px off
    >>> bool(np.abs(pts - t.points).max() < 0.5), bool(conf.min() > 0.99)            # back on the spot
    (True, True)
    """
    pts = work_pts
    conf = np.zeros(len(pts))
    for s in scales:
        level = list(cfg.refine_scales).index(s)
        p, r = cfg.refine_patch[level], cfg.refine_radius[level]
        q_img = image.pyramid[s]
        q_shape = tuple(q_img.shape[-2:])
        cur = matching.rescale_points(pts, image.work_shape, q_shape)
        cur_t = torch.as_tensor(cur, dtype=torch.float32, device=q_img.device)
        regions = matching.sample_patches(q_img, cur_t, p + 2 * r)
        total = torch.zeros((len(pts), 2 * r + 1, 2 * r + 1), device=q_img.device)
        count = torch.zeros(len(pts), device=q_img.device)
        for t in templates:
            t_img = t.image.pyramid[s]
            t_pts = matching.rescale_points(t.points, t.image.work_shape, tuple(t_img.shape[-2:]))
            moving = t.valid & ~cfg.fixed
            moving = moving if moving.any() else t.valid
            a, _ = matching.fit_transform(t_pts[moving], cur[moving], kind="similarity")
            inv = torch.as_tensor(np.linalg.inv(a), dtype=torch.float32, device=q_img.device)
            patches = matching.sample_patches(t_img, torch.as_tensor(t_pts, dtype=torch.float32, device=q_img.device),
                                              p, linear=inv)
            v = torch.as_tensor(t.valid, dtype=torch.float32, device=q_img.device)
            total += matching.ncc_maps(regions, patches) * v[:, None, None]
            count += v
        ncc = total / count.clamp_min(1)[:, None, None]
        score = ncc
        if cfg.coarse_weight:
            # The coarse similarity at every candidate keeps the correlation from jumping to a
            # look-alike that the descriptors, with their larger context, rule out.
            offs = torch.arange(-r, r + 1, device=q_img.device, dtype=torch.float32)
            grid = torch.stack(torch.meshgrid(offs, offs, indexing="xy"), -1)  # (dx, dy)
            cand = cur_t[:, None, None, :] + grid[None]
            sx = image.work_shape[1] / q_shape[1]
            sy = image.work_shape[0] / q_shape[0]
            cand_work = torch.stack([(cand[..., 0] + 0.5) * sx - 0.5, (cand[..., 1] + 0.5) * sy - 0.5], -1)
            h, w = image.work_shape
            g = torch.stack([(cand_work[..., 0] + 0.5) / w * 2 - 1, (cand_work[..., 1] + 0.5) / h * 2 - 1], -1)
            prior = F.grid_sample(sims[:, None], g, mode="bilinear", padding_mode="border", align_corners=False)
            score = score + cfg.coarse_weight * prior[:, 0]
        peak, _ = matching.subpixel_argmax(score)
        cur = cur + (peak.cpu().double().numpy() - r)
        pts = matching.rescale_points(cur, q_shape, image.work_shape)
        # Confidence: the correlation alone at the chosen cell. The weighted score exceeds 1
        # wherever the coarse similarity is high, so clipped it said 1 nearly always.
        best = score.flatten(1).argmax(dim=1, keepdim=True)
        conf = ncc.flatten(1).gather(1, best)[:, 0].cpu().double().numpy()
    return pts, conf


def enforce_shape(image: ImageFeatures, pts: np.ndarray, confidence: np.ndarray, templates: list[Template],
                  sims: torch.Tensor, cfg: MatchConfig):
    """Replace landmarks that break the template's shape by the shape's prediction, refined at the
    finer levels only (so that the coarse look-alike cannot win again).

    Parameters
    ----------
    image : ImageFeatures
    pts : float array of shape (L, 2)
        Working-resolution estimates.
    confidence : float array of shape (L,)
    templates : list of Template
    sims : Tensor of shape (L, h, w)
    cfg : MatchConfig

    Returns
    -------
    points : float64 array of shape (L, 2), working resolution
    confidence : float64 array of shape (L,)
        0 for a re-placed landmark when there is no finer level to refine it at.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, enforce_shape, make_template
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.ones(1, 40, 50)], {})
    >>> t = make_template(f, np.array([[5.0, 5.0], [40.0, 6.0], [8.0, 30.0], [35.0, 33.0]]))
    >>> moved = t.points.copy(); moved[3] += 10                          # one landmark off the shape
    >>> cfg = MatchConfig(np.zeros(4, bool), refine_scales=(), refine_patch=(), refine_radius=())
    >>> pts, conf = enforce_shape(f, moved, np.ones(4), [t], None, cfg)
    >>> bool(np.abs(pts - t.points).max() < 0.01), conf.tolist()
    (True, [1.0, 1.0, 1.0, 0.0])
    """
    t_pts, t_valid = templates[0].points, templates[0].valid & ~cfg.fixed
    tol = cfg.shape_tolerance * min(image.work_shape)
    tr, _ = matching.robust_transform(t_pts[t_valid], pts[t_valid], tol, kind="affine")
    expected = matching.apply_transform(t_pts, tr)
    off = t_valid & (np.linalg.norm(expected - pts, axis=1) > tol)
    if not off.any():
        return pts, confidence
    pts, confidence = pts.copy(), confidence.copy()
    fine = tuple(s for s in cfg.refine_scales if s > 1)
    fixed, conf = expected[off], np.zeros(off.sum())
    if fine:
        fixed, conf = refine(image, expected, templates, sims, fine, cfg)
        fixed, conf = fixed[off], conf[off]
    pts[off], confidence[off] = fixed, conf
    return pts, confidence


def _fine_detail_patches(image: torch.Tensor, centres: np.ndarray, size: int) -> torch.Tensor:
    """(L, C, size, size) patches of ``image`` around ``(x, y)`` centres with their Gaussian blur
    (:data:`FRAME_DETAIL_SIGMA`) subtracted. Blurred patch by patch, with a margin that is
    cropped off: only these pixels are needed, not the whole (about 1000 x 1300) level."""
    margin = math.ceil(3 * FRAME_DETAIL_SIGMA)  # the blur kernel's radius
    c = torch.as_tensor(centres, dtype=torch.float32, device=image.device)
    wide = matching.sample_patches(image, c, size + 2 * margin)
    detail = wide - matching.gaussian_blur(wide, FRAME_DETAIL_SIGMA)
    return detail[..., margin:margin + size, margin:margin + size]


def frame_search(image: ImageFeatures, templates: list[Template], cfg: MatchConfig):
    """Fixed landmarks: each template's patch of fine detail correlated within ``search_radius``
    of the template's own coordinates, scaled to the query's size (no shape transform: the
    device holds them still); the per-landmark median over the templates that have it.

    Parameters
    ----------
    image : ImageFeatures
        With its ``frame`` level.
    templates : list of Template
    cfg : MatchConfig
        ``fixed`` says which landmarks; ``frame_patch`` and ``search_radius`` the search.

    Returns
    -------
    points : float64 array of shape (L, 2)
        Working resolution; NaN for the other landmarks.
    confidence : float64 array of shape (L,)
        Correlation peaks; NaN for the other landmarks.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, frame_search, make_template
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.ones(1, 40, 50)], {}, frame=torch.rand(1, 40, 50))
    >>> t = make_template(f, np.array([[12.0, 20.0], [30.0, 15.0]]))
    >>> pts, conf = frame_search(f, [t], MatchConfig(np.array([False, True]), frame_patch=9))
    >>> bool(np.isnan(pts[0]).all()), bool(np.abs(pts[1] - t.points[1]).max() < 0.5)   # only the fixed one
    (True, True)
    """
    idx = np.flatnonzero(cfg.fixed)
    q = image.frame
    q_shape = tuple(q.shape[-2:])
    # search_radius=None searches the whole image, as the coarse stage does.
    radius = max(q_shape) if cfg.search_radius is None else max(1, round(cfg.search_radius * min(q_shape)))
    size = cfg.frame_patch
    votes, peaks = [], []
    for t in templates:
        t_frame = t.image.frame
        t_pts = matching.rescale_points(t.points[idx], t.image.work_shape, tuple(t_frame.shape[-2:]))
        centres = matching.rescale_points(t.points[idx], t.image.work_shape, q_shape)
        regions = _fine_detail_patches(q, centres, size + 2 * radius)
        patches = _fine_detail_patches(t_frame, t_pts, size)
        peak, value = matching.subpixel_argmax(matching.ncc_maps(regions, patches))
        found = centres + (peak.cpu().double().numpy() - radius)
        has = t.valid[idx]
        votes.append(np.where(has[:, None], found, np.nan))
        peaks.append(np.where(has, value.cpu().double().numpy(), np.nan))
    pts = np.full((len(cfg.fixed), 2), np.nan)
    conf = np.full(len(cfg.fixed), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no template has it
        pts[idx] = matching.rescale_points(np.nanmedian(votes, axis=0), q_shape, image.work_shape)
        conf[idx] = np.nanmedian(peaks, axis=0)
    return pts, conf


def locate_with(image: ImageFeatures, templates: list[Template], cfg: MatchConfig,
                return_similarity: bool = False) -> Located:
    """All stages on one image with ``templates`` together (their maps averaged).

    Parameters
    ----------
    image : ImageFeatures
    templates : list of Template
    cfg : MatchConfig
    return_similarity : bool, default=False

    Returns
    -------
    Located

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, locate_with, make_template
    >>> f = ImageFeatures((80, 100), (40, 50), [torch.nn.functional.normalize(torch.randn(8, 40, 50), dim=0)], {})
    >>> marks = np.array([[20.5, 40.5], [60.5, 10.5], [80.5, 66.5]])   # input pixels: working (10, 20), ...
    >>> cfg = MatchConfig(np.zeros(3, bool), refine_scales=(), refine_patch=(), refine_radius=())
    >>> bool(np.abs(locate_with(f, [make_template(f, marks)], cfg).points - marks).max() < 0.5)
    True
    """
    sims = similarity_maps(image, templates)
    pts, confidence = coarse_points(image, templates, sims, cfg)
    anatomical = (templates[0].valid & ~cfg.fixed).any()
    if cfg.refine_scales and anatomical:
        pts, confidence = refine(image, pts, templates, sims, cfg.refine_scales, cfg)
    if cfg.shape_tolerance is not None and anatomical:
        pts, confidence = enforce_shape(image, pts, confidence, templates, sims, cfg)
    if cfg.fixed.any():
        found, peak = frame_search(image, templates, cfg)
        use = ~np.isnan(found[:, 0])  # a fixed landmark no template has keeps the coarse estimate
        pts[use], confidence[use] = found[use], peak[use]
    out = matching.rescale_points(pts, image.work_shape, image.shape)
    # A landmark is a point of the image: a shape transform may put it outside, the answer
    # stays inside (pixel centres from 0 to W - 1 and H - 1).
    out[:, 0] = out[:, 0].clip(0, image.shape[1] - 1)
    out[:, 1] = out[:, 1].clip(0, image.shape[0] - 1)
    confidence = np.clip(confidence, 0, 1)
    # A landmark no template has is not found anywhere: no point rather than a made-up one.
    unknown = ~np.any([t.valid for t in templates], axis=0)
    out[unknown], confidence[unknown] = np.nan, np.nan
    return Located(out, confidence, sims.cpu().numpy() if return_similarity else None)


def locate(image: ImageFeatures, templates: list[Template], cfg: MatchConfig, return_similarity: bool = False) -> Located:
    """The landmarks of one image from one or several templates.

    With ``cfg.fusion="median"`` and several templates, each template votes on its own and the
    per-landmark median of the votes is the answer (robust to a template that got a landmark
    wrong; missing landmarks do not vote); with "maps", one pass on the averaged maps.

    Parameters
    ----------
    image : ImageFeatures
    templates : list of Template
    cfg : MatchConfig
    return_similarity : bool, default=False
        Keep the coarse similarity maps (the mean over templates' with "median").

    Returns
    -------
    Located

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.landmarks import MatchConfig, describe_image, locate, make_template
    >>> from skuld.nn import LDNet
    >>> from skuld.preprocessing import InputSpec
    >>> img = np.random.default_rng(0).random((80, 96, 1), dtype=np.float32)
    >>> f = describe_image(LDNet(1, width=0.25).eval(), InputSpec.from_params(1, 64), Runtime.resolve("cpu", "fp32"), img)
    >>> marks = np.array([[20.0, 30.0], [70.0, 15.0], [50.0, 60.0]])
    >>> found = locate(f, [make_template(f, marks)] * 2, MatchConfig(np.zeros(3, bool), refine_patch=(9,) * 3,
    ...                                                            refine_radius=(3,) * 3))
    >>> bool(np.abs(found.points - marks).max() < 1)                 # a template finds its own points
    True
    """
    if cfg.fusion == "maps" or len(templates) == 1:
        return locate_with(image, templates, cfg, return_similarity)
    votes = [locate_with(image, [t], cfg, return_similarity) for t in templates]
    pts = np.stack([v.points for v in votes])
    pts[~np.stack([t.valid for t in templates])] = np.nan
    conf = np.stack([v.confidence for v in votes])
    maps = np.mean([v.similarity for v in votes], axis=0) if return_similarity else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no template has the landmark
        return Located(np.nanmedian(pts, axis=0), np.nanmedian(conf, axis=0), maps)


def round_trip_error(candidate: Template, given: list[Template], given_points: list[np.ndarray],
                     cfg: MatchConfig) -> float:
    """How well an image with its predicted landmarks serves as a template: used as the only
    template, it locates each given template's landmarks back; the mean error (pixels of the
    given templates) is returned. Self-training picks the candidates with the smallest.

    Parameters
    ----------
    candidate : Template
    given : list of Template
    given_points : list of float arrays of shape (L, 2)
        The given templates' landmarks at their input resolution.
    cfg : MatchConfig

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skuld.landmarks import ImageFeatures, MatchConfig, make_template, round_trip_error
    >>> f = ImageFeatures((40, 50), (40, 50), [torch.nn.functional.normalize(torch.randn(8, 40, 50), dim=0)], {})
    >>> marks = np.array([[10.0, 20.0], [30.0, 5.0], [40.0, 33.0]])
    >>> cfg = MatchConfig(np.zeros(3, bool), refine_scales=(), refine_patch=(), refine_radius=())
    >>> round_trip_error(make_template(f, marks), [make_template(f, marks)], [marks], cfg) < 0.5
    True
    """
    errors = []
    for t, t_pts in zip(given, given_points):
        back = locate(t.image, [candidate], cfg).points
        errors.append(np.nanmean(np.linalg.norm(back - t_pts, axis=1)))
    return float(np.mean(errors))
