"""One checkpoint format and one resume rule for every training run.

A checkpoint holds everything needed to continue a run as if it had never stopped: the
network, its optimiser (and gradient scaler), the step, the loss history, the task's own
state (a schedule, a random generator), the state of extra loss terms (an adversary), the
run's seed, and the *fingerprint* of what is being learned (the parameters that change the
result and a description of the data). A run resumes from a checkpoint only when its kind and
fingerprint are the same; otherwise the error names what differs. Files are written
atomically and read with ``torch.load(weights_only=True)``, which never runs code from the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..io import atomic_write
from .runtime import to_cpu

#: Version of the payload layout; other versions are refused by name.
CHECKPOINT_FORMAT = 2


def canonical(value):
    """``value`` as plain JSON data (tuples become lists, numpy scalars numbers, objects their repr),
    so that a fingerprint read back from a checkpoint compares equal to a fresh one.

    Parameters
    ----------
    value : any

    Returns
    -------
    JSON-compatible data

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.engine.checkpoint import canonical
    >>> canonical({"crop_scale": (0.9, 1.0), "n": np.int64(3)})
    {'crop_scale': [0.9, 1.0], 'n': 3}
    """
    def default(obj):
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return repr(obj)

    return json.loads(json.dumps(value, default=default))


@dataclass
class Checkpointing:
    """Where and when a run keeps its checkpoint, and what makes a checkpoint its own.

    Attributes
    ----------
    path : str
        The checkpoint file.
    every : int
        Steps between saves (a save also happens at the last step and on any exception).
    kind : str
        What is trained ("pretraining", "segmentation", ...): a checkpoint of another kind is
        never resumed.
    fingerprint : dict
        What determines the result: parameters, data description, ... (JSON data).
    seed : int
        The run's seed, restored on resume.

    Examples
    --------
    >>> from skuld.engine.checkpoint import Checkpointing
    >>> Checkpointing("ckpt/run.pt", every=100, kind="segmentation", fingerprint={"lr": 0.001}, seed=0).every
    100
    """

    path: str
    every: int
    kind: str
    fingerprint: dict = field(default_factory=dict)
    seed: int = 0


def save_checkpoint(spec: Checkpointing, state, task_state: dict, term_states: dict) -> None:
    """Write the checkpoint of ``state`` (a :class:`skuld.engine.TrainingState`) atomically.

    Parameters
    ----------
    spec : Checkpointing
    state : TrainingState
    task_state, term_states : dict
        The task's and the loss terms' ``state_dict()`` (terms by name).

    Returns
    -------
    None

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from skuld.engine import Checkpointing, Task, TrainingState, load_checkpoint, save_checkpoint
    >>> net = torch.nn.Linear(2, 1)
    >>> spec = Checkpointing(os.path.join(tempfile.mkdtemp(), "run.pt"), 10, "demo", {"lr": 0.1}, seed=3)
    >>> save_checkpoint(spec, TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.1), step=7), {}, {})
    >>> payload = load_checkpoint(spec.path)
    >>> payload["kind"], payload["step"], payload["seed"], payload["fingerprint"]
    ('demo', 7, 3, {'lr': 0.1})
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": spec.kind,
        "fingerprint": canonical(spec.fingerprint),
        "seed": int(spec.seed),
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": to_cpu(state.optimizer.state_dict()),
        "scaler": None if state.scaler is None else state.scaler.state_dict(),
        "step": int(state.step),
        "history": state.history,
        "task": to_cpu(task_state),
        "terms": to_cpu(term_states),
    }
    atomic_write(spec.path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; no code in the file is run.

    Parameters
    ----------
    path : str

    Returns
    -------
    dict
        The payload. ``ValueError`` naming the file when it is unreadable, crafted, or of
        another format.

    Examples
    --------
    >>> import os, tempfile
    >>> from skuld.engine import load_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "skuld-checkpoint.pt")
    >>> open(path, "wb").write(b"not a checkpoint")
    16
    >>> load_checkpoint(path)
    Traceback (most recent call last):
        ...
    ValueError: cannot read checkpoint ...
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise ValueError(f"{path} is not a skuld checkpoint of format {CHECKPOINT_FORMAT} (found format {found}); "
                         "use another checkpoint_dir to start afresh")
    return payload


def read_resumable(spec: Checkpointing | None) -> dict | None:
    """The checkpoint at ``spec.path`` if this run may resume from it, None if there is none
    (or no checkpointing: ``spec`` None).

    The one resume rule: same kind and same fingerprint. Anything else is a ``ValueError``
    that names the differing entries, because resuming another run's model would silently
    return the wrong model.

    Parameters
    ----------
    spec : Checkpointing or None

    Returns
    -------
    dict or None
        The payload (see :func:`load_checkpoint`).

    Examples
    --------
    >>> import os, tempfile
    >>> from skuld.engine.checkpoint import Checkpointing, read_resumable
    >>> read_resumable(Checkpointing(os.path.join(tempfile.mkdtemp(), "none.pt"), 10, "pretraining")) is None
    True
    """
    if spec is None or not os.path.exists(spec.path):
        return None
    payload = load_checkpoint(spec.path)
    where = os.path.dirname(spec.path) or "."
    if payload.get("kind") != spec.kind:
        raise ValueError(f"the checkpoint in {where} was written by a {payload.get('kind')} run, not {spec.kind}; "
                         "use another checkpoint_dir")
    saved, mine = payload.get("fingerprint", {}), canonical(spec.fingerprint)
    differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if differ:
        raise ValueError(f"the checkpoint in {where} was written with other values of {', '.join(differ)}; "
                         "use the same parameters and data to resume, or another checkpoint_dir to start afresh")
    return payload


def restore(payload: dict, state, task, terms) -> None:
    """Load a checkpoint's payload into a training state, its task and its loss terms.

    Parameters
    ----------
    payload : dict
        From :func:`read_resumable`.
    state : TrainingState
        Its model and optimiser are built already (with the shapes of the checkpoint's).
    task : Task
    terms : sequence of LossTerm

    Returns
    -------
    None

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from skuld.engine import Checkpointing, Task, TrainingState, read_resumable, restore, save_checkpoint
    >>> net = torch.nn.Linear(2, 1)
    >>> spec = Checkpointing(os.path.join(tempfile.mkdtemp(), "run.pt"), 10, "demo", {"lr": 0.1})
    >>> save_checkpoint(spec, TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.1), step=7), {}, {})
    >>> fresh = TrainingState(torch.nn.Linear(2, 1), torch.optim.SGD(net.parameters(), lr=0.1))
    >>> restore(read_resumable(spec), fresh, Task(), [])
    >>> fresh.step, bool(torch.equal(fresh.model.weight, net.weight))
    (7, True)
    """
    saved_terms = payload.get("terms", {})
    names = {t.name for t in terms}
    if names != set(saved_terms):  # before anything is loaded: a refused checkpoint changes nothing
        raise ValueError(f"the checkpoint was written with loss terms {sorted(saved_terms)}, this run has "
                         f"{sorted(names)}; use another checkpoint_dir")
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    if state.scaler is not None and payload.get("scaler") is not None:
        state.scaler.load_state_dict(payload["scaler"])
    state.step = int(payload["step"])
    state.history[:] = list(payload["history"])
    task.load_state_dict(payload.get("task", {}))
    for term in terms:
        term.load_state_dict(saved_terms[term.name])
