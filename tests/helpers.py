"""Synthetic images and tiny settings shared by the tests."""

import numpy as np

from skuld.matching import apply_transform


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


def _draw_curve(canvas, points, width):
    """Mark every pixel within ``width / 2`` of the polyline ``points`` ((row, col) floats)."""
    size = canvas.shape[0]
    rr, cc = np.mgrid[0:size, 0:size]
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        dr, dc = r1 - r0, c1 - c0
        t = np.clip(((rr - r0) * dr + (cc - c0) * dc) / max(dr * dr + dc * dc, 1e-9), 0, 1)
        canvas |= (rr - r0 - t * dr) ** 2 + (cc - c0 - t * dc) ** 2 <= (width / 2) ** 2
    return canvas


def tubes(n=4, size=96, seed=0, width=4.0, n_tubes=3):
    """Gray images with dark, wavy tubes in noise and smooth shading, and their true masks.

    Returns (images float32 (n, size, size) in [0, 1], masks bool (n, size, size)).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(n_tubes):
            angle = rng.uniform(0, np.pi)
            t = np.linspace(-0.7, 0.7, 24)
            wave = 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))
            offset = rng.uniform(-0.3, 0.3)
            u, v = t, wave + offset
            rows = (0.5 + u * np.sin(angle) + v * np.cos(angle)) * size
            cols = (0.5 + u * np.cos(angle) - v * np.sin(angle)) * size
            _draw_curve(mask, list(zip(rows, cols)), width)
        shading = 0.55 + 0.15 * np.sin(2 * np.pi * (rng.uniform(0.3, 1) * xx + rng.uniform(0, 1)))
        img = np.where(mask, shading - 0.3, shading) + rng.normal(0, 0.04, (size, size))
        images.append(img.clip(0, 1).astype(np.float32))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def branching_shapes(n=6, size=128, seed=100, width=4.0):
    """Binary masks of straight branching segments: tube-shaped priors from another generator."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(4):
            r, c = rng.uniform(0.1, 0.9, 2) * size
            angle = rng.uniform(0, 2 * np.pi)
            points = [(r, c)]
            for _ in range(3):
                angle += rng.uniform(-0.6, 0.6)
                r, c = r + 0.25 * size * np.sin(angle), c + 0.25 * size * np.cos(angle)
                points.append((r, c))
            _draw_curve(mask, points, width)
        out.append(mask)
    return np.stack(out)


def lungs(n=4, size=96, seed=0):
    """Gray images with two dark, lung-like ellipses side by side in a brighter body, and their masks.

    Returns (images float32 (n, size, size) in [0, 1], masks bool (n, size, size)).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        cy, ry, rx = rng.uniform(0.45, 0.55), rng.uniform(0.25, 0.32), rng.uniform(0.1, 0.15)
        for cx in (0.5 - rng.uniform(0.18, 0.24), 0.5 + rng.uniform(0.18, 0.24)):
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        body = 0.75 - 0.25 * ((xx - 0.5) / 0.5) ** 2
        img = np.where(mask, 0.3, body) + rng.normal(0, 0.04, (size, size))
        images.append(img.clip(0, 1).astype(np.float32))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def ellipse_shapes(n=6, size=128, seed=100):
    """Binary masks of one or two ellipses of random size and tilt: blob priors from another generator."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            ry, rx, t = rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.16), rng.uniform(-0.4, 0.4)
            u, v = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t), -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
            mask |= (u / ry) ** 2 + (v / rx) ** 2 <= 1
        out.append(mask)
    return np.stack(out)


def lung_shapes(n=6, size=(120, 100), seed=100):
    """Binary masks of two rounded rectangles (superellipses) side by side, in frames of another
    size and aspect: lung-shaped priors from a different generator than :func:`lungs`."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy / h, xx / w
    out = []
    for _ in range(n):
        mask = np.zeros(size, bool)
        cy, ry, rx = rng.uniform(0.42, 0.58), rng.uniform(0.22, 0.34), rng.uniform(0.09, 0.16)
        for cx in (0.5 - rng.uniform(0.16, 0.26), 0.5 + rng.uniform(0.16, 0.26)):
            mask |= np.abs((yy - cy) / ry) ** 4 + np.abs((xx - cx) / rx) ** 4 <= 1
        out.append(mask)
    return out


#: Landmarks of the phantom (x, y) in its own frame: centres of some of its blobs.
N_BLOBS = 40


def _blob_field(seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform([8, 8], [152, 120], (N_BLOBS, 2))
    sizes = rng.uniform(2.0, 7.0, N_BLOBS)
    amps = rng.uniform(-1, 1, N_BLOBS)
    return centres, sizes, amps


def phantom(transform=None, shape=(128, 160), seed=0, noise=0.02, channels=None):
    """A smooth random image and its landmarks seen through ``transform`` (A, t) (x, y)."""
    centres, sizes, amps = _blob_field(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([xx.ravel(), yy.ravel()], 1)
    if transform is not None:
        a, t = transform
        pix = (pix - t) @ np.linalg.inv(a).T  # back to the phantom's own frame
    img = np.zeros(len(pix))
    for c, s, a_ in zip(centres, sizes, amps):
        img += a_ * np.exp(-((pix - c) ** 2).sum(1) / (2 * s * s))
    img = img.reshape(h, w)
    img = (img - img.min()) / (img.max() - img.min())
    img = (img * 0.9 + noise * np.random.default_rng(seed + 1).standard_normal((h, w))).clip(0, 1).astype(np.float32)
    marks = centres[np.argsort(-sizes)[:6]]
    if transform is not None:
        marks = apply_transform(marks, transform)
    if channels == 3:
        img = np.stack([img, img**1.3, 1 - img], -1)
    return img, marks


def rotation(deg, scale=1.0, shift=(0, 0)):
    r = np.deg2rad(deg)
    return scale * np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]), np.asarray(shift, float)
