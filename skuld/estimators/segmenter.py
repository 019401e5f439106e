"""TransferSegmenter: a supervised U-Net whose encoder comes from Local Discrimination pretraining."""

from __future__ import annotations

import hashlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.callback import CallbackSupportMixin, with_callbacks
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..engine import EngineConfig, TrainingState, read_resumable, restore, train
from ..inference import predict_class_maps
from ..io import ImageCollection, check_intensity_range, combined
from ..metrics import class_dice
from ..nn.network import SIZE_MULTIPLE, SegmentationUNet
from ..preprocessing import InputSpec
from ..segmentation.transfer import SegmentationConfig, SegmentationTask, check_masks, mask_classes, training_data
from . import auto
from .base import SkuldEstimator, constraints, draw_seed
from .encoder import ENCODER_CONSTRAINT, LocalDiscriminativeEncoder, resolve_encoder

#: The file a run keeps in ``checkpoint_dir``.
CHECKPOINT_NAME = "skuld-segmenter-checkpoint.pt"


class TransferSegmenter(CallbackSupportMixin, SkuldEstimator):
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
        ``sklearn.frozen.FrozenEstimator``, or the path of one saved with :func:`skuld.save`):
        its weights are copied in. An unfitted encoder (a recipe): :meth:`fit` first pretrains
        a copy of it on ``X`` and ``X_unlabeled`` without their labels, with this estimator's
        ``device``, ``precision``, ``channels_last``, ``checkpoint_dir`` and ``verbose`` and,
        when the recipe has none, its int ``random_state``. None: random initialisation. ``sklearn.base.clone`` (grid searches, Pipelines) clones an encoder
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
    intensity_range : (low, high) or None, default=None
        The raw values read as 0 and 1 (a window; see ``LocalDiscriminativeEncoder``). With an
        encoder, None takes the encoder's; a different range is an error.
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
        parameters, encoder and classes), saves every ``checkpoint_every`` steps and keeps the last
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
    input_spec_ : skuld.preprocessing.InputSpec
        The network's input path (the pretrained encoder's normalisation when there is one).
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

    _parameter_constraints = constraints(
        "max_iter", "batch_size", "crop_size", "image_size", "learning_rate", "flips", "rotation", "width",
        "normalization", "intensity_range", "device", "precision", "channels_last", "checkpoint_dir", "checkpoint_every", "random_state",
        "verbose",
        encoder=ENCODER_CONSTRAINT,
        freeze=[StrOptions({"schedule", "encoder", "none"})],
        unfreeze_at=[Interval(Real, 0, 1, closed="both")],
        loss=[StrOptions({"dice", "dice+bce"})],
        intensity_jitter=[Interval(Real, 0, 1, closed="both")],
        ignore_label=[Integral, None],
        test_time_augmentation=[StrOptions({"flips", "dihedral"}), None],
    )
    _modules = ("net_",)

    def __init__(self, encoder=None, *, freeze="schedule", max_iter=500, batch_size=4, crop_size="auto",
                 image_size="auto", learning_rate=1e-3, unfreeze_at=0.5, loss="dice", flips=True, rotation=15.0,
                 intensity_jitter=0.1, ignore_label=None, width=1.0, normalization="auto", intensity_range=None,
                 test_time_augmentation=None,
                 device="auto", precision="auto", channels_last=True, checkpoint_dir=None, checkpoint_every=100,
                 random_state=None, verbose=0):
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
        self.intensity_range = intensity_range
        self.test_time_augmentation = test_time_augmentation
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.random_state = random_state
        self.verbose = verbose

    def _pretrain(self, enc: LocalDiscriminativeEncoder, images: ImageCollection, X_unlabeled):
        unl = None if X_unlabeled is None else ImageCollection(X_unlabeled, n_channels=images.n_channels,
                                                               name="X_unlabeled",
                                                               intensity_range=images.intensity_range)
        train = combined(images) if unl is None else combined(unl, images)
        self._log(f"pretraining the encoder on {len(train)} images for {enc.max_iter} steps")
        return enc.fit(train)

    def _window(self, encoder, fitted: bool):
        """The intensity range of the run: the encoder's and this segmenter's, which must agree."""
        own = check_intensity_range(self.intensity_range)
        if encoder is None:
            return own
        theirs = encoder.input_spec_.intensity_range if fitted else check_intensity_range(encoder.intensity_range)
        if own is not None and theirs is not None and own != theirs:
            raise ValueError(f"intensity_range={own} differs from the encoder's {theirs}: the network would see "
                             f"intensities other than those it was pretrained on")
        if not fitted and own is not None:
            encoder.set_params(intensity_range=own)  # the recipe (a clone) pretrains on the same intensities
        return own or theirs

    @with_callbacks
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
        spec = resolve_encoder(self.encoder, random_state=self.random_state, settings=dict(
            device=self.device, precision=self.precision, channels_last=self.channels_last,
            checkpoint_dir=self.checkpoint_dir, verbose=self.verbose))
        fitted_encoder = spec is not None and hasattr(spec, "model_")
        window = self._window(spec, fitted_encoder)
        images = ImageCollection(X, n_channels=spec.n_channels_in_ if fitted_encoder else None, intensity_range=window)
        masks = check_masks(y, images)
        classes = mask_classes(masks, self.ignore_label)
        crop = auto.crop_size(self._runtime().device) if self.crop_size == "auto" else self.crop_size
        if crop % SIZE_MULTIPLE:
            raise ValueError(f"crop_size must be a multiple of {SIZE_MULTIPLE}, got {crop}")
        self.encoder_ = None  # data and parameters are checked above: no long pretraining before an error
        if spec is not None and not fitted_encoder:
            spec = self.encoder_ = self._pretrain(spec, images, X_unlabeled)
        encoder = spec
        self.classes_, self.crop_size_ = classes, crop
        self.n_channels_in_ = images.n_channels
        self.pretrained_ = encoder is not None
        self.image_size_ = auto.segmenter_image_size(encoder) if self.image_size == "auto" else self.image_size
        if encoder is not None:
            self.input_spec_ = InputSpec(self.n_channels_in_, self.image_size_, *encoder.normalization_stats(), window)
        else:
            self.input_spec_ = InputSpec.from_params(self.n_channels_in_, self.image_size_, self.normalization, window)
        xs, ys = training_data(images, masks, classes, self.input_spec_, self.ignore_label)
        # What the run learns from: a recipe counts by its parameters (it is pretrained again),
        # a fitted encoder by its weights, the data by its contents.
        resume_key = dict(encoder=self.encoder if not fitted_encoder else encoder, data=images.fingerprint(),
                          masks=_digest(masks)) if self.checkpoint_dir is not None else {}
        seed = draw_seed(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vgg = encoder.export_encoder() if encoder is not None else None
            self.net_ = SegmentationUNet(len(classes), encoder=vgg, in_channels=self.n_channels_in_,
                                         width=vgg.width if vgg is not None else self.width)
        self.n_iter_, self.loss_history_ = 0, []
        self._train(xs, ys, seed, resume_key)
        return self

    def _train(self, xs, ys, seed: int, resume_key: dict) -> None:
        runtime = self._runtime()
        self.device_ = runtime.device
        net = self.net_.to(runtime.device, memory_format=runtime.memory_format)
        state = TrainingState(net, torch.optim.Adam(net.parameters(), lr=self.learning_rate), history=self.loss_history_,
                              scaler=torch.amp.GradScaler(runtime.device.type)
                              if runtime.amp_dtype == torch.float16 else None)
        config = SegmentationConfig(self.crop_size_, self.batch_size, self.max_iter, self.learning_rate, self.freeze,
                                    self.unfreeze_at, self.pretrained_, self.loss, self.flips, float(self.rotation),
                                    float(self.intensity_jitter), runtime.channels_last)
        task = SegmentationTask(xs, ys, config)
        checkpoint = self._checkpointing(CHECKPOINT_NAME, "segmentation", seed, exclude=("encoder",),
                                         classes=self.classes_.tolist(), max_iter=self.max_iter,  # the schedule's
                                         **resume_key)
        payload = read_resumable(checkpoint) if checkpoint is not None else None
        if payload is not None:
            seed = checkpoint.seed = int(payload["seed"])
            restore(payload, state, task, ())
            self._log(f"resuming from {checkpoint.path} at step {state.step}")
        callbacks, ctx = self._engine_callbacks(self.max_iter - state.step, lambda n: setattr(self, "n_iter_", n))
        engine = EngineConfig(device=runtime.device, amp_dtype=runtime.amp_dtype, seed=seed, checkpoint=checkpoint,
                              verbose=int(self.verbose), name="segmentation")
        try:
            train(task, state, self.max_iter, engine, callbacks=callbacks)
        finally:
            self.n_iter_ = state.step
        if ctx is not None:
            ctx.call_on_fit_task_end(estimator=self)

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
        check_is_fitted(self, "net_")
        runtime = self._runtime(fall_back=True)
        self.device_ = runtime.device
        return predict_class_maps(self.net_, self.input_spec_.collect(X), len(self.classes_),
                                  self.input_spec_, runtime, self.test_time_augmentation)

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
        check_is_fitted(self, "net_")
        masks = check_masks(y, self.input_spec_.collect(X))
        regions = None if self.ignore_label is None else [m != self.ignore_label for m in masks]
        return class_dice(self.predict(X), masks, self.classes_[1:], sample_weight, regions=regions)


    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


def _digest(masks) -> str:
    """A digest of the masks' shapes and values (what a checkpoint's fingerprint records of them)."""
    h = hashlib.sha256()
    for m in masks:
        h.update(repr((m.shape, str(m.dtype))).encode())
        h.update(np.ascontiguousarray(m).tobytes())
    return h.hexdigest()[:16]
