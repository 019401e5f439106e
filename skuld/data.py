"""Training data: working resolution, random resized crops and the pair dataset fed to workers.

Every random choice of sample ``i`` comes from ``numpy.random.default_rng([seed, i])``, so a
batch depends only on the seed and the step, never on the number of workers or on where an
interrupted run resumed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from .io import ImageCollection

#: Smallest image side skuld accepts (two cells of the network's coarsest, 1/16 map).
MIN_IMAGE_SIDE = 32


def working_shape(height: int, width: int, image_size: int | None) -> tuple[int, int]:
    """Shape an image is resized to before the network sees it: shorter side = ``image_size``.

    ``image_size=None`` keeps the native resolution.
    """
    if image_size is None:
        return height, width
    scale = image_size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """float32 (H, W, C) array -> (C, H, W) tensor (a view when possible)."""
    img = np.ascontiguousarray(img)
    if not img.flags.writeable:  # read-only inputs (memmaps): torch wants memory it may write
        img = img.copy()
    return torch.from_numpy(img).permute(2, 0, 1)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, H, W) or (N, C, H, W), antialiased when shrinking."""
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x[0] if squeeze else x


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator, ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random fraction ``scale`` of the image area with
    a random aspect ratio (log-uniform in ``ratio``); falls back to the largest centred crop."""
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
        if min(img.shape[:2]) < MIN_IMAGE_SIDE:
            raise ValueError(f"{self.images.describe(index)} is {img.shape[0]} x {img.shape[1]} pixels; "
                             f"skuld needs images of at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}")
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
    """One intra-op thread per loader worker: the workers already run in parallel."""
    torch.set_num_threads(1)
