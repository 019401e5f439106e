"""LocalDiscriminativeEncoder: the scikit-learn face of Local Discrimination pretraining."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.callback import CallbackSupportMixin, with_callbacks
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .distributed import synchronized_batch_norm, world_size
from .inference import check_min_size, infer_image
from .io import ImageCollection
from .nn.network import SIZE_MULTIPLE, LDNet, VGGEncoder
from .nn.objective import ObjectiveConfig
from .nn.views import ViewConfig
from .training import (
    CHECKPOINT_NAME,
    Schedule,
    TrainConfig,
    TrainState,
    intensity_normalizer,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    run_steps,
    to_cpu,
)

# Parameters that do not change what is learned: a checkpoint written under other values of
# these can be resumed.
_RESUMABLE_PARAMS = {"max_iter", "verbose", "device", "precision", "num_workers", "checkpoint_dir",
                     "checkpoint_every", "warm_start", "compile", "memory_saving"}


class LocalDiscriminativeEncoder(CallbackSupportMixin, TransformerMixin, BaseEstimator):
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
        Adam's initial learning rate; it halves every ``max_iter / 10`` steps within each stage.
    pd_fraction : float, default=0.2
        Fraction of ``max_iter`` spent in the patch-discrimination warm-up.
    width : float, default=1.0
        Width multiplier of the network (1.0: the narrow VGG-16-BN of about 1.45 M
        parameters with its decoder and heads).
    crop_scale : tuple of float, default=(0.9, 1.0)
        Range of the fraction of the (working-resolution) image area a crop covers.
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
        Seeds initialisation, crops and views. An int gives identical results on CPU.
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

    _parameter_constraints = {
        "embedding_dim": [Interval(Integral, 2, None, closed="left")],
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "crop_size": [Interval(Integral, 32, None, closed="left"), StrOptions({"auto"})],
        "image_size": [Interval(Integral, 32, None, closed="left"), None, StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "pd_fraction": [Interval(Real, 0, 1, closed="both")],
        "width": [Interval(Real, 0, None, closed="neither")],
        "crop_scale": [tuple],
        "flips": ["boolean"],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "rot90": ["boolean"],
        "view_rotation": [Interval(Real, 0, 180, closed="both")],
        "color_jitter": [tuple],
        "grayscale_p": [Interval(Real, 0, 1, closed="both")],
        "mixup": [tuple, None],
        "patch_grid": [Interval(Integral, 1, None, closed="left")],
        "patch_sigma": [Interval(Real, 0, None, closed="neither"), None],
        "tau_patch": [Interval(Real, 0, None, closed="neither")],
        "tau_region": [Interval(Real, 0, None, closed="neither")],
        "region_weight": [Interval(Real, 0, None, closed="left")],
        "entropy_weight": [Interval(Real, 0, None, closed="left")],
        "area_weight": [Interval(Real, 0, None, closed="left")],
        "normalization": [StrOptions({"auto", "imagenet", "half"}), tuple],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "channels_last": ["boolean"],
        "compile": ["boolean", StrOptions({"auto"})],
        "memory_saving": ["boolean"],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "checkpoint_dir": [str, os.PathLike, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        embedding_dim=32,
        n_clusters=16,
        max_iter=600,
        batch_size=4,
        crop_size="auto",
        image_size="auto",
        learning_rate=1e-3,
        pd_fraction=0.2,
        width=1.0,
        crop_scale=(0.9, 1.0),
        flips=True,
        rotation=180.0,
        rot90=True,
        view_rotation=2.0,
        color_jitter=(0.4, 0.4, 0.4, 0.02),
        grayscale_p=0.2,
        mixup=(0.2, 0.8),
        patch_grid=8,
        patch_sigma=None,
        tau_patch=0.1,
        tau_region=0.2,
        region_weight=10.0,
        entropy_weight=0.1,
        area_weight=0.0,
        normalization="auto",
        device="auto",
        precision="auto",
        channels_last=True,
        compile="auto",
        memory_saving=False,
        num_workers="auto",
        checkpoint_dir=None,
        checkpoint_every=500,
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.pd_fraction = pd_fraction
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
    def _check_params(self) -> None:
        self._validate_params()
        crop = self._resolved_sizes()[0]
        if crop % SIZE_MULTIPLE:
            raise ValueError(f"crop_size must be a multiple of {SIZE_MULTIPLE}, got {crop}")
        if crop % self.patch_grid:
            raise ValueError(f"crop_size={crop} is not divisible by patch_grid={self.patch_grid}")
        lo, hi = _pair(self.crop_scale, "crop_scale")
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if len(self.color_jitter) != 4 or any(v < 0 for v in self.color_jitter) or self.color_jitter[3] > 0.5:
            raise ValueError(
                "color_jitter must be (brightness, contrast, saturation, hue) with non-negative values "
                f"and hue <= 0.5, got {self.color_jitter}"
            )
        if self.mixup is not None:
            lo, hi = _pair(self.mixup, "mixup")
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"mixup must be a range within [0, 1], got {self.mixup}")
        if isinstance(self.normalization, tuple) and len(self.normalization) != 2:
            raise ValueError(f"normalization must be 'auto', 'imagenet', 'half' or (mean, std), got {self.normalization}")

    def _resolved_sizes(self) -> tuple[int, int | None]:
        """(crop_size, image_size) with "auto" resolved for the device training will use."""
        gpu = resolve_device(self.device).type == "cuda"
        crop = (448 if gpu else 160) if self.crop_size == "auto" else self.crop_size
        image = (512 if gpu else 256) if self.image_size == "auto" else self.image_size
        return crop, image

    def _draw_seed(self) -> int:
        """The run's seed; in multi-process training, rank 0's, so all processes agree."""
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        if world_size() > 1:
            box = [seed]
            torch.distributed.broadcast_object_list(box, src=0)
            seed = int(box[0])
        return seed

    def _view_config(self) -> ViewConfig:
        b, c, s, h = (float(v) for v in self.color_jitter)
        return ViewConfig(
            flips=self.flips, rotation=float(self.rotation), rot90=self.rot90, view_rotation=float(self.view_rotation),
            brightness=b, contrast=c, saturation=s, hue=h, grayscale_p=float(self.grayscale_p),
            mixup=None if self.mixup is None else tuple(float(v) for v in self.mixup),
        )

    def _objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(
            patch_grid=self.patch_grid, patch_sigma=self.patch_sigma, tau_patch=self.tau_patch,
            tau_region=self.tau_region, region_weight=self.region_weight,
            entropy_weight=self.entropy_weight, area_weight=self.area_weight,
        )

    def _fingerprint(self) -> dict:
        return {k: v for k, v in self.get_params().items() if k not in _RESUMABLE_PARAMS and k != "random_state"}

    def _collect(self, X, fitted: bool) -> ImageCollection:
        images = ImageCollection(X, n_channels=self.n_channels_in_ if fitted else None)
        if not images.from_files:
            for i in range(len(images)):
                check_min_size(*images.shape(i), images.describe(i))
        return images

    # ------------------------------------------------------------------ training
    def _initialize(self, n_channels: int, seed: int) -> None:
        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LDNet(n_channels, self.embedding_dim, self.n_clusters, self.width)
        self.model_ = model.to(self.device_)
        if self.channels_last:
            self.model_ = self.model_.to(memory_format=torch.channels_last)
        self.n_channels_in_ = n_channels
        self.crop_size_, self.image_size_ = self._resolved_sizes()
        self.n_iter_ = 0
        self.loss_history_ = []
        self._seed = seed
        # Halvings of the learning rate per max_iter: the paper's 10, or fewer for short
        # adversarial runs (set by ShapeGuidedSegmenter).
        self._schedule = Schedule.scaled(self.learning_rate, self.max_iter, self.pd_fraction,
                                         getattr(self, "_lr_halvings", 10))
        self._optimizer = None

    def _ensure_optimizer(self) -> torch.optim.Optimizer:
        if getattr(self, "_optimizer", None) is None:
            self._optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.learning_rate)
            saved = getattr(self, "_optimizer_state", None)
            if saved is not None:
                self._optimizer.load_state_dict(saved)
                self._optimizer_state = None
        return self._optimizer

    def _checkpoint_path(self) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(os.fspath(self.checkpoint_dir), CHECKPOINT_NAME)

    def _try_resume(self, images: ImageCollection) -> None:
        path = self._checkpoint_path()
        if path is None or not os.path.exists(path):
            return
        payload = load_checkpoint(path)
        saved = payload.get("params", {})
        mine = self._fingerprint()
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ:
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} was written with other values of {', '.join(differ)}; "
                "use the same parameters to resume, or another checkpoint_dir to start afresh"
            )
        if isinstance(self.random_state, Integral) and payload.get("random_state") != self.random_state:
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} was written with random_state={payload.get('random_state')}, "
                f"not {self.random_state}"
            )
        if payload["model_config"]["in_channels"] != images.n_channels:
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} is for {payload['model_config']['in_channels']}-channel "
                f"images but X has {images.n_channels} channel(s)"
            )
        self._initialize(images.n_channels, int(payload["seed"]))
        self.model_.load_state_dict(payload["model"])
        self._optimizer_state = payload["optimizer"]
        self._schedule = Schedule(**payload["schedule"])
        self.n_iter_ = int(payload["step"])
        self.loss_history_ = list(payload["history"])
        adversary = getattr(self, "_adversary", None)
        if (adversary is None) != ("adversary" not in payload):
            raise ValueError(f"the checkpoint in {self.checkpoint_dir} was written by "
                             f"{'a ShapeGuidedSegmenter' if adversary is None else 'a plain encoder fit'}; "
                             "use another checkpoint_dir")
        if adversary is not None:
            adversary.load_state_dict(payload["adversary"])
        if self.verbose:
            print(f"[skuld] resuming from {path} at step {self.n_iter_}", flush=True)

    def _train(self, images: ImageCollection, stop: int) -> None:
        device = self.device_ = resolve_device(self.device)
        distributed_run = world_size() > 1
        if distributed_run and device.type == "cuda":
            device = self.device_ = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        self.model_.to(device)
        amp_dtype = resolve_precision(self.precision, device)
        optimizer = self._ensure_optimizer()
        _optimizer_to(optimizer, device)
        mean, std = intensity_normalizer(self.normalization, self.n_channels_in_)
        num_workers = self.num_workers
        if num_workers == "auto":
            num_workers = _auto_workers(images)
        cfg = TrainConfig(
            batch_size=self.batch_size, crop_size=self.crop_size_, image_size=self.image_size_,
            crop_scale=tuple(float(v) for v in self.crop_scale), views=self._view_config(),
            objective=self._objective_config(), mean=mean, std=std, device=device, amp_dtype=amp_dtype,
            channels_last=self.channels_last, num_workers=num_workers, seed=self._seed,
            checkpoint_path=self._checkpoint_path(), checkpoint_every=self.checkpoint_every,
            verbose=int(self.verbose),
        )
        model = self.model_
        model.memory_saving = self.memory_saving
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        state = TrainState(model=model, optimizer=optimizer, schedule=self._schedule, step=self.n_iter_,
                           history=self.loss_history_, scaler=scaler)

        ctx = self._init_callback_context(task_name="fit", max_subtasks=max(0, stop - self.n_iter_))
        ctx.call_on_fit_task_begin(estimator=self)
        step_ctx = {}

        def on_begin(step):
            step_ctx["ctx"] = ctx.subcontext(task_name="step")
            step_ctx["ctx"].call_on_fit_task_begin(estimator=self)

        def on_end(step, last_losses):
            self.n_iter_ = state.step
            return step_ctx["ctx"].call_on_fit_task_end(estimator=self, metadata=last_losses)

        adversary = getattr(self, "_adversary", None)  # set by ShapeGuidedSegmenter
        if adversary is not None:
            if distributed_run:
                raise ValueError("shape-guided training runs in a single process")
            adversary.to(device)

        def extra():
            return {"params": self._fingerprint(), "seed": self._seed,
                    "random_state": self.random_state if isinstance(self.random_state, Integral) else None,
                    **({"adversary": adversary.state_dict()} if adversary is not None else {})}

        has_callbacks = bool(getattr(self, "_skl_callbacks", None))
        try:
            compile_ = self.compile if self.compile != "auto" else (device.type == "cuda" and stop - self.n_iter_ >= 500)
            sync_bn = synchronized_batch_norm(model, device) if distributed_run else contextlib.nullcontext()
            with sync_bn, model.compiled(compile_):
                run_steps(state, images, cfg, stop,
                          on_step_begin=on_begin if has_callbacks else None,
                          on_step_end=on_end if has_callbacks else None,
                          checkpoint_extra=extra, adversary=adversary)
        finally:
            # Whatever happened, the estimator holds the last completed step.
            self.n_iter_ = state.step
            self.model_.eval()
        ctx.call_on_fit_task_end(estimator=self)

    @with_callbacks
    def fit(self, X, y=None):
        """Train the network on unlabelled images.

        Parameters
        ----------
        X : array of shape (n_images, H, W) or (n_images, H, W, 3), list of such arrays of
            any sizes, list of image file paths, or a directory / glob pattern
            Images (uint8, uint16, bool or float in [0, 1]). Files are read with imageio
            (PNG, JPEG, TIFF, BMP, DICOM, ...).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._check_params()
        fitted = self.warm_start and hasattr(self, "model_")
        images = self._collect(X, fitted)
        if fitted:
            stop = self.n_iter_ + self.max_iter
        else:
            self._initialize(images.n_channels, self._draw_seed())
            self._try_resume(images)
            stop = self.max_iter
        if self.n_iter_ < stop:
            self._train(images, stop)
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
            self._initialize(images.n_channels, self._draw_seed())
        n_steps = max(1, math.ceil(len(images) / (2 * self.batch_size)))
        self._train(images, self.n_iter_ + n_steps)
        return self

    # ------------------------------------------------------------------ inference
    def _infer(self, X, heads: tuple[str, ...]) -> dict[str, list | np.ndarray]:
        check_is_fitted(self, "model_")
        images = ImageCollection(X, n_channels=self.n_channels_in_)
        device = self.device_ = resolve_device(self.device, fall_back=True)
        self.model_.to(device).eval()
        amp_dtype = resolve_precision(self.precision, device)
        mean, std = intensity_normalizer(self.normalization, self.n_channels_in_)
        sizes = {"embed": self.model_.embedding_dim, "cluster": self.model_.n_clusters}
        stacked = not images.is_ragged
        outputs: dict[str, list | np.ndarray] = {}
        for i in range(len(images)):
            img = images[i]
            h, w = img.shape[:2]
            if stacked and i == 0:
                for head in heads:
                    outputs[head] = np.empty((len(images), h, w, sizes[head]), dtype=np.float32)
            out = {head: outputs[head][i] if stacked else np.empty((h, w, sizes[head]), np.float32) for head in heads}
            infer_image(self.model_, img, heads=heads, image_size=self.image_size_, mean=mean, std=std,
                        device=device, amp_dtype=amp_dtype, channels_last=self.channels_last, out=out,
                        name=images.describe(i))
            if not stacked:
                for head in heads:
                    outputs.setdefault(head, []).append(out[head])
        return outputs

    def transform(self, X):
        """Per-pixel unit embeddings at the input resolution.

        Parameters
        ----------
        X : images, as in :meth:`fit`
            With the channel count the model was fitted on.

        Returns
        -------
        E : float32 array of shape (n_images, H, W, embedding_dim), or a list of
            (H_i, W_i, embedding_dim) arrays when X is a list. ``E[i, row, col]`` is the unit
            (L2 norm 1) embedding of pixel (row, col) of image i.
        """
        return self._infer(X, ("embed",))["embed"]

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
        return self._infer(X, ("cluster",))["cluster"]

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
        return intensity_normalizer(self.normalization, self.n_channels_in_)

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        state = self.__dict__.copy()
        # Device-independent pickles: tensors on the CPU, the model rebuilt on load.
        model = state.pop("model_", None)
        if model is not None:
            state["_model_payload"] = {
                "config": model.config(),
                "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
            }
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:
            state["_optimizer_state"] = to_cpu(optimizer.state_dict())
        state.pop("_skl_callbacks", None)  # live progress bars and threads do not pickle
        state.pop("_adversary", None)  # training-only
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        payload = state.pop("_model_payload", None)
        self.__dict__.update(state)
        if "device_" in state:
            self.device_ = torch.device("cpu")
        if payload is not None:
            with torch.device("meta"):
                model = LDNet(**payload["config"])
            model.load_state_dict(payload["state_dict"], assign=True)
            self.model_ = model.eval()
            self._optimizer = None
            if not hasattr(self, "image_size_"):  # pickled before sizes became fitted attributes
                self.crop_size_ = self.crop_size if self.crop_size != "auto" else 160
                self.image_size_ = self.image_size if self.image_size != "auto" else 256

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # two_d_array stays True: scikit-learn would otherwise skip every common check. The
        # checks that fail only because X must be images are listed in the tests, with reasons.
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags


