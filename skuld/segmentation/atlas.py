"""Shape atlases: label-free pseudo-labels for structures with a fixed place in the frame.

Thick structures of images taken in one orientation and framing (lungs in chest X-rays, the
heart, a kidney in a standard view) have a typical *place* as well as a typical shape. The
mean of prior masks from another data set, stretched to each image's frame, is then a
spatial prior: :func:`shape_atlas`. :func:`atlas_probability` combines it with the image's own
intensities by expectation-maximisation (two Gaussian intensity classes whose per-pixel
mixing weight is the atlas, the classical atlas-guided EM of brain MRI segmentation) and
moves the atlas to the structure found (scale and shift from the first and second moments)
before a second EM round. :class:`skuld.ShapeGuidedSegmenter` trains its refinement network on
the confident pixels of this map (``pseudo_labels="atlas"``).

Coordinates: an atlas covers the whole frame of an image, whatever its size or aspect, as
the priors cover theirs (row 0 is the top, column 0 the left; nothing is flipped). Images
follow :mod:`skuld.io`'s conventions.
"""

from __future__ import annotations

import numpy as np

from ..io import to_float_image

#: Side of the square grid an atlas is stored on; it is stretched to each image's frame.
ATLAS_SIZE = 128
#: The atlas never rules a pixel in or out completely: the image's intensities can overrule it.
_FLOOR = 0.02
#: Blur (fraction of the frame) of the atlas that weights what was found when the atlas is moved.
_NEAR = 0.2


def shape_atlas(priors, size: int = ATLAS_SIZE) -> np.ndarray:
    """The mean of binary masks, each stretched to a ``size x size`` frame.

    Parameters
    ----------
    priors : sequence of 2-D arrays of any sizes and aspects
        Binary masks (bool, 0/1 or 0/255; foreground is the larger value) that each show the
        whole frame of an image, in the orientation of the target images.
    size : int, default 128
        Side of the returned grid.

    Returns
    -------
    ndarray of shape (size, size), float32 in [0, 1]
        Fraction of the priors that cover each point of the (stretched) frame.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation.atlas import shape_atlas
    >>> a = np.zeros((40, 80), bool); a[:, :40] = True      # left half
    >>> b = np.zeros((60, 60), bool); b[:, :30] = True      # left half of another frame
    >>> atlas = shape_atlas([a, b], size=8)
    >>> atlas.shape, round(float(atlas[:, :3].min()), 2), round(float(atlas[:, 5:].max()), 2)
    ((8, 8), 1.0, 0.0)
    """
    from skimage.transform import resize

    priors = list(priors)
    if not priors:
        raise ValueError("shape_atlas needs at least one prior mask")
    total = np.zeros((size, size), np.float64)
    for i, p in enumerate(priors):
        p = np.asarray(p)
        if p.ndim != 2:
            raise ValueError(f"prior {i} must be a 2-D mask (H, W), got shape {p.shape}")
        mask = (p == p.max()) if p.max() > p.min() else np.zeros(p.shape, bool)
        total += resize(mask.astype(np.float64), (size, size), order=1, anti_aliasing=True)
    return (total / len(priors)).clip(0, 1).astype(np.float32)


def _place(atlas: np.ndarray, shape: tuple[int, int], shift=(0.0, 0.0), scale=(1.0, 1.0)) -> np.ndarray:
    """The atlas stretched to ``shape``, scaled about the frame's centre by ``scale`` and moved by
    ``shift`` (fractions of the frame's height and width)."""
    from scipy import ndimage as ndi
    from skimage.transform import resize

    a = resize(atlas.astype(np.float64), shape, order=1)
    if shift == (0.0, 0.0) and scale == (1.0, 1.0):
        return a
    h, w = shape
    centre = np.array([h / 2, w / 2])
    inverse = np.diag([1 / scale[0], 1 / scale[1]])
    offset = centre - inverse @ (centre + np.array([shift[0] * h, shift[1] * w]))
    return ndi.affine_transform(a, inverse, offset=offset, order=1, mode="constant", cval=0.0)


