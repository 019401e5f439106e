"""Synthetic images and tiny settings shared by the tests."""

import numpy as np


def blobs(n=4, size=64, channels=None, seed=0):
    """Smooth synthetic images with a few bright blobs: cheap stand-ins for anatomy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size), np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = (img / img.max() * 0.8 + 0.1 * rng.random((size, size))).clip(0, 1).astype(np.float32)
        if channels == 3:
            img = np.stack([img, img ** 1.5, 1 - img], axis=-1)
        out.append(img)
    return np.stack(out)


#: Parameters of a tiny, fast encoder for tests.
TINY = dict(max_iter=3, batch_size=1, crop_size=32, image_size=48, patch_grid=4, width=0.25,
            embedding_dim=8, n_clusters=4, random_state=0)
