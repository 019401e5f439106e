"""Training-step speed and peak memory: skuld against the naive published formulation.

Each (implementation, crop size, batch) runs in its own fresh process so that peak memory is
its own. Both implementations train the same network on the same batch (same views, same
loss value); timings are compared as ratios within one run.

    python -m benchmarks.train_step                       # CPU: 128 px batch 2, 448 px batch 4
    python -m benchmarks.train_step --device cuda --compile

Writes ``benchmarks/results/train_step_<device>.json`` and ``.md``.
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


def one_run(impl: str, crop: int, batch: int, steps: int, device: str, compile_: bool, channels: int,
            memory_saving: bool = False) -> dict:
    import torch

    from skuld.nn import LDNet, ObjectiveConfig, ViewConfig, ld_objective, make_views
    from skuld.preprocessing import normalize

    torch.manual_seed(0)
    dev = torch.device(device)
    model = LDNet(channels).to(dev)
    fast = impl.startswith("skuld")
    naive = impl.startswith("naive")
    if fast:
        model = model.to(memory_format=torch.channels_last)
        model.memory_saving = memory_saving
    if fast and compile_:
        compiled_block = model.compiled()  # kept referenced: collecting it would undo the compile
        compiled_block.__enter__()
    net = model
    # skuld's training loop turns on cuDNN autotuning (fixed crop size); "naive-tuned" is the
    # naive formulation with it too, to show how much of the gain that flag alone brings.
    torch.backends.cudnn.benchmark = impl != "naive"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = ObjectiveConfig()
    view_cfg = ViewConfig()
    pairs = torch.rand(batch, 2, channels, crop, crop, device=dev)
    amp = torch.bfloat16 if impl == "skuld-bf16" else None
    if naive:
        from benchmarks.naive_ld import naive_objective as objective
    else:
        objective = ld_objective

    def step(i):
        g = torch.Generator(device=dev).manual_seed(i)
        h = torch.Generator().manual_seed(i)
        views = make_views(pairs, view_cfg, g, h)
        x = normalize(views.images, (0.5,) * channels, (0.5,) * channels)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=amp) if amp else torch.autocast(dev.type, enabled=False):
            out = objective(net, x, views, "ld", cfg)
        loss = out[0] if isinstance(out, tuple) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    warmup = 3 if compile_ else 1
    losses = []
    for i in range(warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        losses.append(step(warmup + i))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "impl": impl, "crop": crop, "batch": batch, "images_per_step": 5 * batch, "steps": steps,
        "s_per_step": dt, "images_per_s": 5 * batch / dt, "peak_GiB": peak,
        "memory": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS",
        "loss_last": float(losses[-1]), "compile": bool(fast and compile_),
        "precision": "bf16" if amp else "fp32", "channels_last": fast, "memory_saving": bool(fast and memory_saving),
    }


def naive_impl(impl):
    return impl.startswith("naive")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default=None, help="comma list of CROPxBATCH, e.g. 128x2,448x4")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile skuld's network (GPU)")
    ap.add_argument("--memory-saving", action="store_true", help="recompute full-resolution layers in backward")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--impls", default=None, help="comma list among naive, skuld-fp32, skuld-bf16")
    ap.add_argument("--skip-naive-above", type=int, default=None,
                    help="do not run the naive baseline above this crop size (CPU default 256: it needs ~32 GiB at 448)")
    ap.add_argument("--out", default=str(RESULTS_DIR))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        impl, crop, batch, steps = args.worker.split(":")
        print(json.dumps(one_run(impl, int(crop), int(batch), int(steps), args.device, args.compile, args.channels,
                                 args.memory_saving)))
        return

    cuda = args.device.startswith("cuda")
    configs = args.configs or ("128x2,256x4,448x4" if cuda else "128x2,448x4")
    skip_above = args.skip_naive_above if args.skip_naive_above is not None else (10**9 if cuda else 256)
    import torch

    impls = ["naive", "naive-tuned", "skuld-fp32"] if cuda else ["naive", "skuld-fp32"]
    if cuda or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        impls.append("skuld-bf16")
    if args.impls:
        impls = args.impls.split(",")
    rows = []
    for spec in configs.split(","):
        crop, batch = (int(v) for v in spec.split("x"))
        steps = args.steps or (30 if cuda else (10 if crop <= 160 else 2))
        for impl in impls:
            if naive_impl(impl) and crop > skip_above:
                rows.append({"impl": impl, "crop": crop, "batch": batch, "skipped": f"naive baseline not run above {skip_above} px on this device"})
                continue
            cmd = ([sys.executable, "-m", "benchmarks.train_step", "--device", args.device,
                    "--channels", str(args.channels), "--worker", f"{impl}:{crop}:{batch}:{steps}"]
                   + (["--compile"] if args.compile else []) + (["--memory-saving"] if args.memory_saving else []))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"impl": impl, "crop": crop, "batch": batch, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)

    def ref(r, name):
        return next((b for b in rows if b["impl"] == name and b["crop"] == r["crop"] and b["batch"] == r["batch"]
                     and "s_per_step" in b), None)

    table = ["| crop | batch | impl | s/step | images/s | peak GiB | speed vs naive | memory vs naive | speed vs naive-tuned |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "s_per_step" not in r:
            table.append(f"| {r['crop']} | {r['batch']} | {r['impl']} | - | - | - | {r.get('skipped') or r.get('error')} | | |")
            continue
        base, tuned = ref(r, "naive"), ref(r, "naive-tuned")
        ratio = f"{base['s_per_step'] / r['s_per_step']:.2f}x" if base else "-"
        mem = f"{r['peak_GiB'] / base['peak_GiB']:.2f}" if base else "-"
        tuned_ratio = f"{tuned['s_per_step'] / r['s_per_step']:.2f}x" if tuned else "-"
        table.append(f"| {r['crop']} | {r['batch']} | {r['impl']}{' +compile' if r.get('compile') else ''}"
                     f"{' +memory_saving' if r.get('memory_saving') else ''} | "
                     f"{r['s_per_step']:.3f} | {r['images_per_s']:.1f} | {r['peak_GiB']:.2f} | {ratio} | {mem} | {tuned_ratio} |")
    meta = run_metadata(device=args.device)
    device_name = meta["cuda_device"] if cuda else f"{meta['cpu']}, {meta['cpu_count']} CPU threads"
    tag = "cuda" if cuda else "cpu"
    tag += "_memory_saving" if args.memory_saving else ""
    md = [f"# Training step, {device_name} (torch {meta['torch']}, {meta['date']})", "", f"`{meta['command']}`", ""]
    write_results(os.path.join(args.out, f"train_step_{tag}"), {"rows": rows}, md + table, meta)


if __name__ == "__main__":
    main()
