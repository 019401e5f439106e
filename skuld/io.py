"""Reading and validating images.

Conventions used everywhere in skuld
------------------------------------
* An image is an array of shape ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB), rows first: pixel
  ``(row, col)`` is ``image[row, col]``; the origin is the top-left corner.
* Integer images are scaled to [0, 1] by their dtype's maximum (uint8 by 255, uint16 by
  65535); float images are taken to be intensities in [0, 1] already; bool becomes 0/1.
* Internally every image is a float32 array of shape ``(H, W, C)`` with ``C`` in {1, 3}.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

#: File extensions picked up when a directory is given.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".pgm", ".ppm")


class ImageReadError(ValueError):
    """An image file could not be read or decoded; the message names the file.

    A subclass of ``ValueError``, so ``except ValueError`` catches it too.

    Examples
    --------
    >>> from skuld.io import ImageReadError, read_image
    >>> try:
    ...     read_image("no/such/scan.png")
    ... except ImageReadError as err:
    ...     print(err)
    image file not found: no/such/scan.png
    """


def check_dense(X, name: str = "X", what: str = "images") -> None:
    """``TypeError`` saying that sparse input is not supported, when ``X`` is a scipy sparse matrix or array.

    Parameters
    ----------
    X : any
    name : str, default="X"
        How the input is named in the message.
    what : str, default="images"
        What was expected instead.

    Returns
    -------
    None

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from skuld.io import check_dense
    >>> check_dense(sp.csr_matrix((4, 4)), "E", "embeddings")
    Traceback (most recent call last):
        ...
    TypeError: sparse input is not supported: E must be dense embeddings
    """
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"sparse input is not supported: {name} must be dense {what}")


def expand_paths(spec: str | os.PathLike) -> list[str]:
    """Turn a directory, a glob pattern or a single file into a sorted list of image paths.

    Sorting makes the order, and so any random split or sampling, independent of the order in
    which the file system lists a directory. A directory contributes the files ending in
    :data:`IMAGE_EXTENSIONS` (not hidden ones, not recursively); ``**`` in a glob recurses.

    Parameters
    ----------
    spec : str or path-like
        A directory, a glob pattern (``*``, ``?``, ``[``) or a file.

    Returns
    -------
    list of str
        Sorted paths. ``FileNotFoundError`` if nothing matches the spec, ``ValueError`` if a
        directory or glob holds no image files.

    Examples
    --------
    >>> from skuld.datasets import cxr_tiny_dir
    >>> from skuld.io import expand_paths
    >>> [p.rsplit("/", 1)[-1] for p in expand_paths(f"{cxr_tiny_dir()}/*.jpg")]
    ['1.jpg', '2.jpg', '3.jpg', '4.jpg']
    """
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        paths = [
            os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    elif any(ch in spec for ch in "*?["):
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        raise FileNotFoundError(f"no such file, directory or glob match: {spec!r}")
    if not paths:
        raise ValueError(f"no image files found in {spec!r} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(paths)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file (PNG, JPEG, TIFF, BMP, GIF, DICOM, ...) into its raw array.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ndarray
        As stored: ``(H, W)``, ``(H, W, C)`` (C = 1..4), the file's dtype (uint8, uint16,
        ...). Multi-frame files give their first frame. Raises :class:`ImageReadError` naming the
        path when the file is missing or corrupt.

    Examples
    --------
    >>> from skuld.datasets import cxr_tiny_dir
    >>> from skuld.io import read_image
    >>> img = read_image(f"{cxr_tiny_dir()}/1.jpg")
    >>> img.shape, img.dtype
    ((512, 512), dtype('uint8'))
    """
    import imageio.v3 as iio

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    errors = []
    # Pillow first: it decodes PNG, JPEG, BMP, GIF and LZW TIFFs quickly and quietly, where
    # imageio's default TIFF plugin needs extra codecs; imageio's own choice for the rest.
    attempts = ({"plugin": "pillow"}, {}) if not path.lower().endswith(".dcm") else ({},)
    for kwargs in attempts:
        try:
            with warnings.catch_warnings():
                # imageio warns about deprecated plugins it merely tries while probing a file.
                warnings.simplefilter("ignore")
                img = iio.imread(path, **kwargs)
            break
        except Exception as exc:  # imageio raises many types depending on the plugin
            errors.append(f"{type(exc).__name__}: {exc}")
    else:
        raise ImageReadError(f"cannot read image {path}: {errors[-1]}")
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] not in (1, 2, 3, 4):
        img = img[0]  # multi-frame file (GIF, even with one frame; TIFF stack): first frame
    if img.ndim == 4:
        img = img[0]
    return img


