"""What every skuld estimator shares: parameter constraints, runtime, seeds, logs, checkpoints, persistence.

An estimator here validates its parameters against :data:`COMMON_CONSTRAINTS` (one definition
of each shared parameter), resolves ``"auto"`` through :mod:`skuld.estimators.auto`, calls the
functional core, and stores fitted state. :class:`SkuldEstimator` gives it the rest: one log
stream, the runtime (device, precision, memory format), the run's seed, the engine's
checkpointing with one resume rule, scikit-learn callbacks bridged to the engine, and
device-independent pickles of its torch modules.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from numbers import Integral, Real

import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .. import distributed
from ..engine import Callback, Checkpointing, Runtime, log
from ..engine.checkpoint import canonical
from ..io import check_writable
from ..nn.network import LDNet, SegmentationUNet
from . import legacy

#: One definition of every parameter that several estimators have.
COMMON_CONSTRAINTS = {
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    # Training crops: at least the smallest image skuld takes, a multiple of the network's stride.
    "crop_size": [Interval(Integral, 32, None, closed="left"), StrOptions({"auto"})],
    "image_size": [Interval(Integral, 32, None, closed="left"), None, StrOptions({"auto"})],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "pd_fraction": [Interval(Real, 0, 1, closed="both")],
    "width": [Interval(Real, 0, None, closed="neither")],
    "rotation": [Interval(Real, 0, 180, closed="both")],
    "flips": ["boolean"],
    "normalization": [StrOptions({"auto", "imagenet", "half"}), tuple],
    "intensity_range": [tuple, list, None],
    "on_error": [StrOptions({"raise", "skip"})],
    "device": [str, torch.device],
    "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
    "channels_last": ["boolean"],
    "checkpoint_dir": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}

#: Parameters that change how a fit runs, not what it learns: a checkpoint written under other
#: values of these is resumed (a pretraining run with a longer max_iter continues its schedule;
#: the segmenter's schedule follows max_iter, which its fingerprint therefore records).
RUNTIME_PARAMS = frozenset({"max_iter", "verbose", "device", "precision", "num_workers", "checkpoint_dir",
                            "checkpoint_every", "on_error", "warm_start", "compile", "memory_saving", "test_time_augmentation"})

#: Torch modules an estimator may hold as fitted state, rebuilt from their ``config()`` on load.
_MODULE_TYPES = {"LDNet": LDNet, "SegmentationUNet": SegmentationUNet}


def constraints(*shared: str, **own) -> dict:
    """A ``_parameter_constraints`` table: the named rows of :data:`COMMON_CONSTRAINTS` and the estimator's own.

    Parameters
    ----------
    *shared : str
        Names of shared parameters.
    **own : list
        The estimator's own parameters and their constraints.

    Returns
    -------
    dict

    Examples
    --------
    >>> from skuld.estimators.base import constraints
    >>> sorted(constraints("device", "verbose", alpha=[float]))
    ['alpha', 'device', 'verbose']
    """
    return {**{name: COMMON_CONSTRAINTS[name] for name in shared}, **own}


def draw_seed(random_state) -> int:
    """The run's seed: ``random_state`` itself when an int, else drawn from it; in multi-process
    training, rank 0's, so that every process agrees.

    Parameters
    ----------
    random_state : int, RandomState instance or None

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.estimators.base import draw_seed
    >>> draw_seed(7)
    7
    """
    if isinstance(random_state, Integral):
        return int(random_state)
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    if distributed.world_size() > 1:
        box = [seed]
        torch.distributed.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


def fingerprint_value(value):
    """A parameter's value as fingerprint data: estimators by class, parameters and (when
    fitted) a digest of their weights, so that resuming on another encoder is caught.

    Parameters
    ----------
    value : any

    Returns
    -------
    JSON-compatible data
    """
    if isinstance(value, BaseEstimator):
        if isinstance(value, FrozenEstimator):
            return fingerprint_value(value.estimator)
        out = {"class": type(value).__name__}
        model = getattr(value, "model_", None)
        if model is not None:
            digest = hashlib.sha256()
            for k, v in model.state_dict().items():
                digest.update(k.encode())
                digest.update(v.detach().cpu().contiguous().numpy().tobytes())
            out["weights"] = digest.hexdigest()[:16]
        else:
            out["params"] = {k: fingerprint_value(v) for k, v in value.get_params(deep=False).items()}
        return out
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): fingerprint_value(v) for k, v in value.items()}
    return canonical(value)


class _SklearnCallbacks(Callback):
    """scikit-learn's callbacks (``set_callbacks``) as engine callbacks: one "step" task per step."""

    def __init__(self, estimator, context, on_step):
        self.estimator, self.context, self.on_step = estimator, context, on_step
        self.step_context = None

    def on_step_begin(self, step):
        self.step_context = self.context.subcontext(task_name="step")
        self.step_context.call_on_fit_task_begin(estimator=self.estimator)

    def on_step_end(self, step, last_losses):
        self.on_step(step + 1)
        return self.step_context.call_on_fit_task_end(estimator=self.estimator, metadata=last_losses)


