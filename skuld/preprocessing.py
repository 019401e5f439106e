"""The one input path: from an image to the network's input, and from its outputs back.

Every estimator and training task turns images into network input here, in the same steps:

1. reading and validating (:class:`skuld.io.ImageCollection`): float32 ``(H, W, C)`` in [0, 1];
2. the working resolution: the image is resized (bilinear, antialiased when shrinking) so that
   its shorter side is ``image_size`` pixels (:func:`working_shape`; None keeps it);
3. intensity normalisation ``(x - mean) / std`` per channel (:func:`intensity_normalizer`);
4. padding to a multiple of 16 (:func:`pad_to_multiple`) where the whole image goes through
   the network;

and per-pixel outputs come back to the input's resolution by :func:`resample_rows`, in blocks
of rows. :class:`InputSpec` holds the choices of steps 2-3 that a fitted model was trained
with, so that every later use of the model sees its input exactly as training did.

Shapes: images are numpy ``(H, W, C)``; tensors are ``(C, H, W)`` or ``(N, C, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .nn.network import SIZE_MULTIPLE

#: Smallest image side skuld accepts (two cells of the network's coarsest, 1/16 map).
MIN_IMAGE_SIDE = 32


def check_min_size(height: int, width: int, name: str = "image") -> None:
    """Raise ``ValueError`` naming the image when it is smaller than :data:`MIN_IMAGE_SIDE` on a side.

    Parameters
    ----------
    height, width : int
    name : str, default="image"
        How the image is named in the message.

    Returns
    -------
    None

    Examples
    --------
    >>> from skuld.preprocessing import check_min_size
    >>> check_min_size(20, 64, "X[2]")
    Traceback (most recent call last):
        ...
    ValueError: X[2] is 20 x 64 pixels; skuld needs images of at least 32 x 32
    """
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {height} x {width} pixels; skuld needs images of at least "
                         f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}")


def working_shape(height: int, width: int, image_size: int | None) -> tuple[int, int]:
    """The shape an image is resized to before the network sees it: shorter side ``image_size``.

    Parameters
    ----------
    height, width : int
        The image's shape.
    image_size : int or None
        Target of the shorter side; None keeps the native resolution.

    Returns
    -------
    (int, int)
        ``(h, w)``, the aspect ratio kept (rounded).

    Examples
    --------
    >>> from skuld.preprocessing import working_shape
    >>> working_shape(1000, 1500, 256), working_shape(1000, 1500, None)
    ((256, 384), (1000, 1500))
    """
    if image_size is None:
        return height, width
    scale = image_size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """A float32 ``(H, W, C)`` array as a ``(C, H, W)`` tensor (a view of it when possible).

    Parameters
    ----------
    img : ndarray of shape (H, W, C)

    Returns
    -------
    Tensor of shape (C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.preprocessing import to_tensor
    >>> to_tensor(np.zeros((4, 5, 3), np.float32)).shape
    torch.Size([3, 4, 5])
    """
    img = np.ascontiguousarray(img)
    if not img.flags.writeable:  # read-only inputs (memmaps): torch wants memory it may write
        img = img.copy()
    return torch.from_numpy(img).permute(2, 0, 1)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking; a no-op at the same size.

    Parameters
    ----------
    x : Tensor of shape (C, H, W) or (N, C, H, W)
    size : (int, int)
        Target ``(h, w)``.

    Returns
    -------
    Tensor of shape (C, h, w) or (N, C, h, w)

    Examples
    --------
    >>> import torch
    >>> from skuld.preprocessing import resize
    >>> resize(torch.rand(1, 64, 48), (32, 24)).shape
    torch.Size([1, 32, 24])
    """
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x[0] if squeeze else x


def intensity_normalizer(normalization, n_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a ``normalization`` parameter.

    Parameters
    ----------
    normalization : {"auto", "imagenet", "half"} or (mean, std)
        "auto" is ImageNet statistics for RGB and 0.5 / 0.5 for gray; a pair gives numbers
        (scalars or one per channel).
    n_channels : {1, 3}

    Returns
    -------
    mean, std : tuple of float, one per channel

    Examples
    --------
    >>> from skuld.preprocessing import intensity_normalizer
    >>> intensity_normalizer("auto", 1)
    ((0.5,), (0.5,))
    """
    if normalization == "auto":
        normalization = "imagenet" if n_channels == 3 else "half"
    if normalization == "imagenet":
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    elif normalization == "half":
        mean, std = (0.5,) * 3, (0.5,) * 3
    else:
        if not isinstance(normalization, (tuple, list)) or len(normalization) != 2:
            raise ValueError(f"normalization must be 'auto', 'imagenet', 'half' or (mean, std), got {normalization!r}")
        mean, std = normalization
        mean, std = tuple(np.broadcast_to(mean, 3)), tuple(np.broadcast_to(std, 3))
    return tuple(float(m) for m in mean[:n_channels]), tuple(float(s) for s in std[:n_channels])


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an ``(N, C, H, W)`` tensor.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
    mean, std : sequence of C floats

    Returns
    -------
    Tensor of shape (N, C, H, W), the dtype and device of ``x``

    Examples
    --------
    >>> import torch
    >>> from skuld.preprocessing import normalize
    >>> normalize(torch.ones(1, 1, 2, 2), (0.5,), (0.5,)).flatten().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def pad_to_multiple(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Pad the last two axes at the bottom and right to multiples of 16 (the network's stride).

    Reflection padding where the image is large enough, else replication.

    Parameters
    ----------
    x : Tensor of shape (..., h, w)

    Returns
    -------
    padded : Tensor of shape (..., h16, w16)
    h, w : int
        The original size, to crop outputs back with ``out[..., :h, :w]``.

    Examples
    --------
    >>> import torch
    >>> from skuld.preprocessing import pad_to_multiple
    >>> y, h, w = pad_to_multiple(torch.rand(1, 1, 40, 33))
    >>> tuple(y.shape), h, w
    ((1, 1, 48, 48), 40, 33)
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def resample_rows(src: torch.Tensor, size: tuple[int, int], block_rows: int = 256, stride: int = 1):
    """Bilinearly resample per-pixel maps to ``size``, a block of rows at a time.

    Each block equals the matching rows of ``F.interpolate(src[None], size, mode="bilinear",
    align_corners=False)``, without the whole resampled map ever being in memory. With
    ``stride``, only every ``stride``-th row and column of that map: output ``(r, c)`` is input
    pixel ``(r * stride, c * stride)``.

    Parameters
    ----------
    src : Tensor of shape (K, h, w)
        Maps at working resolution.
    size : (int, int)
        ``(H, W)``, the input's resolution.
    block_rows : int, default=256
    stride : int, default=1

    Yields
    ------
    row0 : int
        First output row of the block.
    block : Tensor of shape (K, rows, ceil(W / stride))

    Examples
    --------
    >>> import torch
    >>> from skuld.preprocessing import resample_rows
    >>> [(r, tuple(b.shape)) for r, b in resample_rows(torch.rand(2, 8, 8), (20, 16), block_rows=16)]
    [(0, (2, 16, 16)), (16, (2, 4, 16))]
    """
    big_h, big_w = size
    c = src.shape[0]
    out_h = -(-big_h // stride)
    xs = (torch.arange(0, big_w, stride, device=src.device, dtype=torch.float32) + 0.5) * (2.0 / big_w) - 1
    for r0 in range(0, out_h, block_rows):
        r1 = min(out_h, r0 + block_rows)
        rows = torch.arange(r0, r1, device=src.device, dtype=torch.float32) * stride
        ys = (rows + 0.5) * (2.0 / big_h) - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        block = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        yield r0, block[0].reshape(c, r1 - r0, len(xs))


def check_images(images, on_error: str = "raise"):
    """Check every image before any long work: readable (files: header and, where cheap, data)
    and at least :data:`MIN_IMAGE_SIDE` on a side.

    Parameters
    ----------
    images : skuld.io.ImageCollection
    on_error : {"raise", "skip"}, default="raise"
        "raise": one ``ValueError`` listing every unusable image. "skip": the usable ones, with
        a warning listing the others (an error when none is usable).

    Returns
    -------
    skuld.io.ImageCollection
        ``images`` itself when all are usable.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> from skuld.preprocessing import check_images
    >>> images = ImageCollection([np.zeros((40, 40)), np.zeros((8, 40)), np.zeros((50, 50))])
    >>> check_images(images)
    Traceback (most recent call last):
        ...
    ValueError: 1 of 3 images cannot be used (on_error="skip" leaves them out): X[1] is 8 x 40 pixels; ...
    >>> len(check_images(images, on_error="skip"))          # with a warning naming X[1]
    2
    """
    import warnings

    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    problems, usable = [], []
    for i in range(len(images)):
        try:
            check_min_size(*images.probe(i), images.describe(i))
            usable.append(i)
        except ValueError as err:  # ImageReadError is one
            problems.append(str(err))
    if not problems:
        return images
    listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    if on_error == "raise" or not usable:
        hint = ' (on_error="skip" leaves them out)' if usable else ""
        raise ValueError(f"{len(problems)} of {len(images)} images cannot be used{hint}: {listed}")
    warnings.warn(f"leaving out {len(problems)} of {len(images)} images that cannot be used: {listed}", stacklevel=3)
    return images.subset(usable)


@dataclass(frozen=True)
class InputSpec:
    """How a model sees its input: channels, working resolution and normalisation.

    A fitted model keeps the spec it was trained with (``input_spec_`` of the estimators), and
    every use of the model (inference, fine-tuning, a downstream network on its encoder) takes
    its input through it.

    Attributes
    ----------
    n_channels : {1, 3}
    image_size : int or None
        Shorter side at working resolution (None: native resolution).
    mean, std : tuple of float
        Per-channel normalisation of [0, 1] intensities.
    intensity_range : (float, float) or None
        The raw values read as 0 and 1 (see :func:`skuld.io.to_float_image`); None: each file's
        own range, or its dtype's.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.preprocessing import InputSpec
    >>> spec = InputSpec.from_params(n_channels=1, image_size=64, normalization="auto")
    >>> x = spec.network_batch(np.ones((128, 96, 1), np.float32))
    >>> tuple(x.shape), round(float(x.max()), 4)        # (1, C, h, w) normalised
    ((1, 1, 85, 64), 1.0)
    """

    n_channels: int
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity_range: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, n_channels: int, image_size: int | None, normalization="auto",
                    intensity_range=None) -> "InputSpec":
        from .io import check_intensity_range

        mean, std = intensity_normalizer(normalization, n_channels)
        return cls(int(n_channels), None if image_size is None else int(image_size), mean, std,
                   check_intensity_range(intensity_range))

    def collect(self, X, name: str = "X"):
        """``X`` (any input of the estimators) as an :class:`skuld.io.ImageCollection` this model
        reads: its channel count enforced, its intensity range applied.

        Parameters
        ----------
        X : array, list of arrays or paths, or str
        name : str, default="X"

        Returns
        -------
        skuld.io.ImageCollection
        """
        from .io import ImageCollection

        return ImageCollection(X, n_channels=self.n_channels, name=name, intensity_range=self.intensity_range)

    def working_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an ``(height, width)`` image at working resolution."""
        return working_shape(height, width, self.image_size)

    def working_image(self, img: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """``(C, h, w)`` float tensor in [0, 1]: ``img`` (float32 ``(H, W, C)``) at working resolution."""
        x = to_tensor(img)
        if device is not None:
            x = x.to(device)
        return resize(x, self.working_shape(*img.shape[:2]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` intensities in [0, 1] -> the network's normalised input."""
        return normalize(x, self.mean, self.std)

    def network_batch(self, img: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """``(1, C, h, w)``: one float32 ``(H, W, C)`` image at working resolution, normalised (not padded)."""
        return self.normalize(self.working_image(img, device)[None])
