"""One checkpoint format, one resume rule, and files that cannot run code."""

import os
import pickle

import pytest
import torch

from skuld.engine import Checkpointing, Task, TrainingState, load_checkpoint, read_resumable, save_checkpoint
from skuld.engine.checkpoint import canonical


def saved(tmp_path, kind="segmentation", fingerprint=None):
    net = torch.nn.Linear(2, 1)
    spec = Checkpointing(str(tmp_path / "ckpt.pt"), 10, kind, fingerprint or {"lr": 0.1, "crop": (32, 32)}, seed=5)
    save_checkpoint(spec, TrainingState(net, torch.optim.Adam(net.parameters()), step=4, history=[{"loss": 1.0}]),
                    {"schedule": {"pd_steps": 3}}, {})
    return spec


def test_a_run_resumes_only_its_own_kind_and_fingerprint(tmp_path):
    spec = saved(tmp_path)
    payload = read_resumable(spec)
    assert payload["step"] == 4 and payload["seed"] == 5 and payload["task"] == {"schedule": {"pd_steps": 3}}
    assert read_resumable(Checkpointing(spec.path, 10, "segmentation", {"crop": [32, 32], "lr": 0.1})) is not None
    with pytest.raises(ValueError, match="other values of crop, lr"):
        read_resumable(Checkpointing(spec.path, 10, "segmentation", {"lr": 0.2, "crop": (16, 16)}))
    with pytest.raises(ValueError, match="other values of data"):
        read_resumable(Checkpointing(spec.path, 10, "segmentation", {"lr": 0.1, "crop": (32, 32), "data": "abc"}))
    with pytest.raises(ValueError, match="written by a segmentation run, not pretraining"):
        read_resumable(Checkpointing(spec.path, 10, "pretraining", spec.fingerprint))
    assert read_resumable(None) is None
    assert read_resumable(Checkpointing(str(tmp_path / "none.pt"), 10, "segmentation")) is None


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "kind": "pretraining", "x": _Payload()}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps({"format": 2}))  # a plain pickle is no torch file either
    with pytest.raises(ValueError, match="cannot read checkpoint|not a skuld checkpoint"):
        load_checkpoint(str(path))


def test_other_formats_and_garbage_are_named(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "model": {}}, path)
    with pytest.raises(ValueError, match="format 2 .found format 1."):
        load_checkpoint(str(path))
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(str(path))


def test_saving_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    spec = saved(tmp_path)
    before = open(spec.path, "rb").read()

    class Broken(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(spec, TrainingState(Broken(), torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1)),
                        {}, {})
    assert open(spec.path, "rb").read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_fingerprints_compare_as_plain_data():
    assert canonical({"a": (1, 2), "b": {"c": (0.5,)}}) == {"a": [1, 2], "b": {"c": [0.5]}}
    assert Task().state_dict() == {}
