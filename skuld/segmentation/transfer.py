"""Supervised segmentation with few labels as a task of the training engine.

The U-Net (:class:`skuld.nn.SegmentationUNet`) is trained on random crops of the labelled
images at working resolution, with flips, rotations and intensity jitter, by the soft Dice
loss (optionally plus cross-entropy). Its encoder can be frozen for a first part of the
steps (the paper's protocol for a pretrained encoder); the learning rate follows a cosine to
1 % of its start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..engine import Step, Task
from ..io import ImageCollection
from ..nn.network import SegmentationUNet
from ..nn.segmentation import IGNORE, augment, random_crops, segmentation_loss
from ..preprocessing import InputSpec, check_min_size


def check_masks(y, images: ImageCollection) -> list[np.ndarray]:
    """Validated masks, one ``(H_i, W_i)`` array per image of ``images``.

    Parameters
    ----------
    y : array of shape (n, H, W), or a list of (H_i, W_i) arrays
        Boolean masks or integer class labels.
    images : ImageCollection

    Returns
    -------
    list of arrays
        ``ValueError`` naming the mask for a count, shape or dtype mismatch, NaN/inf or
        fractional values.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> from skuld.segmentation import check_masks
    >>> check_masks(np.zeros((1, 40, 30), bool), ImageCollection(np.zeros((2, 40, 30))))
    Traceback (most recent call last):
        ...
    ValueError: 1 masks for 2 images
    """
    if isinstance(y, np.ndarray) and y.dtype != object:
        if y.ndim != 3:
            raise ValueError(f"masks must have shape (n_images, H, W) or be a list of (H, W) arrays, got shape "
                             f"{y.shape}")
        masks = list(y)
    elif isinstance(y, (list, tuple)) or (isinstance(y, np.ndarray) and y.dtype == object):
        masks = [np.asarray(m) for m in y]
    else:
        raise TypeError(f"masks must be an array or a list of arrays, got {type(y).__name__}")
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} masks for {len(images)} images")
    for i, m in enumerate(masks):
        if m.ndim != 2:
            raise ValueError(f"mask {i} must be (H, W), got shape {m.shape}")
        if m.shape != images.shape(i):
            raise ValueError(f"mask {i} is {m.shape[0]} x {m.shape[1]} but {images.describe(i)} is "
                             f"{images.shape(i)[0]} x {images.shape(i)[1]}")
        if m.dtype.kind == "f" and not (np.isfinite(m).all() and (m == np.round(m)).all()):
            raise ValueError(f"mask {i} holds NaN, infinity or fractional values; masks are boolean or "
                             "integer class labels")
        if m.dtype.kind not in "biuf":
            raise ValueError(f"mask {i} has dtype {m.dtype}; masks are boolean or integer class labels")
    return masks


def mask_classes(masks: list[np.ndarray], ignore_label=None) -> np.ndarray:
    """The sorted class values of the masks (``ignore_label`` left out); ``ValueError`` unless
    there are 2 to 64 of them.

    Parameters
    ----------
    masks : list of arrays
    ignore_label : int or None

    Returns
    -------
    ndarray
        ``classes[0]`` is the background.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.segmentation import mask_classes
    >>> mask_classes([np.array([[0, 2], [255, 2]])], ignore_label=255)
    array([0, 2])
    """
    classes = np.unique(np.concatenate([np.unique(m) for m in masks]))
    if ignore_label is not None:
        classes = classes[classes != ignore_label]
    if len(classes) == 0:
        raise ValueError(f"the masks hold a single value ({ignore_label!r}, the ignore_label): no pixel is labelled")
    if len(classes) < 2:
        raise ValueError(f"the masks hold a single value ({classes[0]!r}); segmentation needs a structure and a "
                         "background")
    if len(classes) > 64:
        raise ValueError(f"the masks hold {len(classes)} distinct values; class labels are expected (did you pass "
                         "images as masks?)")
    return classes


def training_data(images: ImageCollection, masks: list[np.ndarray], classes: np.ndarray, spec: InputSpec,
                  ignore_label=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images and label maps at working resolution, ready for :func:`skuld.nn.segmentation.random_crops`.

    Parameters
    ----------
    images : ImageCollection
    masks : list of (H_i, W_i) arrays
    classes : ndarray
        Mask values; a pixel's label is its value's index here.
    spec : InputSpec
    ignore_label : int or None
        Mask value mapped to :data:`skuld.nn.segmentation.IGNORE`.

    Returns
    -------
    xs : list of (C, h_i, w_i) float tensors, normalised
    ys : list of (h_i, w_i) int64 tensors (nearest-neighbour resized)

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.io import ImageCollection
    >>> from skuld.preprocessing import InputSpec
    >>> from skuld.segmentation import training_data
    >>> mask = np.zeros((64, 96), np.uint8); mask[:, 40:] = 7
    >>> xs, ys = training_data(ImageCollection([np.zeros((64, 96))]), [mask], np.array([0, 7]),
    ...                        InputSpec.from_params(1, 32))
    >>> tuple(xs[0].shape), tuple(ys[0].shape), ys[0].unique().tolist()    # labels are class indices
    ((1, 32, 48), (32, 48), [0, 1])
    """
    xs, ys = [], []
    for i in range(len(images)):
        img = images[i]
        h, w = spec.working_shape(*img.shape[:2])
        check_min_size(h, w, f"{images.describe(i)} at working resolution")
        x = spec.network_batch(img)[0]
        index = np.searchsorted(classes, masks[i]).astype(np.int64)
        if ignore_label is not None:
            index[masks[i] == ignore_label] = IGNORE
        lab = torch.from_numpy(index)
        if lab.shape != (h, w):
            lab = F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
        xs.append(x.contiguous())
        ys.append(lab)
    return xs, ys


