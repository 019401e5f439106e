"""The bundled sample: four chest X-rays with lung masks (cxr_tiny, MIT licence)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass
class Sample:
    """images: uint8 (n, H, W); masks: bool (n, H, W), True inside the lungs; paths: image files."""

    images: np.ndarray
    masks: np.ndarray
    paths: list


def cxr_tiny_dir() -> str:
    """Directory holding ``1.jpg``..``4.jpg`` and ``N-mask.png`` (512 x 512 gray)."""
    return str(resources.files(__name__) / "cxr_tiny")


def load_cxr_tiny() -> Sample:
    """Load the four 512 x 512 chest radiographs and their lung masks.

    Returns
    -------
    Sample
        ``images`` uint8 of shape (4, 512, 512), ``masks`` bool of shape (4, 512, 512)
        (both lungs), ``paths`` the four image files.
    """
    import imageio.v3 as iio

    root = resources.files(__name__) / "cxr_tiny"
    paths = [str(root / f"{i}.jpg") for i in range(1, 5)]
    images = np.stack([np.asarray(iio.imread(p)) for p in paths])
    masks = np.stack([np.asarray(iio.imread(str(root / f"{i}-mask.png"))) > 127 for i in range(1, 5)])
    return Sample(images=images, masks=masks, paths=paths)
