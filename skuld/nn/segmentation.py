"""Supervised segmentation pieces: the soft Dice loss and the crops and augmentations it trains on.

Label maps are int64 ``(N, H, W)`` class indices in ``[0, K)``; ``IGNORE`` (-1) marks pixels
that count for nothing (padding around images smaller than a crop). Probabilities and
logits are ``(N, K, H, W)``; class 0 is the background.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

#: Label of pixels left out of every loss.
IGNORE = -1


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_k Dice_k`` over the foreground classes ``k >= 1``, pooled over the batch.

    Parameters
    ----------
    probs : float tensor (N, K, H, W), K >= 2
        Class probabilities (non-negative, summing to 1 along dim 1).
    target : int64 tensor (N, H, W)
        Class indices in ``[0, K)``, or :data:`IGNORE`.
    smooth : float
        Added to numerator and denominator, so that a class absent from both prediction and
        target scores 1 instead of 0/0.

    Returns
    -------
    Scalar float32 tensor in [0, 1]: 0 for a perfect one-hot prediction. Sums run over the
    whole batch, so crops without foreground do not make the loss jump.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.segmentation import soft_dice_loss
    >>> target = torch.tensor([[[0, 1], [1, 1]]])                      # (1, 2, 2)
    >>> perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    >>> round(float(soft_dice_loss(perfect, target)), 4), round(float(soft_dice_loss(1 - perfect, target)), 4)
    (0.0, 0.8)
    """
    if probs.ndim != 4 or target.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"probs (N, K, H, W) and target (N, H, W) do not match: {tuple(probs.shape)}, "
                         f"{tuple(target.shape)}")
    k = probs.shape[1]
    if k < 2:
        raise ValueError(f"need at least 2 classes (background and one structure), got {k}")
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp_min(0), k).permute(0, 3, 1, 2).float() * valid
    p = probs.float() * valid
    dims = (0, 2, 3)
    inter = (p * onehot).sum(dims)
    total = p.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)
    return 1 - dice[1:].mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """Loss of a segmentation network's logits against a label map, in float32.

    Parameters
    ----------
    logits : Tensor of shape (N, K, H, W)
    target : Tensor of shape (N, H, W), int64
        Class indices in ``[0, K)`` or :data:`IGNORE`.
    kind : {"dice", "dice+bce"}, default "dice"
        Soft Dice over the foreground classes, or that plus the cross-entropy (the binary
        cross-entropy when K = 2).

    Returns
    -------
    scalar Tensor, float32, >= 0

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.segmentation import segmentation_loss
    >>> logits = torch.zeros(1, 2, 4, 4)                    # undecided: p = 0.5 everywhere
    >>> target = torch.ones(1, 4, 4, dtype=torch.long)
    >>> round(float(segmentation_loss(logits, target)), 4), round(float(segmentation_loss(logits, target, "dice+bce")), 4)
    (0.32, 1.0131)
    """
    logits = logits.float()
    loss = soft_dice_loss(torch.softmax(logits, dim=1), target)
    if kind == "dice+bce":
        if (target == IGNORE).all():
            return loss
        loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE)
    elif kind != "dice":
        raise ValueError(f"loss must be 'dice' or 'dice+bce', got {kind!r}")
    return loss


def random_crops(
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    crop_size: int,
    n: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random square crops from randomly chosen (image, label) pairs.

    Images smaller than the crop are padded with zeros and their labels with :data:`IGNORE`.

    Parameters
    ----------
    images : list of Tensor of shape (C, h_i, w_i)
    labels : list of Tensor of shape (h_i, w_i), int64
    crop_size : int
        Side s of the crops.
    n : int
        Number of crops.
    generator : torch.Generator
        A CPU generator; the crops depend only on its state.

    Returns
    -------
    x : Tensor of shape (n, C, s, s)
    y : Tensor of shape (n, s, s)

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.segmentation import IGNORE, random_crops
    >>> x, y = random_crops([torch.rand(1, 20, 30)], [torch.zeros(20, 30, dtype=torch.long)], 24, 5,
    ...                     torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, bool((y[:, 20:] == IGNORE).all())          # rows 20-23 are padding
    (torch.Size([5, 1, 24, 24]), torch.Size([5, 24, 24]), True)
    """
    xs, ys = [], []
    for _ in range(n):
        i = int(torch.randint(len(images), (1,), generator=generator))
        x, y = images[i], labels[i]
        h, w = y.shape
        ph, pw = max(0, crop_size - h), max(0, crop_size - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
            h, w = y.shape
        top = int(torch.randint(h - crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(w - crop_size + 1, (1,), generator=generator))
        xs.append(x[:, top : top + crop_size, left : left + crop_size])
        ys.append(y[top : top + crop_size, left : left + crop_size])
    return torch.stack(xs), torch.stack(ys)


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    flips: bool = True,
    rotation: float = 0.0,
    intensity: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation and intensity jitter of a batch of crops and their labels.

    The same geometric change applies to images and labels: bilinear for images, nearest for
    labels, reflected at the border. The draws come from ``generator`` (on the CPU), so a
    step's augmentation depends only on its seed.

    Parameters
    ----------
    x : Tensor of shape (N, C, s, s)
        Normalised images (flips are applied in place).
    y : Tensor of shape (N, s, s), int64
        Labels.
    generator : torch.Generator
    flips : bool, default True
        Random horizontal and vertical flips.
    rotation : float, default 0.0
        Maximal angle in degrees, uniform in ``[-rotation, rotation]`` per crop.
    intensity : float, default 0.0
        Per-crop gain ``1 + U(-intensity, intensity)`` and offset ``U(-intensity, intensity)``
        on the normalised values.

    Returns
    -------
    x : Tensor of shape (N, C, s, s)
    y : Tensor of shape (N, s, s), int64

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.segmentation import augment
    >>> x = torch.rand(4, 1, 32, 32); y = (x[:, 0] > 0.5).long()
    >>> xa, ya = augment(x.clone(), y.clone(), torch.Generator().manual_seed(0), rotation=0.0)
    >>> bool(torch.equal(ya, (xa[:, 0] > 0.5).long()))     # labels move with their pixels
    True
    """
    n = x.shape[0]
    if flips:
        flip = torch.rand(n, 2, generator=generator) < 0.5
        for i in range(n):
            dims = [d for d, f in zip((-1, -2), flip[i].tolist()) if f]
            if dims:
                x[i], y[i] = x[i].flip(dims), y[i].flip(dims)  # dims -1, -2: columns, rows of both
    if rotation > 0:
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotation)
        cos, sin = torch.cos(angles), torch.sin(angles)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
        y = F.grid_sample(y[:, None].float(), grid.float(), mode="nearest", padding_mode="reflection",
                          align_corners=False)[:, 0].round().long()
    if intensity > 0:
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * intensity
        offset = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * intensity
        x = x * gain.to(x) + offset.to(x)
    return x, y
