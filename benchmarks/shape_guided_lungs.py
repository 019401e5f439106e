"""Lungs without chest X-ray labels of their own set: ShapeGuidedSegmenter's non-vessel case.

:class:`skuld.ShapeGuidedSegmenter` is fitted on the 98 ``cxr_covid`` radiographs that have both
lung masks, without their labels, guided only by the 4 lung masks of ``cxr_tiny`` (another
X-ray collection: JSRT / Montgomery). Thick priors of images in one orientation take the atlas
route (``pseudo_labels="auto"`` -> "atlas", :mod:`skuld.segmentation.atlas`). Lung Dice (both lungs as one
structure) on the 40 images of the transfer benchmark's patient-disjoint test split
(:mod:`benchmarks.common.data`), for:

* ``atlas``: the mean prior mask stretched to each image's frame, > 0.5 (place alone);
* ``atlas-em``: :func:`skuld.segmentation.atlas.atlas_probability` > 0.5 (place + the image's intensities,
  the pseudo-labels before the network; no training);
* ``sg``: the fitted segmenter in each inference mode (``refined``, the refinement network
  from one view, is its default answer here: ``test_time_augmentation="auto"`` with
  ``rotation=0``; ``refined+flips`` the same network averaged over the 4 flips; the LD
  ``cluster`` / ``similarity`` modes are the paper's adversarial route). Records of a seed
  without ``refined+flips`` (before test-time augmentation existed) are refitted.

For scale, the same test images' lung Dice of a U-Net trained *with* 1, 2 or 5 labelled images
of this collection is read from ``transfer.json`` when present (fine-tuned from the LD
encoder, ``ld-schedule``, and from random initialisation).

Usage::

    python -m benchmarks.shape_guided_lungs --seeds 0
    python -m benchmarks.shape_guided_lungs --report
"""

from __future__ import annotations

import argparse
import json
import time

import joblib
import numpy as np

from benchmarks.common import data, shape_guided_segmenter
from benchmarks.common.results import RESULTS_DIR, write_json, write_markdown
from skuld.datasets import load_cxr_tiny
from skuld.metrics import dice
from skuld.segmentation.atlas import atlas_probability, shape_atlas

RESULTS = RESULTS_DIR / "shape_guided_lungs"
#: Chest X-ray settings: working resolution 256 (lungs are large), whole-frame crops of 160 px,
#: one orientation. The LD network only initialises the refinement on the atlas route, so it
#: gets a short run.
PARAMS = dict(image_size=256, crop_size=160, rotation=0.0, max_iter=300, refine_iter=1000)


def lung_dice(pred, truth) -> dict:
    per = [dice(p, t) for p, t in zip(pred, truth)]
    return {"dice": float(np.mean(per)), "median": float(np.median(per)), "per_image": per}


def classical(test, lungs) -> list[dict]:
    from skimage.transform import resize

    atlas = shape_atlas(load_cxr_tiny().masks)
    out = []
    t0 = time.perf_counter()
    pred = [resize(atlas, x.shape, order=1) > 0.5 for x in test]
    out.append({"method": "atlas", "seed": 0, **lung_dice(pred, lungs), "seconds_per_image":
                (time.perf_counter() - t0) / len(test)})
    t0 = time.perf_counter()
    pred = [atlas_probability(x, atlas) > 0.5 for x in test]
    out.append({"method": "atlas-em", "seed": 0, **lung_dice(pred, lungs), "seconds_per_image":
                (time.perf_counter() - t0) / len(test)})
    return out


def run_sg(seed: int, train, test, lungs) -> list[dict]:
    seg = shape_guided_segmenter(**PARAMS, random_state=seed, verbose=1)
    t0 = time.perf_counter()
    seg.fit(train, shape_priors=list(load_cxr_tiny().masks))
    fit_seconds = time.perf_counter() - t0
    data.CACHE.mkdir(parents=True, exist_ok=True)
    joblib.dump(seg, data.CACHE / f"shape_guided_lungs-{seed}.joblib")
    out = []
    # "refined": one view, the default here (test_time_augmentation="auto" with rotation=0);
    # "refined+flips": averaged over the 4 flips.
    modes = [("refined", None), ("refined+flips", "flips"), ("similarity", None), ("cluster", None)]
    for name, views in modes:
        if name.startswith("refined") and seg.refiner_ is None:
            continue
        seg.set_params(test_time_augmentation=views)
        t0 = time.perf_counter()
        pred = seg.predict(test, mode=name.split("+")[0])
        out.append({"method": f"sg-{name}", "seed": seed, **lung_dice(pred, lungs),
                    "seconds_per_image": (time.perf_counter() - t0) / len(test), "fit_seconds": fit_seconds,
                    "fit_time": seg.fit_time_, "pseudo_labels": seg.pseudo_labels_,
                    "pseudo_label_fraction": getattr(seg, "pseudo_label_fraction_", None),
                    "cluster_fraction": seg.cluster_fraction_, "params": {**PARAMS, "random_state": seed}})
        print(f"sg seed {seed} {name}: lung Dice {out[-1]['dice']:.4f}", flush=True)
    return out


