"""PixelIndex: nearest-neighbour search over the pixels of many images, on FAISS.

Every indexed vector is one pixel, identified by ``(image, row, col)``: ``image`` is the
position of its image in the order images were given to :meth:`PixelIndex.fit` and
:meth:`PixelIndex.add` (stable across ``add``), ``row`` and ``col`` are pixel coordinates in
that image (origin top-left); see :mod:`skuld.retrieval.ids`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..retrieval import (
    MISSING,
    EmbeddingSource,
    PixelIds,
    auto_factory,
    build_index,
    count_pixels,
    prepare_vectors,
    search,
    select_pixels,
)
from ..retrieval.faiss_index import faiss, ivf, set_search_params
from . import legacy
from .base import SkuldEstimator, constraints
from .persistence import model_fingerprint

__all__ = ["MISSING", "PixelIndex"]

_FORMAT = 1


class PixelIndex(SkuldEstimator):
    """Nearest-neighbour pixel retrieval across image collections.

    Parameters
    ----------
    index : str, default="auto"
        A FAISS factory string ("Flat", "IVF4096,Flat", "HNSW32", "IVF16384,PQ16", ...) or
        "auto", which picks by the number of vectors at :meth:`fit` (see :func:`skuld.retrieval.auto_factory`).
    metric : {"cosine", "l2", "ip"}, default="cosine"
        "cosine" L2-normalises vectors and searches by inner product; distances returned are
        then cosine similarities (larger is closer). "l2" returns squared L2 distances
        (smaller is closer); "ip" raw inner products.
    stride : int, default=1
        Index every ``stride``-th row and column (1: every pixel).
    nprobe : int, default=8
        Inverted lists visited per query (IVF indexes); settable after fit.
    ef_search : int, default=64
        Candidate list size of HNSW indexes; settable after fit.
    train_size : int or None, default=None
        Vectors sampled to train an index that needs training (IVF, PQ, SQ). None: 39 per
        inverted list (FAISS's advice) and at least 262,144, at most all of them.
    block_size : int, default=1048576
        Vectors added to FAISS per block.
    n_jobs : int or None, default=None
        With an ``encoder`` and image files: processes that decode the next images while
        this one embeds the current one (joblib's loky workers, safe beside FAISS's and
        PyTorch's threads). None: decode in this process; -1: one per core.
    random_state : int or None, default=None
        Seeds the training sample and FAISS's k-means.
    verbose : int, default=0
        Print progress (images added, vectors, rate) to stderr when > 0.

    Attributes
    ----------
    index_ : faiss.Index
    dim_ : int
    n_vectors_ : int
    n_images_ : int
    factory_ : str
        The factory string used ("auto" resolved).
    ids_ : skuld.retrieval.PixelIds
        Which pixels of which images the index holds.
    embedding_model_ : str or None
        The fingerprint of the encoder that computed the vectors (``encoder=`` of :meth:`fit`),
        None for given embeddings; :meth:`add` refuses another model's.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import PixelIndex
    >>> E = np.random.default_rng(0).normal(size=(3, 16, 16, 8)).astype(np.float32)  # (n, H, W, D)
    >>> index = PixelIndex(index="Flat", stride=2).fit(E)        # exact; "auto" picks by size
    >>> index.n_vectors_
    192
    >>> sim, where = index.kneighbors(E[1, 4, 6], k=1)            # query: one pixel's vector
    >>> where                                                     # (image, row, col) of each hit
    array([[[1, 4, 6]]])
    """

    _parameter_constraints = constraints(
        "random_state", "verbose",
        index=[str],
        metric=[StrOptions({"cosine", "l2", "ip"})],
        stride=[Interval(Integral, 1, None, closed="left")],
        nprobe=[Interval(Integral, 1, None, closed="left")],
        ef_search=[Interval(Integral, 1, None, closed="left")],
        train_size=[Interval(Integral, 1, None, closed="left"), None],
        block_size=[Interval(Integral, 1, None, closed="left")],
        n_jobs=[Integral, None],
    )

    def __init__(self, index="auto", *, metric="cosine", stride=1, nprobe=8, ef_search=64, train_size=None,
                 block_size=1_048_576, n_jobs=None, random_state=None, verbose=0):
        self.index = index
        self.metric = metric
        self.stride = stride
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.train_size = train_size
        self.block_size = block_size
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ building
    def fit(self, E, masks=None, encoder=None):
        """Build the index from per-pixel embeddings, block by block.

        Parameters
        ----------
        E : float array (n_images, H, W, D) or list of (H_i, W_i, D) arrays
            Embeddings; or, when ``encoder`` is given, images in any form the encoder's
            ``transform`` takes (arrays, paths), embedded one image at a time so that the
            collection's embeddings are never all in memory.
        masks : list of bool arrays (H_i, W_i), optional
            Only pixels where the mask is True (and on the stride grid) are indexed.
        encoder : object with ``transform``, optional
            Maps ``(1, H, W, C)`` images to ``(1, H, W, D)`` embeddings: a fitted
            :class:`LocalDiscriminativeEncoder`, a Pipeline ending in one, any model.

        Returns
        -------
        self

        Notes
        -----
        Indexes that need training (IVF, PQ, SQ) are trained on ``train_size`` vectors drawn
        at random from a random subset of the images, then every image is added in order.
        """
        self._validate_params()
        src = EmbeddingSource(E, masks, encoder, self.n_jobs)
        counts = [count_pixels(*src.shape(i), src.mask(i), self.stride) for i in range(len(src))]
        n = int(sum(counts))
        if n == 0:
            raise ValueError("no pixel selected: every mask is empty")
        self.dim_ = src.dim()
        self.embedding_model_ = model_fingerprint(encoder) if encoder is not None else None
        self.factory_ = auto_factory(n) if self.index == "auto" else self.index
        self.index_ = build_index(self.dim_, self.factory_, self.metric)
        self.n_vectors_, self.n_images_, self.ids_ = 0, 0, PixelIds()
        if not self.index_.is_trained:
            self._train(src, counts)
        self._add(src)
        set_search_params(self.index_, self.factory_, self.nprobe, self.ef_search)
        return self

    def _train(self, src: EmbeddingSource, counts: list[int]) -> None:
        rng = check_random_state(self.random_state)
        lists = ivf(self.index_)
        wanted = self.train_size
        if wanted is None:
            wanted = max(262_144, 39 * lists.nlist) if lists is not None else 262_144
        # A random subset of images holding about 4x the sample, so that an encoder embeds
        # only a bounded number of images for training.
        order = rng.permutation(len(counts))
        cum = np.cumsum(np.asarray(counts)[order])
        chosen = np.sort(order[: int(np.searchsorted(cum, 4 * wanted)) + 1])
        pool = np.concatenate([select_pixels(e, src.mask(i), self.stride)[0] for i, e in src.iter_embeddings(chosen)])
        take = min(wanted, len(pool))
        x = prepare_vectors(pool[np.sort(rng.choice(len(pool), size=take, replace=False))], self.metric)
        del pool
        if lists is not None and take < lists.nlist:
            raise ValueError(f"index {self.factory_!r} has {lists.nlist} lists but only {take} training vectors; "
                             "use fewer lists (FAISS advises n / 39 at most) or index='auto'")
        if self.random_state is not None and lists is not None:
            lists.cp.seed = int(rng.randint(0, 2**31 - 1))
        self.index_.train(x)

    def _add(self, src: EmbeddingSource) -> list[int]:
        new_ids, pending, pending_n = [], [], 0
        t0 = last = time.perf_counter()
        for i, e in src.iter_embeddings(range(len(src))):
            if time.perf_counter() - last > 10 or i == len(src) - 1:
                last = time.perf_counter()
                self._log(f"indexing image {i + 1}/{len(src)}, {self.ids_.n_vectors:,} vectors, "
                          f"{(i + 1) / (last - t0):.1f} images/s")
            vecs, entry = select_pixels(e, src.mask(i), self.stride)
            if vecs.shape[1] != self.dim_:
                raise ValueError(f"image {i} has embeddings of dimension {vecs.shape[1]}, the index {self.dim_}")
            pending.append(prepare_vectors(vecs, self.metric, f"embeddings of image {self.n_images_}"))
            pending_n += len(vecs)
            new_ids.append(self.ids_.append(entry))
            self.n_images_ = self.ids_.n_images
            if pending_n >= self.block_size:
                self.index_.add(np.concatenate(pending))
                pending, pending_n = [], 0
        if pending:
            self.index_.add(np.concatenate(pending))
        self.n_vectors_ = int(self.index_.ntotal)
        return new_ids

    def add(self, E, masks=None, encoder=None) -> np.ndarray:
        """Append images to a fitted index.

        Parameters
        ----------
        E, masks, encoder
            As for :meth:`fit`.

        Returns
        -------
        image_numbers : ndarray of int
            Their image numbers, continuing the count: existing numbers never change.
        """
        check_is_fitted(self, "index_")
        model = model_fingerprint(encoder) if encoder is not None else None
        if self.embedding_model_ is not None and model != self.embedding_model_:
            raise ValueError(f"the index holds embeddings of model {self.embedding_model_}; these would come from "
                             f"{model if model else 'other embeddings'}: one index, one model")
        return np.asarray(self._add(EmbeddingSource(E, masks, encoder, self.n_jobs)))

    # ------------------------------------------------------------------ querying
    def set_params(self, **params):
        """Set parameters; ``nprobe`` and ``ef_search`` also apply to a fitted index at once.

        Parameters
        ----------
        **params

        Returns
        -------
        self
        """
        super().set_params(**params)
        if hasattr(self, "index_") and ({"nprobe", "ef_search"} & set(params)):
            set_search_params(self.index_, self.factory_, self.nprobe, self.ef_search)
        return self

    def locations(self, ids) -> np.ndarray:
        """Translate FAISS ids into pixel locations.

        Parameters
        ----------
        ids : array-like of int, any shape
            Ids as returned by the FAISS index (``MISSING`` allowed).

        Returns
        -------
        ndarray of shape (*ids.shape, 3), int64
            ``(image, row, col)``; ``MISSING`` ids give ``MISSING`` rows.
        """
        check_is_fitted(self, "index_")
        return self.ids_.locations(ids)

    def kneighbors(self, Q, k: int = 10):
        """The k nearest indexed pixels of each query vector.

        Parameters
        ----------
        Q : float array (q, D)
        k : int >= 1

        Returns
        -------
        distances : float32 (q, k)
            Cosine similarity (metric "cosine", decreasing), squared L2 distance ("l2",
            increasing) or inner product ("ip"); where fewer than k were found, +inf for "l2"
            and -inf otherwise.
        locations : int64 (q, k, 3)
            (image, row, col) of each neighbour; ``MISSING`` (-1) where fewer than k were found.
        """
        check_is_fitted(self, "index_")
        if not isinstance(k, Integral) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None]
        if Q.ndim != 2 or Q.shape[1] != self.dim_:
            raise ValueError(f"queries must be (q, {self.dim_}), got shape {Q.shape}")
        if self.n_vectors_ == 0:
            raise ValueError("the index is empty")
        D, ids = search(self.index_, prepare_vectors(Q, self.metric, "queries"), k, self.metric)
        return D, self.ids_.locations(ids)

    def kneighbors_of(self, pixels, k: int = 10, embeddings=None):
        """Neighbours of given pixels.

        Parameters
        ----------
        pixels : int array (n, 3) of (image, row, col) of indexed pixels; or, with
            ``embeddings``, (n, 2) of (row, col) in that (new, not indexed) image.
        k : int
        embeddings : float array (H, W, D), optional
            The embeddings of a new image, e.g. ``encoder.transform(img[None])[0]``.

        Returns
        -------
        As :meth:`kneighbors`. Indexed pixels' vectors are reconstructed from the index
        (exactly for Flat indexes, from their stored codes for compressed ones).
        """
        check_is_fitted(self, "index_")
        if embeddings is not None:
            rc = np.atleast_2d(np.asarray(pixels, dtype=np.int64))
            e = np.asarray(embeddings)
            if rc.shape[1] != 2 or e.ndim != 3:
                raise ValueError(f"with embeddings (H, W, D), pixels must be (n, 2) rows of (row, col); got {rc.shape}")
            if (rc < 0).any() or (rc[:, 0] >= e.shape[0]).any() or (rc[:, 1] >= e.shape[1]).any():
                raise ValueError(f"pixels outside the {e.shape[0]} x {e.shape[1]} image")
            return self.kneighbors(e[rc[:, 0], rc[:, 1]], k)
        ids = self.ids_of(np.atleast_2d(np.asarray(pixels, dtype=np.int64)))
        lists = ivf(self.index_)
        if lists is not None and lists.direct_map.no():
            lists.make_direct_map()  # once: it is a pass over every stored vector
        return self.kneighbors(np.stack([self.index_.reconstruct(int(i)) for i in ids]), k)

    def ids_of(self, pixels: np.ndarray) -> np.ndarray:
        """Translate pixel locations into FAISS ids.

        Parameters
        ----------
        pixels : array-like of shape (n, 3), int
            ``(image, row, col)`` of indexed pixels.

        Returns
        -------
        ndarray of shape (n,), int64
            ``KeyError`` for a pixel that is not indexed (off the stride grid or masked out).
        """
        check_is_fitted(self, "index_")
        return self.ids_.ids_of(pixels)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to a folder (index.faiss, ids.npz, meta.json), atomically.

        An interrupted save leaves any previous index at ``path`` intact.

        Parameters
        ----------
        path : str or path-like
            The folder (created if needed); reload with :meth:`load`.

        Returns
        -------
        None
        """
        check_is_fitted(self, "index_")
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            faiss().write_index(self.index_, os.path.join(tmp, "index.faiss"))
            np.savez(os.path.join(tmp, "ids.npz"), **self.ids_.arrays())
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"format": _FORMAT, "params": self.get_params(), "factory": self.factory_, "dim": self.dim_,
                           "embedding_model": self.embedding_model_}, f)
            old = f"{path}.old-{os.getpid()}"
            if os.path.exists(path):
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> "PixelIndex":
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        mmap : bool, default=False
            Map the index from disk instead of reading it into memory (larger than RAM).

        Returns
        -------
        PixelIndex
        """
        path = os.fspath(path)
        try:
            with open(os.path.join(path, "meta.json")) as f:
                meta = json.load(f)
            with np.load(os.path.join(path, "ids.npz"), allow_pickle=False) as arrays:
                ids = {k: arrays[k] for k in arrays.files}
            index = faiss().read_index(os.path.join(path, "index.faiss"), faiss().IO_FLAG_MMAP if mmap else 0)
        except Exception as exc:
            raise ValueError(f"cannot read a PixelIndex from {path}: {type(exc).__name__}: {exc}") from exc
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} holds a PixelIndex of format {meta.get('format')}, this skuld reads {_FORMAT}")
        est = cls(**meta["params"])
        est.index_, est.factory_, est.dim_ = index, meta["factory"], meta["dim"]
        est.embedding_model_ = meta.get("embedding_model")
        est.ids_ = PixelIds.from_arrays(ids)
        est.n_vectors_, est.n_images_ = int(index.ntotal), est.ids_.n_images
        set_search_params(index, est.factory_, est.nprobe, est.ef_search)
        return est

    def __getstate__(self):
        state = self.__dict__.copy()
        if "index_" in state:
            state["index_"] = faiss().serialize_index(state["index_"])
            state["ids_"] = state["ids_"].arrays()
        return state

    def __setstate__(self, state):
        legacy.upgrade("PixelIndex", state)
        self.__dict__.update(state)
        if "index_" in state:
            self.index_ = faiss().deserialize_index(state["index_"])
            self.ids_ = PixelIds.from_arrays(state["ids_"])
            set_search_params(self.index_, self.factory_, self.nprobe, self.ef_search)

    @property
    def bytes_per_vector(self) -> float:
        """Size of the serialised index (codes, lists, quantisers) divided by the vector count."""
        check_is_fitted(self, "index_")
        return faiss().serialize_index(self.index_).nbytes / max(1, self.n_vectors_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None and self.index != "Flat"
        return tags
