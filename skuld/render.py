"""Pictures of embeddings with numpy alone: cluster maps and similarity heatmaps as RGB uint8.

These need no plotting library, so the command line and the demo can write PNGs anywhere.
"""

from __future__ import annotations

import numpy as np

#: 20 well-separated colours (tab20 order, dark then light), for cluster labels.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
        (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
        (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
        (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.float32,
)

_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image in [0, 1] or uint8 -> float (H, W, 3) in [0, 1]."""
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[:, :, :3]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def cluster_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Colour each pixel by its cluster label over the image; returns uint8 (H, W, 3)."""
    colours = PALETTE[np.asarray(labels) % len(PALETTE)] / 255.0
    return to_uint8((1 - alpha) * gray_rgb(image) + alpha * colours)


def colormap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map a 2-D array to viridis-like colours; returns float (H, W, 3) in [0, 1]."""
    v = np.asarray(values, dtype=np.float32)
    lo = np.nanmin(v) if vmin is None else vmin
    hi = np.nanmax(v) if vmax is None else vmax
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return (_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f) / 255.0


def heatmap_overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.6, vmin=None, vmax=None) -> np.ndarray:
    """A heatmap of ``values`` (H, W) blended over the image; returns uint8 (H, W, 3)."""
    return to_uint8((1 - alpha) * gray_rgb(image) + alpha * colormap(values, vmin, vmax))


def mark(rgb: np.ndarray, row: int, col: int, radius: int = 6, colour=(255, 0, 0)) -> np.ndarray:
    """Draw a ring centred on (row, col) into a copy of a uint8 (H, W, 3) picture."""
    out = rgb.copy()
    h, w = out.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
    out[(d >= radius - 1.5) & (d <= radius + 1.5)] = colour
    return out


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Join uint8 (H, W_i, 3) panels of equal height left to right with white gaps."""
    h = max(p.shape[0] for p in panels)
    pieces = []
    for p in panels:
        if p.shape[0] != h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        pieces += [p, np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(pieces[:-1], axis=1)
