"""Model files that cannot run code: ``skuld.save`` / ``skuld.load``.

A skuld model file is one safetensors file: every array and tensor of the fitted estimator
(network weights, optimiser moments, templates, FAISS codes, ...) is a named tensor, and a JSON
document in the file's metadata holds the rest: the estimator's class, parameters and fitted
state (as typed JSON), the format version, the skuld and torch versions, and a short model card
(what the model is, how long it trained, its last loss, its input). Reading it parses a header
and copies arrays: nothing in the file is ever executed, and only the classes on this module's
allow-lists can be named by it. A pickle (``joblib.dump``), which runs whatever code it holds when
loaded, is read only when asked for explicitly (``allow_pickle=True``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from numbers import Integral

import numpy as np
import torch

from ..io import atomic_write
from ..preprocessing import InputSpec
from ..pretraining import Schedule

#: Version of the file layout; other versions are refused by name.
MODEL_FORMAT = 1
#: How a pickle (``pickle.dump``, ``joblib.dump``: protocol 2+, gzip, zlib, joblib's old ZF) begins.
_PICKLE_MAGIC = (b"\x80", b"\x1f\x8b", b"ZF", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")

#: Dataclasses a model file may hold (their fields are stored).
_DATACLASSES = {"InputSpec": InputSpec, "Schedule": Schedule}


def _estimator_classes() -> dict:
    from . import (
        LocalDiscriminativeEncoder,
        OneShotLandmarkLocator,
        PixelClassifier,
        PixelIndex,
        PixelSampler,
        ShapeGuidedSegmenter,
        TransferSegmenter,
    )

    return {c.__name__: c for c in (LocalDiscriminativeEncoder, OneShotLandmarkLocator, PixelClassifier, PixelIndex,
                                     PixelSampler, ShapeGuidedSegmenter, TransferSegmenter)}


def _sklearn_class(path: str):
    """A scikit-learn estimator class named ``module.Class`` (the only classes outside skuld a
    model file may name: the classifier of a PixelClassifier, FrozenEstimator)."""
    import importlib

    from sklearn.base import BaseEstimator

    module, _, name = path.rpartition(".")
    if not module.startswith("sklearn.") or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"the model file names {path!r}, which is not a scikit-learn estimator")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
        raise ValueError(f"the model file names {path!r}, which is not a scikit-learn estimator")
    return cls


class _Writer:
    """Turns a state into typed JSON plus named arrays."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise TypeError(f"cannot store an array of dtype {a.dtype} in a model file")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(a)
        return key

    def tree(self, obj):
        from sklearn.base import BaseEstimator

        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (Integral, np.integer)) and not isinstance(obj, np.bool_):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            return float(obj) if math.isfinite(obj) else {"float": repr(float(obj))}
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, tuple):
            return {"tuple": [self.tree(v) for v in obj]}
        if isinstance(obj, list):
            return [self.tree(v) for v in obj]
        if isinstance(obj, dict):
            return {"dict": [[self.tree(k), self.tree(v)] for k, v in obj.items()]}
        if isinstance(obj, np.ndarray):
            return {"array": self.array(obj)}
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            dtype = str(t.dtype).removeprefix("torch.")
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            return {"tensor": self.array(t.contiguous().numpy()), "dtype": dtype}
        if isinstance(obj, torch.device):
            return {"device": str(obj)}
        if isinstance(obj, np.random.RandomState):
            kind, keys, pos, has_gauss, cached = obj.get_state()
            return {"random_state": [kind, self.array(keys), int(pos), int(has_gauss), float(cached)]}
        if dataclasses.is_dataclass(obj) and type(obj).__name__ in _DATACLASSES:
            return {"dataclass": type(obj).__name__,
                    "fields": {f.name: self.tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
        if isinstance(obj, BaseEstimator):
            cls = type(obj)
            skuld_class = cls.__name__ in _estimator_classes() and _estimator_classes()[cls.__name__] is cls
            if not skuld_class and not cls.__module__.startswith("sklearn."):
                raise TypeError(f"cannot store a {cls.__module__}.{cls.__name__} in a model file: only skuld's and "
                                "scikit-learn's estimators")
            state = obj.__getstate__()
            return {"estimator": cls.__name__ if skuld_class else f"{cls.__module__}.{cls.__name__}",
                    "state": self.tree(state)}
        raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__name__} in a model file")


class _Reader:
    """Turns typed JSON plus named arrays back into a state; names nothing off the allow-lists."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def array(self, key) -> np.ndarray:
        if key not in self.arrays:
            raise ValueError(f"the model file refers to an array {key!r} it does not hold")
        return self.arrays[key]

    def tree(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.tree(v) for v in node]
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ValueError(f"the model file holds an entry skuld does not read: {str(node)[:80]}")
        if "float" in node:
            return float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[node["float"]])
        if "tuple" in node:
            return tuple(self.tree(v) for v in node["tuple"])
        if "dict" in node:
            return {self.tree(k): self.tree(v) for k, v in node["dict"]}
        if "array" in node:
            return self.array(node["array"]).copy()
        if "tensor" in node:
            dtype = getattr(torch, str(node["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"the model file names an unknown tensor dtype {node['dtype']!r}")
            return torch.from_numpy(self.array(node["tensor"]).copy()).to(dtype)
        if "device" in node:
            return torch.device(str(node["device"]))
        if "random_state" in node:
            kind, keys, pos, has_gauss, cached = node["random_state"]
            rs = np.random.RandomState()
            rs.set_state((str(kind), self.array(keys), int(pos), int(has_gauss), float(cached)))
            return rs
        if "dataclass" in node:
            cls = _DATACLASSES.get(node["dataclass"])
            if cls is None:
                raise ValueError(f"the model file names an unknown type {node['dataclass']!r}")
            return cls(**{k: self.tree(v) for k, v in node["fields"].items()})
        if "estimator" in node:
            name = str(node["estimator"])
            cls = _estimator_classes().get(name) or _sklearn_class(name)
            obj = cls.__new__(cls)
            obj.__setstate__(self.tree(node["state"]))
            return obj
        raise ValueError(f"the model file holds an entry skuld does not read: {str(node)[:80]}")


def _card(estimator) -> dict:
    """What the model is, in a few lines readable without skuld (``safetensors`` metadata)."""
    card = {"class": type(estimator).__name__}
    for attr in ("n_iter_", "n_channels_in_", "n_landmarks_", "n_templates_", "n_vectors_", "n_images_", "factory_"):
        if hasattr(estimator, attr):
            card[attr.rstrip("_")] = getattr(estimator, attr)
    history = getattr(estimator, "loss_history_", None)
    if history:
        card["final_loss"] = history[-1].get("loss")
    spec = getattr(estimator, "input_spec_", None)
    if spec is not None:
        card["input"] = {"channels": spec.n_channels, "image_size": spec.image_size, "mean": spec.mean,
                         "std": spec.std}
    return json.loads(json.dumps(card, default=str))


def save(estimator, path: str | os.PathLike) -> None:
    """Write a fitted (or unfitted) skuld estimator to one file that cannot run code when read.

    Parameters
    ----------
    estimator : a skuld estimator
        ``LocalDiscriminativeEncoder``, ``PixelIndex``, ``OneShotLandmarkLocator``,
        ``TransferSegmenter``, ``ShapeGuidedSegmenter``, ``PixelClassifier`` (with a
        scikit-learn classifier) or ``PixelSampler``.
    path : str or path-like
        The file (by convention ``*.skuld``); written atomically, folders created.

    Returns
    -------
    None

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skuld
    >>> index = skuld.PixelIndex(index="Flat").fit(np.random.default_rng(0).random((2, 8, 8, 4)))
    >>> path = os.path.join(tempfile.mkdtemp(), "pixels.skuld")
    >>> skuld.save(index, path)
    >>> skuld.load(path).n_vectors_
    128
    """
    from safetensors.numpy import save_file

    if type(estimator).__name__ not in _estimator_classes():
        raise TypeError(f"skuld.save writes skuld's estimators, not a {type(estimator).__name__}")
    writer = _Writer()
    tree = writer.tree(estimator)
    document = {"format": MODEL_FORMAT, "kind": "skuld-model", "class": type(estimator).__name__,
                "skuld_version": _version(), "torch_version": torch.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "card": _card(estimator), "state": tree}
    metadata = {"skuld": json.dumps(document)}
    atomic_write(path, lambda tmp: save_file(writer.arrays or {"empty": np.zeros(0, np.uint8)}, tmp, metadata))


def is_pickle(path: str | os.PathLike) -> bool:
    """Whether a file starts like a pickle or a compressed joblib file (which can run code when loaded).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    bool

    Examples
    --------
    >>> import os, pickle, tempfile
    >>> from skuld.estimators.persistence import is_pickle
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pkl")
    >>> with open(path, "wb") as f:
    ...     pickle.dump([1], f)
    >>> is_pickle(path)
    True
    """
    with open(path, "rb") as f:
        head = f.read(2)
    return head.startswith(_PICKLE_MAGIC)


def load(path: str | os.PathLike, allow_pickle: bool = False):
    """Read an estimator written by :func:`save`; no code in the file is ever run.

    Parameters
    ----------
    path : str or path-like
    allow_pickle : bool, default=False
        Also read a pickle (``joblib.dump``: models of skuld 0.1.0). A pickle runs whatever
        code it holds while it is read: allow it only for files whose origin you trust.

    Returns
    -------
    estimator
        ``ValueError`` naming the file when it is not a skuld model file, was written in another
        format version, or is a pickle and ``allow_pickle`` is False.

    Examples
    --------
    >>> import os, tempfile
    >>> import joblib
    >>> import skuld
    >>> path = os.path.join(tempfile.mkdtemp(), "old.joblib")
    >>> _ = joblib.dump(skuld.PixelSampler(), path)
    >>> skuld.load(path)
    Traceback (most recent call last):
        ...
    ValueError: ... is a pickle, which runs code when it is read...
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        if not is_pickle(path):
            raise ValueError(f"{path} is not a skuld model file: {type(exc).__name__}: {exc}") from exc
        if not allow_pickle:
            raise ValueError(f"{path} is a pickle, which runs code when it is read: load it only if you trust where "
                             "it came from, with skuld.load(path, allow_pickle=True) (skuld ... --allow-pickle), "
                             "and save it again with skuld.save to get a file that cannot") from None
        import joblib

        return joblib.load(path)
    try:
        document = json.loads(metadata["skuld"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is a safetensors file but not a skuld model (no skuld metadata)") from exc
    if not isinstance(document, dict) or document.get("kind") != "skuld-model":
        raise ValueError(f"{path} is not a skuld model file")
    if document.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is a skuld model file of format {document.get('format')} (written by skuld "
                         f"{document.get('skuld_version')}); this skuld {_version()} reads format {MODEL_FORMAT}")
    try:
        estimator = _Reader(arrays).tree(document.get("state"))
    except Exception as exc:  # only skuld's own code runs here, on data it does not trust: name the file
        raise ValueError(f"{path} is a damaged or crafted skuld model file: {type(exc).__name__}: {exc}") from exc
    if type(estimator).__name__ != document.get("class"):
        raise ValueError(f"{path} says it holds a {document.get('class')} but holds a {type(estimator).__name__}")
    return estimator


def model_card(path: str | os.PathLike) -> dict:
    """The short description a model file carries (class, steps, last loss, input), read without
    loading the model.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        With the format version, skuld and torch versions and creation time.

    Examples
    --------
    >>> import os, tempfile
    >>> import skuld
    >>> from skuld.estimators.persistence import model_card
    >>> path = os.path.join(tempfile.mkdtemp(), "s.skuld")
    >>> skuld.save(skuld.PixelSampler(), path)
    >>> model_card(path)["class"]
    'PixelSampler'
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="numpy") as f:
        document = json.loads((f.metadata() or {}).get("skuld", "{}"))
    return {**document.get("card", {}), **{k: document.get(k) for k in ("format", "skuld_version", "torch_version",
                                                                      "created")}}


def model_fingerprint(model) -> str | None:
    """A short digest of what a fitted skuld model computes (its class, weights and input path):
    equal for the same model however it was saved and loaded, different for any other.

    Parameters
    ----------
    model : a fitted skuld estimator, or anything else (None)

    Returns
    -------
    str or None
        16 hex digits; None for objects that are not skuld estimators.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skuld
    >>> from skuld.estimators.persistence import model_fingerprint
    >>> X = np.random.default_rng(0).random((2, 40, 40))
    >>> a = skuld.LocalDiscriminativeEncoder(max_iter=1, crop_size=32, image_size=40, width=0.25, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "a.skuld"); skuld.save(a, path)
    >>> b = skuld.LocalDiscriminativeEncoder(max_iter=1, crop_size=32, image_size=40, width=0.25, random_state=1).fit(X)
    >>> model_fingerprint(skuld.load(path)) == model_fingerprint(a), model_fingerprint(b) == model_fingerprint(a)
    (True, False)
    """
    import hashlib

    from .base import fingerprint_value

    if type(model).__name__ not in _estimator_classes():
        return None
    description = {"model": fingerprint_value(model), "input": repr(getattr(model, "input_spec_", None))}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _version() -> str:
    from .. import __version__

    return __version__
