"""The CUDA path: skipped on machines without a GPU (CI), run by hand on one."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import skuld
from skuld import LocalDiscriminativeEncoder

from .helpers import TINY, blobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["auto", "fp32", "fp16"])
@pytest.mark.parametrize("memory_saving", [False, True])
def test_fit_and_transform_on_cuda(precision, memory_saving):
    X = blobs(4, 64)
    enc = LocalDiscriminativeEncoder(**{**TINY, "device": "cuda", "precision": precision,
                                        "memory_saving": memory_saving}).fit(X)
    assert enc.device_.type == "cuda"
    assert next(enc.model_.parameters()).is_cuda
    assert all(np.isfinite(r["loss"]) for r in enc.loss_history_)
    E = enc.transform(X[:2])
    assert E.shape == (2, 64, 64, 8)
    np.testing.assert_allclose(np.linalg.norm(E, axis=-1), 1, atol=1e-3)


def test_a_model_fitted_on_gpu_loads_and_runs_without_one(tmp_path):
    X = blobs(4, 64)
    enc = LocalDiscriminativeEncoder(**{**TINY, "device": "auto"}).fit(X)
    assert enc.device_.type == "cuda"
    path = tmp_path / "gpu.skuld"
    skuld.save(enc, path)
    np.save(tmp_path / "x.npy", X[:1])
    code = (
        "import skuld, numpy as np, torch; assert not torch.cuda.is_available(); "
        f"m = skuld.load({str(path)!r}); E = m.transform(np.load({str(tmp_path / 'x.npy')!r})); "
        f"np.save({str(tmp_path / 'e.npy')!r}, E); print(m.device_)"
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "LD_", "HOME"))})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
    E_cpu = np.load(tmp_path / "e.npy")
    E_gpu = enc.transform(X[:1])
    # bf16 on the GPU, float32 (or bf16 on a bf16-capable CPU) here: same embeddings to ~1e-2.
    assert np.mean(np.sum(E_cpu * E_gpu, axis=-1)) > 0.99


def test_compiled_training_runs_and_leaves_plain_modules():
    X = blobs(4, 64)
    enc = LocalDiscriminativeEncoder(**{**TINY, "device": "cuda", "compile": True}).fit(X)
    assert all(m._compiled_call_impl is None for m in enc.model_.modules())
    assert enc.transform(X[:1]).shape == (1, 64, 64, 8)