def to_float_image(img: np.ndarray, name: str = "image", drop_alpha: bool = False) -> np.ndarray:
    """Validate one raw image and return it as float32 ``(H, W, C)`` in [0, 1], C in {1, 3}.

    Integer images are divided by 255 (8-bit) or their dtype's maximum; float images are taken
    to be in [0, 1] already; bool becomes 0/1.

    Parameters
    ----------
    img : array-like of shape (H, W) or (H, W, C), C in {1, 3}
        With ``drop_alpha`` also gray+alpha (C = 2) and RGBA (C = 4), whose alpha is dropped.
    name : str, default "image"
        How the image is named in error messages.
    drop_alpha : bool, default False
        Used for files, where alpha channels are common.

    Returns
    -------
    ndarray of shape (H, W, C), float32
        ``ValueError`` naming the problem for a wrong ndim or channel count, an empty image,
        signed integers, NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import to_float_image
    >>> to_float_image(np.array([[0, 255]], np.uint8))
    array([[[0.],
            [1.]]], dtype=float32)
    >>> to_float_image(np.full((2, 2), np.nan), name="X[3]")
    Traceback (most recent call last):
        ...
    ValueError: X[3] contains NaN or infinity
    """
    check_dense(img, name)
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(
            f"{name} must have shape (H, W) or (H, W, C) with C in (1, 3), got shape {img.shape}"
        )
    c = img.shape[2]
    if c == 2 and drop_alpha:
        img = img[:, :, :1]
    elif c == 4 and drop_alpha:
        img = img[:, :, :3]
    elif c not in (1, 3):
        raise ValueError(f"{name} has {c} channels; skuld takes 1 (gray) or 3 (RGB) channels, shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {img.shape}")
    if img.dtype == bool:
        out = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        if info.min < 0:
            raise ValueError(f"{name} has signed integer dtype {img.dtype}; convert it to float in [0, 1] first")
        out = img.astype(np.float32) / (255.0 if info.max <= 255 else float(info.max))
    elif np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32, copy=False)
    else:
        kind = "complex data not supported" if np.issubdtype(img.dtype, np.complexfloating) else "unsupported dtype"
        raise ValueError(f"{name} has dtype {img.dtype}: {kind}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def convert_channels(img: np.ndarray, n_channels: int) -> np.ndarray:
    """Convert between gray ``(H, W, 1)`` and RGB ``(H, W, 3)``.

    Gray to RGB repeats the channel; RGB to gray uses the luma weights 0.299, 0.587, 0.114.

    Parameters
    ----------
    img : ndarray of shape (H, W, 1) or (H, W, 3), float32
    n_channels : {1, 3}

    Returns
    -------
    ndarray of shape (H, W, n_channels)
        ``img`` itself when it already has ``n_channels``.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import convert_channels
    >>> convert_channels(np.ones((2, 2, 3), np.float32), 1).shape
    (2, 2, 1)
    """
    c = img.shape[2]
    if c == n_channels:
        return img
    if n_channels == 3:
        return np.repeat(img, 3, axis=2)
    return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]


def is_gray_rgb(img: np.ndarray) -> bool:
    """Whether a 3-channel image has three equal channels (a gray image saved as RGB).

    Parameters
    ----------
    img : ndarray of shape (H, W, C)

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import is_gray_rgb
    >>> is_gray_rgb(np.zeros((2, 2, 3))), is_gray_rgb(np.zeros((2, 2, 1)))
    (True, False)
    """
    return img.shape[2] == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