class SkuldEstimator(BaseEstimator):
    """Base of skuld's estimators: shared machinery, no algorithm.

    Subclasses declare ``_parameter_constraints`` (see :func:`constraints`) and the names of
    their fitted torch modules in ``_modules`` (pickled device-independently).
    """

    #: Fitted attributes holding torch modules: pickled as (class, config, CPU state dict).
    _modules: tuple[str, ...] = ()

    def _log(self, message: str) -> None:
        log(message, getattr(self, "verbose", 0))

    def _runtime(self, fall_back: bool = False, channels_last: bool | None = None) -> Runtime:
        """Device, autocast dtype and memory format from the ``device``, ``precision`` and
        ``channels_last`` parameters; ``fall_back`` runs on the CPU (with a warning) when a
        model fitted on a GPU meets a machine without one."""
        if channels_last is None:
            channels_last = getattr(self, "channels_last", True)
        return Runtime.resolve(self.device, getattr(self, "precision", "auto"), channels_last, fall_back=fall_back)

    def _deprecated(self, names, advice: str, stacklevel: int = 4) -> dict:
        """The deprecated parameters among ``names`` that were set (their default is the string
        "deprecated"), with one FutureWarning naming them and ``advice`` (``stacklevel`` 4: called
        from a helper of ``fit``)."""
        given = {n: getattr(self, n) for n in names if getattr(self, n) != "deprecated"}
        if given:
            warnings.warn(f"{type(self).__name__} parameters {sorted(given)} are deprecated and will be removed in "
                          f"the next release: {advice}", FutureWarning, stacklevel=stacklevel)
        return given

    def _fingerprint(self, exclude=(), **extra) -> dict:
        """What determines a fit's result: the parameters that are not :data:`RUNTIME_PARAMS`
        nor in ``exclude`` (``random_state`` only when an int: a drawn seed is the checkpoint's
        own) and ``extra``."""
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in RUNTIME_PARAMS and k not in exclude}
        if not isinstance(params.get("random_state"), Integral):
            params["random_state"] = None
        return {k: fingerprint_value(v) for k, v in {**params, **extra}.items()}

    def _checkpointing(self, filename: str, kind: str, seed: int, exclude=(), **fingerprint) -> Checkpointing | None:
        """The engine's checkpointing in ``checkpoint_dir`` (None when it is not set); ``fingerprint``
        entries are added to the parameters', ``exclude`` parameters left out of it."""
        folder = getattr(self, "checkpoint_dir", None)
        if folder is None:
            return None
        if distributed.rank() == 0:
            check_writable(folder, "checkpoints", folder=True)  # now, not after the first 500 steps
        return Checkpointing(os.path.join(os.fspath(folder), filename), int(getattr(self, "checkpoint_every", 500)),
                             kind, self._fingerprint(exclude, **fingerprint), seed)

    def _engine_callbacks(self, n_steps: int, on_step=lambda n: None) -> tuple[list[Callback], object]:
        """scikit-learn callbacks set on this estimator, as engine callbacks, and the fit's root
        callback context (``ctx.call_on_fit_task_end`` once training ends)."""
        if not hasattr(self, "_init_callback_context"):
            return [], None
        ctx = self._init_callback_context(task_name="fit", max_subtasks=max(0, n_steps))
        ctx.call_on_fit_task_begin(estimator=self)
        if not getattr(self, "_skl_callbacks", None):
            return [], ctx
        return [_SklearnCallbacks(self, ctx, on_step)], ctx

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._modules:
            module = state.pop(name, None)
            if module is not None:
                state[f"_{name}payload"] = {
                    "type": type(module).__name__, "config": module.config(),
                    "state_dict": {k: v.detach().to("cpu", copy=True).contiguous()
                                   for k, v in module.state_dict().items()},
                }
        state.pop("_skl_callbacks", None)  # live progress bars and threads do not pickle
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        legacy.upgrade(type(self).__name__, state)
        payloads = {name: legacy.module_payload(name, state.pop(f"_{name}payload", None)) for name in self._modules}
        # A model saved before a parameter existed behaves as that parameter's default.
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in state and param.default is not inspect.Parameter.empty:
                state[name] = param.default
        self.__dict__.update(state)
        if "device_" in state:
            self.device_ = torch.device("cpu")  # loaded models run where they are: see _runtime
        for name, payload in payloads.items():
            if payload is not None:
                with torch.device("meta"):
                    module = _MODULE_TYPES[payload["type"]](**payload["config"])
                module.load_state_dict(payload["state_dict"], assign=True)
                setattr(self, name, module.eval())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # two_d_array stays True: scikit-learn would otherwise skip every common check. The
        # checks that fail only because X must be images are listed in the tests, with reasons.
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
