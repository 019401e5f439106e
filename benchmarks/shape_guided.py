"""Fundus vessels without fundus labels: ShapeGuidedSegmenter against the Frangi filter.

* ``sg-octa`` / ``sg-dsa``: :class:`skuld.ShapeGuidedSegmenter` fitted on the 40 DRIVE images
  (training + test) without their labels, guided by the 10 OCTA or the 10 coronary DSA vessel
  masks of ``../shared/data/shape_priors``; scored in every inference mode (LD cluster map,
  LD similarity re-assignment, refinement U-Net: ``refined`` without test-time augmentation,
  ``refined+flips`` averaged over the 4 flips, ``refined+dihedral`` over the 8 flips and
  quarter turns, the default ``test_time_augmentation="auto"`` for vessels).
* ``sg-octa-unseen``: the same, fitted on the 20 DRIVE training images only, so that the 20
  test images are unseen (no other fundus set with vessel labels is available here).
* ``frangi``: the classical baseline: green channel, CLAHE, skimage's Frangi vesselness
  (sigmas 1-4 px), triangle threshold inside the field of view (eroded by 10 px: its rim
  is a strong false ridge).
* ``ridge``: the same with the scale-normalised Hessian ridge strength instead of Frangi's
  measure (``max over sigma in {1, 1.5, 2, 3} of sigma^2 * max(lambda_1, 0)``), the stronger
  of the two. Both baselines' settings were chosen on 6 DRIVE test images (which favours
  them, not skuld).

Dice is computed on the 20 DRIVE test images inside the DRIVE field-of-view masks, against the
first and the second observer. Results accumulate in ``benchmarks/results/shape_guided.json``
(one record per method and seed); ``--report`` writes ``shape_guided.md``.

Usage::

    python -m benchmarks.shape_guided --methods frangi sg-octa --seeds 0
    python -m benchmarks.shape_guided --rescore   # modes added since: cached models scored again
    python -m benchmarks.shape_guided --report
"""

from __future__ import annotations

import argparse
import json
import time

import joblib
import numpy as np

from benchmarks.common import data, shape_guided_segmenter
from benchmarks.common.results import RESULTS_DIR, write_json, write_markdown
from skuld import ShapeGuidedSegmenter
from skuld.metrics import dice
from skuld.segmentation.ridges import ridge_segmentation

RESULTS = RESULTS_DIR / "shape_guided"
METHODS = ("frangi", "ridge", "sg-octa", "sg-dsa", "sg-octa-unseen")
BASELINES = ("frangi", "ridge")


def baseline_segment(img: np.ndarray, fov: np.ndarray, kind: str) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage import exposure, filters

    inner = ndi.binary_erosion(fov, iterations=10)
    if kind == "ridge":
        return ridge_segmentation(img, inner)
    eq = exposure.equalize_adapthist(img[..., 1].astype(np.float32) / 255, clip_limit=0.01)
    v = np.where(inner, filters.frangi(eq, sigmas=np.arange(1, 4.5, 0.5), black_ridges=True), 0)
    return (v > filters.threshold_triangle(v[inner])) & inner


def scores(pred, obs1, obs2, fovs) -> dict:
    return {"dice_obs1": dice(pred, obs1, mask=fovs), "dice_obs2": dice(pred, obs2, mask=fovs),
            "per_image_obs1": [dice(p, t, mask=f) for p, t, f in zip(pred, obs1, fovs)]}


def run_baseline(kind, test, obs1, obs2, fovs) -> dict:
    t0 = time.perf_counter()
    pred = [baseline_segment(img, f, kind) for img, f in zip(test, fovs)]
    return {"modes": {kind: scores(pred, obs1, obs2, fovs)}, "fit_seconds": 0.0,
            "predict_seconds_per_image": (time.perf_counter() - t0) / len(test)}


# The refinement network's prediction modes: without test-time augmentation (the "refined" rows
# before the parameter existed), averaged over the 4 flips, and over the 8 dihedral views.
REFINED_VIEWS = {"refined": None, "refined+flips": "flips", "refined+dihedral": "dihedral"}


def score_mode(seg: ShapeGuidedSegmenter, name: str, test, obs1, obs2, fovs) -> dict:
    """Dice of one prediction mode (an LD mode or a ``REFINED_VIEWS`` name) and its time per image."""
    seg.set_params(test_time_augmentation=REFINED_VIEWS.get(name))
    t0 = time.perf_counter()
    pred = list(seg.predict(test, mask=fovs, mode="refined" if name in REFINED_VIEWS else name))
    result = scores(pred, obs1, obs2, fovs)
    result["predict_seconds_per_image"] = (time.perf_counter() - t0) / len(test)
    seg.set_params(test_time_augmentation="auto")
    return result


def score_modes(seg: ShapeGuidedSegmenter, label: str, test, obs1, obs2, fovs, done=()) -> dict:
    """Every mode of ``seg`` not in ``done``, printed as it is scored."""
    modes = {}
    names = ["cluster", "similarity"] + (list(REFINED_VIEWS) if seg.refiner_ is not None else [])
    for name in names:
        if name in done:
            continue
        modes[name] = score_mode(seg, name, test, obs1, obs2, fovs)
        print(f"{label} {name}: Dice {modes[name]['dice_obs1']:.4f} (obs2 {modes[name]['dice_obs2']:.4f})", flush=True)
    return modes


