"""Reading and validating images.

Conventions used everywhere in skuld
------------------------------------
* An image is an array of shape ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB), rows first: pixel
  ``(row, col)`` is ``image[row, col]``; the origin is the top-left corner.
* Intensities (the rules of ``docs/conventions.md``): an ``intensity_range=(low, high)``, where
  given, maps ``low`` to 0 and ``high`` to 1 for any numeric dtype (values beyond are clipped: a
  window; float images already in [0, 1] are intensities and left alone). Without one, a DICOM file's own range is used (``BitsStored``, through its modality
  LUT); other integer images are scaled by their dtype's maximum (uint8 by 255, uint16 by
  65535), and wider types that use under a quarter of it warn (:class:`IntensityRangeWarning`:
  12-bit data in 16-bit files); float images must already be intensities in [0, 1] (up to
  :data:`FLOAT_TOLERANCE` beyond, from resampling); signed integers need a range; bool is 0/1.
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

#: How far outside [0, 1] float intensities may go (resampling overshoot) before they are refused.
FLOAT_TOLERANCE = 0.05

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


class IntensityRangeWarning(UserWarning):
    """An integer image uses a small part of its dtype's range (12-bit data in a 16-bit file, say).

    Such an image is scaled by its dtype's maximum and looks darker to the model than the same
    image stored in 8 bits; give ``intensity_range=(0, 2**bits - 1)`` to read it as meant.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from skuld.io import ImageCollection, IntensityRangeWarning
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = ImageCollection(np.full((2, 8, 8), 4000, np.uint16))
    >>> [w.category.__name__ for w in caught]
    ['IntensityRangeWarning']
    """


def check_intensity_range(intensity_range) -> tuple[float, float] | None:
    """Validate an ``intensity_range`` parameter: None, or finite ``(low, high)`` with ``low < high``.

    Parameters
    ----------
    intensity_range : None or (float, float)

    Returns
    -------
    None or tuple of two floats

    Examples
    --------
    >>> from skuld.io import check_intensity_range
    >>> check_intensity_range((-160, 240))
    (-160.0, 240.0)
    >>> check_intensity_range((1, 0))
    Traceback (most recent call last):
        ...
    ValueError: intensity_range must be (low, high) with finite low < high, got (1, 0)
    """
    if intensity_range is None:
        return None
    try:
        low, high = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise ValueError(f"intensity_range must be None or (low, high), got {intensity_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high) or isinstance(intensity_range, str):
        raise ValueError(f"intensity_range must be (low, high) with finite low < high, got {intensity_range!r}")
    return low, high


def intensity_warning(img: np.ndarray, name: str = "image") -> str | None:
    """Why an integer image wider than 8 bits probably needs an ``intensity_range``, or None.

    Parameters
    ----------
    img : ndarray
        As read (any shape).
    name : str, default="image"

    Returns
    -------
    str or None
        The message of an :class:`IntensityRangeWarning`: the image's largest value is under a
        quarter of its dtype's maximum. 8-bit images never warn (a dark photograph is not a
        mistake).

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import intensity_warning
    >>> print(intensity_warning(np.array([[0, 4000]], np.uint16)))
    image is uint16 but its largest value is 4000 (a 12-bit image?): ... intensity_range=(0, 4095) if it is 12-bit data
    >>> intensity_warning(np.array([[0, 200]], np.uint8)) is None
    True
    """
    if not np.issubdtype(img.dtype, np.unsignedinteger) or img.dtype.itemsize == 1 or img.size == 0:
        return None
    bits = 8 * img.dtype.itemsize
    top = int(img.max())
    if top >= 2 ** (bits - 2):
        return None
    used = max(8, top.bit_length())
    return (f"{name} is {img.dtype} but its largest value is {top} (a {used}-bit image?): it is scaled by "
            f"{2 ** bits - 1} and looks darker than the same image in 8 bits; give "
            f"intensity_range=(0, {2 ** used - 1}) if it is {used}-bit data")


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


def read_pixels(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode one image file, and say which range of values its format declares.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    pixels : ndarray
        As :func:`read_image`.
    value_range : (float, float) or None
        For gray DICOM files, the values that ``BitsStored`` allows, through the modality LUT
        (see :func:`skuld.dicom.read_dicom`); None for other files (their dtype says).

    Examples
    --------
    >>> from skuld.datasets import cxr_tiny_dir
    >>> from skuld.io import read_pixels
    >>> pixels, value_range = read_pixels(f"{cxr_tiny_dir()}/1.jpg")
    >>> pixels.dtype, value_range
    (dtype('uint8'), None)
    """
    from .dicom import is_dicom, read_dicom

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    if is_dicom(path):
        try:
            return read_dicom(path)
        except (ValueError, ImportError) as exc:
            raise ImageReadError(f"cannot read image {path}: {exc}") from None
    return read_image(path), None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file (PNG, JPEG, TIFF, BMP, GIF, DICOM, ...) into its raw array.

    DICOM files (``.dcm``, or the ``DICM`` marker) are read one file at a time with pydicom
    (:func:`skuld.dicom.read_dicom`: modality LUT, sign, ``MONOCHROME1``), never as the series of
    their folder.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ndarray
        As stored: ``(H, W)``, ``(H, W, C)`` (C = 1..4), the file's dtype (uint8, uint16,
        ...); gray DICOM: float32 values in the file's units (Hounsfield units for CT).
        Multi-frame files give their first frame (multi-frame DICOM files are refused). Raises
        :class:`ImageReadError` naming the path when the file is missing, corrupt or not an image.

    Examples
    --------
    >>> from skuld.datasets import cxr_tiny_dir
    >>> from skuld.io import read_image
    >>> img = read_image(f"{cxr_tiny_dir()}/1.jpg")
    >>> img.shape, img.dtype
    ((512, 512), dtype('uint8'))
    """
    import imageio.v3 as iio

    from .dicom import is_dicom

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    if is_dicom(path):
        return read_pixels(path)[0]
    errors = []
    # Pillow first: it decodes PNG, JPEG, BMP, GIF and LZW TIFFs quickly and quietly, where
    # imageio's default TIFF plugin needs extra codecs; imageio's own choice for the rest.
    for kwargs in ({"plugin": "pillow"}, {}):
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
    if img.ndim < 2 or img.size == 0:
        raise ImageReadError(f"cannot read image {path}: it decodes to an array of shape {img.shape}, not an image")
    if img.ndim == 3 and img.shape[-1] not in (1, 2, 3, 4):
        img = img[0]  # multi-frame file (GIF, even with one frame; TIFF stack): first frame
    if img.ndim == 4:
        img = img[0]
    return img


def to_float_image(img: np.ndarray, name: str = "image", drop_alpha: bool = False,
                   intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Validate one raw image and return it as float32 ``(H, W, C)`` in [0, 1], C in {1, 3}.

    With ``intensity_range=(low, high)``, ``(img - low) / (high - low)`` clipped to [0, 1], for
    any numeric dtype, except float images already within [0, 1]: those are intensities (skuld's
    own representation, which estimators hand each other), never windowed twice. Without: integer images are divided by their dtype's maximum (255 for
    8-bit), float images must be in [0, 1] already (within :data:`FLOAT_TOLERANCE`), signed
    integers are refused, bool becomes 0/1.

    Parameters
    ----------
    img : array-like of shape (H, W) or (H, W, C), C in {1, 3}
        With ``drop_alpha`` also gray+alpha (C = 2) and RGBA (C = 4), whose alpha is dropped.
    name : str, default "image"
        How the image is named in error messages.
    drop_alpha : bool, default False
        Used for files, where alpha channels are common.
    intensity_range : (float, float) or None, default None
        The values that map to 0 and 1 (a window, e.g. ``(-160, 240)`` HU for soft tissue).

    Returns
    -------
    ndarray of shape (H, W, C), float32
        ``ValueError`` naming the problem for a wrong ndim or channel count, an empty image,
        signed integers or floats outside [0, 1] without a range, NaN or infinity.

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
    if np.issubdtype(img.dtype, np.complexfloating) or not (img.dtype == bool or np.issubdtype(img.dtype, np.number)):
        kind = "complex data not supported" if np.issubdtype(img.dtype, np.complexfloating) else "unsupported dtype"
        raise ValueError(f"{name} has dtype {img.dtype}: {kind}")
    if intensity_range is not None and img.dtype != bool and not _unit_floats(img):
        low, high = check_intensity_range(intensity_range)
        out = ((img.astype(np.float64) - low) / (high - low)).astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return np.clip(out, 0.0, 1.0, out=out)
    if img.dtype == bool:
        out = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        if info.min < 0:
            raise ValueError(f"{name} has signed integer dtype {img.dtype}: give intensity_range=(low, high), the "
                             f"values to show as black and white (e.g. a CT window in HU), or convert it to float "
                             f"in [0, 1]")
        out = img.astype(np.float32) / (255.0 if info.max <= 255 else float(info.max))
    else:
        out = img.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if img.dtype.kind == "f":
        low, high = float(out.min()), float(out.max())
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            hint = "divide 8-bit data by 255, " if high <= 255 and low >= 0 else ""
            raise ValueError(f"{name} has float intensities from {low:g} to {high:g}, outside [0, 1]: skuld reads "
                             f"float images as intensities in [0, 1]; {hint}or give intensity_range=(low, high), "
                             f"the values to show as black and white")
    return out


def _unit_floats(img: np.ndarray) -> bool:
    """Float data within [0, 1] (up to :data:`FLOAT_TOLERANCE`): intensities already."""
    if img.dtype.kind != "f" or img.size == 0:
        return False
    finite = img[np.isfinite(img)] if not np.isfinite(img).all() else img
    return finite.size > 0 and float(finite.min()) >= -FLOAT_TOLERANCE and float(finite.max()) <= 1 + FLOAT_TOLERANCE


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
    intensity_range : (float, float) or None, default None
        The values that map to 0 and 1 for every image (see :func:`to_float_image`); None: each
        file's own range (DICOM) or its dtype's. An :class:`IntensityRangeWarning` is given at
        most once per collection.

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

    def __init__(self, X, n_channels: int | None = None, name: str = "X", intensity_range=None):
        self.name = name
        self.intensity_range = check_intensity_range(intensity_range)
        self._warned = False
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
                first = self._to_float(*read_pixels(self._paths[0]), 0)
                n_channels = 1 if first.shape[2] == 1 or is_gray_rgb(first) else 3
        else:
            self._arrays = [self._to_float(x, None, i) for i, x in enumerate(items)]
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
        return self._prepare(read_pixels(self._paths[i]), i)

    def _to_float(self, raw, file_range, i: int) -> np.ndarray:
        """One image through the intensity rules; the first doubtful one warns."""
        window = self.intensity_range or file_range
        if window is None and not self._warned:
            message = intensity_warning(np.asarray(raw), self.describe(i))
            if message is not None:
                self._warned = True
                warnings.warn(message + " (said once for all images)", IntensityRangeWarning, stacklevel=4)
        return to_float_image(raw, self.describe(i), drop_alpha=self.from_files, intensity_range=window)

    def _prepare(self, decoded: tuple, i: int) -> np.ndarray:
        img = self._to_float(*decoded, i)
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
            raws = parallel(delayed(read_pixels)(self._paths[i]) for i in indices)
            for i, raw in zip(indices, raws):
                yield i, self._prepare(raw, i)

    def shape(self, i: int) -> tuple[int, int]:
        """(H, W) of image i; for files, from the header when Pillow can read it (no decoding)."""
        if self._arrays[i] is not None:
            return tuple(self._arrays[i].shape[:2])
        from .dicom import dicom_shape, is_dicom

        try:
            if is_dicom(self._paths[i]):
                return dicom_shape(self._paths[i])
            from PIL import Image

            with Image.open(self._paths[i]) as im:
                width, height = im.size
            return int(height), int(width)
        except Exception:  # not a format Pillow knows, or a header it cannot parse: decode it
            return tuple(self[i].shape[:2])

    def probe(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i``, after checking that it can be read: for files, the header is
        parsed and, where the format allows it without decoding, the data checked (PNG's
        checksums); files no header reader knows are decoded.

        Parameters
        ----------
        i : int

        Returns
        -------
        (int, int)
            :class:`ImageReadError` (or ``ValueError`` for a decoded file that is not an image
            skuld takes), naming the file.

        Examples
        --------
        >>> import os, tempfile
        >>> from skuld.io import ImageCollection
        >>> path = os.path.join(tempfile.mkdtemp(), "broken.png")
        >>> _ = open(path, "wb").write(b"not a png")
        >>> ImageCollection([path], n_channels=1).probe(0)
        Traceback (most recent call last):
            ...
        skuld.io.ImageReadError: cannot read image .../broken.png: ...
        """
        if self._arrays[i] is not None:
            return tuple(self._arrays[i].shape[:2])
        from .dicom import dicom_shape, is_dicom

        path = self._paths[i]
        if not os.path.isfile(path):
            raise ImageReadError(f"image file not found: {path}")
        if is_dicom(path):
            try:
                return dicom_shape(path)
            except (ValueError, ImportError) as exc:
                raise ImageReadError(f"cannot read image {path}: {exc}") from None
        try:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
                im.verify()
            return int(height), int(width)
        except Exception:  # not a format Pillow knows, or a damaged file: decoding says which
            return tuple(self[i].shape[:2])

    def subset(self, indices) -> "ImageCollection":
        """The images at ``indices``, in that order, as a collection with the same settings.

        Parameters
        ----------
        indices : sequence of int

        Returns
        -------
        ImageCollection

        Examples
        --------
        >>> import numpy as np
        >>> from skuld.io import ImageCollection
        >>> len(ImageCollection(np.zeros((3, 8, 8))).subset([2, 0]))
        2
        """
        items = [self._paths[i] if self.from_files else self._arrays[i] for i in indices]
        return ImageCollection(items, n_channels=self.n_channels, name=self.name, intensity_range=self.intensity_range)

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


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """``ValueError`` naming ``path`` when a file (or, with ``folder``, files inside it) cannot be
    written there: checked before long work, so that a run never ends unable to keep its result.

    Parameters
    ----------
    path : str or path-like
    what : str
        What will be written, for the message ("model", "checkpoints").
    folder : bool, default=False
        ``path`` is a folder (created if missing) rather than a file.

    Returns
    -------
    None

    Examples
    --------
    >>> import os, tempfile
    >>> from skuld.io import check_writable
    >>> blocker = os.path.join(tempfile.mkdtemp(), "file")
    >>> _ = open(blocker, "w").write("")
    >>> check_writable(os.path.join(blocker, "ckpt"), "checkpoints", folder=True)
    Traceback (most recent call last):
        ...
    ValueError: cannot write the checkpoints to .../file/ckpt: ...
    """
    path = os.fspath(path)
    probe = os.path.join(path, ".skuld-write-probe") if folder else os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.write-probe")
    try:
        atomic_write(probe, lambda tmp: open(tmp, "w").close())
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from None


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
