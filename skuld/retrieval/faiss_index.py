"""FAISS underneath :class:`skuld.PixelIndex`: the import, the "auto" index, training and search.

Vectors are float32 rows ``(n, D)``. With ``metric="cosine"`` they are L2-normalised and
searched by inner product, so the distances returned are cosine similarities.
"""

from __future__ import annotations

import math
import os

import numpy as np

#: Queries searched per FAISS call: bounds the (q, k) result buffers it allocates.
QUERY_BLOCK = 65_536

_FORK_GUARD = []


def faiss():
    """The ``faiss`` module, made safe for forked children (one OpenMP thread in them).

    A forked child inherits an OpenMP runtime whose threads did not survive the fork: its
    first parallel search can hang. One thread in the child never starts a team.
    """
    import faiss as _faiss

    if not _FORK_GUARD and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _faiss.omp_set_num_threads(1))
        _FORK_GUARD.append(True)
    return _faiss


def auto_factory(n_vectors: int) -> str:
    """The FAISS index "auto" picks for ``n_vectors`` vectors.

    Exact search below 100k vectors; IVF with 8-bit scalar quantisation (32 bytes for a 32-d
    vector) up to 10M; above, IVF with 16-byte product quantisation and an HNSW coarse
    quantiser (assigning tens of millions of vectors to tens of thousands of lists by brute
    force would dominate the build). The number of lists grows as about 4 sqrt(n), a power
    of two.

    Parameters
    ----------
    n_vectors : int

    Returns
    -------
    str
        A FAISS factory string.

    Examples
    --------
    >>> from skuld.retrieval import auto_factory
    >>> auto_factory(50_000), auto_factory(1_000_000), auto_factory(20_000_000)
    ('Flat', 'IVF4096,SQ8', 'IVF16384_HNSW32,PQ16')
    """
    if n_vectors < 100_000:
        return "Flat"
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n_vectors))))
    nlist = min(max(nlist, 256), 65536)
    return f"IVF{nlist},SQ8" if n_vectors < 10_000_000 else f"IVF{nlist}_HNSW32,PQ16"


def build_index(dim: int, factory: str, metric: str):
    """An empty FAISS index; ``ValueError`` with FAISS's reason for a factory string it rejects.

    Parameters
    ----------
    dim : int
    factory : str
        A FAISS factory string ("Flat", "IVF256,SQ8", ...).
    metric : {"cosine", "l2", "ip"}
        "l2" is FAISS's L2 metric, the others inner product.

    Returns
    -------
    faiss.Index

    Examples
    --------
    >>> from skuld.retrieval import build_index
    >>> build_index(8, "Flat", "cosine").ntotal
    0
    >>> build_index(8, "Fancy42", "l2")
    Traceback (most recent call last):
        ...
    ValueError: FAISS cannot build index 'Fancy42': ...
    """
    f = faiss()
    try:
        return f.index_factory(dim, factory, f.METRIC_L2 if metric == "l2" else f.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build index {factory!r}: {str(exc).strip().splitlines()[-1]}") from None


def ivf(index):
    """The IVF part of a FAISS index, or None."""
    try:
        return faiss().extract_index_ivf(index)
    except RuntimeError:
        return None


def prepare_vectors(v: np.ndarray, metric: str, name: str = "embeddings") -> np.ndarray:
    """Contiguous float32 rows, checked finite, unit-normalised for ``metric="cosine"``.

    Parameters
    ----------
    v : array of shape (n, D)
    metric : {"cosine", "l2", "ip"}
    name : str
        How the vectors are named in errors.

    Returns
    -------
    float32 array of shape (n, D)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.retrieval import prepare_vectors
    >>> prepare_vectors(np.array([[3.0, 4.0]]), "cosine").tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contain NaN or infinity")
    if metric == "cosine":
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{name} contain zero vectors, which have no direction for metric='cosine'")
        v = v / norms
    return v


def set_search_params(index, factory: str, nprobe: int, ef_search: int) -> None:
    """Inverted lists visited per query (IVF) and candidate list size (HNSW)."""
    ps = faiss().ParameterSpace()
    if ivf(index) is not None:
        ps.set_index_parameter(index, "nprobe", int(nprobe))
    if "HNSW" in factory:
        ps.set_index_parameter(index, "efSearch", int(ef_search))


def search(index, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest stored vectors of each query, in blocks of :data:`QUERY_BLOCK` queries.

    Returns
    -------
    distances : float32 array of shape (q, k)
        +inf ("l2") or -inf (otherwise) where fewer than k were found.
    ids : int64 array of shape (q, k)
        -1 where fewer than k were found.

    Parameters
    ----------
    index : faiss.Index
    queries : float32 array of shape (q, D)
        Prepared by :func:`prepare_vectors`.
    k : int
    metric : {"cosine", "l2", "ip"}

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.retrieval import build_index, search
    >>> index = build_index(2, "Flat", "l2"); index.add(np.array([[0, 0], [1, 1]], np.float32))
    >>> D, ids = search(index, np.array([[0.9, 1.0]], np.float32), 3, "l2")
    >>> ids.tolist(), bool(np.isinf(D[0, 2]))                      # only two vectors: one missing
    ([[1, 0, -1]], True)
    """
    parts = [index.search(queries[i : i + QUERY_BLOCK], int(k)) for i in range(0, len(queries), QUERY_BLOCK)]
    D = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
    ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
    # FAISS pads with +-FLT_MAX; infinities say "nothing there" unambiguously.
    D[ids < 0] = np.inf if metric == "l2" else -np.inf
    return D, ids
