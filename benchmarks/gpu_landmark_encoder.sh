#!/usr/bin/env bash
# Longer pretraining of the locator's encoder on a GPU (run from the repository root):
#   IMAGES=dir OUT=dir STEPS=10000 bash benchmarks/gpu_landmark_encoder.sh
# Same settings as OneShotLandmarkLocator's CPU default (skuld.landmarks.ENCODER_DEFAULTS),
# only more steps (an H200 ran 10,000 steps in 196 s, about 52 steps/s, at these small crops).
set -u
source benchmarks/gpu_env.sh
python3 - <<'PY'
import os, time, joblib
from skuld import LocalDiscriminativeEncoder
from skuld.landmarks import ENCODER_DEFAULTS
images, out, steps = os.environ["IMAGES"], os.environ["OUT"], int(os.environ.get("STEPS", 10000))
params = {**ENCODER_DEFAULTS, "device": "cuda", "random_state": 0, "num_workers": 4, "compile": False}
t = time.time()
enc = LocalDiscriminativeEncoder(**{**params, "max_iter": steps, "verbose": 1}).fit(images)
print(f"fit {steps} steps in {time.time() - t:.0f} s; loss {enc.loss_history_[-1]['loss']:.3f}", flush=True)
enc._optimizer = None  # the optimizer state would triple the file; the weights are what is needed
joblib.dump(enc, os.path.join(out, f"locator_encoder_{steps}.joblib"))
PY
