"""Per-pixel arrays of many images of different sizes, on disk, memory-mapped.

A store is a folder: ``data.npy`` holds every image's pixels one after the other as rows
``(sum of H_i * W_i, D)`` (a plain ``.npy``, memory-mapped for reading and writing), and
``images.json`` holds each image's path, ``(H, W)`` and first row. Images are written one at a
time; ``progress`` counts those complete, so an interrupted writer resumes where it stopped.
Reading image ``i`` maps only its rows: a collection far larger than memory can be embedded,
indexed (:class:`skuld.PixelIndex` takes a store as its embeddings) and browsed.

Where all images share one size, ``skuld embed --stack`` writes a single ``(n, H, W, D)``
``.npy`` instead; the store is for collections of mixed sizes.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..io import atomic_write

_FORMAT = 1


class EmbeddingStore:
    """Read (and write) a folder of per-pixel arrays of images of any sizes.

    Parameters
    ----------
    path : str or path-like
        A folder made by :meth:`create` (or ``skuld embed --store``).
    mode : {"r", "r+"}, default "r"
        "r+" to write images into it (used by :meth:`create` and resumed writers).

    Attributes
    ----------
    paths : list of str
        The source image of each entry.
    shapes : list of (int, int)
        ``(H, W)`` of each image.
    dim : int
        D, values per pixel.
    dtype : numpy.dtype
        float32 or float16.
    n_complete : int
        Images written so far (all of them once the writer finished).
    model : str or None
        The fingerprint of the model that computed the embeddings (``skuld embed`` records it
        and refuses to add another model's).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skuld.retrieval import EmbeddingStore
    >>> folder = os.path.join(tempfile.mkdtemp(), "embeddings")
    >>> store = EmbeddingStore.create(folder, ["a.png", "b.png"], [(2, 3), (4, 1)], dim=5)
    >>> store.write(0, np.ones((2, 3, 5))); store.write(1, np.zeros((4, 1, 5)))
    >>> reader = EmbeddingStore(folder)
    >>> len(reader), reader[1].shape, reader.complete
    (2, (4, 1, 5), True)
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, "images.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is not an embedding store (no images.json)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path} is corrupt: {exc}") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{self.path} holds a store of format {meta.get('format')}, this skuld reads {_FORMAT}")
        self.paths = list(meta["paths"])
        self.shapes = [tuple(s) for s in meta["shapes"]]
        self.dim = int(meta["dim"])
        self.dtype = np.dtype(meta["dtype"])
        self.model = meta.get("model")
        self._offsets = np.concatenate([[0], np.cumsum([h * w for h, w in self.shapes])]).astype(np.int64)
        self._data = np.lib.format.open_memmap(os.path.join(self.path, "data.npy"), mode=mode)
        expected = (int(self._offsets[-1]), self.dim)
        if self._data.shape != expected or self._data.dtype != self.dtype:
            raise ValueError(f"{self.path}/data.npy holds {self._data.shape} {self._data.dtype}, "
                             f"images.json describes {expected} {self.dtype}")

    @classmethod
    def create(cls, path: str | os.PathLike, paths: list[str], shapes: list[tuple[int, int]], dim: int,
               dtype=np.float32, model: str | None = None) -> "EmbeddingStore":
        """Allocate a store for images of the given shapes; returns it open for writing.

        Parameters
        ----------
        path : str or path-like
            The folder (created; an existing store there is replaced).
        paths : list of str
            Source of each image (kept for the reader).
        shapes : list of (int, int)
            ``(H, W)`` of each image.
        dim : int
            D, values per pixel.
        dtype : {numpy.float32, numpy.float16}, default numpy.float32
        model : str or None, default None
            The fingerprint of the model that computes the embeddings.

        Returns
        -------
        EmbeddingStore
            In mode "r+", nothing written yet.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        if len(paths) != len(shapes) or not paths:
            raise ValueError(f"need one shape per image and at least one image, got {len(paths)} and {len(shapes)}")
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        # Order matters for crashes: without images.json the folder is no store at all, and
        # once it exists the progress file already says that nothing is written yet.
        meta_path = os.path.join(path, "images.json")
        if os.path.exists(meta_path):
            os.remove(meta_path)
        atomic_write(os.path.join(path, "progress"), lambda tmp: _write_text(tmp, "0"))
        rows = int(sum(int(h) * int(w) for h, w in shapes))
        mm = np.lib.format.open_memmap(os.path.join(path, "data.npy"), mode="w+", dtype=dtype, shape=(rows, int(dim)))
        del mm
        meta = {"format": _FORMAT, "paths": [str(p) for p in paths], "shapes": [[int(h), int(w)] for h, w in shapes],
                "dim": int(dim), "dtype": dtype.name, "model": model}
        atomic_write(meta_path, lambda tmp: _write_json(tmp, meta))
        return cls(path, mode="r+")

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def n_pixels(self) -> int:
        """Rows of the data array: the pixels of all images."""
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i``'s array ``(H_i, W_i, D)``, a view into the memory map (no copy)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of a store of {len(self)}")
        i %= len(self)
        h, w = self.shapes[i]
        return self._data[self._offsets[i] : self._offsets[i + 1]].reshape(h, w, self.dim)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def n_complete(self) -> int:
        """Images written so far (the first ``n_complete`` of them)."""
        progress = os.path.join(self.path, "progress")
        if not os.path.exists(progress):
            return len(self)
        with open(progress) as f:
            return int(f.read() or 0)

    @property
    def complete(self) -> bool:
        """Whether every image has been written."""
        return self.n_complete == len(self)

    def write(self, i: int, values: np.ndarray) -> None:
        """Write image ``i`` (``(H_i, W_i, D)``) and count it complete.

        Images must be written in order (``i == n_complete``) so that the count says exactly
        which are on disk; the data reach the disk before the count does.
        """
        if self._data.mode != "r+":
            raise ValueError("the store is open read-only; open it with mode='r+' to write")
        if i != self.n_complete:
            raise ValueError(f"write image {self.n_complete} next, not {i}: images are written in order")
        values = np.asarray(values)
        expected = (*self.shapes[i], self.dim)
        if values.shape != expected:
            raise ValueError(f"image {i} ({self.paths[i]}) should be {expected}, got {values.shape}")
        self[i][...] = values
        self._data.flush()
        done = i + 1
        progress = os.path.join(self.path, "progress")
        if done == len(self):
            os.remove(progress)
        else:
            atomic_write(progress, lambda tmp: _write_text(tmp, str(done)))


def _write_json(path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _write_text(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
