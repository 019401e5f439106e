"""Per-pixel outputs of a network at each input's resolution, in bounded memory.

An image goes through the input path (:mod:`skuld.preprocessing`: working resolution,
normalisation), through the network whole or in overlapping tiles when it is large, and
its maps come back to the input's resolution in blocks of rows written straight into the
output arrays. Stacked input gives stacked output; a list gives a list.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from .engine.runtime import Runtime
from .io import ImageCollection
from .nn.network import LDNet
from .preprocessing import InputSpec, check_min_size, pad_to_multiple, resample_rows

#: Test-time augmentation: how many views of the dihedral group of the square a prediction
#: averages. View k flips the columns (bit 0), the rows (bit 1), then swaps rows and columns
#: (bit 2); the first 4 views are the flips, all 8 the flips and quarter turns.
TEST_TIME_VIEWS = {None: 1, "flips": 4, "dihedral": 8}


def dihedral_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` (0-7) of the dihedral group of the square, on the last two axes.

    Parameters
    ----------
    x : Tensor of shape (..., H, W)
    k : int
        Bit 0 flips the columns, bit 1 the rows, bit 2 then swaps rows and columns.

    Returns
    -------
    Tensor of shape (..., H, W), or (..., W, H) for k >= 4

    Examples
    --------
    >>> import torch
    >>> from skuld.inference import dihedral_view, undo_dihedral_view
    >>> x = torch.arange(6.0).view(2, 3)
    >>> all(torch.equal(undo_dihedral_view(dihedral_view(x, k), k), x) for k in range(8))
    True
    """
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x.transpose(-1, -2) if k & 4 else x


