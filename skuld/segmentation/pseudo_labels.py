"""Label-free pseudo-labels of a structure, for the refinement network of shape-guided segmentation.

Three routes, each a plain function of one image at its own resolution returning a uint8
label map: 1 structure, 0 background, :data:`UNSURE` where the label is not confident enough
to train on (left out of the loss):

* ``"ridge"`` (thin structures): a multiscale ridge detector at scales from the priors' widths;
* ``"atlas"`` (thick structures in a fixed framing): a shape atlas guiding an intensity EM;
* ``"ld"`` (the paper's): where the LD network's two inference modes agree and are confident.
"""

from __future__ import annotations

import numpy as np

from .atlas import atlas_probability
from .ridges import ridge_pseudo_labels

#: Label of pixels whose pseudo-label is not confident: left out of the refinement's loss.
UNSURE = 255


def ridge_sigmas(widths) -> tuple[float, ...]:
    """Four ridge scales (working pixels) from the priors' structure widths in working pixels:
    a tube of width w answers most near sigma = w / 2; geometric from 1 to 0.75 x the median.

    Parameters
    ----------
    widths : sequence of float

    Returns
    -------
    tuple of 4 float

    Examples
    --------
    >>> from skuld.segmentation import ridge_sigmas
    >>> [round(s, 2) for s in ridge_sigmas([4.0, 4.0])]
    [1.0, 1.44, 2.08, 3.0]
    """
    top = max(1.5, 0.75 * float(np.nanmedian(widths)))
    return tuple(float(v) for v in np.geomspace(1.0, top, 4))


def ridge_labels(image: np.ndarray, fov: np.ndarray, sigmas, image_size: int | None, polarity: str,
                 fraction_range: tuple[float, float]) -> np.ndarray:
    """Ridge pseudo-labels of one image at its own resolution.

    Parameters
    ----------
    image : float32 array of shape (H, W, C) in [0, 1]
    fov : bool array of shape (H, W)
        The field of view; a 10-working-pixel rim inside it (whose edge is a strong false
        ridge) is left :data:`UNSURE`.
    sigmas : sequence of float
        Scales in working pixels, converted here to the image's pixels.
    image_size : int or None
        The working resolution (shorter side) the scales refer to.
    polarity : {"dark", "bright"}
    fraction_range : (float, float)
        Bounds of the structure's fraction of the field of view.

    Returns
    -------
    uint8 array of shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import UNSURE, ridge_labels
    >>> img = np.full((64, 64, 1), 0.7, np.float32); img[:, 30:34] = 0.2          # one dark vessel
    >>> lab = ridge_labels(img, np.ones((64, 64), bool), (1.0, 2.0), None, "dark", (0.02, 0.2))
    >>> int(lab[32, 31]), int(lab[32, 5]), set(np.unique(lab)) <= {0, 1, UNSURE}
    (1, 0, True)
    """
    from scipy import ndimage as ndi

    scale = 1.0 if image_size is None else min(image.shape[:2]) / image_size
    inner = ndi.binary_erosion(fov, iterations=max(1, int(round(10 * scale)))) if not fov.all() else fov
    label = ridge_pseudo_labels(image, inner, sigmas=[s * scale for s in sigmas], polarity=polarity,
                                unsure_value=UNSURE, fraction_range=fraction_range)
    label[fov & ~inner] = UNSURE
    return label


def atlas_labels(image: np.ndarray, atlas: np.ndarray, fov: np.ndarray, confidence: float) -> np.ndarray:
    """Atlas pseudo-labels of one image at its own resolution: structure where the atlas-guided
    probability ``p`` exceeds 1/2, unsure where ``|2p - 1| < confidence``, background outside ``fov``.

    Parameters
    ----------
    image : float32 array of shape (H, W, C) in [0, 1]
    atlas : float array of shape (A, A)
        From :func:`skuld.segmentation.atlas.shape_atlas`.
    fov : bool array of shape (H, W)
    confidence : float in [0, 1)

    Returns
    -------
    uint8 array of shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import atlas_labels, shape_atlas
    >>> mask = np.zeros((64, 64), bool); mask[16:48, 16:48] = True
    >>> img = np.where(mask, 0.2, 0.8).astype(np.float32)[..., None]
    >>> lab = atlas_labels(img, shape_atlas([mask]), np.ones((64, 64), bool), confidence=0.5)
    >>> int(lab[32, 32]), int(lab[2, 2])
    (1, 0)
    """
    p = atlas_probability(image, atlas, fov, working_size=256)
    label = (p > 0.5).astype(np.uint8)
    label[np.abs(2 * p - 1) < confidence] = UNSURE
    label[~fov] = 0
    return label


