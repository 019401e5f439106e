"""PixelIndex: nearest-neighbour search over the pixels of many images, on FAISS.

Every indexed vector is one pixel, identified by ``(image, row, col)``: ``image`` is the
position of its image in the order images were given to :meth:`PixelIndex.fit` and
:meth:`PixelIndex.add` (stable across ``add``), ``row`` and ``col`` are pixel coordinates in
that image (origin top-left). FAISS numbers vectors 0, 1, 2, ... in the order they are added;
the id table maps those numbers back to pixels arithmetically for strided grids, and through
stored pixel lists for masks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

#: Location returned where fewer than k neighbours exist (distances are +-inf there).
MISSING = -1

_QUERY_BLOCK = 65_536

_FORMAT = 1


_FORK_GUARD = []


def _faiss():
    import faiss

    if not _FORK_GUARD and hasattr(os, "register_at_fork"):
        # A forked child inherits an OpenMP runtime whose threads did not survive the fork:
        # its first parallel search can hang. One thread in the child never starts a team.
        os.register_at_fork(after_in_child=lambda: faiss.omp_set_num_threads(1))
        _FORK_GUARD.append(True)
    return faiss


@dataclass
class _ImageEntry:
    """Which pixels of one image were indexed: a stride grid, or explicit flat indices."""

    height: int
    width: int
    stride: int
    pixels: np.ndarray | None  # flat indices (row * width + col), int32, when a mask chose them

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


def auto_factory(n_vectors: int) -> str:
    """The index "auto" picks for ``n_vectors`` vectors.

    Exact search below 100k vectors; IVF with 8-bit scalar quantisation (32 bytes for a 32-d
    vector) up to 10M; above, IVF with 16-byte product quantisation and an HNSW coarse
    quantiser (assigning tens of millions of vectors to tens of thousands of lists by brute
    force would dominate the build). The number of lists grows as about 4 sqrt(n), a power
    of two.
    """
    if n_vectors < 100_000:
        return "Flat"
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n_vectors))))
    nlist = min(max(nlist, 256), 65536)
    return f"IVF{nlist},SQ8" if n_vectors < 10_000_000 else f"IVF{nlist}_HNSW32,PQ16"


class PixelIndex(BaseEstimator):
    """Nearest-neighbour pixel retrieval across image collections.

    Parameters
    ----------
    index : str, default="auto"
        A FAISS factory string ("Flat", "IVF4096,Flat", "HNSW32", "IVF16384,PQ16", ...) or
        "auto", which picks by the number of vectors at :meth:`fit` (see :func:`auto_factory`).
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

    _parameter_constraints = {
        "index": [str],
        "metric": [StrOptions({"cosine", "l2", "ip"})],
        "stride": [Interval(Integral, 1, None, closed="left")],
        "nprobe": [Interval(Integral, 1, None, closed="left")],
        "ef_search": [Interval(Integral, 1, None, closed="left")],
        "train_size": [Interval(Integral, 1, None, closed="left"), None],
        "block_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, index="auto", metric="cosine", stride=1, nprobe=8, ef_search=64, train_size=None,
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
    def _source(self, E, masks, encoder) -> "_Source":
        return _Source(E, masks, encoder, self.n_jobs)

    def _select(self, e: np.ndarray, mask) -> tuple[np.ndarray, _ImageEntry]:
        h, w, d = e.shape
        if mask is None:
            vecs = e[:: self.stride, :: self.stride].reshape(-1, d)
            return vecs, _ImageEntry(h, w, self.stride, None)
        keep = np.zeros((h, w), bool)
        keep[:: self.stride, :: self.stride] = True
        keep &= np.asarray(mask, bool)
        pixels = np.flatnonzero(keep).astype(np.int64 if h * w >= 2**31 else np.int32)
        return e.reshape(-1, d)[pixels], _ImageEntry(h, w, self.stride, pixels)

    def _count(self, h: int, w: int, mask) -> int:
        if mask is None:
            return math.ceil(h / self.stride) * math.ceil(w / self.stride)
        return int(np.asarray(mask, bool)[:: self.stride, :: self.stride].sum())

    def _vectors(self, v: np.ndarray, name="embeddings") -> np.ndarray:
        v = np.ascontiguousarray(v, dtype=np.float32)
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contain NaN or infinity")
        if self.metric == "cosine":
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError(f"{name} contain zero vectors, which have no direction for metric='cosine'")
            v = v / norms
        return v

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
        encoder : fitted LocalDiscriminativeEncoder, optional

        Returns
        -------
        self

        Notes
        -----
        Indexes that need training (IVF, PQ, SQ) are trained on ``train_size`` vectors drawn
        at random from a random subset of the images, then every image is added in order.
        """
        self._validate_params()
        faiss = _faiss()
        src = self._source(E, masks, encoder)
        counts = [self._count(*src.shape(i), src.mask(i)) for i in range(len(src))]
        n = int(sum(counts))
        if n == 0:
            raise ValueError("no pixel selected: every mask is empty")
        d = src.dim()
        factory = auto_factory(n) if self.index == "auto" else self.index
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(d, factory, metric)
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot build index {factory!r}: {str(exc).strip().splitlines()[-1]}") from None
        self.index_, self.dim_, self.factory_ = index, d, factory
        self.n_vectors_, self.n_images_ = 0, 0
        self._entries: list[_ImageEntry] = []
        self._offsets = [0]
        if not index.is_trained:
            self._train(src, counts)
        self._add(src)
        self._apply_search_params()
        return self

    def _train(self, src: "_Source", counts: list[int]) -> None:
        rng = check_random_state(self.random_state)
        ivf = _ivf(self.index_)
        wanted = self.train_size
        if wanted is None:
            wanted = max(262_144, 39 * ivf.nlist) if ivf is not None else 262_144
        # A random subset of images holding about 4x the sample, so that an encoder embeds
        # only a bounded number of images for training.
        order = rng.permutation(len(counts))
        cum = np.cumsum(np.asarray(counts)[order])
        chosen_images = np.sort(order[: int(np.searchsorted(cum, 4 * wanted)) + 1])
        pool = [self._select(e, src.mask(i))[0] for i, e in src.iter_embeddings(chosen_images)]
        pool = np.concatenate(pool)
        take = min(wanted, len(pool))
        x = self._vectors(pool[np.sort(rng.choice(len(pool), size=take, replace=False))])
        del pool
        if ivf is not None and take < ivf.nlist:
            raise ValueError(
                f"index {self.factory_!r} has {ivf.nlist} lists but only {take} training vectors; "
                f"use fewer lists (FAISS advises n / 39 at most) or index='auto'"
            )
        if self.random_state is not None and ivf is not None:
            ivf.cp.seed = int(rng.randint(0, 2**31 - 1))
        self.index_.train(x)

    def _add(self, src: "_Source") -> list[int]:
        new_ids = []
        pending, pending_n = [], 0
        t0, last = time.perf_counter(), time.perf_counter()
        for i, e in src.iter_embeddings(range(len(src))):
            if self.verbose and (time.perf_counter() - last > 10 or i == len(src) - 1):
                last = time.perf_counter()
                print(f"[skuld] indexing image {i + 1}/{len(src)}, {self._offsets[-1]:,} vectors, "
                      f"{(i + 1) / (last - t0):.1f} images/s", file=sys.stderr, flush=True)
            vecs, entry = self._select(e, src.mask(i))
            if vecs.shape[1] != self.dim_:
                raise ValueError(f"image {i} has embeddings of dimension {vecs.shape[1]}, the index {self.dim_}")
            pending.append(self._vectors(vecs, f"embeddings of image {self.n_images_}"))
            pending_n += len(vecs)
            self._entries.append(entry)
            self._offsets.append(self._offsets[-1] + entry.count)
            new_ids.append(self.n_images_)
            self.n_images_ += 1
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
        return np.asarray(self._add(self._source(E, masks, encoder)))

    # ------------------------------------------------------------------ querying
    def _apply_search_params(self):
        faiss = _faiss()
        ps = faiss.ParameterSpace()
        if _ivf(self.index_) is not None:
            ps.set_index_parameter(self.index_, "nprobe", int(self.nprobe))
        if "HNSW" in self.factory_:
            ps.set_index_parameter(self.index_, "efSearch", int(self.ef_search))

    def set_params(self, **params):
        super().set_params(**params)
        if hasattr(self, "index_") and ({"nprobe", "ef_search"} & set(params)):
            self._apply_search_params()
        return self

    def locations(self, ids: np.ndarray) -> np.ndarray:
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
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape + (3,), MISSING, dtype=np.int64)
        valid = ids >= 0
        flat_ids = ids[valid]
        img = np.searchsorted(np.asarray(self._offsets), flat_ids, side="right") - 1
        rows = np.empty_like(flat_ids)
        cols = np.empty_like(flat_ids)
        for i in np.unique(img):
            sel = img == i
            r, c = self._entries[i].locate(flat_ids[sel] - self._offsets[i])
            rows[sel], cols[sel] = r, c
        out[valid] = np.stack([img, rows, cols], axis=-1)
        return out

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
        Q = self._vectors(Q, "queries")
        # Blocks of queries bound the (q, k) result buffers FAISS allocates; each block is
        # searched by all of FAISS's threads.
        parts = [self.index_.search(Q[i : i + _QUERY_BLOCK], int(k)) for i in range(0, len(Q), _QUERY_BLOCK)]
        D = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
        ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
        # FAISS pads with +-FLT_MAX; infinities say "nothing there" unambiguously.
        D[ids < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, self.locations(ids)

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
        pixels = np.atleast_2d(np.asarray(pixels, dtype=np.int64))
        ids = self.ids_of(pixels)
        ivf = _ivf(self.index_)
        if ivf is not None and ivf.direct_map.no():
            ivf.make_direct_map()  # once: it is a pass over every stored vector
        Q = np.stack([self.index_.reconstruct(int(i)) for i in ids])
        return self.kneighbors(Q, k)

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
        out = []
        for img, r, c in np.asarray(pixels, dtype=np.int64):
            if not 0 <= img < self.n_images_:
                raise KeyError(f"image {img} is not in the index ({self.n_images_} images)")
            e = self._entries[img]
            if e.pixels is not None:
                pos = np.searchsorted(e.pixels, r * e.width + c)
                if pos >= len(e.pixels) or e.pixels[pos] != r * e.width + c:
                    raise KeyError(f"pixel ({img}, {r}, {c}) is not indexed (outside its mask or stride grid)")
                local = pos
            else:
                if r % e.stride or c % e.stride or not (0 <= r < e.height and 0 <= c < e.width):
                    raise KeyError(f"pixel ({img}, {r}, {c}) is not indexed (stride {e.stride}, image {e.height} x {e.width})")
                local = (r // e.stride) * e.n_cols + c // e.stride
            out.append(self._offsets[img] + local)
        return np.asarray(out, dtype=np.int64)

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
        faiss = _faiss()
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            faiss.write_index(self.index_, os.path.join(tmp, "index.faiss"))
            np.savez(os.path.join(tmp, "ids.npz"), **self._id_arrays())
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"format": _FORMAT, "params": self.get_params(), "factory": self.factory_, "dim": self.dim_}, f)
            old = f"{path}.old-{os.getpid()}"
            if os.path.exists(path):
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> "PixelIndex":
        """Read an index written by :meth:`save`; ``mmap=True`` maps it from disk instead of
        reading it into memory (for indexes larger than RAM)."""
        faiss = _faiss()
        path = os.fspath(path)
        try:
            with open(os.path.join(path, "meta.json")) as f:
                meta = json.load(f)
            ids = np.load(os.path.join(path, "ids.npz"))
            index = faiss.read_index(os.path.join(path, "index.faiss"), faiss.IO_FLAG_MMAP if mmap else 0)
        except Exception as exc:
            raise ValueError(f"cannot read a PixelIndex from {path}: {type(exc).__name__}: {exc}") from exc
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} holds a PixelIndex of format {meta.get('format')}, this skuld reads {_FORMAT}")
        est = cls(**meta["params"])
        est.index_, est.factory_, est.dim_ = index, meta["factory"], meta["dim"]
        est._set_id_arrays(ids)
        est.n_vectors_ = int(index.ntotal)
        est._apply_search_params()
        return est

    def _id_arrays(self) -> dict:
        shapes = np.array([[e.height, e.width, e.stride, -1 if e.pixels is None else len(e.pixels)] for e in self._entries],
                          dtype=np.int64).reshape(-1, 4)
        pixels = [e.pixels for e in self._entries if e.pixels is not None]
        return {"shapes": shapes, "pixels": np.concatenate(pixels) if pixels else np.zeros(0, np.int64)}

    def _set_id_arrays(self, arrays) -> None:
        shapes, pixels = arrays["shapes"], arrays["pixels"]
        self._entries, self._offsets, pos = [], [0], 0
        for h, w, s, m in shapes:
            px = None
            if m >= 0:
                px, pos = pixels[pos : pos + m], pos + m
            entry = _ImageEntry(int(h), int(w), int(s), px)
            self._entries.append(entry)
            self._offsets.append(self._offsets[-1] + entry.count)
        self.n_images_ = len(self._entries)

    def __getstate__(self):
        state = self.__dict__.copy()
        if "index_" in state:
            state["index_"] = _faiss().serialize_index(state["index_"])
            state.pop("_entries")
            state["_id_arrays"] = self._id_arrays()
        return state

    def __setstate__(self, state):
        arrays = state.pop("_id_arrays", None)
        self.__dict__.update(state)
        if "index_" in state:
            self.index_ = _faiss().deserialize_index(state["index_"])
            self._set_id_arrays(arrays)
            self._apply_search_params()

    @property
    def bytes_per_vector(self) -> float:
        """Size of the serialised index (codes, lists, quantisers) divided by the vector count."""
        check_is_fitted(self, "index_")
        return _faiss().serialize_index(self.index_).nbytes / max(1, self.n_vectors_)


class _Source:
    """Images' embeddings, one image at a time: given arrays, or computed by an encoder."""

    def __init__(self, E, masks, encoder, n_jobs=None):
        self.encoder = encoder
        self.n_jobs = n_jobs
        if encoder is not None:
            from .io import ImageCollection

            self.items = ImageCollection(E, n_channels=encoder.n_channels_in_, name="X")
            self._dim = encoder.model_.embedding_dim
        else:
            if isinstance(E, np.ndarray) and E.dtype != object:
                if E.ndim != 4:
                    raise ValueError(
                        f"embeddings must be (n_images, H, W, D) or a list of (H, W, D), got shape {E.shape}"
                    )
            self.items = list(E)
            for i, e in enumerate(self.items):
                if np.ndim(e) != 3:
                    raise ValueError(f"embeddings of image {i} must be (H, W, D), got shape {np.shape(e)}")
            if self.items:
                self._dim = int(np.shape(self.items[0])[-1])
                for i, e in enumerate(self.items):
                    if np.shape(e)[-1] != self._dim:
                        raise ValueError(f"image {i} has embeddings of dimension {np.shape(e)[-1]}, image 0 of {self._dim}")
        if len(self.items) == 0:
            raise ValueError("no embeddings given: the list of images is empty")
        self.masks = None if masks is None else list(masks)
        if self.masks is not None:
            if len(self.masks) != len(self.items):
                raise ValueError(f"{len(self.masks)} masks for {len(self.items)} images")
            for i, m in enumerate(self.masks):
                if np.shape(m) != self.shape(i):
                    raise ValueError(f"mask {i} has shape {np.shape(m)}, its image {self.shape(i)}")

    def __len__(self):
        return len(self.items)

    def dim(self) -> int:
        return self._dim

    def shape(self, i) -> tuple[int, int]:
        if self.encoder is not None:
            return self.items.shape(i)
        return tuple(np.shape(self.items[i])[:2])

    def mask(self, i):
        return None if self.masks is None else self.masks[i]

    def iter_embeddings(self, indices):
        """Yield ``(i, (H, W, D) embeddings)`` in the order of ``indices``."""
        if self.encoder is None:
            for i in indices:
                yield i, np.asarray(self.items[i])
            return
        from .encoder import embed_each

        yield from embed_each(self.encoder, self.items, indices, self.n_jobs)


def _ivf(index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
