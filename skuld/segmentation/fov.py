"""The field of view: which pixels of an image show anatomy at all."""

from __future__ import annotations

import numpy as np

from ..io import to_float_image


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
    >>> from skuld.segmentation import fundus_field_of_view
    >>> yy, xx = np.mgrid[:100, :120]
    >>> photo = np.zeros((100, 120, 3), np.uint8)
    >>> photo[(yy - 50) ** 2 + (xx - 60) ** 2 < 45 ** 2] = (180, 90, 40)   # a disc in a black frame
    >>> fov = fundus_field_of_view(photo, erosion=0)
    >>> fov.shape, bool(fov[50, 60]), bool(fov[2, 2])
    ((100, 120), True, False)
    """
    from scipy import ndimage as ndi

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


def fields_of_view(images, mask=None, fov="auto") -> list[np.ndarray]:
    """One field of view per image: the given masks, validated, or :func:`field_of_view` of each.

    Parameters
    ----------
    images : ImageCollection
    mask : bool array (n, H, W), list of (H_i, W_i) arrays, one (H, W) array, or None
    fov : {"auto"} or None
        Used when ``mask`` is None.

    Returns
    -------
    list of bool arrays of shape (H_i, W_i)
        ``ValueError`` naming the mask whose count or shape does not match the images.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> from skuld.segmentation import fields_of_view
    >>> fields_of_view(ImageCollection(np.zeros((2, 40, 40))), np.ones((1, 40, 40)))
    Traceback (most recent call last):
        ...
    ValueError: 1 field-of-view masks for 2 images
    """
    if mask is None:
        return [field_of_view(images[i], fov) for i in range(len(images))]
    masks = list(mask) if not (isinstance(mask, np.ndarray) and mask.ndim == 2) else [mask]
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} field-of-view masks for {len(images)} images")
    out = []
    for i, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape != images.shape(i):
            raise ValueError(f"field-of-view mask {i} is {m.shape} but {images.describe(i)} is {images.shape(i)}")
        out.append(m.astype(bool))
    return out


def field_of_view(image: np.ndarray, fov="auto") -> np.ndarray:
    """The field of view a ``fov`` parameter stands for.

    Parameters
    ----------
    image : float32 array of shape (H, W, C)
    fov : {"auto"} or None
        "auto": for colour images, the bright disc of a fundus photograph
        (:func:`fundus_field_of_view`); gray images use the whole image. None: the whole image.

    Returns
    -------
    bool array of shape (H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import field_of_view
    >>> bool(field_of_view(np.zeros((40, 40, 1), np.float32)).all())   # gray: the whole image
    True
    """
    if fov == "auto" and image.shape[2] == 3:
        return fundus_field_of_view(image)
    return np.ones(image.shape[:2], bool)
