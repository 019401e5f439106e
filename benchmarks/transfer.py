"""Does Local Discrimination pretraining help downstream segmentation with few labels?

Label-efficiency on real data, every method in the same run and on the same splits
(:mod:`benchmarks.common.data`; the encoders are pretrained by ``benchmarks.transfer_data``):

* DRIVE vessels: labelled subsets of the 20 training images, Dice inside the field of view
  on the 20 test images (first observer);
* cxr_covid lungs and heart (cardiomediastinum): labelled subsets of a patient-disjoint pool,
  Dice per structure on a patient-disjoint test set; pretraining on a third part.

Methods (the U-Nets all train ``--max-iter`` steps of 4 crops of 160 px, the same budget):

* ``random``: U-Net from random initialisation (the baseline);
* ``ld-schedule`` / ``ld-frozen`` / ``ld-none``: encoder from LD pretraining,
  ``freeze="schedule"`` / ``"encoder"`` / ``"none"`` (everything fine-tuned from the first step);
* ``pd-schedule``: encoder from patch discrimination only (the ablation of the region stage);
* ``ld-probe``: logistic regression on the LD embeddings (PixelClassifier);
* ``rf``: skimage ``multiscale_basic_features`` + RandomForest on the same sampled pixels.

Seed ``s`` picks which labelled images are used (file order for all of them) and seeds the
training, so the spread covers both. Results accumulate in ``benchmarks/results/transfer.json``
(one record per dataset, method, number of labels and seed; finished records are skipped on
rerun), and ``--report`` writes ``transfer.md`` and ``transfer.png`` (also into ``docs/img/``).

Usage::

    python -m benchmarks.transfer_data pretrain drive-ld drive-pd             # once, cached
    python -m benchmarks.transfer_data pretrain cxr-ld cxr-pd --max-iter 1000
    python -m benchmarks.transfer --dataset drive --methods random ld-schedule --labels 2 --seeds 0 1 2
    python -m benchmarks.transfer --dataset drive --methods random ld-schedule --labels 1 2 \
        --test-time-augmentation flips                     # predictions averaged over the 4 flips
    python -m benchmarks.transfer --report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, data
from benchmarks.common.results import RESULTS_DIR, write_json, write_markdown
from skuld import PixelClassifier, TransferSegmenter
from skuld.metrics import dice

RESULTS = RESULTS_DIR / "transfer"
METHODS = ("random", "ld-schedule", "ld-frozen", "ld-none", "pd-schedule", "ld-probe", "rf")
LABELS = {"drive": (1, 2, 5, 20), "cxr": (1, 2, 5, 19)}
#: Seconds per LD step at 160 px, batch 4 on the 2-core CI machine, measured alone (README).
STEP_SECONDS = 1.3
STRUCTURES = {"drive": {1: "vessels"}, "cxr": {1: "lungs", 2: "heart"}}


def load(dataset: str):
    """(pool images, pool masks, test images, test masks, test region masks or None)."""
    if dataset == "drive":
        xi, yi, fi = data.load_drive("training")
        xt, yt, ft = data.load_drive("test")
        return xi, yi, fi, xt, yt, ft
    split = data.cxr_split()
    xi, yi = data.load_cxr(split["pool"])
    xt, yt = data.load_cxr(split["test"])
    return xi, yi, None, xt, yt, None


def subset(n_pool: int, n: int, seed: int) -> list[int]:
    if n >= n_pool:
        return list(range(n_pool))
    return sorted(np.random.default_rng(seed).choice(n_pool, n, replace=False).tolist())


def score(dataset: str, pred: list[np.ndarray], truth: list[np.ndarray], regions) -> dict:
    out = {}
    for value, name in STRUCTURES[dataset].items():
        p = [np.asarray(q) == value if q.dtype != bool else q for q in pred]
        t = [m == value if m.dtype != bool else m for m in truth]
        out[name] = dice(p, t, regions)
    out["mean"] = float(np.mean([out[name] for name in STRUCTURES[dataset].values()]))
    return out


def segmenter_params(dataset: str, method: str, max_iter: int, seed: int, encoder: str | None = None) -> dict:
    """TransferSegmenter parameters; ``encoder``: the cache name of the pretrained encoder
    (default ``{dataset}-ld`` or ``{dataset}-pd`` by method)."""
    common = dict(max_iter=max_iter, batch_size=4, crop_size=160, random_state=seed, verbose=0,
                  rotation=15.0 if dataset == "drive" else 5.0, flips=dataset == "drive")
    common["image_size"] = None if dataset == "drive" else 256
    if method == "random":
        return {**common, "encoder": None, "normalization": "auto"}
    kind = "ld" if method.startswith("ld") else "pd"
    path = data.encoder_path(encoder or f"{dataset}-{kind}")
    if not path.exists():
        raise SystemExit(f"{path} missing: run python -m benchmarks.transfer_data pretrain {dataset}-{kind}"
                         + (f" --out {encoder}" if encoder else ""))
    freeze = {"frozen": "encoder", "none": "none"}.get(method.split("-")[1], "schedule")
    return {**common, "encoder": str(path), "freeze": freeze}


def run_unet(dataset, method, xs, ys, xt, max_iter, seed, tta=None, encoder=None):
    seg = TransferSegmenter(**segmenter_params(dataset, method, max_iter, seed, encoder), test_time_augmentation=tta)
    seg.fit(xs, ys)
    return seg.predict(xt), {"final_loss": seg.loss_history_[-1]["loss"]}


def _probe_maps(dataset, images):
    import joblib

    enc = joblib.load(data.encoder_path(f"{dataset}-ld"))
    return enc.transform(list(images))


def run_probe(dataset, xs, ys, fs, xt, seed):
    from sklearn.linear_model import LogisticRegression

    # Balanced classes: vessels are 12 % of the field of view, and an unweighted probe mostly
    # answers "background" (Dice 0.19 against 0.41 balanced, measured on 6 test images).
    clf = PixelClassifier(LogisticRegression(max_iter=2000, class_weight="balanced"), n_pixels=50_000,
                          random_state=seed)
    clf.fit(_probe_maps(dataset, xs), list(ys), mask=fs)
    return [clf.predict([f])[0] for f in _probe_maps(dataset, xt)], {}


def _rf_features(img):
    from skimage.feature import multiscale_basic_features

    img = np.asarray(img, np.float32) / 255.0
    return multiscale_basic_features(img, channel_axis=-1 if img.ndim == 3 else None, sigma_min=1, sigma_max=16)


def _working(img, size, labels=False):
    """Resize so that the shorter side is ``size`` (None: unchanged), as the U-Nets see it."""
    from skimage.transform import resize

    if size is None:
        return img
    h, w = img.shape[:2]
    scale = size / min(h, w)
    shape = (round(h * scale), round(w * scale)) + img.shape[2:]
    order = 0 if labels else 1  # nearest for label maps and masks
    out = resize(img, shape, order=order, preserve_range=True, anti_aliasing=order == 1)
    return out.astype(img.dtype)


def run_rf(dataset, xs, ys, fs, xt, seed):
    """Multiscale pixel features + RandomForest, at the U-Nets' working resolution."""
    from skimage.transform import resize
    from sklearn.ensemble import RandomForestClassifier

    size = segmenter_params(dataset, "random", 1, seed)["image_size"]
    rf = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, n_jobs=1, random_state=seed)
    clf = PixelClassifier(rf, n_pixels=50_000, random_state=seed)
    clf.fit([_rf_features(_working(x, size)) for x in xs], [_working(y, size, labels=True) for y in ys],
            mask=None if fs is None else [_working(f, size, labels=True) for f in fs])
    pred = []
    for x in xt:
        p = clf.predict([_rf_features(_working(x, size))])[0]
        if p.shape != x.shape[:2]:
            p = resize(p, x.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(p.dtype)
        pred.append(p)
    return pred, {}


def run_one(dataset, method, n, seed, max_iter, cache, tta=None, score_pool=False, encoder=None):
    """One record. ``score_pool``: also predict the pool images that are not labelled this time
    and record their Dice as ``dice_pool`` (settings can then be compared without the test set;
    ``seconds`` then includes those predictions)."""
    xi, yi, fi, xt, yt, ft = cache
    idx = subset(len(xi), n, seed)
    xs, ys = [xi[i] for i in idx], [yi[i] for i in idx]
    fs = None if fi is None else [fi[i] for i in idx]
    rest = [i for i in range(len(xi)) if i not in idx] if score_pool else []
    targets = list(xt) + [xi[i] for i in rest]
    start = time.perf_counter()
    if method == "ld-probe":
        pred, info = run_probe(dataset, xs, ys, fs, targets, seed)
    elif method == "rf":
        pred, info = run_rf(dataset, xs, ys, fs, targets, seed)
    else:
        pred, info = run_unet(dataset, method, xs, ys, targets, max_iter, seed, tta, encoder)
        if encoder:
            info["encoder"] = encoder
    seconds = time.perf_counter() - start
    unet = method not in ("ld-probe", "rf")
    if rest:
        info["dice_pool"] = score(dataset, pred[len(xt):], [yi[i] for i in rest],
                                  None if fi is None else [fi[i] for i in rest])
    return {"dataset": dataset, "method": method, "n_labelled": n, "seed": seed, "images": idx,
            "max_iter": max_iter if unet else None, "tta": tta if unet else None, "seconds": seconds,
            "dice": score(dataset, pred[:len(xt)], yt, ft), **info}


def key(r):
    return (r["dataset"], r["method"], r["n_labelled"], r["seed"], r.get("max_iter"), r.get("tta"), r.get("encoder"))


def load_results() -> list[dict]:
    path = RESULTS.with_suffix(".json")
    if not path.exists():
        return []
    return json.loads(path.read_text())["records"]


def save_results(records: list[dict]) -> None:
    write_json(RESULTS, {"records": records})


def pretraining_info() -> dict:
    out = {}
    for p in sorted(data.CACHE.glob("encoder-*.json")):
        info = json.loads(p.read_text())
        out[info["name"]] = info
    return out


def _rows(records: list[dict], dataset: str) -> tuple[list[dict], list[str]]:
    """The dataset's records, U-Nets trained for other than the usual number of steps or
    predicting with test-time augmentation renamed into rows of their own ("ld-schedule
    +flips (1000 steps)"); and the row names in order."""
    recs = [dict(r) for r in records if r["dataset"] == dataset]
    steps = [r["max_iter"] for r in recs if r["max_iter"] is not None]
    usual = max(set(steps), key=steps.count) if steps else None
    for r in recs:
        if r.get("tta"):
            r["method"] = f"{r['method']} +{r['tta']}"
        if r["max_iter"] not in (None, usual):
            r["method"] = f"{r['method']} ({r['max_iter']} steps)"
        if r.get("encoder"):
            r["method"] = f"{r['method']} [encoder {r['encoder']}]"
    return recs, list(METHODS) + sorted({r["method"] for r in recs} - set(METHODS))


def _sd(values) -> float:
    """Sample standard deviation over seeds (ddof=1; 0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_cells(recs: list[dict], method: str, ns: list[int], field: str) -> list[str]:
    """Per number of labels, "mean +- sd (n=seeds)" of ``record[field]["mean"]`` over the
    method's records that have the field, or "-"."""
    cells = []
    for n in ns:
        vals = [r[field]["mean"] for r in recs if r["method"] == method and r["n_labelled"] == n and field in r]
        cells.append(f"{np.mean(vals):.3f} +- {_sd(vals):.3f} (n={len(vals)})" if vals else "-")
    return cells


def _paired_rows(recs: list[dict], methods: list[str], ns: list[int], structure: str, against: str = "random",
                 only: str = "") -> list[str]:
    """Table rows: per method and number of labels, mean +- std over seeds of the Dice of
    ``structure`` minus that of ``against`` on the same images. For ``against="random"`` the
    baseline is trained as long and predicts the same way (the method's suffix, " +flips (1000
    steps)", is kept); other baselines (``"rf"``) have no variants. ``only``: methods whose
    name starts with it."""
    rows = []
    for method in methods:
        if not method.startswith(only):
            continue
        suffix = method[method.index(" "):] if " " in method and against == "random" else ""
        suffix = suffix.split(" [encoder")[0]  # random initialisation has no encoder
        baseline = against + suffix
        if method == baseline or method.split(" ")[0] == against:
            continue
        cells = []
        for n in ns:
            base = {r["seed"]: r["dice"][structure] for r in recs if r["method"] == baseline and r["n_labelled"] == n}
            d = [r["dice"][structure] - base[r["seed"]] for r in recs
                 if r["method"] == method and r["n_labelled"] == n and r["seed"] in base]
            cells.append(f"{np.mean(d):+.3f} +- {_sd(d):.3f} (n={len(d)})" if d else "-")
        if any(c != "-" for c in cells):
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return rows


def report(records: list[dict]) -> str:
    """Markdown tables: mean +- std over seeds of the mean Dice, per dataset, method, labels."""
    lines = ["# Transfer: does pretraining help segmentation with few labels?", "",
             "Written by `python -m benchmarks.transfer --report` from `transfer.json`; every number is "
             "the test-set Dice (mean over test images), mean +- sample standard deviation over seeds (ddof=1; "
             "n = seeds).", ""]
    pre = pretraining_info()
    if pre:
        lines += ["Pretraining runs (160 px crops, batch 4). The budget is 30 CPU minutes on 2 cores; a step takes "
                  f"about {STEP_SECONDS} s there when it has the cores to itself (README), which gives the "
                  "estimate. The wall time is longer because three runs and other work shared the 2 cores.", "",
                  "| encoder | steps | images | estimated minutes alone | wall seconds here |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['max_iter']} | {v['n_images']} | {v['max_iter'] * STEP_SECONDS / 60:.0f} | "
                  f"{v['fit_seconds']:.0f} |" for k, v in pre.items()]
        lines.append("")
    for dataset in ("drive", "cxr"):
        recs, methods = _rows(records, dataset)
        if not recs:
            continue
        structures = list(STRUCTURES[dataset].values())
        ns = sorted({r["n_labelled"] for r in recs})
        title = {"drive": "DRIVE vessels (Dice inside the FOV, 20 test images)",
                 "cxr": "cxr_covid lungs and heart (mean Dice of both, test set)"}[dataset]
        lines += [f"## {title}", "", "| method | " + " | ".join(f"{n} labelled" for n in ns) + " |",
                  "|---|" + "---|" * len(ns)]
        for method in methods:
            cells = _mean_cells(recs, method, ns, "dice")
            if any(c != "-" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        pooled = [m for m in methods if any(r["method"] == m and "dice_pool" in r for r in recs)]
        if pooled:  # settings compared without the test set
            lines += ["", "Dice on the pool's images that were not labelled in the run (the training images of "
                      "DRIVE, the X-ray pool; `--score-pool`), for comparing settings without the test set:", "",
                      "| method | " + " | ".join(f"{n} labelled" for n in ns) + " |", "|---|" + "---|" * len(ns)]
            for method in pooled:
                lines.append(f"| {method} | " + " | ".join(_mean_cells(recs, method, ns, "dice_pool")) + " |")
        paired = [("mean", "random", "", "Paired difference to random initialisation (same labelled images, same "
                   "seed):")]
        if dataset == "cxr":  # the target is on the lungs
            paired.append(("lungs", "random", "", "Paired difference to random initialisation on the lungs alone:"))
        else:  # the issue asks whether LD beats the classical baseline
            paired.append(("mean", "rf", "ld-", "Paired difference of the LD U-Nets to the RandomForest (same "
                           "labelled images):"))
        for structure, against, only, caption in paired:
            diffs = _paired_rows(recs, methods, ns, structure, against, only)
            if diffs:
                lines += ["", caption, "", "| method | " + " | ".join(f"{n} labelled" for n in ns) + " |",
                          "|---|" + "---|" * len(ns)]
                lines += diffs
        if len(structures) > 1:
            lines += ["", "Per structure (mean over seeds):", "", "| method | labelled | "
                      + " | ".join(structures) + " |", "|---|---|" + "---|" * len(structures)]
            for method in methods:
                for n in ns:
                    sel = [r for r in recs if r["method"] == method and r["n_labelled"] == n]
                    if sel:
                        lines.append(f"| {method} | {n} | " + " | ".join(
                            f"{np.mean([r['dice'][s] for r in sel]):.3f}" for s in structures) + " |")
        secs = {m: np.mean([r["seconds"] for r in recs if r["method"] == m]) for m in methods
                if any(r["method"] == m for r in recs)}
        lines += ["", "Seconds per fit + test prediction (mean; runs with `--score-pool` include the pool's): "
                  + ", ".join(f"{m} {s:.0f}" for m, s in secs.items()), ""]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("drive", "cxr") if any(r["dataset"] == d for r in records)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows, methods = _rows(records, dataset)
        for method in methods:
            recs = [r for r in rows if r["method"] == method]
            ns = sorted({r["n_labelled"] for r in recs})
            if not ns:
                continue
            m = [np.mean([r["dice"]["mean"] for r in recs if r["n_labelled"] == n]) for n in ns]
            s = [_sd([r["dice"]["mean"] for r in recs if r["n_labelled"] == n]) for n in ns]
            base = method.split(" ")[0]
            ax.errorbar(ns, m, yerr=s, marker="o" if base == method else "s", capsize=3, label=method,
                        color=f"C{METHODS.index(base)}", alpha=1.0 if base == method else 0.6)
        ax.set_xscale("log")
        ticks = sorted({r["n_labelled"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("test Dice")
        ax.set_title({"drive": "DRIVE vessels", "cxr": "chest X-ray lungs + heart"}[dataset])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["drive", "cxr"])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--labels", nargs="+", type=int, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-iter", type=int, default=500, help="training steps of every U-Net")
    ap.add_argument("--test-time-augmentation", choices=["flips", "dihedral"], default=None,
                    help="the U-Nets predict averaged over these views (rows of their own: 'random +flips')")
    ap.add_argument("--encoder", default=None,
                    help="cache name of the pretrained encoder for the U-Nets (benchmarks.transfer_data pretrain "
                         "--out); "
                         "rows of their own")
    ap.add_argument("--score-pool", action="store_true",
                    help="also score the pool images not labelled in each run (dice_pool; reruns records without it)")
    ap.add_argument("--report", action="store_true", help="write transfer.md and transfer.png from the JSON")
    args = ap.parse_args(argv)
    if args.report:
        records = load_results()
        write_markdown(RESULTS, report(records))
        plot(records, RESULTS.with_suffix(".png"))
        plot(records, ROOT / "docs" / "img" / "transfer.png")  # the docs show the measured curves
        print(RESULTS.with_suffix(".md").read_text())
        return
    if args.dataset is None:
        ap.error("--dataset is required unless --report")
    cache = load(args.dataset)  # exits with a message when the data set is absent
    for n in args.labels or LABELS[args.dataset]:
        for method in args.methods:
            for seed in args.seeds:
                unet = method not in ("ld-probe", "rf")
                probe = {"dataset": args.dataset, "method": method, "n_labelled": n, "seed": seed,
                         "max_iter": args.max_iter if unet else None,
                         "tta": args.test_time_augmentation if unet else None,
                         "encoder": args.encoder if unet and method != "random" else None}
                done = [r for r in load_results() if key(r) == key(probe)]
                if done and (not args.score_pool or "dice_pool" in done[0]):
                    continue
                rec = run_one(args.dataset, method, n, seed, args.max_iter, cache, args.test_time_augmentation,
                              args.score_pool, args.encoder if method != "random" else None)
                print(f"{args.dataset} {method} n={n} seed={seed}: Dice {rec['dice']} in {rec['seconds']:.0f} s",
                      flush=True)
                records = [r for r in load_results() if key(r) != key(rec)] + [rec]  # other processes may add
                save_results(records)


if __name__ == "__main__":
    main()
