"""Per-pixel embeddings of image collections, one image at a time.

A pixel index is fed either embeddings already computed (arrays, a memory-mapped
:class:`~skuld.retrieval.EmbeddingStore`) or images and anything with a ``transform`` that
maps a ``(1, H, W[, C])`` image to ``(1, H, W, D)`` embeddings (a fitted
:class:`skuld.LocalDiscriminativeEncoder`, a Pipeline ending in one, your own model): the
collection's embeddings are then never all in memory.
"""

from __future__ import annotations

import numpy as np

from ..io import ImageCollection, check_dense


def embed_each(transformer, images: ImageCollection, indices, n_jobs=None):
    """Yield ``(i, (H, W, D) float32 embeddings)`` of ``images[i]`` for each of ``indices``, in order.

    One image is in memory at a time; image files are decoded ahead by ``n_jobs`` worker
    processes (see :meth:`skuld.io.ImageCollection.iter_images`).

    Parameters
    ----------
    transformer : object with ``transform``
        Maps ``(1, H, W, C)`` images to ``(1, H, W, D)`` embeddings.
    images : ImageCollection
    indices : iterable of int
    n_jobs : int or None, default=None

    Yields
    ------
    i : int
    embeddings : ndarray of shape (H, W, D)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from skuld.io import ImageCollection
    >>> from skuld.retrieval import embed_each
    >>> double = FunctionTransformer(lambda x: np.concatenate([x, 2 * x], axis=-1))   # (1, H, W, 1) -> 2-d
    >>> [(i, e.shape) for i, e in embed_each(double, ImageCollection(np.zeros((3, 8, 6))), [2, 0])]
    [(2, (8, 6, 2)), (0, (8, 6, 2))]
    """
    for i, img in images.iter_images(indices, n_jobs=n_jobs):
        yield i, np.asarray(transformer.transform(img[None])[0])  # (1, H, W, C) with C = 1 or 3: both accepted


class EmbeddingSource:
    """The embeddings of a collection, image by image: given arrays, or computed by a transformer.

    Parameters
    ----------
    E : float array (n, H, W, D), list of (H_i, W_i, D) arrays, or an EmbeddingStore; or, with
        ``transformer``, images in any form :class:`skuld.io.ImageCollection` takes
    masks : list of bool arrays (H_i, W_i) or None
    transformer : object with ``transform`` or None
        Its ``n_channels_in_`` (when it has one) sets the images' channel count.
    n_jobs : int or None, default=None
        Decoding processes for image files.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.retrieval import EmbeddingSource
    >>> src = EmbeddingSource(np.zeros((2, 4, 5, 3), np.float32), None, None)
    >>> len(src), src.dim(), src.shape(1)
    (2, 3, (4, 5))
    """

    def __init__(self, E, masks, transformer=None, n_jobs=None):
        self.transformer, self.n_jobs = transformer, n_jobs
        self._first = None
        check_dense(E, "E" if transformer is None else "X", "embeddings (n_images, H, W, D)" if transformer is None
                    else "images")
        if transformer is not None:
            if not hasattr(transformer, "transform"):
                raise TypeError(f"encoder must have a transform method (images -> embeddings), got "
                                f"{type(transformer).__name__}")
            self.items = ImageCollection(E, n_channels=getattr(transformer, "n_channels_in_", None), name="X")
        else:
            if isinstance(E, np.ndarray) and E.dtype != object and E.ndim != 4:
                raise ValueError(f"embeddings must be (n_images, H, W, D) or a list of (H, W, D), got shape {E.shape}")
            self.items = list(E)
            for i, e in enumerate(self.items):
                if np.ndim(e) != 3:
                    raise ValueError(f"embeddings of image {i} must be (H, W, D), got shape {np.shape(e)}")
            if self.items:
                d = int(np.shape(self.items[0])[-1])
                for i, e in enumerate(self.items):
                    if np.shape(e)[-1] != d:
                        raise ValueError(f"image {i} has embeddings of dimension {np.shape(e)[-1]}, image 0 of {d}")
        if len(self.items) == 0:
            raise ValueError("no embeddings given: the list of images is empty")
        self.masks = None if masks is None else list(masks)
        if self.masks is not None:
            if len(self.masks) != len(self.items):
                raise ValueError(f"{len(self.masks)} masks for {len(self.items)} images")
            for i, m in enumerate(self.masks):
                if np.shape(m) != self.shape(i):
                    raise ValueError(f"mask {i} has shape {np.shape(m)}, its image {self.shape(i)}")

    def __len__(self) -> int:
        return len(self.items)

    def dim(self) -> int:
        """D; with a transformer, the first image is embedded to learn it (and kept for later)."""
        if self.transformer is None:
            return int(np.shape(self.items[0])[-1])
        if self._first is None:
            self._first = next(embed_each(self.transformer, self.items, [0]))[1]
        return int(self._first.shape[-1])

    def shape(self, i: int) -> tuple[int, int]:
        if self.transformer is not None:
            return self.items.shape(i)
        return tuple(np.shape(self.items[i])[:2])

    def mask(self, i: int):
        return None if self.masks is None else self.masks[i]

    def iter_embeddings(self, indices):
        """Yield ``(i, (H, W, D) embeddings)`` in the order of ``indices``."""
        if self.transformer is None:
            for i in indices:
                yield i, np.asarray(self.items[i])
            return
        indices = list(indices)
        if indices and indices[0] == 0 and self._first is not None:
            first, self._first = self._first, None
            yield 0, first
            indices = indices[1:]
        yield from embed_each(self.transformer, self.items, indices, self.n_jobs)
