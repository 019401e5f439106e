"""Does skuld's fast step learn the same as the naive published formulation?

Trains the same network from the same initialisation on the same stream of batches (the
bundled chest X-rays, 448 px crops, batch 4) for N steps with each implementation and
compares the loss curves. Run on a GPU:

    python -m benchmarks.loss_trajectory --device cuda --steps 200

Writes ``benchmarks/results/loss_trajectory_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


def train(impl, steps, device, crop, batch, seed=0):
    from benchmarks.naive_ld import naive_objective
    from skuld.datasets import load_cxr_tiny
    from skuld.engine import step_generators
    from skuld.io import ImageCollection
    from skuld.nn import LDNet, ObjectiveConfig, ViewConfig, ld_objective, make_views
    from skuld.preprocessing import normalize
    from skuld.pretraining import PairCropDataset, Schedule

    dev = torch.device(device)
    torch.manual_seed(seed)
    model = LDNet(1).to(dev)
    fast = impl != "naive"
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = Schedule.scaled(1e-3, steps, 0.2)
    images = ImageCollection(load_cxr_tiny().images)
    data = PairCropDataset(images, crop, 512, (0.9, 1.0), seed, length=steps * batch)
    vcfg = ViewConfig(rotation=0.0, rot90=False)
    ocfg = ObjectiveConfig()
    amp = torch.bfloat16 if impl == "skuld-bf16" else None
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        pairs = torch.stack([data[step * batch + i] for i in range(batch)]).to(dev)
        g, h = step_generators(seed, step, dev)
        views = make_views(pairs, vcfg, g, h)
        x = normalize(views.images, (0.5,), (0.5,))
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = sched.lr(step)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            if impl == "naive":
                loss = naive_objective(model, x, views, sched.stage(step), ocfg)
            else:
                loss = ld_objective(model, x, views, sched.stage(step), ocfg)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    losses = torch.stack(losses).float().cpu().numpy()
    return losses, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--crop", type=int, default=448)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args()
    curves, secs = {}, {}
    # "naive-seed1" (another initialisation and batch stream) measures run-to-run noise.
    for impl in ("naive", "naive-seed1", "skuld-fp32", "skuld-bf16"):
        seed = 1 if impl == "naive-seed1" else 0
        curves[impl], secs[impl] = train(impl.replace("-seed1", ""), args.steps, args.device, args.crop, args.batch, seed)
        print(impl, f"{secs[impl]:.1f} s", curves[impl][::20].round(3), flush=True)
    pd = int(round(0.2 * args.steps))
    w = 20
    rows = []
    for impl, c in curves.items():
        ref = curves["naive"]
        rows.append({
            "impl": impl, "seconds": secs[impl],
            "mean_loss_last_20": float(c[-w:].mean()), "std_loss_last_20": float(c[-w:].std()),
            "mean_abs_diff_vs_naive": float(np.abs(c - ref).mean()),
            "mean_abs_diff_vs_naive_ld_stage": float(np.abs(c[pd:] - ref[pd:]).mean()),
        })
    meta = run_metadata(device=args.device)
    dev_name = meta["cuda_device"] if args.device.startswith("cuda") else "cpu"
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    result = {"steps": args.steps, "crop": args.crop, "batch": args.batch, "rows": rows,
              "curves": {k: v.tolist() for k, v in curves.items()}}
    lines = [f"# Loss trajectories, {dev_name}, {args.steps} steps, {args.crop} px, batch {args.batch}", "",
             f"`{meta['command']}`", "",
             "| impl | seconds | mean loss, last 20 steps (std) | mean abs diff vs naive (all / LD stage) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['seconds']:.1f} | {r['mean_loss_last_20']:.3f} ({r['std_loss_last_20']:.3f}) | "
                     f"{r['mean_abs_diff_vs_naive']:.3f} / {r['mean_abs_diff_vs_naive_ld_stage']:.3f} |")
    # One line: the curves hold every step's loss of every implementation.
    write_results(os.path.join(args.out, f"loss_trajectory_{tag}"), result, lines, meta, indent=None)


if __name__ == "__main__":
    main()