@dataclass(frozen=True)
class SegmentationConfig:
    """What a segmentation step does.

    Attributes
    ----------
    crop_size, batch_size, max_iter : int
    learning_rate : float
        Start of the cosine schedule (to 1 % at ``max_iter``).
    freeze : {"schedule", "encoder", "none"}
        What stays frozen: the encoder throughout ("encoder"), for the first ``unfreeze_at``
        of the steps ("schedule"), or nothing.
    unfreeze_at : float
    pretrained : bool
        Without a pretrained encoder nothing is frozen.
    loss : {"dice", "dice+bce"}
    flips : bool
    rotation, intensity_jitter : float
    channels_last : bool

    Examples
    --------
    >>> from skuld.segmentation import SegmentationConfig
    >>> cfg = SegmentationConfig(64, 2, 100, 1e-3, "schedule", 0.5, True, "dice", True, 15.0, 0.1, False)
    >>> SegmentationConfig.stage(cfg, 10), SegmentationConfig.stage(cfg, 60)
    ('decoder', 'all')
    """

    crop_size: int
    batch_size: int
    max_iter: int
    learning_rate: float
    freeze: str
    unfreeze_at: float
    pretrained: bool
    loss: str
    flips: bool
    rotation: float
    intensity_jitter: float
    channels_last: bool

    def stage(self, step: int) -> str:
        """"decoder" while the encoder is frozen, else "all"."""
        if not self.pretrained or self.freeze == "none":
            return "all"
        if self.freeze == "encoder" or step < round(self.unfreeze_at * self.max_iter):
            return "decoder"
        return "all"

    def lr(self, step: int) -> float:
        floor = 0.01
        return self.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / self.max_iter)))


class SegmentationTask(Task):
    """The engine task of :class:`skuld.TransferSegmenter`.

    Parameters
    ----------
    images, labels : lists of tensors
        From :func:`training_data`.
    config : SegmentationConfig

    Notes
    -----
    The crops and augmentations of step t are drawn from the step's CPU generator, so they
    depend only on the seed and t, on every device.

    Examples
    --------
    >>> import torch
    >>> from skuld.engine import EngineConfig, TrainingState, train
    >>> from skuld.nn import SegmentationUNet
    >>> from skuld.segmentation import SegmentationConfig, SegmentationTask
    >>> x = torch.rand(1, 48, 48); y = (x[0] > 0.5).long()
    >>> cfg = SegmentationConfig(32, 2, 3, 1e-3, "none", 0.5, False, "dice", True, 0.0, 0.0, False)
    >>> net = SegmentationUNet(2, in_channels=1, width=0.25)
    >>> state = TrainingState(net, torch.optim.Adam(net.parameters()))
    >>> train(SegmentationTask([x], [y], cfg), state, 3, EngineConfig(device=torch.device("cpu")))
    >>> len(state.history)
    3
    """

    kind = "segmentation"

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor], config: SegmentationConfig):
        super().__init__(config.learning_rate)
        self.images, self.labels, self.config = images, labels, config
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    def random_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu")

    def batches(self, start: int, stop: int, device: torch.device):
        yield from range(start, stop)  # the crops are drawn from each step's generator

    def stage(self, step: int) -> str:
        return self.config.stage(step)

    def lr(self, step: int) -> float:
        return self.config.lr(step)

    def begin_step(self, model: SegmentationUNet, step: Step) -> None:
        model.train()
        model.encoder.requires_grad_(step.stage == "all")
        if step.stage == "decoder":
            model.encoder.eval()  # frozen batch-norm statistics too

    def prepare(self, model: SegmentationUNet, batch, step: Step):
        cfg = self.config
        x, y = random_crops(self.images, self.labels, cfg.crop_size, cfg.batch_size, step.generator)
        x, y = augment(x, y, step.generator, flips=cfg.flips, rotation=float(cfg.rotation),
                       intensity=float(cfg.intensity_jitter))
        device = next(model.parameters()).device
        return x.to(device, non_blocking=True).contiguous(memory_format=self.memory_format), y.to(device, non_blocking=True)

    def loss(self, model: SegmentationUNet, inputs, step: Step):
        cfg = self.config
        x, y = inputs
        logits = model(x)
        with torch.autocast(x.device.type, enabled=False):  # the loss in float32
            return segmentation_loss(logits, y, cfg.loss), {}, {"logits": logits}
