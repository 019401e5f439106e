"""Inference of per-pixel outputs at the input's resolution, in bounded memory.

An image is resized to the working resolution, padded to a multiple of 16, run through the
network in overlapping tiles when it is large, and the result is resampled back to the input
resolution in blocks of rows written straight into the output array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .data import MIN_IMAGE_SIDE, resize, to_tensor, working_shape
from .nn.network import SIZE_MULTIPLE, LDNet
from .training import autocast, normalize

MIN_SIZE = MIN_IMAGE_SIDE


def check_min_size(height: int, width: int, name: str = "image") -> None:
    """ValueError naming the image when it is smaller than :data:`MIN_SIZE` on a side."""
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"{name} is {height} x {width} pixels; skuld needs images of at least {MIN_SIZE} x {MIN_SIZE}")


def pad_to_multiple(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def _forward(model: LDNet, x: torch.Tensor, heads: tuple[str, ...], channels_last: bool) -> torch.Tensor:
    """Network outputs (sum of head channels, h, w) for one normalised (1, C, h, w) image."""
    x, h, w = pad_to_multiple(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    trunk = model.trunk(x)
    outs = [model.embed(trunk) if head == "embed" else model.cluster(trunk) for head in heads]
    return torch.cat(outs, dim=1)[0, :, :h, :w].float()


def tiled_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile_size: int,
                  margin: int) -> torch.Tensor:
    """``forward`` (one (1, C, h, w) image -> (K, h, w) maps) over ``x`` in overlapping tiles.

    Images of up to ``tile_size**2`` pixels go through whole; larger ones in tiles of side
    ``tile_size`` whose outer ``margin`` pixels are discarded, which bounds memory while
    keeping every kept pixel's receptive field inside its tile.
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


# Test-time augmentation: the views of the dihedral group of the square that a prediction averages.
# View k flips the columns (bit 0), the rows (bit 1), then swaps rows and columns (bit 2); the
# first 4 views are the flips, all 8 the flips and quarter turns.
TEST_TIME_VIEWS = {None: 1, "flips": 4, "dihedral": 8}


def _view(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x.transpose(-1, -2) if k & 4 else x


def _unview(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-2)
    return x.flip(-1) if k & 1 else x


def _upsample_rows(src: torch.Tensor, size: tuple[int, int], block_rows: int):
    """Yield (row0, rows) blocks of ``src`` (C, h, w) bilinearly resampled to ``size`` (H, W).

    Each block equals the matching rows of ``F.interpolate(..., align_corners=False)`` of
    the whole map, without ever materialising the whole map.
    """
    big_h, big_w = size
    c = src.shape[0]
    xs = (torch.arange(big_w, device=src.device, dtype=torch.float32) + 0.5) * (2.0 / big_w) - 1
    for r0 in range(0, big_h, block_rows):
        r1 = min(big_h, r0 + block_rows)
        ys = (torch.arange(r0, r1, device=src.device, dtype=torch.float32) + 0.5) * (2.0 / big_h) - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        block = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        yield r0, block[0].reshape(c, r1 - r0, big_w)


@torch.inference_mode()
def infer_image(
    model: LDNet,
    img: np.ndarray,
    *,
    heads: tuple[str, ...],
    image_size: int | None,
    mean,
    std,
    device: torch.device,
    amp_dtype,
    channels_last: bool,
    out: dict[str, np.ndarray],
    tile_size: int = 1024,
    tile_margin: int = 96,
    block_rows: int = 256,
    name: str = "image",
) -> None:
    """Write the per-pixel outputs of one image into ``out[head]`` arrays.

    Parameters
    ----------
    img : float32 array (H, W, C) in [0, 1]
    heads : tuple of {"embed", "cluster"}
    out : dict head -> float32 array of shape (H, W, D) or (H, W, K), filled in place.
        Embeddings are unit vectors along the last axis; cluster maps sum to 1 along it.
    """
    big_h, big_w = img.shape[:2]
    check_min_size(big_h, big_w, name)
    h, w = working_shape(big_h, big_w, image_size)
    x = resize(to_tensor(img).to(device), (h, w))[None]
    x = normalize(x, mean, std)
    with autocast(device, amp_dtype):
        maps = tiled_forward(lambda t: _forward(model, t, heads, channels_last), x, tile_size, tile_margin)
    sizes = [model.embedding_dim if head == "embed" else model.n_clusters for head in heads]
    splits = torch.split(maps, sizes, dim=0)
    for head, m in zip(heads, splits):
        target = out[head]
        if (h, w) == (big_h, big_w):
            target[...] = m.permute(1, 2, 0).cpu().numpy()
            continue
        for r0, block in _upsample_rows(m, (big_h, big_w), block_rows):
            block = F.normalize(block, dim=0) if head == "embed" else block / block.sum(0, keepdim=True)
            target[r0 : r0 + block.shape[1]] = block.permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def segment_image(
    net: torch.nn.Module,
    img: np.ndarray,
    *,
    image_size: int | None,
    mean,
    std,
    device: torch.device,
    amp_dtype,
    channels_last: bool,
    out: np.ndarray,
    tile_size: int = 1024,
    tile_margin: int = 96,
    block_rows: int = 256,
    name: str = "image",
    test_time_augmentation: str | None = None,
) -> None:
    """Write the class probabilities of one image into ``out``.

    Parameters
    ----------
    net : module mapping ``(1, C, h, w)`` (h, w multiples of 16) to logits ``(1, K, h, w)``
        For example :class:`skuld.nn.SegmentationUNet`.
    img : float32 array (H, W, C) in [0, 1]
    out : float32 array of shape (H, W, K), filled in place with the softmax of the
        logits computed at the working resolution and resampled bilinearly to (H, W)
        (a convex combination, so each pixel's K values still sum to 1).
    test_time_augmentation : {None, "flips", "dihedral"}
        Average the probabilities of the image seen as is (None), flipped in the 4 ways
        ("flips") or also transposed (8 views, "dihedral": flips and quarter turns), each
        mapped back before averaging. Costs 4 or 8 forward passes.
    """
    if test_time_augmentation not in TEST_TIME_VIEWS:
        raise ValueError(f"test_time_augmentation must be None, 'flips' or 'dihedral', got {test_time_augmentation!r}")
    big_h, big_w = img.shape[:2]
    check_min_size(big_h, big_w, name)
    h, w = working_shape(big_h, big_w, image_size)
    x = normalize(resize(to_tensor(img).to(device), (h, w))[None], mean, std)

    def forward(t: torch.Tensor) -> torch.Tensor:
        t, th, tw = pad_to_multiple(t)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return torch.softmax(net(t)[0, :, :th, :tw].float(), dim=0)

    n_views = TEST_TIME_VIEWS[test_time_augmentation]
    with autocast(device, amp_dtype):
        probs = tiled_forward(forward, x, tile_size, tile_margin)
        for k in range(1, n_views):
            view = _view(x, k).contiguous()
            probs += _unview(tiled_forward(forward, view, tile_size, tile_margin), k)
    if n_views > 1:
        probs /= n_views
    if (h, w) == (big_h, big_w):
        out[...] = probs.permute(1, 2, 0).cpu().numpy()
        return
    for r0, block in _upsample_rows(probs, (big_h, big_w), block_rows):
        out[r0 : r0 + block.shape[1]] = block.permute(1, 2, 0).cpu().numpy()
