"""Which pixels of which images a pixel index holds, and how FAISS ids map to them.

Every indexed vector is one pixel, identified by ``(image, row, col)``: ``image`` is the
position of its image in the order images were added (stable across additions), ``row`` and
``col`` pixel coordinates in that image (origin top-left). FAISS numbers vectors 0, 1, 2, ...
in the order they are added; :class:`PixelIds` maps those numbers back to pixels
arithmetically for strided grids, and through stored pixel lists for masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Location returned where fewer than k neighbours exist (distances are +-inf there).
MISSING = -1


@dataclass
class ImageEntry:
    """Which pixels of one image were indexed: a stride grid, or explicit flat indices.

    Attributes
    ----------
    height, width : int
    stride : int
    pixels : int array or None
        Flat indices (``row * width + col``), sorted, when a mask chose the pixels.

    Examples
    --------
    >>> from skuld.retrieval.ids import ImageEntry
    >>> ImageEntry(10, 7, 2, None).count                  # 5 rows x 4 columns
    20
    """

    height: int
    width: int
    stride: int
    pixels: np.ndarray | None

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def count(self) -> int:
        if self.pixels is not None:
            return len(self.pixels)
        return math.ceil(self.height / self.stride) * self.n_cols

    def locate(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pixels is not None:
            flat = self.pixels[local]
            return flat // self.width, flat % self.width
        return (local // self.n_cols) * self.stride, (local % self.n_cols) * self.stride


def select_pixels(embeddings: np.ndarray, mask, stride: int) -> tuple[np.ndarray, ImageEntry]:
    """The vectors of one image to index (every ``stride``-th row and column, inside ``mask``).

    Parameters
    ----------
    embeddings : array of shape (H, W, D)
    mask : bool array of shape (H, W) or None
    stride : int

    Returns
    -------
    vectors : array of shape (m, D)
    entry : ImageEntry

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.retrieval.ids import select_pixels
    >>> v, entry = select_pixels(np.zeros((4, 5, 3)), None, 2)
    >>> v.shape, entry.count
    ((6, 3), 6)
    """
    h, w, d = embeddings.shape
    if mask is None:
        return embeddings[::stride, ::stride].reshape(-1, d), ImageEntry(h, w, stride, None)
    keep = np.zeros((h, w), bool)
    keep[::stride, ::stride] = True
    keep &= np.asarray(mask, bool)
    pixels = np.flatnonzero(keep).astype(np.int64 if h * w >= 2**31 else np.int32)
    return embeddings.reshape(-1, d)[pixels], ImageEntry(h, w, stride, pixels)


def count_pixels(height: int, width: int, mask, stride: int) -> int:
    """How many pixels :func:`select_pixels` takes from an ``(height, width)`` image.

    Parameters
    ----------
    height, width : int
    mask : bool array of shape (height, width) or None
    stride : int

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.retrieval import count_pixels
    >>> count_pixels(10, 7, None, 2)
    20
    """
    if mask is None:
        return math.ceil(height / stride) * math.ceil(width / stride)
    return int(np.asarray(mask, bool)[::stride, ::stride].sum())


class PixelIds:
    """The id table of a pixel index: one :class:`ImageEntry` per image, in the order added.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.retrieval.ids import ImageEntry, PixelIds
    >>> ids = PixelIds()
    >>> ids.append(ImageEntry(4, 4, 2, None)), ids.append(ImageEntry(4, 4, 1, None))
    (0, 1)
    >>> ids.locations([0, 3, 4, -1]).tolist()
    [[0, 0, 0], [0, 2, 2], [1, 0, 0], [-1, -1, -1]]
    >>> ids.ids_of([[1, 0, 0]]).tolist()
    [4]
    """

    def __init__(self):
        self.entries: list[ImageEntry] = []
        self.offsets = [0]

    @property
    def n_images(self) -> int:
        return len(self.entries)

    @property
    def n_vectors(self) -> int:
        return self.offsets[-1]

    def append(self, entry: ImageEntry) -> int:
        """Add one image's entry; returns its image number."""
        self.entries.append(entry)
        self.offsets.append(self.offsets[-1] + entry.count)
        return len(self.entries) - 1

    def locations(self, ids) -> np.ndarray:
        """``(image, row, col)`` of FAISS ids (any shape); :data:`MISSING` ids give MISSING rows.

        Parameters
        ----------
        ids : array-like of int

        Returns
        -------
        int64 array of shape (*ids.shape, 3)
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape + (3,), MISSING, dtype=np.int64)
        valid = ids >= 0
        flat_ids = ids[valid]
        img = np.searchsorted(np.asarray(self.offsets), flat_ids, side="right") - 1
        rows = np.empty_like(flat_ids)
        cols = np.empty_like(flat_ids)
        for i in np.unique(img):
            sel = img == i
            r, c = self.entries[i].locate(flat_ids[sel] - self.offsets[i])
            rows[sel], cols[sel] = r, c
        out[valid] = np.stack([img, rows, cols], axis=-1)
        return out

    def ids_of(self, pixels) -> np.ndarray:
        """FAISS ids of ``(image, row, col)`` pixels; ``KeyError`` for a pixel that is not indexed.

        Parameters
        ----------
        pixels : array-like of shape (n, 3), int

        Returns
        -------
        int64 array of shape (n,)
        """
        out = []
        for img, r, c in np.asarray(pixels, dtype=np.int64).reshape(-1, 3):
            if not 0 <= img < self.n_images:
                raise KeyError(f"image {img} is not in the index ({self.n_images} images)")
            e = self.entries[img]
            if e.pixels is not None:
                pos = np.searchsorted(e.pixels, r * e.width + c)
                if pos >= len(e.pixels) or e.pixels[pos] != r * e.width + c:
                    raise KeyError(f"pixel ({img}, {r}, {c}) is not indexed (outside its mask or stride grid)")
                local = pos
            else:
                if r % e.stride or c % e.stride or not (0 <= r < e.height and 0 <= c < e.width):
                    raise KeyError(f"pixel ({img}, {r}, {c}) is not indexed (stride {e.stride}, image "
                                   f"{e.height} x {e.width})")
                local = (r // e.stride) * e.n_cols + c // e.stride
            out.append(self.offsets[img] + local)
        return np.asarray(out, dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The table as two arrays (``shapes``: height, width, stride, pixel count or -1; ``pixels``)."""
        shapes = np.array([[e.height, e.width, e.stride, -1 if e.pixels is None else len(e.pixels)]
                           for e in self.entries], dtype=np.int64).reshape(-1, 4)
        pixels = [e.pixels for e in self.entries if e.pixels is not None]
        return {"shapes": shapes, "pixels": np.concatenate(pixels) if pixels else np.zeros(0, np.int64)}

    @classmethod
    def from_arrays(cls, arrays) -> "PixelIds":
        """The table :meth:`arrays` wrote; ``ValueError`` when the arrays do not fit together."""
        table = cls()
        shapes, pixels, pos = np.asarray(arrays["shapes"]), np.asarray(arrays["pixels"]), 0
        if shapes.ndim != 2 or shapes.shape[1] != 4:
            raise ValueError(f"the id table's shapes must be (n, 4), got {shapes.shape}")
        for h, w, s, m in shapes:
            if h <= 0 or w <= 0 or s <= 0 or m < -1 or pos + max(m, 0) > len(pixels):
                raise ValueError(f"the id table holds an invalid entry ({h}, {w}, {s}, {m})")
            px = None
            if m >= 0:
                px, pos = pixels[pos : pos + m], pos + m
            table.append(ImageEntry(int(h), int(w), int(s), px))
        return table