def ld_probabilities(embeddings: np.ndarray, clusters: np.ndarray, temperature: float = 0.2) -> dict[str, np.ndarray]:
    """Both ways the LD network labels a pixel as cluster 0, for one image.

    Parameters
    ----------
    embeddings : float array of shape (H, W, D)
        Unit embeddings.
    clusters : float array of shape (H, W, K)
        Soft cluster assignments.
    temperature : float, default=0.2
        Of the similarity re-assignment.

    Returns
    -------
    dict with "cluster" (``a_0``, the cluster-0 map) and "similarity" (each pixel re-assigned
    to the cluster whose region feature in this image it is most similar to:
    ``softmax_k(z . r_k / temperature)`` at k = 0), float32 arrays of shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import ld_probabilities
    >>> z = np.zeros((4, 4, 2), np.float32); z[..., 0] = 1; z[2:, :, 0] = 0; z[2:, :, 1] = 1
    >>> a = np.zeros((4, 4, 2), np.float32); a[:2, :, 0] = 1; a[2:, :, 1] = 1
    >>> p = ld_probabilities(z, a)
    >>> bool(p["similarity"][0, 0] > 0.9), bool(p["similarity"][3, 0] < 0.1)
    (True, True)
    """
    flat_z = embeddings.reshape(-1, embeddings.shape[-1])
    flat_a = clusters.reshape(-1, clusters.shape[-1])
    regions = flat_a.T @ flat_z  # (K, D)
    regions /= np.maximum(np.linalg.norm(regions, axis=1, keepdims=True), 1e-12)
    logits = (flat_z @ regions.T) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    sim = (e[:, 0] / e.sum(axis=1)).reshape(embeddings.shape[:2])
    return {"cluster": clusters[..., 0].copy(), "similarity": sim.astype(np.float32)}


def structure_fraction(probabilities, fovs) -> float:
    """The fraction of the images' fields of view where P(structure) exceeds 1/2.

    Near 0 or 1 for the LD network's cluster 0 means the shape prior did not take (a collapse).

    Parameters
    ----------
    probabilities : list of float arrays of shape (H_i, W_i)
    fovs : list of bool arrays of shape (H_i, W_i)

    Returns
    -------
    float in [0, 1] (0 for empty fields of view)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import structure_fraction
    >>> structure_fraction([np.array([[0.9, 0.1], [0.2, 0.7]])], [np.array([[True, True], [True, False]])])
    0.3333333333333333
    """
    inside = np.concatenate([p[f] for p, f in zip(probabilities, fovs)])
    return float((inside > 0.5).mean()) if inside.size else 0.0


def ld_labels(modes: dict[str, np.ndarray], fov: np.ndarray, confidence: float) -> np.ndarray:
    """The paper's pseudo-labels: structure where the mean of the two LD modes exceeds 1/2, sure
    where both modes agree and ``|2 mean - 1| >= confidence``; background outside ``fov``.

    Parameters
    ----------
    modes : dict
        From :func:`ld_probabilities`.
    fov : bool array of shape (H, W)
    confidence : float in [0, 1)

    Returns
    -------
    uint8 array of shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import UNSURE, ld_labels
    >>> modes = {"cluster": np.array([[0.9, 0.9, 0.1]]), "similarity": np.array([[0.95, 0.2, 0.05]])}
    >>> ld_labels(modes, np.ones((1, 3), bool), confidence=0.5).tolist()   # the modes disagree in the middle
    [[1, 255, 0]]
    """
    a, s = modes["cluster"], modes["similarity"]
    mean = (a + s) / 2
    label = (mean > 0.5).astype(np.uint8)
    sure = ((a > 0.5) == (s > 0.5)) & (np.abs(2 * mean - 1) >= confidence)
    label[~sure] = UNSURE
    label[~fov] = 0  # outside the field of view is background, and certain
    return label