def embed_each(encoder, images: ImageCollection, indices, n_jobs=None):
    """Yield ``(i, (H, W, D) float32 embeddings)`` of ``images[i]`` for each of ``indices``, in
    order, one image in memory at a time; image files are decoded ahead by ``n_jobs`` worker
    processes (see :meth:`skuld.io.ImageCollection.iter_images`)."""
    for i, img in images.iter_images(indices, n_jobs=n_jobs):
        yield i, encoder.transform(img[None])[0]  # (1, H, W, C) with C = 1 or 3: both accepted


def _auto_workers(images: ImageCollection) -> int:
    """Loader workers for "auto": none for images in memory or on a machine of two cores or
    fewer (decoded images are cached, so workers would only compete with training for the
    cores); otherwise up to 4, half the cores."""
    cores = os.cpu_count() or 1
    if not images.from_files or cores <= 2:
        return 0
    return min(4, cores // 2)


def _pair(value, name):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    return lo, hi


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def resolve_encoder(spec, name: str = "encoder") -> LocalDiscriminativeEncoder | None:
    """The encoder an estimator's ``encoder`` parameter stands for.

    A fitted :class:`LocalDiscriminativeEncoder`, one wrapped in
    ``sklearn.frozen.FrozenEstimator``, or the path of one saved with ``joblib.dump`` is
    returned fitted, as it is. An unfitted one is a recipe: a clone is returned, for the
    caller to fit (what scikit-learn meta-estimators do with their sub-estimators). None
    stays None.
    """
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    if spec is None:
        return None
    if isinstance(spec, FrozenEstimator):
        enc = spec.estimator
        if not isinstance(enc, LocalDiscriminativeEncoder):
            raise TypeError(f"{name} wraps a {type(enc).__name__}, not a LocalDiscriminativeEncoder")
        check_is_fitted(enc, "model_")
        return enc
    if isinstance(spec, (str, os.PathLike)):
        import joblib

        if not os.path.isfile(spec):
            raise FileNotFoundError(f"{name}: no saved encoder at {os.fspath(spec)}")
        enc = joblib.load(spec)
        if not isinstance(enc, LocalDiscriminativeEncoder):
            raise TypeError(f"{spec} holds a {type(enc).__name__}, not a LocalDiscriminativeEncoder")
        check_is_fitted(enc, "model_")
        return enc
    if not isinstance(spec, LocalDiscriminativeEncoder):
        raise TypeError(f"{name} must be a LocalDiscriminativeEncoder, a FrozenEstimator of one, a path or None; "
                        f"got {type(spec).__name__}")
    return spec if hasattr(spec, "model_") else clone(spec)