def rescore(test, obs1, obs2, fovs) -> None:
    """Add the modes missing from a record by scoring its cached model again (no refit)."""
    for rec in load_results():
        path = data.CACHE / f"shape_guided-{rec['method']}-{rec['seed']}.joblib"
        if rec["method"] in BASELINES or all(m in rec["modes"] for m in REFINED_VIEWS) or not path.exists():
            continue
        label = f"{rec['method']} seed {rec['seed']}"
        rec["modes"].update(score_modes(joblib.load(path), label, test, obs1, obs2, fovs, done=rec["modes"]))
        save_results([rec if (r["method"], r["seed"]) == (rec["method"], rec["seed"]) else r for r in load_results()])


def run_sg(method: str, seed: int, args, test, obs1, obs2, fovs) -> dict:
    prior_dir = data.dataset_dir("shape_priors") / ("dsa_vessel" if "dsa" in method else "octa_vessel")
    train = [str(p) for p in data.drive_files("training")]
    if not method.endswith("unseen"):
        train += [str(p) for p in data.drive_files("test")]
    params = dict(max_iter=args.max_iter, refine_iter=args.refine_iter, random_state=seed, verbose=1)
    params.update(json.loads(args.params))
    seg = shape_guided_segmenter(**params)
    t0 = time.perf_counter()
    seg.fit(train, shape_priors=str(prior_dir))
    fit_seconds = time.perf_counter() - t0
    data.CACHE.mkdir(parents=True, exist_ok=True)
    joblib.dump(seg, data.CACHE / f"shape_guided-{method}-{seed}.joblib")
    modes = score_modes(seg, f"{method} seed {seed}", test, obs1, obs2, fovs)
    t_pred = modes.get("refined", modes["cluster"])["predict_seconds_per_image"]
    return {"modes": modes, "fit_seconds": fit_seconds, "fit_time": seg.fit_time_,
            "cluster_fraction": seg.cluster_fraction_, "collapsed": seg.collapsed_, "params": params,
            "pseudo_labels": getattr(seg, "pseudo_labels_", None), "ridge_sigmas": getattr(seg, "ridge_sigmas_", None),
            "predict_seconds_per_image": t_pred}


def load_results() -> list[dict]:
    path = RESULTS.with_suffix(".json")
    return json.loads(path.read_text())["records"] if path.exists() else []


def save_results(records: list[dict]) -> None:
    write_json(RESULTS, {"records": records})


def report() -> str:
    records = load_results()
    lines = ["# Shape-guided vessel segmentation on DRIVE (no fundus labels)", "",
             "Dice inside the field of view on the 20 DRIVE test images, against the first and the "
             "second observer; produced by `python -m benchmarks.shape_guided --report` from "
             "`shape_guided.json`. Fit times on 2 CPU cores.", "",
             "| method | mode | seed | Dice obs. 1 | Dice obs. 2 | fit (min) | predict (s/image) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        for mode, s in r["modes"].items():
            seconds = s.get("predict_seconds_per_image", r["predict_seconds_per_image"])
            lines.append(f"| {r['method']} | {mode} | {r['seed']} | {s['dice_obs1']:.3f} | {s['dice_obs2']:.3f} | "
                         f"{r['fit_seconds'] / 60:.1f} | {seconds:.2f} |")
    by_mode: dict[tuple[str, str], list] = {}
    for r in records:
        for mode, sc in r["modes"].items():
            by_mode.setdefault((r["method"], mode), []).append(sc)
    several = {k: v for k, v in by_mode.items() if len(v) > 1}
    if several:
        lines += ["", "Over seeds (mean +- standard deviation):", "",
                  "| method | mode | seeds | Dice obs. 1 | Dice obs. 2 |", "|---|---|---|---|---|"]
        for (method, mode), scores in several.items():
            d1, d2 = (np.array([sc[k] for sc in scores]) for k in ("dice_obs1", "dice_obs2"))
            lines.append(f"| {method} | {mode} | {len(scores)} | {d1.mean():.4f} +- {d1.std(ddof=1):.4f} | "
                         f"{d2.mean():.4f} +- {d2.std(ddof=1):.4f} |")
    notes = [f"* {r['method']} seed {r['seed']}: {r['note']}" for r in records if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    text = "\n".join(lines) + "\n"
    write_markdown(RESULTS, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=["frangi", "sg-octa"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max-iter", type=int, default=900)
    ap.add_argument("--refine-iter", type=int, default=1000)
    ap.add_argument("--params", default="{}", help="more ShapeGuidedSegmenter parameters as JSON")
    ap.add_argument("--tag", default="", help="suffix of the method name in the results (variants)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--rescore", action="store_true",
                    help="score the cached models of earlier records in the modes they lack, then report")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    test, obs1, fovs = data.load_drive("test")  # exits with a message when DRIVE is absent
    obs2 = data.drive_second_observer()
    if args.rescore:
        rescore(test, obs1, obs2, fovs)
        print(report())
        return
    records = load_results()
    for method in args.methods:
        for seed in args.seeds if method not in BASELINES else [0]:
            name = method + args.tag
            if any(r["method"] == name and r["seed"] == seed for r in records):
                print(f"{name} seed {seed}: already in the results, skipped")
                continue
            if method in BASELINES:
                rec = run_baseline(method, test, obs1, obs2, fovs)
            else:
                rec = run_sg(method, seed, args, test, obs1, obs2, fovs)
            rec.update(method=name, seed=seed)
            records = [r for r in load_results() if not (r["method"] == name and r["seed"] == seed)] + [rec]
            save_results(records)
            print(json.dumps({k: v for k, v in rec.items() if k != "modes"}), flush=True)
    print(report())


if __name__ == "__main__":
    main()
