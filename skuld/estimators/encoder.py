"""LocalDiscriminativeEncoder: the scikit-learn face of Local Discrimination pretraining."""

from __future__ import annotations

import copy
import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import TransformerMixin, clone
from sklearn.callback import CallbackSupportMixin, with_callbacks
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import distributed
from ..engine import EngineConfig, TrainingState, optimizer_to, read_resumable, restore, to_cpu, train
from ..inference import predict_maps
from ..io import ImageCollection
from ..nn.network import LDNet, VGGEncoder
from ..preprocessing import InputSpec, check_images
from ..pretraining import LocalDiscriminationTask, PretrainingConfig, Schedule, pretraining_config
from . import auto
from .base import SkuldEstimator, constraints, draw_seed

#: The file a run keeps in ``checkpoint_dir``.
CHECKPOINT_NAME = "skuld-checkpoint.pt"


class LocalDiscriminativeEncoder(CallbackSupportMixin, TransformerMixin, SkuldEstimator):
    """Self-supervised per-pixel embeddings and cluster maps by Local Discrimination.

    Learns, without labels, a network that gives every pixel a unit vector (its embedding)
    and a soft assignment to ``n_clusters`` anatomical clusters (Chen et al., "Unsupervised
    Local Discrimination for Medical Images", arXiv 2108.09440). Training is a warm-up of
    patch discrimination with hypersphere mixup, then region discrimination that ties the
    embedding and clustering branches together.

    The defaults learn useful embeddings in minutes on a laptop CPU (160 px crops at a
    working resolution of 256 px) and take the paper's crop and image sizes on a GPU. The
    paper's full setting is ``crop_size=448, image_size=512, batch_size=4, max_iter=100_000``.

    Parameters
    ----------
    embedding_dim : int, default=32
        D, the length of each pixel's unit embedding.
    n_clusters : int, default=16
        K, the number of clusters of the clustering branch.
    max_iter : int, default=600
        Training steps of :meth:`fit` (each step sees ``5 * batch_size`` crops).
    batch_size : int, default=4
        Items per step; each item is two images, two views of each and one mixup image.
    crop_size : int or "auto", default="auto"
        Side of the square training crops in working-resolution pixels; a multiple of 16
        and of ``patch_grid``. "auto": 448 (the paper's) when training on a GPU, 160 on a CPU.
    image_size : int, None or "auto", default="auto"
        Working resolution: images are resized so that their shorter side has this many
        pixels, for training and for inference (outputs are always returned at the input
        resolution). None keeps every image at its native resolution. "auto": 512 (the
        paper's) when training on a GPU, 256 on a CPU.
    learning_rate : float, default=1e-3
        Adam's initial learning rate; it halves every ``max_iter / lr_halvings`` steps within
        each stage.
    pd_fraction : float, default=0.2
        Fraction of ``max_iter`` spent in the patch-discrimination warm-up.
    width : float, default=1.0
        Width multiplier of the network (1.0: the narrow VGG-16-BN of about 1.45 M
        parameters with its decoder and heads).
    lr_halvings : int, default=10
        How often the learning rate halves over ``max_iter`` steps: the paper's 10 (every 10k
        of 100k steps). Short runs with an extra loss (the shape prior of
        :class:`ShapeGuidedSegmenter`) stop learning long before the end with it.
    crop_scale : tuple of float or "native", default=(0.9, 1.0)
        Range of the fraction of the (working-resolution) image area a crop covers.
        "native": crops of about ``crop_size`` working pixels, cut rather than shrunk, so that
        thin structures keep their width (:func:`skuld.estimators.auto.native_crop_scale`).
    flips : bool, default=True
        Random mirror flips shared by both views.
    rotation : float, default=180.0
        Shared rotation range in degrees. Use 0 for images that share one orientation
        (chest X-rays, cephalograms): rotation invariance measurably hurts them.
    rot90 : bool, default=True
        Turn the second view by a random multiple of 90 degrees (undone on the features).
        Use False for images that share one orientation.
    view_rotation : float, default=2.0
        Per-view extra rotation range in degrees.
    color_jitter : tuple of 4 float, default=(0.4, 0.4, 0.4, 0.02)
        Brightness, contrast, saturation and hue jitter per view.
    grayscale_p : float, default=0.2
        Probability of turning an RGB view gray.
    mixup : tuple of float or None, default=(0.2, 0.8)
        Range of the mixup weight; None disables the mixup images and their loss.
    patch_grid : int, default=8
        Patches per side of a crop for patch discrimination.
    patch_sigma : float or None, default=None
        None: patch features are flat averages. A float: center-sensitive Gaussian pooling
        with standard deviation ``patch_sigma`` times the patch side.
    tau_patch : float, default=0.1
        Temperature of patch discrimination and mixup.
    tau_region : float, default=0.2
        Temperature of region discrimination.
    region_weight : float, default=10.0
        Weight of region discrimination in the LD stage.
    entropy_weight : float, default=0.1
        Weight of the binary entropy of the cluster maps in the LD stage.
    area_weight : float, default=0.0
        Weight of the area-balance prior (every cluster near 1/K of the pixels); a guard
        against collapsed clusters.
    normalization : {"auto", "imagenet", "half"} or (mean, std), default="auto"
        Intensity normalisation: "auto" is ImageNet statistics for RGB and 0.5/0.5 for gray.
    intensity_range : (low, high) or None, default=None
        The raw values read as black (0) and white (1), beyond which values are clipped: a
        window, e.g. ``(-160, 240)`` Hounsfield units for CT soft tissue or ``(0, 4095)`` for
        12-bit data in 16-bit files. None: each DICOM file's own range (``BitsStored``), an
        integer dtype's maximum, floats as [0, 1] (see ``docs/conventions.md``). Kept in
        ``input_spec_`` and applied to every later input.
    on_error : {"raise", "skip"}, default="raise"
        What ``fit`` does with input files that cannot be read or are too small, all of which
        it checks before the first step: stop with an error that lists them, or leave them out
        with a warning that lists them.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        "auto" uses a CUDA GPU when there is one.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype of the network; "auto" is bfloat16 where the hardware computes it
        natively (recent GPUs; CPUs with AVX512-BF16 or AMX), float32 elsewhere. Losses are
        always computed in float32.
    channels_last : bool, default=True
        Channels-last memory format for convolutions (faster on CPU and GPU).
    compile : bool or "auto", default="auto"
        Compile the network with ``torch.compile``. It costs about a minute once and pays on
        GPUs (1.3x faster steps on an H200 at 448 px, batch 4). "auto" compiles on CUDA for
        runs of 500 steps or more.
    memory_saving : bool, default=False
        Recompute the full-resolution layers during backward instead of storing their
        activations (activation checkpointing): at 448 px, batch 4 on a CPU, 7.9 instead of
        10.5 GiB in float32, at the price of recomputing those layers. Results are unchanged.
    num_workers : int or "auto", default="auto"
        Data-loader worker processes that decode and crop images. Each keeps decoded images
        at working resolution in a cache (up to 2 GiB). "auto": none for images in memory or
        on machines with 2 cores or fewer, else min(4, cores / 2) for images read from files.
    checkpoint_dir : str or None, default=None
        Where to keep ``skuld-checkpoint.pt``. When set, :meth:`fit` resumes from a
        checkpoint found there (same parameters), saves every ``checkpoint_every`` steps
        and keeps the last completed step on Ctrl-C or any error.
    checkpoint_every : int, default=500
    warm_start : bool, default=False
        When True and already fitted, :meth:`fit` trains ``max_iter`` more steps from the
        current weights instead of starting over.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, crops and views. An int gives identical results on the same
        machine with the same thread count, ``precision`` (pass "fp32": "auto" depends on the
        hardware), ``channels_last`` and ``compile`` (``docs/conventions.md``, Reproducibility).
    verbose : int, default=0
        Print progress (loss terms, steps/s) to stderr every 50 steps when > 0.

    Attributes
    ----------
    model_ : skuld.nn.LDNet
        The trained network (in eval mode).
    n_channels_in_ : int
        1 or 3, channels of the images it was fitted on.
    n_iter_ : int
        Training steps done so far.
    crop_size_, image_size_ : int, int or None
        The crop size and working resolution used (``"auto"`` resolved); inference uses
        ``image_size_``, wherever the model runs later.
    input_spec_ : skuld.preprocessing.InputSpec
        How the network sees its input (channels, working resolution, normalisation): what
        every later use of the model (inference, fine-tuning, a downstream U-Net) goes through.
    loss_history_ : list of dict
        One record per step: ``step``, ``stage`` ("pd" or "ld"), ``lr``, ``loss`` and each
        term (``patch``, ``mixup``, ``region``, ``entropy``, ``area``).
    device_ : torch.device
        Where the model runs.

    Examples
    --------
    >>> from skuld import LocalDiscriminativeEncoder
    >>> from skuld.datasets import load_cxr_tiny
    >>> X = load_cxr_tiny().images                        # (4, 512, 512) uint8
    >>> enc = LocalDiscriminativeEncoder(max_iter=5, rotation=0, rot90=False, random_state=0)
    >>> E = enc.fit(X).transform(X[:1])                   # (1, 512, 512, 32) float32
    >>> labels = enc.predict(X[:1])                       # (1, 512, 512) int64
    """

    _parameter_constraints = constraints(
        "max_iter", "batch_size", "crop_size", "image_size", "learning_rate", "pd_fraction", "width", "flips",
        "rotation", "normalization", "intensity_range", "on_error", "device", "precision", "channels_last", "checkpoint_dir", "checkpoint_every",
        "random_state", "verbose",
        embedding_dim=[Interval(Integral, 2, None, closed="left")],
        n_clusters=[Interval(Integral, 2, None, closed="left")],
        lr_halvings=[Interval(Integral, 1, None, closed="left")],
        crop_scale=[tuple, StrOptions({"native"})],
        rot90=["boolean"],
        view_rotation=[Interval(Real, 0, 180, closed="both")],
        color_jitter=[tuple],
        grayscale_p=[Interval(Real, 0, 1, closed="both")],
        mixup=[tuple, None],
        patch_grid=[Interval(Integral, 1, None, closed="left")],
        patch_sigma=[Interval(Real, 0, None, closed="neither"), None],
        tau_patch=[Interval(Real, 0, None, closed="neither")],
        tau_region=[Interval(Real, 0, None, closed="neither")],
        region_weight=[Interval(Real, 0, None, closed="left")],
        entropy_weight=[Interval(Real, 0, None, closed="left")],
        area_weight=[Interval(Real, 0, None, closed="left")],
        compile=["boolean", StrOptions({"auto"})],
        memory_saving=["boolean"],
        num_workers=[Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        warm_start=["boolean"],
    )
    _modules = ("model_",)

    def __init__(self, embedding_dim=32, n_clusters=16, *, max_iter=600, batch_size=4, crop_size="auto",
                 image_size="auto", learning_rate=1e-3, pd_fraction=0.2, lr_halvings=10, width=1.0,
                 crop_scale=(0.9, 1.0), flips=True, rotation=180.0, rot90=True, view_rotation=2.0,
                 color_jitter=(0.4, 0.4, 0.4, 0.02), grayscale_p=0.2, mixup=(0.2, 0.8), patch_grid=8,
                 patch_sigma=None, tau_patch=0.1, tau_region=0.2, region_weight=10.0, entropy_weight=0.1,
                 area_weight=0.0, normalization="auto", intensity_range=None, on_error="raise", device="auto", precision="auto", channels_last=True,
                 compile="auto", memory_saving=False, num_workers="auto", checkpoint_dir=None, checkpoint_every=500,
                 warm_start=False, random_state=None, verbose=0):
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.pd_fraction = pd_fraction
        self.lr_halvings = lr_halvings
        self.width = width
        self.crop_scale = crop_scale
        self.flips = flips
        self.rotation = rotation
        self.rot90 = rot90
        self.view_rotation = view_rotation
        self.color_jitter = color_jitter
        self.grayscale_p = grayscale_p
        self.mixup = mixup
        self.patch_grid = patch_grid
        self.patch_sigma = patch_sigma
        self.tau_patch = tau_patch
        self.tau_region = tau_region
        self.region_weight = region_weight
        self.entropy_weight = entropy_weight
        self.area_weight = area_weight
        self.normalization = normalization
        self.intensity_range = intensity_range
        self.on_error = on_error
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.memory_saving = memory_saving
        self.num_workers = num_workers
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    #: The parameters that say what a pretraining step sees (:func:`skuld.pretraining.pretraining_config`).
    _STEP_PARAMS = ("batch_size", "flips", "rotation", "rot90", "view_rotation", "color_jitter", "grayscale_p", "mixup",
                    "patch_grid", "patch_sigma", "tau_patch", "tau_region", "region_weight", "entropy_weight",
                    "area_weight")

    def _check_params(self, from_files: bool = False, sizes=None) -> PretrainingConfig:
        """Validate every parameter (before any long work) and return the step's configuration;
        ``sizes``: the fitted (crop, image) sizes, which a warm start keeps."""
        self._validate_params()
        crop, image = self._resolved_sizes() if sizes is None else sizes
        InputSpec.from_params(1, image, self.normalization, self.intensity_range)  # names a malformed (mean, std)
        return pretraining_config(
            **{k: getattr(self, k) for k in self._STEP_PARAMS}, crop_size=crop,
            crop_scale=auto.native_crop_scale(crop, image) if self.crop_scale == "native" else self.crop_scale,
            num_workers=auto.loader_workers(from_files) if self.num_workers == "auto" else self.num_workers)

    def _resolved_sizes(self) -> tuple[int, int | None]:
        """(crop_size, image_size) with "auto" resolved for the device training will use."""
        device = self._runtime().device
        crop = auto.crop_size(device) if self.crop_size == "auto" else self.crop_size
        image = auto.image_size(device) if self.image_size == "auto" else self.image_size
        return crop, image

    def _collect(self, X, fitted: bool) -> ImageCollection:
        if fitted:
            images = self.input_spec_.collect(X)
        else:
            images = ImageCollection(X, intensity_range=self.intensity_range)
        return check_images(images, self.on_error)

    # ------------------------------------------------------------------ training
    def _initialize(self, n_channels: int, seed: int) -> None:
        self.device_ = self._runtime().device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LDNet(n_channels, self.embedding_dim, self.n_clusters, self.width)
        self.model_ = model.to(self.device_, memory_format=self._runtime().memory_format)
        self.n_channels_in_ = n_channels
        self.crop_size_, self.image_size_ = self._resolved_sizes()
        self.input_spec_ = InputSpec.from_params(n_channels, self.image_size_, self.normalization, self.intensity_range)
        self.n_iter_ = 0
        self.loss_history_ = []
        self._seed = seed
        self._schedule = Schedule.scaled(self.learning_rate, self.max_iter, self.pd_fraction, self.lr_halvings)
        self._optimizer = None
        self.__dict__.pop("_optimizer_state", None)  # a fresh model takes no Adam state of an earlier one

    def _ensure_optimizer(self) -> torch.optim.Optimizer:
        if getattr(self, "_optimizer", None) is None:
            self._optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.learning_rate)
            saved = getattr(self, "_optimizer_state", None)
            if saved is not None:
                self._optimizer.load_state_dict(saved)
                self._optimizer_state = None
        return self._optimizer

    def _checkpoint(self, images: ImageCollection, loss_terms):
        """The run's checkpointing: its fingerprint holds the data and the loss terms' settings."""
        return self._checkpointing(CHECKPOINT_NAME, "pretraining", self._seed, n_channels=images.n_channels,
                                   data=images.fingerprint(), terms={t.name: t.fingerprint() for t in loss_terms})

    def _train(self, images: ImageCollection, stop: int, loss_terms=(), resume: bool = False) -> None:
        runtime = self._runtime()
        device = runtime.device
        if distributed.world_size() > 1:
            if loss_terms:
                raise ValueError("training with extra loss terms (the shape prior) runs in a single process")
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
        checkpoint = self._checkpoint(images, loss_terms) if self.checkpoint_dir is not None else None
        payload = read_resumable(checkpoint) if resume else None
        if payload is not None:
            self._initialize(images.n_channels, int(payload["seed"]))  # the run's own seed: its crops and views
            checkpoint.seed = self._seed
        self.device_ = device
        model = self.model_.to(device)
        model.memory_saving = self.memory_saving
        optimizer = self._ensure_optimizer()
        state = TrainingState(model, optimizer, step=self.n_iter_, history=self.loss_history_,
                              scaler=torch.amp.GradScaler(device.type) if runtime.amp_dtype == torch.float16 else None)
        task = LocalDiscriminationTask(images, self._check_params(images.from_files, (self.crop_size_, self.image_size_)),
                                       self._schedule, self.input_spec_, runtime.channels_last, self._seed)
        if payload is not None:
            restore(payload, state, task, loss_terms)
            self._schedule = task.schedule
            self._log(f"resuming from {checkpoint.path} at step {state.step}")
        optimizer_to(optimizer, device)
        n_steps = stop - state.step
        compile_ = self.compile if self.compile != "auto" else auto.compile_network(device, n_steps)
        config = EngineConfig(device=device, amp_dtype=runtime.amp_dtype, seed=self._seed, compile=compile_,
                              checkpoint=checkpoint, verbose=int(self.verbose),
                              name="pretraining")
        callbacks, ctx = self._engine_callbacks(n_steps, on_step=lambda n: setattr(self, "n_iter_", n))
        try:
            train(task, state, stop, config, terms=loss_terms, callbacks=callbacks)
        finally:
            self.n_iter_ = state.step  # whatever happened, the estimator holds the last completed step
        if ctx is not None:
            ctx.call_on_fit_task_end(estimator=self)

    @with_callbacks
    def fit(self, X, y=None, loss_terms=()):
        """Train the network on unlabelled images.

        Parameters
        ----------
        X : array of shape (n_images, H, W) or (n_images, H, W, 3), list of such arrays of
            any sizes, list of image file paths, or a directory / glob pattern
            Images (uint8, uint16, bool or float in [0, 1]). Files are read with imageio
            (PNG, JPEG, TIFF, BMP, DICOM, ...).
        y : None
            Ignored.
        loss_terms : sequence of skuld.engine.LossTerm, default=()
            Extra losses added to Local Discrimination's in every step (they read the
            task's ``outputs``: cluster maps and views); how :class:`ShapeGuidedSegmenter`
            adds its adversarial shape prior. Their state is checkpointed with the run.

        Returns
        -------
        self
        """
        self._check_params()
        fitted = self.warm_start and hasattr(self, "model_")
        images = self._collect(X, fitted)
        if fitted:
            self._train(images, self.n_iter_ + self.max_iter, loss_terms)
        else:
            self._initialize(images.n_channels, draw_seed(self.random_state))
            self._train(images, self.max_iter, loss_terms, resume=True)
        return self

    @with_callbacks
    def partial_fit(self, X, y=None):
        """Train further on ``X``: about one pass over it (``ceil(n_images / (2 * batch_size))`` steps).

        Initialises the model on the first call; later calls continue the same step counter
        and learning-rate schedule.

        Parameters
        ----------
        X : array of shape (n, H, W) or (n, H, W, C), list of arrays or paths, or str
            Images of any sizes, as for :meth:`fit`.
        y : None
            Ignored (scikit-learn's convention).

        Returns
        -------
        self
        """
        fitted = hasattr(self, "model_")
        if not fitted:
            self._check_params()
        images = self._collect(X, fitted)
        if not fitted:
            self._initialize(images.n_channels, draw_seed(self.random_state))
        self._train(images, self.n_iter_ + max(1, math.ceil(len(images) / (2 * self.batch_size))))
        return self

    # ------------------------------------------------------------------ inference
    def _maps(self, X, heads: tuple[str, ...], stride=1, dtype="float32") -> dict:
        check_is_fitted(self, "model_")
        images = self.input_spec_.collect(X)
        runtime = self._runtime(fall_back=True)
        self.device_ = runtime.device
        return predict_maps(self.model_, images, heads, self.input_spec_, runtime, stride=stride, dtype=dtype)

    def transform(self, X, *, stride=1, dtype="float32"):
        """Per-pixel unit embeddings at the input resolution.

        Parameters
        ----------
        X : images, as in :meth:`fit`
            With the channel count the model was fitted on.
        stride : int, default=1
            Embeddings of every ``stride``-th row and column only (``stride**2`` times less
            memory): ``E[i, r, c]`` is pixel ``(r * stride, c * stride)``.
        dtype : {"float32", "float16"}, default="float32"
            float16 halves the memory (about 3 decimal digits; cosine similarities change by
            about 1e-3).

        Returns
        -------
        E : array of shape (n_images, ceil(H / stride), ceil(W / stride), embedding_dim), or a
            list of per-image arrays when X is a list. ``E[i, row, col]`` is the unit (L2 norm 1)
            embedding of pixel (row * stride, col * stride) of image i. ``MemoryError``, before
            any work, when the outputs would take more than half of this machine's memory
            (:func:`skuld.inference.memory_limit`).
        """
        return self._maps(X, ("embed",), stride, dtype)["embed"]

    def transform_with_clusters(self, X):
        """Embeddings and soft cluster assignments from one pass of the network.

        Parameters
        ----------
        X : images, as in :meth:`fit`

        Returns
        -------
        E : as :meth:`transform`
        P : as :meth:`predict_proba`
        """
        maps = self._maps(X, ("embed", "cluster"))
        return maps["embed"], maps["cluster"]

    def predict_proba(self, X):
        """Soft cluster assignments at the input resolution.

        Parameters
        ----------
        X : array of shape (n, H, W) or (n, H, W, C), list of arrays or paths, or str
            Images of any sizes, as for :meth:`fit`.

        Returns
        -------
        P : ndarray of shape (n_images, H, W, n_clusters), float32
            Non-negative, summing to 1 along the last axis (a list of (H_i, W_i, n_clusters)
            arrays for list input).
        """
        return self._maps(X, ("cluster",))["cluster"]

    def predict(self, X):
        """Cluster label of every pixel.

        Parameters
        ----------
        X : array of shape (n, H, W) or (n, H, W, C), list of arrays or paths, or str
            Images of any sizes, as for :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_images, H, W), int64
            Values in ``[0, n_clusters)`` (a list of (H_i, W_i) arrays for list input).
        """
        proba = self.predict_proba(X)
        if isinstance(proba, list):
            return [p.argmax(axis=-1).astype(np.int64) for p in proba]
        return proba.argmax(axis=-1).astype(np.int64)

    def export_encoder(self) -> VGGEncoder:
        """A copy of the trained encoder (VGG-16-BN part), on the CPU, in eval mode.

        Use it to initialise a segmentation network::

            unet = skuld.nn.SegmentationUNet(n_classes=2, encoder=enc.export_encoder())

        Returns
        -------
        VGGEncoder
            Its ``forward`` maps ``(N, n_channels_in_, H, W)`` (H, W multiples of 16, intensities
            normalised as in training, see :meth:`normalization_stats`) to five feature maps.
        """
        check_is_fitted(self, "model_")
        encoder = copy.deepcopy(self.model_.encoder).to("cpu", memory_format=torch.contiguous_format)
        return encoder.eval()

    def normalization_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel normalisation applied to [0, 1] intensities before the network.

        Returns
        -------
        mean, std : tuple of float
            One value per input channel: the network sees ``(x - mean) / std``.
        """
        check_is_fitted(self, "model_")
        return self.input_spec_.mean, self.input_spec_.std

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        state = super().__getstate__()
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:  # Adam's moments, so that warm_start continues after a round trip
            state["_optimizer_state"] = to_cpu(optimizer.state_dict())
        return state


    def __setstate__(self, state):
        super().__setstate__(state)
        self._optimizer = None


def resolve_encoder(spec, name: str = "encoder", random_state=None, settings=None) -> LocalDiscriminativeEncoder | None:
    """The encoder an estimator's ``encoder`` parameter stands for.

    A fitted :class:`LocalDiscriminativeEncoder`, one wrapped in
    ``sklearn.frozen.FrozenEstimator``, or the path of one saved with :func:`skuld.save` is
    returned fitted, as it is. An unfitted one is a recipe: a clone is returned, for the
    caller to fit (what scikit-learn meta-estimators do with their sub-estimators). The one
    rule for recipes: what the encoder learns comes from the recipe; where and how it runs
    comes from the caller (``settings``: its device, precision, memory format, checkpoint
    folder, verbosity), and a recipe without a ``random_state`` takes the caller's when that is
    an int, so that the caller's seed makes the whole fit reproducible. None stays None.

    Parameters
    ----------
    spec : LocalDiscriminativeEncoder, FrozenEstimator, str, path or None
    name : str, default="encoder"
        How the parameter is named in errors.
    random_state : int, RandomState instance or None, default=None
        The caller's.
    settings : dict or None, default=None
        Encoder parameters the caller sets on a recipe.

    Returns
    -------
    LocalDiscriminativeEncoder or None
    """
    if spec is None:
        return None
    if isinstance(spec, FrozenEstimator):
        enc = spec.estimator
        if not isinstance(enc, LocalDiscriminativeEncoder):
            raise TypeError(f"{name} wraps a {type(enc).__name__}, not a LocalDiscriminativeEncoder")
        check_is_fitted(enc, "model_")
        return enc
    if isinstance(spec, (str, os.PathLike)):
        from .persistence import load

        if not os.path.isfile(spec):
            raise FileNotFoundError(f"{name}: no saved encoder at {os.fspath(spec)}")
        enc = load(spec)  # a model file (skuld.save); a pickle is refused: it could run code
        if not isinstance(enc, LocalDiscriminativeEncoder):
            raise TypeError(f"{spec} holds a {type(enc).__name__}, not a LocalDiscriminativeEncoder")
        check_is_fitted(enc, "model_")
        return enc
    if not isinstance(spec, LocalDiscriminativeEncoder):
        raise TypeError(f"{name} must be a LocalDiscriminativeEncoder, a FrozenEstimator of one, a path or None; "
                        f"got {type(spec).__name__}")
    if hasattr(spec, "model_"):
        return spec
    recipe = clone(spec).set_params(**(settings or {}))
    if recipe.random_state is None and isinstance(random_state, Integral):
        recipe.set_params(random_state=int(random_state))
    return recipe


#: What an ``encoder`` parameter accepts.
ENCODER_CONSTRAINT = [LocalDiscriminativeEncoder, FrozenEstimator, str, os.PathLike, None]
