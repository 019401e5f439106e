"""TransferSegmenter: a supervised U-Net whose encoder comes from Local Discrimination pretraining."""

from __future__ import annotations

import math
import os
import sys
import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch.nn import functional as F

from .data import resize, to_tensor, working_shape
from .encoder import LocalDiscriminativeEncoder, resolve_encoder
from .inference import check_min_size, segment_image
from .io import ImageCollection, atomic_write
from .metrics import class_dice
from .nn.network import SegmentationUNet
from .nn.segmentation import IGNORE, augment, random_crops, segmentation_loss
from .training import (
    CHECKPOINT_FORMAT,
    autocast,
    intensity_normalizer,
    load_checkpoint,
    normalize,
    resolve_device,
    resolve_precision,
    step_generators,
    to_cpu,
)

CHECKPOINT_NAME = "skuld-segmenter-checkpoint.pt"
# Parameters that do not change what is learned: a checkpoint written under other values of
# these can be resumed.
_RESUMABLE_PARAMS = {"encoder", "max_iter", "verbose", "device", "precision", "checkpoint_dir", "checkpoint_every",
                     "test_time_augmentation"}


class TransferSegmenter(BaseEstimator):
    """Segmentation with few labels: a U-Net whose encoder is pretrained without labels.

    The U-Net's encoder is the VGG-16-BN of a fitted :class:`LocalDiscriminativeEncoder`
    (or randomly initialised with ``encoder=None``, the baseline); its decoder is new. It is
    trained with the soft Dice loss on random crops of the labelled images, with flips,
    rotations and intensity jitter, first with the encoder frozen and then all of it (the
    paper's protocol, ``freeze="schedule"``).

    Parameters
    ----------
    encoder : LocalDiscriminativeEncoder, FrozenEstimator, str, path or None, default=None
        Where the U-Net's encoder comes from. A fitted encoder (or one wrapped in
        ``sklearn.frozen.FrozenEstimator``, or the path of one saved with ``joblib.dump``):
        its weights are copied in. An unfitted encoder: :meth:`fit` first pretrains a copy
        of it on ``X`` and ``X_unlabeled`` without their labels. None: random
        initialisation. ``sklearn.base.clone`` (grid searches, Pipelines) clones an encoder
        given as an estimator, which the next ``fit`` then pretrains again; wrap a fitted one
        in ``FrozenEstimator`` or pass its path to keep it.
    freeze : {"schedule", "encoder", "none"}, default="schedule"
        "encoder": only the decoder is trained, the encoder (batch-norm statistics included)
        stays as pretrained. "none": everything is fine-tuned from the start. "schedule":
        "encoder" for the first ``unfreeze_at`` of the steps, then "none". Ignored with
        ``encoder=None``: a random encoder is always trained. Which is best depends on the
        structure (measured with 2 labelled images, 6 draws, docs/transfer.md): thin ones
        such as retinal vessels gain most from "none" (DRIVE 0.765 against 0.728 for
        "schedule"), large ones such as lungs and heart from "schedule" (X-rays, mean of the two: 0.635
        against 0.597).
    max_iter : int, default=500
        Training steps; each sees ``batch_size`` crops.
    batch_size : int, default=4
    crop_size : int or "auto", default="auto"
        Side of the square training crops in working-resolution pixels, a multiple of 16.
        "auto": 448 on a GPU, 160 on a CPU.
    image_size : int, None or "auto", default="auto"
        Working resolution: images (and masks) are resized so that their shorter side has
        this many pixels; None keeps the native resolution. "auto": the pretrained
        encoder's working resolution, native resolution without one. Outputs are always at
        the input's resolution.
    learning_rate : float, default=1e-3
        Adam's initial learning rate, decayed along a cosine to 1 % of it at ``max_iter``.
    unfreeze_at : float, default=0.5
        Fraction of ``max_iter`` after which ``freeze="schedule"`` trains the encoder too.
    loss : {"dice", "dice+bce"}, default="dice"
        Soft Dice over the foreground classes, optionally plus the cross-entropy (binary
        cross-entropy for two classes).
    flips : bool, default=True
        Random horizontal and vertical flips of the crops.
    rotation : float, default=15.0
        Random rotation of the crops, uniform in ``[-rotation, rotation]`` degrees.
    intensity_jitter : float, default=0.1
        Random gain ``1 + U(-j, j)`` and offset ``U(-j, j)`` of the normalised intensities.
    ignore_label : int or None, default=None
        A mask value that means "not labelled": those pixels count for nothing in training
        or scoring (partial annotations, scribbles, pseudo-labels kept only where they are
        confident). It is not a class.
    width : float, default=1.0
        Width multiplier of a randomly initialised U-Net (a pretrained encoder brings its own).
    normalization : {"auto", "imagenet", "half"} or (mean, std), default="auto"
        Intensity normalisation without a pretrained encoder; with one, the encoder's is used.
    test_time_augmentation : {None, "flips", "dihedral"}, default=None
        What :meth:`predict_proba` averages: the image as is (None), its 4 flips ("flips"),
        or its 4 flips and their transposes ("dihedral": all quarter turns too), each mapped
        back before averaging. 4 or 8 times the prediction time; measured: DRIVE vessels
        +0.005 to +0.015 Dice, lungs no gain (docs/transfer.md, docs/shape_guided.md). The
        result is exactly equivariant to the views averaged (for image
        sides that are multiples of 16 at the working resolution). Used only at prediction,
        so it can be changed with ``set_params`` after fitting.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype, as in :class:`LocalDiscriminativeEncoder`; the loss is float32.
    channels_last : bool, default=True
    checkpoint_dir : str or None, default=None
        Where to keep ``skuld-segmenter-checkpoint.pt``; :meth:`fit` resumes from it (same
        parameters and data size), saves every ``checkpoint_every`` steps and keeps the last
        completed step on Ctrl-C or any error.
    checkpoint_every : int, default=100
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, crops and augmentations. An int gives identical results on CPU.
    verbose : int, default=0
        Print the loss and steps/s every 50 steps when > 0.

    Attributes
    ----------
    net_ : skuld.nn.SegmentationUNet
        The trained network (eval mode). Input: normalised ``(N, C, h, w)``; output:
        logits ``(N, n_classes, h, w)``.
    classes_ : ndarray
        The mask values seen in fit, sorted; ``classes_[0]`` is the background. ``[False,
        True]`` for boolean masks.
    n_channels_in_ : int
        1 or 3.
    pretrained_ : bool
        Whether the encoder came from pretraining.
    encoder_ : LocalDiscriminativeEncoder or None
        The encoder fitted here when ``encoder`` was an unfitted one; None otherwise (a
        given encoder is not stored: only its weights, inside ``net_``).
    image_size_, crop_size_ : int or None, int
    n_iter_ : int
    loss_history_ : list of dict
        ``step``, ``stage`` ("decoder" or "all"), ``lr``, ``loss`` per step.

    Examples
    --------
    >>> from skuld import TransferSegmenter
    >>> from skuld.datasets import load_cxr_tiny
    >>> data = load_cxr_tiny()                  # images (4, 512, 512) uint8, masks (4, 512, 512) bool
    >>> seg = TransferSegmenter(max_iter=5, image_size=128, crop_size=64, random_state=0)
    >>> seg.fit(data.images[:2], data.masks[:2]).predict(data.images[2:]).shape
    (2, 512, 512)
    """

    _parameter_constraints = {  # noqa: RUF012 (scikit-learn's convention)
        "encoder": [LocalDiscriminativeEncoder, FrozenEstimator, str, os.PathLike, None],
        "freeze": [StrOptions({"schedule", "encoder", "none"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "crop_size": [Interval(Integral, 16, None, closed="left"), StrOptions({"auto"})],
        "image_size": [Interval(Integral, 32, None, closed="left"), None, StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "unfreeze_at": [Interval(Real, 0, 1, closed="both")],
        "loss": [StrOptions({"dice", "dice+bce"})],
        "flips": ["boolean"],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "intensity_jitter": [Interval(Real, 0, 1, closed="both")],
        "ignore_label": [Integral, None],
        "width": [Interval(Real, 0, None, closed="neither")],
        "normalization": [StrOptions({"auto", "imagenet", "half"}), tuple],
        "test_time_augmentation": [StrOptions({"flips", "dihedral"}), None],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "channels_last": ["boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        encoder=None,
        freeze="schedule",
        max_iter=500,
        batch_size=4,
        crop_size="auto",
        image_size="auto",
        learning_rate=1e-3,
        unfreeze_at=0.5,
        loss="dice",
        flips=True,
        rotation=15.0,
        intensity_jitter=0.1,
        ignore_label=None,
        width=1.0,
        normalization="auto",
        test_time_augmentation=None,
        device="auto",
        precision="auto",
        channels_last=True,
        checkpoint_dir=None,
        checkpoint_every=100,
        random_state=None,
        verbose=0,
    ):
        self.encoder = encoder
        self.freeze = freeze
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.unfreeze_at = unfreeze_at
        self.loss = loss
        self.flips = flips
        self.rotation = rotation
        self.intensity_jitter = intensity_jitter
        self.ignore_label = ignore_label
        self.width = width
        self.normalization = normalization
        self.test_time_augmentation = test_time_augmentation
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ input
    def _labels(self, y, images: ImageCollection) -> list[np.ndarray]:
        """Validated masks as a list of (H_i, W_i) arrays matching the images."""
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

    def _resolved_sizes(self, encoder: LocalDiscriminativeEncoder | None) -> tuple[int, int | None]:
        gpu = resolve_device(self.device).type == "cuda"
        crop = (448 if gpu else 160) if self.crop_size == "auto" else self.crop_size
        if crop % 16:
            raise ValueError(f"crop_size must be a multiple of 16, got {crop}")
        if self.image_size == "auto":
            image = encoder.image_size_ if encoder is not None else None
        else:
            image = self.image_size
        return crop, image

    def _fingerprint(self) -> dict:
        return {k: v for k, v in self.get_params(deep=False).items() if k not in _RESUMABLE_PARAMS}

    # ------------------------------------------------------------------ fit
    def _pretrain(self, enc: LocalDiscriminativeEncoder, images: ImageCollection, X_unlabeled):
        unl = None if X_unlabeled is None else ImageCollection(X_unlabeled, n_channels=images.n_channels,
                                                               name="X_unlabeled")
        parts = [images] if unl is None else [unl, images]
        if all(p.from_files for p in parts):
            train = [path for p in parts for path in p.paths]
        else:
            train = [p[i] for p in parts for i in range(len(p))]
        self._log(f"pretraining the encoder on {len(train)} images for {enc.max_iter} steps")
        return enc.fit(train)

    def fit(self, X, y, X_unlabeled=None):
        """Train the U-Net on labelled images.

        Parameters
        ----------
        X : array (n, H, W) or (n, H, W, 3), list of arrays of any sizes, list of file paths,
            or a directory / glob
            The labelled images (uint8, uint16, bool or float in [0, 1]).
        y : array (n, H, W) or list of (H_i, W_i) arrays
            One mask per image at its resolution: boolean (structure / background) or integer
            class labels (0 or the smallest value is the background; every value seen
            becomes a class).
        X_unlabeled : images, optional
            More images without masks, used only to pretrain an unfitted ``encoder``.

        Returns
        -------
        self
        """
        self._validate_params()
        if y is None:
            raise ValueError("TransferSegmenter requires y to be passed, but the target y is None")
        for attr in ("net_", "classes_"):  # a failed fit must not leave a model that looks fitted
            self.__dict__.pop(attr, None)
        spec = resolve_encoder(self.encoder)
        n_channels = None
        if spec is not None and hasattr(spec, "model_"):
            n_channels = spec.n_channels_in_
        images = ImageCollection(X, n_channels=n_channels)
        masks = self._labels(y, images)
        self.classes_ = np.unique(np.concatenate([np.unique(m) for m in masks]))
        if self.ignore_label is not None:
            self.classes_ = self.classes_[self.classes_ != self.ignore_label]
        if len(self.classes_) == 0:
            raise ValueError(f"the masks hold a single value ({self.ignore_label!r}, the ignore_label): no pixel "
                             "is labelled")
        if len(self.classes_) < 2:
            raise ValueError(f"the masks hold a single value ({self.classes_[0]!r}); segmentation needs a "
                             "structure and a background")
        if len(self.classes_) > 64:
            raise ValueError(f"the masks hold {len(self.classes_)} distinct values; class labels are expected "
                             "(did you pass images as masks?)")
        self.encoder_ = None  # masks are checked above: no long pretraining before a data error
        if spec is not None and not hasattr(spec, "model_"):
            spec = self.encoder_ = self._pretrain(spec, images, X_unlabeled)
        encoder = spec
        self.n_channels_in_ = images.n_channels
        self.pretrained_ = encoder is not None
        self.crop_size_, self.image_size_ = self._resolved_sizes(encoder)
        normalization = encoder.normalization if encoder is not None else self.normalization
        if isinstance(normalization, tuple) and len(normalization) != 2:
            raise ValueError(f"normalization must be 'auto', 'imagenet', 'half' or (mean, std), got {normalization}")
        self._mean, self._std = intensity_normalizer(normalization, self.n_channels_in_)
        data = self._training_data(images, masks)  # validates sizes before anything looks fitted

        seed = int(self.random_state) if isinstance(self.random_state, Integral) else int(
            check_random_state(self.random_state).randint(0, 2**31 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vgg = encoder.export_encoder() if encoder is not None else None
            width = vgg.width if vgg is not None else self.width
            self.net_ = SegmentationUNet(len(self.classes_), encoder=vgg, in_channels=self.n_channels_in_,
                                         width=width)
        self.n_iter_ = 0
        self.loss_history_ = []
        self._seed = seed
        self._train(data)
        return self

    def _training_data(self, images: ImageCollection, masks: list[np.ndarray]):
        xs, ys = [], []
        for i in range(len(images)):
            img = images[i]
            h, w = working_shape(*img.shape[:2], self.image_size_)
            check_min_size(h, w, f"{images.describe(i)} at working resolution")
            x = normalize(resize(to_tensor(img), (h, w))[None], self._mean, self._std)[0]
            index = np.searchsorted(self.classes_, masks[i]).astype(np.int64)
            if self.ignore_label is not None:
                index[masks[i] == self.ignore_label] = IGNORE
            lab = torch.from_numpy(index)
            if lab.shape != (h, w):
                lab = F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
            xs.append(x.contiguous())
            ys.append(lab)
        return xs, ys

    def _stage(self, step: int) -> str:
        if not self.pretrained_ or self.freeze == "none":
            return "all"
        if self.freeze == "encoder" or step < round(self.unfreeze_at * self.max_iter):
            return "decoder"
        return "all"

    def _lr(self, step: int) -> float:
        floor = 0.01
        return self.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / self.max_iter)))

    def _checkpoint_path(self) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(os.fspath(self.checkpoint_dir), CHECKPOINT_NAME)

    def _save_checkpoint(self, optimizer) -> None:
        path = self._checkpoint_path()
        payload = {
            "format": CHECKPOINT_FORMAT, "kind": "segmenter", "params": self._fingerprint(), "seed": self._seed,
            "classes": self.classes_, "net": to_cpu(self.net_.state_dict()),
            "optimizer": to_cpu(optimizer.state_dict()), "step": self.n_iter_, "history": self.loss_history_,
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def _try_resume(self, optimizer) -> None:
        path = self._checkpoint_path()
        if path is None or not os.path.exists(path):
            return
        payload = load_checkpoint(path)
        if payload.get("kind") != "segmenter":
            raise ValueError(f"{path} is not a TransferSegmenter checkpoint")
        saved, mine = payload["params"], self._fingerprint()
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ or not np.array_equal(payload["classes"], self.classes_):
            what = ", ".join(differ) if differ else "classes"
            raise ValueError(f"the checkpoint in {self.checkpoint_dir} was written with other values of {what}; "
                             "use the same parameters and masks to resume, or another checkpoint_dir")
        self._seed = int(payload["seed"])
        self.net_.load_state_dict(payload["net"])
        optimizer.load_state_dict(payload["optimizer"])
        self.n_iter_ = int(payload["step"])
        self.loss_history_ = list(payload["history"])
        self._log(f"resuming from {path} at step {self.n_iter_}")

    def _train(self, data) -> None:
        device = self.device_ = resolve_device(self.device)
        amp_dtype = resolve_precision(self.precision, device)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        net = self.net_.to(device, memory_format=memory_format)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        self._try_resume(optimizer)
        xs, ys = data
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        pending: list[tuple[int, str, float, torch.Tensor]] = []
        t0, start = time.perf_counter(), self.n_iter_

        def flush():
            if not pending:
                return
            values = torch.stack([p[3] for p in pending]).cpu().tolist()
            for (step, stage, lr, _), v in zip(pending, values):
                self.loss_history_.append({"step": step, "stage": stage, "lr": lr, "loss": v})
            pending.clear()
            if self.verbose:
                rate = (self.n_iter_ - start) / max(time.perf_counter() - t0, 1e-9)
                last = self.loss_history_[-1]
                print(f"[skuld] step {self.n_iter_}/{self.max_iter} [{last['stage']}] loss {last['loss']:.4f} "
                      f"lr {last['lr']:.2e} {rate:.2f} steps/s", file=sys.stderr, flush=True)

        path = self._checkpoint_path()
        buffers, step = None, self.n_iter_
        try:
            for step in range(self.n_iter_, self.max_iter):
                buffers = _snapshot_buffers(net)
                stage, lr = self._stage(step), self._lr(step)
                net.train()
                net.encoder.requires_grad_(stage == "all")
                if stage == "decoder":
                    net.encoder.eval()  # frozen batch-norm statistics too
                for group in optimizer.param_groups:
                    group["lr"] = lr
                gen, _ = step_generators(self._seed, step, torch.device("cpu"))
                x, y = random_crops(xs, ys, self.crop_size_, self.batch_size, gen)
                x, y = augment(x, y, gen, flips=self.flips, rotation=float(self.rotation),
                               intensity=float(self.intensity_jitter))
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                y = y.to(device, non_blocking=True)
                with autocast(device, amp_dtype):
                    logits = net(x)
                loss = segmentation_loss(logits, y, self.loss)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                self.n_iter_ = step + 1
                pending.append((step, stage, lr, loss.detach().float()))
                if len(pending) >= 50 or self.n_iter_ == self.max_iter:
                    flush()
                if path and (self.n_iter_ % self.checkpoint_every == 0 or self.n_iter_ == self.max_iter):
                    flush()
                    self._save_checkpoint(optimizer)
        except BaseException:
            pending[:] = [p for p in pending if p[0] < self.n_iter_]
            flush()
            if buffers is not None and self.n_iter_ == step:
                _restore_buffers(net, buffers)  # the failed step's forward updated batch-norm statistics
            if path and self.n_iter_ > 0:
                self._save_checkpoint(optimizer)
                self._log(f"interrupted at step {self.n_iter_}: checkpoint kept in {path}")
            raise
        finally:
            net.encoder.requires_grad_(True)
            net.eval()

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[skuld] {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X):
        """Class probabilities of every pixel, at the input resolution.

        Parameters
        ----------
        X : images, as in :meth:`fit`, with the channel count of the fitted model.

        Returns
        -------
        P : float32 array (n, H, W, n_classes) (a list of (H_i, W_i, n_classes) arrays for
            list input); non-negative, summing to 1 along the last axis, in the order of
            ``classes_`` (``P[..., 1]`` is the structure of a binary task).
        """
        return self._proba(X, self.test_time_augmentation)

    def _proba(self, X, test_time_augmentation):
        check_is_fitted(self, "net_")
        images = ImageCollection(X, n_channels=self.n_channels_in_)
        device = self.device_ = resolve_device(self.device, fall_back=True)
        self.net_.to(device).eval()
        amp_dtype = resolve_precision(self.precision, device)
        k = len(self.classes_)
        stacked = not images.is_ragged
        out = None
        results = []
        for i in range(len(images)):
            img = images[i]
            h, w = img.shape[:2]
            if stacked and out is None:
                out = np.empty((len(images), h, w, k), np.float32)
            target = out[i] if stacked else np.empty((h, w, k), np.float32)
            segment_image(self.net_, img, image_size=self.image_size_, mean=self._mean, std=self._std, device=device,
                          amp_dtype=amp_dtype, channels_last=self.channels_last, out=target,
                          name=images.describe(i), test_time_augmentation=test_time_augmentation)
            results.append(target)
        return out if stacked else results

    def predict(self, X):
        """The most probable class of every pixel.

        Parameters
        ----------
        X : images, as in :meth:`fit`, with the channel count of the fitted model.

        Returns
        -------
        masks : array (n, H, W) (a list of (H_i, W_i) arrays for list input) with values from
            ``classes_``: boolean for boolean (or 0/1) training masks.
        """
        proba = self.predict_proba(X)
        classes = self.classes_
        binary01 = len(classes) == 2 and classes.dtype.kind in "biu" and set(classes.tolist()) == {0, 1}
        lookup = classes.astype(bool) if binary01 else classes
        if isinstance(proba, list):
            return [lookup[p.argmax(-1)] for p in proba]
        return lookup[proba.argmax(-1)]

    def score(self, X, y, sample_weight=None):
        """Mean Dice over images (and over foreground classes for multi-class masks).

        Parameters
        ----------
        X : images
        y : masks as in :meth:`fit`
        sample_weight : array (n,), optional
            One weight per image in the mean.

        Returns
        -------
        float in [0, 1]
        """
        masks = self._labels(y, ImageCollection(X, n_channels=self.n_channels_in_))
        regions = None if self.ignore_label is None else [m != self.ignore_label for m in masks]
        return class_dice(self.predict(X), masks, self.classes_[1:], sample_weight, regions=regions)

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        state = self.__dict__.copy()
        net = state.pop("net_", None)
        if net is not None:
            state["_net_payload"] = {
                "n_classes": net.classifier.out_channels, "in_channels": net.encoder.in_channels,
                "width": net.encoder.width,
                "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()},
            }
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        payload = state.pop("_net_payload", None)
        state.setdefault("test_time_augmentation", None)  # models saved before the parameter existed
        self.__dict__.update(state)
        if "device_" in state:
            self.device_ = torch.device("cpu")
        if payload is not None:
            sd = payload.pop("state_dict")
            with torch.device("meta"):
                net = SegmentationUNet(**payload)
            net.load_state_dict(sd, assign=True)
            self.net_ = net.eval()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags


def _snapshot_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the batch-norm statistics (small): what a step changes before its update."""
    return {k: v.clone() for k, v in net.named_buffers()}


def _restore_buffers(net: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in net.named_buffers():
            v.copy_(saved[k])