def _moments(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Weighted centre (row, col) and standard deviations of a (H, W) map's pixels, or None if
    it holds less than 2 pixels' weight."""
    total = weight.sum()
    if total < 2:
        return None
    rows, cols = np.indices(weight.shape, dtype=np.float64)
    centre = np.array([(weight * rows).sum(), (weight * cols).sum()]) / total
    var = np.array([(weight * (rows - centre[0]) ** 2).sum(), (weight * (cols - centre[1]) ** 2).sum()]) / total
    return centre, np.maximum(np.sqrt(var), 1.0)


def _em(x: np.ndarray, prior: np.ndarray, iterations: int) -> np.ndarray:
    """Posterior P(structure) of each value of ``x`` (n,) under two Gaussian classes whose
    per-point mixing weight is ``prior`` (n,)."""
    post = prior.copy()
    log_odds_prior = np.log(prior) - np.log1p(-prior)
    for _ in range(iterations):
        loglik = []
        for w in (post, 1.0 - post):
            total = w.sum() + 1e-9
            mean = (w * x).sum() / total
            var = (w * (x - mean) ** 2).sum() / total + 1e-3
            loglik.append(-0.5 * ((x - mean) ** 2 / var + np.log(var)))
        log_odds = np.clip(loglik[0] - loglik[1] + log_odds_prior, -50, 50)
        post = 1.0 / (1.0 + np.exp(-log_odds))
    return post


def atlas_probability(image, atlas, fov=None, working_size: int | None = 256, blur: float = 0.03,
                      rounds: int = 2, iterations: int = 30) -> np.ndarray:
    """P(structure) of every pixel from a shape atlas and the image's intensities.

    The image is brought to ``working_size`` (shorter side), equalised (CLAHE, clip 0.01) and
    smoothed; pixels inside ``fov`` are split into two intensity classes by EM with the atlas,
    blurred by ``blur`` of the frame and floored at 2 %, as each pixel's prior. Then, ``rounds``
    times, the atlas is moved so that the centre and spread of its core (> 0.5) match those of
    the structure found near it (weighted by the atlas blurred by 20 % of the frame, so that a
    look-alike far away does not pull), within scale 0.7-1.4 and a shift of at most 15 % of the
    frame per axis, and EM runs again: structures need not sit exactly where the priors had
    them.

    Parameters
    ----------
    image : array-like (H, W) or (H, W, C)
        uint8/uint16/bool or float in [0, 1]; colour is averaged to gray.
    atlas : ndarray (h, w), float in [0, 1]
        From :func:`shape_atlas`; stretched to the image's frame.
    fov : bool array (H, W), optional
        Only these pixels take part; the rest get probability 0.
    working_size : int or None, default 256
        Shorter side of the working resolution (None: the image's own).
    blur : float, default 0.03
        Gaussian blur of the atlas, as a fraction of the working image's shorter side.
    rounds : int, default 2
        Atlas moves (0: the atlas stays where the priors put it).
    iterations : int, default 30
        EM iterations per round.

    Returns
    -------
    ndarray (H, W), float32 in [0, 1]
        At the image's own resolution. All zeros when the field of view holds fewer than 2
        working pixels or no contrast (a flat image: nothing to tell apart).

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation.atlas import atlas_probability
    >>> img = np.full((64, 64), 0.8, np.float32); img[20:44, 8:30] = 0.2     # a dark block
    >>> atlas = np.zeros((32, 32), np.float32); atlas[8:24, 2:16] = 1.0       # roughly there
    >>> p = atlas_probability(img, atlas)
    >>> p.shape, bool(p[30, 18] > 0.9), bool(p[30, 50] < 0.1)
    ((64, 64), True, True)
    """
    from scipy import ndimage as ndi
    from skimage import exposure
    from skimage.transform import resize

    img = to_float_image(image)
    height, width = img.shape[:2]
    atlas = np.asarray(atlas, dtype=np.float64)
    if atlas.ndim != 2 or not np.isfinite(atlas).all() or atlas.min() < 0 or atlas.max() > 1:
        raise ValueError("atlas must be a finite 2-D array of values in [0, 1] (see shape_atlas)")
    fov = np.ones((height, width), bool) if fov is None else np.asarray(fov, bool)
    if fov.shape != (height, width):
        raise ValueError(f"fov has shape {fov.shape}, the image {(height, width)}")
    scale = 1.0 if working_size is None else working_size / min(height, width)
    shape = (max(16, int(round(height * scale))), max(16, int(round(width * scale))))
    gray = resize(img.mean(axis=2).astype(np.float64), shape, order=1, anti_aliasing=scale < 1)
    inside = resize(fov.astype(np.float64), shape, order=1) > 0.5
    if inside.sum() < 2 or np.ptp(gray[inside]) < 1e-6:
        return np.zeros((height, width), np.float32)  # nothing to tell apart
    # Tiles of half the frame: thick structures are large, and smaller tiles would equalise a
    # structure's inside towards its surroundings (measured on chest X-rays: lung Dice of the
    # map 0.733 with these tiles, 0.737 with skimage's default eighths, 0.703 without CLAHE).
    gray = exposure.equalize_adapthist(gray, kernel_size=[max(8, s // 2) for s in shape], clip_limit=0.01)
    x = ndi.gaussian_filter(gray, 2.0 * min(shape) / 256)[inside]
    x = (x - x.mean()) / (x.std() + 1e-9)
    sigma = blur * min(shape)
    core = _moments((_place(atlas, shape) > 0.5).astype(np.float64))

    def prior(shift=(0.0, 0.0), scale=(1.0, 1.0)):
        placed = _place(atlas, shape, shift, scale)
        if sigma > 0:
            placed = ndi.gaussian_filter(placed, sigma)
        return placed[inside].clip(_FLOOR, 1 - _FLOOR)

    post = _em(x, prior(), iterations)
    found = np.zeros(shape)
    shift, size = (0.0, 0.0), (1.0, 1.0)
    for _ in range(rounds):
        found[inside] = post
        # Only what was found near the atlas' present place counts: a similar-looking region
        # far away (a decoy) must not drag the atlas towards it or inflate it.
        near = ndi.gaussian_filter(_place(atlas, shape, shift, size), _NEAR * min(shape))
        now = _moments((found > 0.5) * near / max(near.max(), 1e-9))
        if now is None or core is None:
            break
        size = tuple(np.clip(now[1] / core[1], 0.7, 1.4))
        # The atlas core is scaled about the frame's centre, which moves its centre too.
        centre = np.array(shape) / 2
        moved_centre = centre + (core[0] - centre) * np.array(size)
        shift = tuple(np.clip((now[0] - moved_centre) / np.array(shape), -0.15, 0.15))
        post = _em(x, prior(shift, size), iterations)
    found[inside] = post
    found[~inside] = 0.0
    out = resize(found, (height, width), order=1).astype(np.float32)
    out[~fov] = 0.0
    return out
