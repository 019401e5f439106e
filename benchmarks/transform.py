"""Inference speed and memory of LocalDiscriminativeEncoder.transform.

* a 512 x 512 image at native resolution (image_size=512), gray and RGB: seconds per image;
* a 2000 x 2000 image at native resolution (image_size=None, tiled) and at the default
  working resolution: seconds and the process's peak memory, each in a fresh process.

    python -m benchmarks.transform [--device cuda]

Writes ``benchmarks/results/transform_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


def worker(size: int, channels: int, image_size, device: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from skuld import LocalDiscriminativeEncoder

    rng = np.random.default_rng(0)
    shape = (1, size, size) if channels == 1 else (1, size, size, 3)
    X = rng.random(shape, dtype=np.float32)
    enc = LocalDiscriminativeEncoder(max_iter=1, batch_size=1, crop_size=64, image_size=image_size,
                                     device=device, random_state=0).fit(rng.random((2, 64, 64) + shape[3:], dtype=np.float32))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    enc.transform(X[:, :64, :64])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        E = enc.transform(X)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"size": size, "channels": channels, "image_size": image_size, "device": device,
            "precision": str(__import__("skuld.engine", fromlist=["x"]).resolve_precision(enc.precision, enc.device_)), "seconds": min(times), "median_seconds": sorted(times)[len(times) // 2],
            "output_GiB": E.nbytes / 2**30, "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_transform_GiB": base_rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS_DIR))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        size, ch, isz, rep = args.worker.split(":")
        print(json.dumps(worker(int(size), int(ch), None if isz == "none" else int(isz), args.device, int(rep))))
        return
    cases = [(512, 1, "512", 5), (512, 3, "512", 5), (2000, 1, "none", 2), (2000, 1, "256", 2)]
    rows = []
    for size, ch, isz, rep in cases:
        out = subprocess.run([sys.executable, "-m", "benchmarks.transform", "--device", args.device,
                              "--worker", f"{size}:{ch}:{isz}:{rep}"], capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                    else {"size": size, "error": out.stderr.strip().splitlines()[-1:]})
        print(rows[-1], flush=True)
    meta = run_metadata(device=args.device)
    device_name = meta["cuda_device"] if args.device == "cuda" else f"CPU, {meta['cpu_count']} threads"
    lines = [f"# transform, {device_name} (torch {meta['torch']}, {meta['date']})", "", f"`{meta['command']}`", "",
             "| image | channels | image_size | precision | s / image | output GiB | peak RSS GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | - | - | - | error: {r['error']} | | |")
            continue
        lines.append(f"| {r['size']} x {r['size']} | {r['channels']} | {r['image_size']} | {r['precision']} | "
                     f"{r['seconds']:.3f} | {r['output_GiB']:.2f} | {r['peak_rss_GiB']:.2f} |")
    tag = "cuda" if args.device == "cuda" else "cpu"
    write_results(os.path.join(args.out, f"transform_{tag}"), {"rows": rows}, lines, meta)


if __name__ == "__main__":
    main()
