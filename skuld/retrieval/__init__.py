"""Pixel retrieval: what :class:`skuld.PixelIndex` builds on, and embeddings on disk.

* :mod:`~skuld.retrieval.ids`: which pixels an index holds, FAISS ids <-> ``(image, row, col)``;
* :mod:`~skuld.retrieval.faiss_index`: FAISS itself (the "auto" index, training, search);
* :mod:`~skuld.retrieval.sources`: embeddings image by image, from arrays or any transformer;
* :mod:`~skuld.retrieval.store`: :class:`EmbeddingStore`, per-pixel arrays of images of any
  sizes on disk.
"""

from .faiss_index import auto_factory, build_index, prepare_vectors, search
from .ids import MISSING, ImageEntry, PixelIds, count_pixels, select_pixels
from .sources import EmbeddingSource, embed_each
from .store import EmbeddingStore

__all__ = ["MISSING", "EmbeddingSource", "EmbeddingStore", "ImageEntry", "PixelIds", "auto_factory", "build_index",
           "count_pixels", "embed_each", "prepare_vectors", "search", "select_pixels"]
