"""Pretraining data: random resized crops and the dataset of image pairs fed to loader workers.

Every random choice of sample ``i`` comes from ``numpy.random.default_rng([seed, i])``, so a
batch depends only on the seed and the step, never on the number of workers or on where an
interrupted run resumed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..io import ImageCollection
from ..preprocessing import check_min_size, resize, to_tensor, working_shape


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator, ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """The box of a crop covering a random fraction ``scale`` of the image area, with a random
    aspect ratio (log-uniform in ``ratio``); falls back to the largest centred square.

    Parameters
    ----------
    height, width : int
        The image's size.
    scale : (float, float)
        Range of the crop's area as a fraction of the image's.
    rng : numpy Generator
    ratio : (float, float), default=(3/4, 4/3)

    Returns
    -------
    (top, left, h, w) : tuple of int

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.pretraining import random_resized_crop_box
    >>> top, left, h, w = random_resized_crop_box(100, 120, (0.9, 1.0), np.random.default_rng(0))
    >>> 0 <= top <= 100 - h and 0 <= left <= 120 - w            # inside the image
    True
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


class PairCropDataset(torch.utils.data.Dataset):
    """Sample ``i`` -> two random resized crops, of two different images when there are two.

    Images are decoded once and kept at working resolution (shorter side ``image_size``) in
    a per-process cache of at most ``cache_bytes``; decoding a large file for every crop would
    leave the network waiting. Crop boxes are drawn in working-resolution coordinates.

    Returns a float32 tensor of shape ``(2, C, crop_size, crop_size)`` in [0, 1].

    Parameters
    ----------
    images : ImageCollection
    crop_size : int
    image_size : int or None
        Working resolution (shorter side).
    scale : (float, float)
        Crop area range, as a fraction of the working image.
    seed : int
    length : int
        The dataset's nominal length (the sampler decides which samples are drawn).
    cache_bytes : int, default=2 GiB

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> from skuld.pretraining import PairCropDataset
    >>> data = PairCropDataset(ImageCollection(np.zeros((3, 64, 80))), 32, 48, (0.9, 1.0), seed=0, length=10)
    >>> tuple(data[4].shape), bool((data[4] == data[4]).all())        # sample i depends only on (seed, i)
    ((2, 1, 32, 32), True)
    """

    def __init__(self, images: ImageCollection, crop_size: int, image_size: int | None, scale, seed: int, length: int,
                 cache_bytes: int = 2 * 2**30):
        self.images = images
        self.crop_size = crop_size
        self.image_size = image_size
        self.scale = scale
        self.seed = seed
        self.length = length
        self.cache_bytes = cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.length

    def working_image(self, index: int) -> torch.Tensor:
        """Image ``index`` at working resolution, (C, h, w) float32 in [0, 1]."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        img = self.images[index]
        check_min_size(*img.shape[:2], self.images.describe(index))
        x = resize(to_tensor(img), working_shape(img.shape[0], img.shape[1], self.image_size)).contiguous()
        if self._cached_bytes + x.nbytes <= self.cache_bytes:
            self._cache[index] = x
            self._cached_bytes += x.nbytes
        return x

    def _crop(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        x = self.working_image(index)
        top, left, ch, cw = random_resized_crop_box(x.shape[1], x.shape[2], self.scale, rng)
        return resize(x[:, top : top + ch, left : left + cw], (self.crop_size, self.crop_size))

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(i)])
        n = len(self.images)
        first, second = rng.choice(n, size=2, replace=False) if n > 1 else (0, 0)
        return torch.stack([self._crop(int(first), rng), self._crop(int(second), rng)])


def worker_init(_worker_id: int) -> None:
    """One intra-op thread per loader worker: the workers already run in parallel.

    Parameters
    ----------
    _worker_id : int
        Given by the DataLoader; unused.

    Returns
    -------
    None

    Examples
    --------
    >>> import torch
    >>> from skuld.pretraining import worker_init
    >>> threads = torch.get_num_threads(); worker_init(0); n = torch.get_num_threads(); torch.set_num_threads(threads)
    >>> n
    1
    """
    torch.set_num_threads(1)