class ImageCollection:
    """A validated, ordered collection of images, held in memory or read from files on demand.

    Every estimator takes its ``X`` through this class, so arrays, ragged lists, file lists,
    directories and globs behave the same everywhere.

    Parameters
    ----------
    X : array of shape (n, H, W) or (n, H, W, C), list, or str
        A stacked array, a sequence of ``(H, W[, C])`` arrays of any sizes, a sequence of file
        paths, or one directory / glob pattern / file path.
    n_channels : {1, 3} or None
        Channel count to enforce: arrays with another count are an error, files are converted.
        None: decided by the data (arrays must all agree; for files, gray unless the first file
        is a true colour image).
    name : str, default "X"
        How the collection is named in error messages.

    Attributes
    ----------
    n_channels : int
        1 or 3.
    is_ragged : bool
        True unless ``X`` was one stacked array (then outputs are stacked too).
    from_files : bool
        True when ``X`` named files (read on each access, never cached).

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> images = ImageCollection([np.zeros((40, 50), np.uint8), np.ones((60, 30), np.uint8)])
    >>> len(images), images.n_channels, images[1].shape, images[1].dtype
    (2, 1, (60, 30, 1), dtype('float32'))
    >>> ImageCollection(np.zeros((2, 8, 8, 4)))
    Traceback (most recent call last):
        ...
    ValueError: X[0] has 4 channels; skuld takes 1 (gray) or 3 (RGB) channels, shape (8, 8, 4)
    """

    def __init__(self, X, n_channels: int | None = None, name: str = "X"):
        self.name = name
        self.is_ragged = True
        if isinstance(X, (str, os.PathLike)):
            X = expand_paths(X)
        check_dense(X, name)
        if isinstance(X, np.ndarray) and X.dtype != object:
            if X.ndim not in (3, 4):
                raise ValueError(
                    f"{name} must be images of shape (n_images, H, W) or (n_images, H, W, C), a list of "
                    f"images or a list of file paths; got an array of shape {X.shape}"
                )
            if X.shape[0] == 0:
                raise ValueError(f"{name} is empty: no images")
            self.is_ragged = False
            items: list = list(X)
        elif isinstance(X, Sequence) or (isinstance(X, np.ndarray) and X.dtype == object):
            items = list(X)
            if not items:
                raise ValueError(f"{name} is empty: no images")
        else:
            raise TypeError(f"{name} must be an array, a list of arrays or a list of paths, got {type(X).__name__}")

        self._paths = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        if any(p is not None for p in self._paths) and not all(p is not None for p in self._paths):
            raise TypeError(f"{name} mixes file paths and arrays; give one kind")
        self.from_files = self._paths[0] is not None
        self._arrays: list[np.ndarray | None]
        if self.from_files:
            self._arrays = [None] * len(items)
            if n_channels is None:
                first = to_float_image(read_image(self._paths[0]), f"image file {self._paths[0]}", drop_alpha=True)
                n_channels = 1 if first.shape[2] == 1 or is_gray_rgb(first) else 3
        else:
            self._arrays = [to_float_image(x, f"{name}[{i}]") for i, x in enumerate(items)]
            channels = {a.shape[2] for a in self._arrays}
            if len(channels) > 1:
                raise ValueError(f"{name} mixes gray and RGB images; convert them to one channel count")
            found = channels.pop()
            if n_channels is not None and found != n_channels:
                raise ValueError(
                    f"{name} has {found} channel(s) but the model was fitted on {n_channels}-channel images"
                )
            n_channels = found
        self.n_channels = n_channels

    def __len__(self) -> int:
        return len(self._arrays)

    def describe(self, i: int) -> str:
        """How image ``i`` is named in messages: its file path, or ``name[i]``.
        """
        return f"image file {self._paths[i]}" if self.from_files else f"{self.name}[{i}]"

    def __getitem__(self, i: int) -> np.ndarray:
        """Image i as float32 (H, W, n_channels) in [0, 1] (files are read now, not cached)."""
        if self._arrays[i] is not None:
            return self._arrays[i]
        return self._prepare(read_image(self._paths[i]), i)

    def _prepare(self, raw: np.ndarray, i: int) -> np.ndarray:
        img = to_float_image(raw, self.describe(i), drop_alpha=True)
        return convert_channels(img if not is_gray_rgb(img) else img[:, :, :1], self.n_channels)

    def iter_images(self, indices=None, n_jobs: int | None = None):
        """Yield ``(i, image)`` in order, files decoded ahead by ``n_jobs`` worker processes.

        While the caller works on one image (embedding it, say), the next ones are being
        decoded. The workers are joblib's loky processes: fresh interpreters, not forks, so
        OpenMP thread pools that FAISS or PyTorch started in this process cannot deadlock
        them; at most ``2 * n_jobs`` decoded images wait in memory.

        Parameters
        ----------
        indices : iterable of int, optional
            Which images, in which order (default: all).
        n_jobs : int or None, default None
            Decoding processes, joblib's convention (None: 1, i.e. decode here; -1: every
            core). Images held in memory are never sent to workers.

        Yields
        ------
        i : int
        image : ndarray of shape (H, W, n_channels), float32 in [0, 1]

        Examples
        --------
        >>> from skuld.datasets import cxr_tiny_dir
        >>> from skuld.io import ImageCollection
        >>> images = ImageCollection(f"{cxr_tiny_dir()}/*.jpg")
        >>> [(i, img.shape) for i, img in images.iter_images([2, 0], n_jobs=2)]
        [(2, (512, 512, 1)), (0, (512, 512, 1))]
        """
        from joblib import effective_n_jobs

        indices = list(range(len(self)) if indices is None else indices)
        workers = min(effective_n_jobs(n_jobs), len(indices))
        if not self.from_files or workers <= 1:
            for i in indices:
                yield i, self[i]
            return
        from joblib import Parallel, delayed

        # Workers return the raw decoded array (uint8 for most files: a quarter of float32's
        # bytes through the pipe); the conversion is cheap and happens here.
        with Parallel(n_jobs=workers, backend="loky", return_as="generator", pre_dispatch=2 * workers) as parallel:
            raws = parallel(delayed(read_image)(self._paths[i]) for i in indices)
            for i, raw in zip(indices, raws):
                yield i, self._prepare(raw, i)

    def shape(self, i: int) -> tuple[int, int]:
        """(H, W) of image i; for files, from the header when Pillow can read it (no decoding)."""
        if self._arrays[i] is not None:
            return tuple(self._arrays[i].shape[:2])
        try:
            from PIL import Image

            with Image.open(self._paths[i]) as im:
                width, height = im.size
            return int(height), int(width)
        except Exception:  # not a format Pillow knows (DICOM, ...): decode it
            return tuple(self[i].shape[:2])

    def fingerprint(self) -> str:
        """A digest of what the collection holds: each file's absolute path, size and modification
        time, or each array's shape and contents (as float32 in [0, 1]).

        A training checkpoint records it, so that a run never resumes on other images.

        Returns
        -------
        str
            16 hex digits.

        Examples
        --------
        >>> import numpy as np
        >>> from skuld.io import ImageCollection
        >>> a = ImageCollection(np.zeros((2, 8, 8)))
        >>> a.fingerprint() == ImageCollection(np.zeros((2, 8, 8))).fingerprint()
        True
        >>> a.fingerprint() == ImageCollection(np.ones((2, 8, 8))).fingerprint()
        False
        """
        digest = hashlib.sha256(f"{len(self)} {self.n_channels}".encode())
        for i in range(len(self)):
            if self.from_files:
                st = os.stat(self._paths[i])
                digest.update(f"{os.path.abspath(self._paths[i])} {st.st_size} {st.st_mtime_ns}".encode())
            else:
                digest.update(repr(self._arrays[i].shape).encode())
                digest.update(np.ascontiguousarray(self._arrays[i]).tobytes())
        return digest.hexdigest()[:16]

    @property
    def paths(self) -> list[str | None]:
        """The file path of every image (None for in-memory images).
        """
        return list(self._paths)