def undo_dihedral_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral_view`: maps view ``k`` of an image back onto the image.

    Parameters
    ----------
    x : Tensor of shape (..., H', W')
    k : int

    Returns
    -------
    Tensor

    Examples
    --------
    >>> import torch
    >>> from skuld.inference import dihedral_view, undo_dihedral_view
    >>> x = torch.arange(6.0).view(2, 3)
    >>> bool(torch.equal(undo_dihedral_view(dihedral_view(x, 5), 5), x))
    True
    """
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-2)
    return x.flip(-1) if k & 1 else x


def tiled_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile_size: int,
                  margin: int) -> torch.Tensor:
    """``forward`` (one (1, C, h, w) image -> (K, h, w) maps) over ``x`` in overlapping tiles.

    Images of up to ``tile_size**2`` pixels go through whole; larger ones in tiles of side
    ``tile_size`` whose outer ``margin`` pixels are discarded, which bounds memory while
    keeping every kept pixel's receptive field inside its tile.

    Parameters
    ----------
    forward : callable
    x : Tensor of shape (1, C, h, w)
    tile_size, margin : int

    Returns
    -------
    Tensor of shape (K, h, w)

    Examples
    --------
    >>> import torch
    >>> from skuld.inference import tiled_forward
    >>> x = torch.rand(1, 1, 50, 70)
    >>> bool(torch.equal(tiled_forward(lambda t: t[0] * 2, x, tile_size=32, margin=4), x[0] * 2))
    True
    """
    h, w = x.shape[-2:]
    if h * w <= tile_size * tile_size:
        return forward(x)
    core = tile_size - 2 * margin
    out = None
    for y in range(0, h, core):
        for x0 in range(0, w, core):
            ys, xs = max(0, y - margin), max(0, x0 - margin)
            ye, xe = min(h, y + core + margin), min(w, x0 + core + margin)
            tile = forward(x[..., ys:ye, xs:xe])
            if out is None:
                out = torch.empty((tile.shape[0], h, w), device=tile.device)
            cy, cx = y - ys, x0 - xs
            hh, ww = min(core, h - y), min(core, w - x0)
            out[:, y : y + hh, x0 : x0 + ww] = tile[:, cy : cy + hh, cx : cx + ww]
    return out


def _heads_forward(model: LDNet, x: torch.Tensor, heads: tuple[str, ...], channels_last: bool) -> torch.Tensor:
    """Network outputs (sum of head channels, h, w) for one normalised (1, C, h, w) image."""
    x, h, w = pad_to_multiple(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    trunk = model.trunk(x)
    outs = [model.embed(trunk) if head == "embed" else model.cluster(trunk) for head in heads]
    return torch.cat(outs, dim=1)[0, :, :h, :w].float()


@torch.inference_mode()
def infer_image(model: LDNet, img: np.ndarray, *, heads: tuple[str, ...], spec: InputSpec, runtime: Runtime,
                out: dict[str, np.ndarray], tile_size: int = 1024, tile_margin: int = 96, block_rows: int = 256,
                name: str = "image", stride: int = 1) -> None:
    """Write the per-pixel outputs of one image into ``out[head]`` arrays.

    Parameters
    ----------
    model : LDNet
        In eval mode, on ``runtime.device``.
    img : float32 array of shape (H, W, C), values in [0, 1]
    heads : tuple of {"embed", "cluster"}
    spec : InputSpec
        The model's input path (working resolution, normalisation).
    runtime : Runtime
    out : dict head -> float array of shape (ceil(H / stride), ceil(W / stride), D or K)
        Filled in place (float32 or float16): embeddings are unit vectors along the last axis,
        cluster maps sum to 1 along it.
    tile_size, tile_margin, block_rows : int
        Memory bounds (see :func:`tiled_forward`, :func:`skuld.preprocessing.resample_rows`).
    name : str
        How the image is named in errors.
    stride : int, default=1
        Output every ``stride``-th row and column: ``out[head][r, c]`` is pixel
        ``(r * stride, c * stride)``.

    Returns
    -------
    None

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.inference import infer_image
    >>> from skuld.nn import LDNet
    >>> from skuld.preprocessing import InputSpec
    >>> net = LDNet(in_channels=1, embedding_dim=8, n_clusters=4, width=0.25).eval()
    >>> out = {"embed": np.empty((60, 40, 8), np.float32)}
    >>> infer_image(net, np.zeros((60, 40, 1), np.float32), heads=("embed",), spec=InputSpec.from_params(1, 32),
    ...             runtime=Runtime.resolve("cpu", "fp32"), out=out)
    >>> bool(np.allclose(np.linalg.norm(out["embed"], axis=-1), 1, atol=1e-5))   # unit vectors
    True
    """
    big_h, big_w = img.shape[:2]
    check_min_size(big_h, big_w, name)
    x = spec.network_batch(img, runtime.device)
    h, w = x.shape[-2:]
    with runtime.autocast():
        maps = tiled_forward(lambda t: _heads_forward(model, t, heads, runtime.channels_last), x, tile_size,
                             tile_margin)
    sizes = [model.embedding_dim if head == "embed" else model.n_clusters for head in heads]
    for head, m in zip(heads, torch.split(maps, sizes, dim=0)):
        target = out[head]
        if (h, w) == (big_h, big_w):
            target[...] = m[:, ::stride, ::stride].permute(1, 2, 0).cpu().numpy()
            continue
        for r0, block in resample_rows(m, (big_h, big_w), block_rows, stride):
            block = torch.nn.functional.normalize(block, dim=0) if head == "embed" else block / block.sum(0, keepdim=True)
            target[r0 : r0 + block.shape[1]] = block.permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def segment_image(net: torch.nn.Module, img: np.ndarray, *, spec: InputSpec, runtime: Runtime, out: np.ndarray,
                  tile_size: int = 1024, tile_margin: int = 96, block_rows: int = 256, name: str = "image",
                  test_time_augmentation: str | None = None) -> None:
    """Write the class probabilities of one image into ``out``.

    Parameters
    ----------
    net : module mapping ``(1, C, h, w)`` (h, w multiples of 16) to logits ``(1, K, h, w)``
        For example :class:`skuld.nn.SegmentationUNet`, in eval mode on ``runtime.device``.
    img : float32 array of shape (H, W, C), values in [0, 1]
    spec : InputSpec
    runtime : Runtime
    out : float32 array of shape (H, W, K)
        Filled in place with the softmax of the logits computed at the working resolution
        and resampled bilinearly to (H, W) (a convex combination, so each pixel's K values
        still sum to 1).
    tile_size, tile_margin, block_rows : int
    name : str
    test_time_augmentation : {None, "flips", "dihedral"}
        Average the probabilities of the image seen as is (None), flipped in the 4 ways
        ("flips") or also transposed (8 views, "dihedral": flips and quarter turns), each
        mapped back before averaging. Costs 4 or 8 forward passes.

    Returns
    -------
    None

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.inference import segment_image
    >>> from skuld.nn import SegmentationUNet
    >>> from skuld.preprocessing import InputSpec
    >>> out = np.empty((48, 48, 2), np.float32)
    >>> segment_image(SegmentationUNet(2, in_channels=1, width=0.25).eval(), np.zeros((48, 48, 1), np.float32),
    ...               spec=InputSpec.from_params(1, None), runtime=Runtime.resolve("cpu", "fp32"), out=out,
    ...               test_time_augmentation="flips")
    >>> bool(np.allclose(out.sum(-1), 1, atol=1e-5))                       # probabilities
    True
    """
    if test_time_augmentation not in TEST_TIME_VIEWS:
        raise ValueError(f"test_time_augmentation must be None, 'flips' or 'dihedral', got {test_time_augmentation!r}")
    big_h, big_w = img.shape[:2]
    check_min_size(big_h, big_w, name)
    x = spec.network_batch(img, runtime.device)

    def forward(t: torch.Tensor) -> torch.Tensor:
        t, th, tw = pad_to_multiple(t)
        if runtime.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return torch.softmax(net(t)[0, :, :th, :tw].float(), dim=0)

    n_views = TEST_TIME_VIEWS[test_time_augmentation]
    with runtime.autocast():
        probs = tiled_forward(forward, x, tile_size, tile_margin)
        for k in range(1, n_views):
            view = dihedral_view(x, k).contiguous()
            probs += undo_dihedral_view(tiled_forward(forward, view, tile_size, tile_margin), k)
    if n_views > 1:
        probs /= n_views
    if tuple(x.shape[-2:]) == (big_h, big_w):
        out[...] = probs.permute(1, 2, 0).cpu().numpy()
        return
    for r0, block in resample_rows(probs, (big_h, big_w), block_rows):
        out[r0 : r0 + block.shape[1]] = block.permute(1, 2, 0).cpu().numpy()


def memory_limit() -> int:
    """Bytes that the outputs of one call may take: half of this machine's memory.

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.inference import memory_limit
    >>> memory_limit() > 2**20
    True
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no guard beyond numpy's
        return 2**62


def output_shape(height: int, width: int, stride: int = 1) -> tuple[int, int]:
    """``(rows, cols)`` of a per-pixel output taken every ``stride``-th row and column.

    Parameters
    ----------
    height, width, stride : int

    Returns
    -------
    (int, int)
        ``(ceil(height / stride), ceil(width / stride))``.

    Examples
    --------
    >>> from skuld.inference import output_shape
    >>> output_shape(512, 300, 4)
    (128, 75)
    """
    return -(-height // stride), -(-width // stride)


def check_output_memory(images: ImageCollection, depth: int, stride: int, dtype) -> None:
    """``MemoryError`` before any work when the outputs would need more than :func:`memory_limit`,
    with what to change; the message names the largest image.

    Parameters
    ----------
    images : ImageCollection
        Sizes come from file headers where possible (nothing is decoded).
    depth : int
        Values per output pixel (summed over the heads).
    stride : int
    dtype : numpy dtype of the outputs

    Returns
    -------
    None

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.inference import check_output_memory
    >>> from skuld.io import ImageCollection
    >>> check_output_memory(ImageCollection(np.zeros((2, 64, 64))), 32, 1, np.float32)   # 1 MiB: fine
    """
    if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if np.dtype(dtype) not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    itemsize = np.dtype(dtype).itemsize
    sizes = [output_shape(*images.shape(i), stride) for i in range(len(images))]
    need = sum(h * w for h, w in sizes) * depth * itemsize
    if need > memory_limit():
        big = int(np.argmax([h * w for h, w in sizes]))
        raise MemoryError(
            f"the outputs would take {need / 2**30:.1f} GiB ({depth} values per pixel, {np.dtype(dtype).name}; "
            f"largest: {images.describe(big)}, {images.shape(big)[0]} x {images.shape(big)[1]}), more than half "
            f"of this machine's memory ({memory_limit() / 2**30:.1f} GiB): pass stride=2 or more (every "
            f"stride-th pixel), dtype='float16', or fewer images at a time")


def _outputs(images: ImageCollection, depths: dict[str, int], fill: Callable[[int, np.ndarray, dict], None],
             stride: int = 1, dtype=np.float32) -> dict:
    """Per-image outputs ``(ceil(H_i / stride), ceil(W_i / stride), depth)`` of ``dtype`` for each
    name of ``depths``: one stacked array each when the images were one stacked array, else lists."""
    check_output_memory(images, sum(depths.values()), stride, dtype)
    stride, dtype = int(stride), np.dtype(dtype)
    stacked = not images.is_ragged
    outputs: dict[str, list | np.ndarray] = {}
    for i in range(len(images)):
        img = images[i]
        h, w = output_shape(*img.shape[:2], stride)
        if stacked and i == 0:
            for k, d in depths.items():
                outputs[k] = np.empty((len(images), h, w, d), dtype=dtype)
        out = {k: outputs[k][i] if stacked else np.empty((h, w, d), dtype) for k, d in depths.items()}
        fill(i, img, out)
        if not stacked:
            for k in depths:
                outputs.setdefault(k, []).append(out[k])
    return outputs


def predict_maps(model: LDNet, images: ImageCollection, heads: tuple[str, ...], spec: InputSpec,
                 runtime: Runtime, stride: int = 1, dtype=np.float32) -> dict[str, np.ndarray | list]:
    """Embeddings and/or cluster maps of every image, at each image's resolution.

    Parameters
    ----------
    model : LDNet
        Moved to ``runtime.device`` in its memory format (oneDNN's kernels, and so the last bits
        of bfloat16 outputs, depend on the weights' layout) and put in eval mode.
    images : ImageCollection
    heads : tuple of {"embed", "cluster"}
    spec : InputSpec
    runtime : Runtime
    stride : int, default=1
        Every ``stride``-th row and column of each image (output ``(r, c)``: pixel
        ``(r * stride, c * stride)``).
    dtype : {float32, float16}, default=float32

    Returns
    -------
    dict head -> array of shape (n, ceil(H / stride), ceil(W / stride), D or K), or a list of
        such per-image arrays when the images are not one stacked array. ``MemoryError`` before
        any work when they would need more than :func:`memory_limit`.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.inference import predict_maps
    >>> from skuld.io import ImageCollection
    >>> from skuld.nn import LDNet
    >>> from skuld.preprocessing import InputSpec
    >>> net = LDNet(in_channels=1, embedding_dim=8, n_clusters=4, width=0.25)
    >>> maps = predict_maps(net, ImageCollection(np.zeros((2, 40, 50))), ("embed", "cluster"),
    ...                     InputSpec.from_params(1, 32), Runtime.resolve("cpu", "fp32"))
    >>> maps["embed"].shape, maps["cluster"].shape
    ((2, 40, 50, 8), (2, 40, 50, 4))
    """
    model.to(runtime.device, memory_format=runtime.memory_format).eval()  # as trained, however it was loaded
    depths = {head: model.embedding_dim if head == "embed" else model.n_clusters for head in heads}
    return _outputs(images, depths, lambda i, img, out: infer_image(
        model, img, heads=heads, spec=spec, runtime=runtime, out=out, name=images.describe(i), stride=stride),
        stride, dtype)


def predict_class_maps(net: torch.nn.Module, images: ImageCollection, n_classes: int, spec: InputSpec,
                       runtime: Runtime, test_time_augmentation: str | None = None) -> np.ndarray | list:
    """Class probabilities of every pixel of every image, at each image's resolution.

    Parameters
    ----------
    net : torch.nn.Module
        Logits ``(1, n_classes, h, w)`` of ``(1, C, h, w)``; moved to ``runtime.device``, eval mode.
    images : ImageCollection
    n_classes : int
    spec : InputSpec
    runtime : Runtime
    test_time_augmentation : {None, "flips", "dihedral"}, default=None
        As in :func:`segment_image`.

    Returns
    -------
    float32 array of shape (n, H, W, n_classes), or a list of (H_i, W_i, n_classes) arrays

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine import Runtime
    >>> from skuld.inference import predict_class_maps
    >>> from skuld.io import ImageCollection
    >>> from skuld.nn import SegmentationUNet
    >>> from skuld.preprocessing import InputSpec
    >>> images = ImageCollection([np.zeros((40, 50)), np.zeros((64, 32))])     # a list: ragged output
    >>> P = predict_class_maps(SegmentationUNet(3, in_channels=1, width=0.25), images, 3,
    ...                        InputSpec.from_params(1, 32), Runtime.resolve("cpu", "fp32"))
    >>> [p.shape for p in P]
    [(40, 50, 3), (64, 32, 3)]
    """
    net.to(runtime.device, memory_format=runtime.memory_format).eval()
    return _outputs(images, {"p": n_classes}, lambda i, img, out: segment_image(
        net, img, spec=spec, runtime=runtime, out=out["p"], name=images.describe(i),
        test_time_augmentation=test_time_augmentation))["p"]
