#!/usr/bin/env bash
# One prepared GPU session (run from the repository root on a CUDA machine). Everything it
# measures lands in $OUT (default ./gpu-results): test results, step benchmark, loss
# trajectories over 200 steps, transform timings, a compiled-step benchmark, and a small
# model trained on the GPU to check that it loads on a CPU-only machine.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT" /tmp/r /tmp/r/compile
source benchmarks/gpu_env.sh
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, sklearn; print('torch', torch.__version__, 'sklearn', sklearn.__version__, torch.cuda.get_device_name(0))"
echo "== GPU tests"; timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -6
echo "== model trained on the GPU, for the CPU round trip"
timeout 90 python3 - <<'PY'
import os, joblib, numpy as np
from skuld import LocalDiscriminativeEncoder
from skuld.datasets import load_cxr_tiny
X = load_cxr_tiny().images
enc = LocalDiscriminativeEncoder(max_iter=30, batch_size=2, crop_size=128, image_size=256, width=0.5, rotation=0.0,
                                 rot90=False, device="cuda", random_state=0).fit(X)
out = os.environ["OUT"]
joblib.dump(enc, os.path.join(out, "gpu_model.joblib"))
np.save(os.path.join(out, "gpu_embedding.npy"), enc.transform(X[:1])[0, ::8, ::8])
print("device", enc.device_, "loss", enc.loss_history_[0]["loss"], "->", enc.loss_history_[-1]["loss"])
PY
echo "== train step"; timeout 150 python3 -m benchmarks.train_step --device cuda --configs 448x4 --steps 20 --out /tmp/r
echo "== loss trajectory"; timeout 200 python3 -m benchmarks.loss_trajectory --device cuda --steps 200 --out /tmp/r
echo "== transform"; timeout 90 python3 -m benchmarks.transform --device cuda --out /tmp/r
echo "== compiled step"; timeout 200 python3 -m benchmarks.train_step --device cuda --configs 448x4,448x8 --steps 20 --compile --impls skuld-bf16 --out /tmp/r/compile
} 2>&1 | tee "$OUT/log.txt"
cp /tmp/r/*.json "$OUT/" 2>/dev/null
cp /tmp/r/compile/train_step_cuda.json "$OUT/train_step_cuda_compile.json" 2>/dev/null
cat /tmp/r/*.md /tmp/r/compile/*.md > "$OUT/tables.md" 2>/dev/null
ls -la "$OUT"