def combined(*collections: ImageCollection) -> list:
    """The images of several collections as one input of a fit, in order: their paths when all are
    files (the trainer then decodes and caches them itself, in its loader workers), else the arrays.

    Parameters
    ----------
    *collections : ImageCollection

    Returns
    -------
    list of str, or list of float32 arrays (H, W, C)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection, combined
    >>> [x.shape for x in combined(ImageCollection(np.zeros((2, 8, 8))), ImageCollection([np.ones((9, 7))]))]
    [(8, 8, 1), (8, 8, 1), (9, 7, 1)]
    """
    if all(c.from_files for c in collections):
        return [path for c in collections for path in c.paths]
    return [c[i] for c in collections for i in range(len(c))]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file atomically: ``write(tmp_path)``, then rename the temporary file over ``path``.

    A crash or Ctrl-C mid-write leaves any previous file at ``path`` intact, and never a
    half-written file under the final name: the new file is flushed to disk (``fsync``) before
    the rename, and the folder after it, so a power cut cannot leave a renamed but empty file.
    Temporary files that a killed process left beside ``path`` are removed. Missing parent
    folders are created.

    Parameters
    ----------
    path : str or path-like
        The final file.
    write : callable
        ``write(tmp_path: str)`` writes the whole file to ``tmp_path`` (same folder as ``path``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skuld.io import atomic_write
    >>> target = os.path.join(tempfile.mkdtemp(), "sub", "weights.npy")
    >>> atomic_write(target, lambda tmp: np.save(open(tmp, "wb"), np.arange(3)))
    >>> np.load(target)
    array([0, 1, 2])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems: nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_orphans(path: Path) -> None:
    """Temporary files of ``path`` whose writer died (kill -9) before it could remove them."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
