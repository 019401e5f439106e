"""The bundled sample: four chest X-rays with lung masks (cxr_tiny, MIT licence)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass
class Sample:
    """The bundled sample, as returned by :func:`load_cxr_tiny`.

    Attributes
    ----------
    images : ndarray of shape (n, H, W), uint8
        Gray radiographs.
    masks : ndarray of shape (n, H, W), bool
        True inside the lungs (both lungs in one mask).
    paths : list of str
        The image files, for estimators that read files themselves.

    Examples
    --------
    >>> from skuld.datasets import load_cxr_tiny
    >>> sample = load_cxr_tiny()
    >>> sample.images.shape, sample.masks.dtype, len(sample.paths)
    ((4, 512, 512), dtype('bool'), 4)
    """

    images: np.ndarray
    masks: np.ndarray
    paths: list


def cxr_tiny_dir() -> str:
    """Folder of the bundled sample: ``1.jpg`` .. ``4.jpg`` and ``N-mask.png`` (512 x 512 gray).

    The four chest radiographs come from JSRT / Montgomery via imlab-uiip/lung-segmentation-2d
    (MIT licence, ``LICENSE`` in the same folder).

    Returns
    -------
    str
        An existing directory; any skuld function that takes a folder accepts it.

    Examples
    --------
    >>> import os
    >>> from skuld.datasets import cxr_tiny_dir
    >>> sorted(f for f in os.listdir(cxr_tiny_dir()) if f.endswith(".jpg"))
    ['1.jpg', '2.jpg', '3.jpg', '4.jpg']
    """
    return str(resources.files(__name__) / "cxr_tiny")


def load_cxr_tiny() -> Sample:
    """Load the four 512 x 512 chest radiographs and their lung masks.

    Returns
    -------
    Sample
        ``images`` uint8 of shape (4, 512, 512), ``masks`` bool of shape (4, 512, 512)
        (both lungs), ``paths`` the four image files.

    Examples
    --------
    >>> from skuld.datasets import load_cxr_tiny
    >>> X, masks = load_cxr_tiny().images, load_cxr_tiny().masks
    >>> X.shape, X.dtype, round(float(masks.mean()), 2)
    ((4, 512, 512), dtype('uint8'), 0.27)
    """
    import imageio.v3 as iio

    root = resources.files(__name__) / "cxr_tiny"
    paths = [str(root / f"{i}.jpg") for i in range(1, 5)]
    images = np.stack([np.asarray(iio.imread(p)) for p in paths])
    masks = np.stack([np.asarray(iio.imread(str(root / f"{i}-mask.png"))) > 127 for i in range(1, 5)])
    return Sample(images=images, masks=masks, paths=paths)