def load_results() -> list[dict]:
    path = RESULTS.with_suffix(".json")
    return json.loads(path.read_text())["records"] if path.exists() else []


def save_results(records: list[dict]) -> None:
    write_json(RESULTS, {"records": records})


def supervised_reference() -> list[str]:
    path = RESULTS_DIR / "transfer.json"
    if not path.exists():
        return []
    rows = []
    records = [r for r in json.loads(path.read_text())["records"] if r["dataset"] == "cxr" and r.get("max_iter") == 500]
    for method in ("random", "ld-schedule"):
        for n in (1, 2, 5):
            d = [r["dice"]["lungs"] for r in records if r["method"] == method and r["n_labelled"] == n]
            if d:
                rows.append(f"| U-Net, {n} labelled image{'s' if n > 1 else ''} of this set ({method}) | "
                            f"{np.mean(d):.3f} +- {np.std(d, ddof=1) if len(d) > 1 else 0:.3f} (n={len(d)}) |")
    return rows


def report() -> str:
    records = load_results()
    lines = ["# Shape-guided lung segmentation on chest X-rays (no labels of this X-ray set)", "",
             "Written by `python -m benchmarks.shape_guided_lungs --report` from `shape_guided_lungs.json`. "
             "Lung Dice (both lungs) on the 40 test radiographs of the patient-disjoint split; the segmenter "
             "is fitted on all 98 radiographs without their labels, guided by the 4 lung masks of `cxr_tiny` "
             "(another collection). Times on 2 CPU cores.", "",
             "| method | seed | lung Dice (mean) | median | fit (min) | s / image |", "|---|---|---|---|---|---|"]
    for r in records:
        fit = f"{r['fit_seconds'] / 60:.1f}" if r.get("fit_seconds") else "-"
        lines.append(f"| {r['method']} | {r['seed']} | {r['dice']:.3f} | {r['median']:.3f} | {fit} | "
                     f"{r['seconds_per_image']:.2f} |")
    by_method: dict[str, list[float]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r["dice"])
    several = {m: d for m, d in by_method.items() if len(d) > 1}
    if several:
        lines += ["", "Over seeds:", "", "| method | seeds | lung Dice |", "|---|---|---|"]
        lines += [f"| {m} | {len(d)} | {np.mean(d):.3f} +- {np.std(d, ddof=1):.3f} |" for m, d in several.items()]
    ref = supervised_reference()
    if ref:
        lines += ["", "For scale, supervised on this set (`transfer.json`, same test images, 500 steps, over seeds):",
                  "", "| model | lung Dice |", "|---|---|"] + ref
    path = RESULTS.with_suffix(".json")
    meta = json.loads(path.read_text())["meta"] if path.exists() else {}
    # OMP_NUM_THREADS as the run saw it: "omp_num_threads" in the metadata block, "threads" in
    # files written before it (the committed one).
    if meta.get("omp_num_threads", meta.get("threads")) == "1":
        lines[2] += (" These runs used OMP_NUM_THREADS=1 beside other benchmark jobs on the 2 cores: fit times are "
                     "those of one shared core, longer than alone.")
    text = "\n".join(lines) + "\n"
    write_markdown(RESULTS, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    split = data.cxr_split()  # exits with a message when cxr_covid is absent
    test, labels = data.load_cxr(split["test"])
    lungs = [lab == 1 for lab in labels]
    # Gray arrays: the collection mixes gray, RGB and RGBA files.
    train = test + data.load_cxr(split["pool"] + split["pretrain"])[0]
    done = {(r["method"], r["seed"]) for r in load_results()}
    if ("atlas-em", 0) not in done:
        save_results([r for r in load_results() if r["method"] not in ("atlas", "atlas-em")] + classical(test, lungs))
    for seed in args.seeds:
        if ("sg-refined+flips", seed) in done:
            print(f"sg seed {seed}: already in the results, skipped")
            continue
        recs = run_sg(seed, train, test, lungs)
        save_results([r for r in load_results() if not (r["method"].startswith("sg-") and r["seed"] == seed)] + recs)
    print(report())


if __name__ == "__main__":
    main()
