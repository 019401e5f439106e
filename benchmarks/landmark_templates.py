"""How much do a few more labelled images help OneShotLandmarkLocator, and how much does it
matter which image is labelled?

On the shared cephalograms (mollabashi truth): the locator with default settings fitted on
the first K images as templates (K = 1, 2, 5, 10), and on each of the images given by
``--single`` alone (default 001-005: one-shot with other choices of the template). All rows
share one pretrained encoder and one pool of unlabelled images, the images after the
templates (by default 011-100: correspondence fine-tuning and pseudo templates), and are
scored on that pool. The shared encoder is the pretrained one, before any correspondence
fine-tuning, so that no row uses another row's labels. ``--encoder PATH`` reuses a saved
encoder (default: pretrain one with the locator's settings, ``skuld.landmarks.ENCODER_DEFAULTS``
and random_state 0, on images 001-100 without labels: 8-13 minutes on 2 cores).

    python -m benchmarks.landmark_templates [--encoder enc.joblib] [--templates 1 2 5 10] [--single 1 2 3 4 5]
        [--fixed 4 --out benchmarks/results/landmark_templates_fixed]

``--fixed`` declares landmarks (numbered from 1, as in the tables) fixed to the device in
every row (``fixed_landmarks``; landmark 4, porion, is the top of the ear-rod ring here).

About 25 minutes on 2 cores after pretraining.

Writes ``benchmarks/results/landmark_templates.{json,md}``.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.frozen import FrozenEstimator

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.landmarks import ENC_NOTE, RADII, landmark_parser, locator_encoder, per_landmark_table
from benchmarks.common.results import run_metadata, write_results
from skuld import OneShotLandmarkLocator


def main():
    ap = landmark_parser(__doc__, "landmark_templates")
    ap.add_argument("--templates", type=int, nargs="+", default=[1, 2, 5, 10], help="K: the first K images labelled")
    ap.add_argument("--single", type=int, nargs="*", default=[1, 2, 3, 4, 5],
                    help="image numbers (1-based) each used alone as the template")
    ap.add_argument("--fixed", type=int, nargs="*", default=[],
                    help="landmark numbers (from 1) fixed to the device: fixed_landmarks in every row")
    args = ap.parse_args()
    files = ceph_files()
    truth = load_truth("mollabashi")
    first_eval = max(args.templates + args.single)
    evaluation = list(range(first_eval, len(files)))
    unlabeled = [files[i] for i in evaluation]
    encoder = locator_encoder(files, args.encoder)
    runs = [(f"001-{k:03d}" if k > 1 else "001 alone", list(range(k))) for k in args.templates]
    runs += [(f"{n:03d} alone", [n - 1]) for n in args.single if n != 1 or 1 not in args.templates]
    rows = []
    for label, chosen in runs:
        start = time.perf_counter()
        loc = OneShotLandmarkLocator(encoder=FrozenEstimator(encoder), random_state=0,
                                     fixed_landmarks=[n - 1 for n in args.fixed] or None)
        loc.fit([files[i] for i in chosen], list(truth[chosen]), X_unlabeled=unlabeled)
        pred = loc.predict([files[i] for i in evaluation])
        err = np.linalg.norm(pred - truth[evaluation], axis=-1)
        rows.append({"templates": label, "k": len(chosen), "mre": float(np.nanmean(err)),
                     "median": float(np.nanmedian(err)),
                     **{f"sdr{r}": float(np.nanmean(err[~np.isnan(err)] <= r)) for r in RADII},
                     "per_landmark": np.nanmean(err, axis=0).round(2).tolist(),
                     "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    result = {"evaluation_images": f"{first_eval + 1:03d}-{len(files):03d}", "rows": rows,
              "encoder": "pretrained (ENCODER_DEFAULTS, random_state 0), not fine-tuned"}
    meta = run_metadata()
    command = ("python -m benchmarks.landmark_templates" + (" --encoder ENC" if args.encoder else "")
               + " --templates " + " ".join(map(str, args.templates))
               + " --single" + "".join(f" {n}" for n in args.single)
               + "".join(f" --fixed {n}" if i == 0 else f" {n}" for i, n in enumerate(args.fixed)))
    md = [f"# Landmarks with K labelled templates (cephalograms {result['evaluation_images']}, px)", "",
          f"`{command}`" + (ENC_NOTE if args.encoder else "")
          + f": every row shares one encoder, {result['encoder']}, and the pool of unlabelled images "
          f"{result['evaluation_images']}; {meta['torch_threads']} CPU threads"
          + (f"; landmark{'s' * (len(args.fixed) > 1)} {', '.join(map(str, args.fixed))} declared fixed to the "
             "device (fixed_landmarks)"
             if args.fixed else "") + ".", "",
          "| labelled templates | MRE | median | " + " | ".join(f"SDR@{r}" for r in RADII) + " | fit and predict s |",
          "|---|---|---|" + "---|" * len(RADII) + "---|"]
    for r in rows:
        md.append(f"| {r['templates']} | {r['mre']:.1f} | {r['median']:.1f} | "
                  + " | ".join(f"{100 * r[f'sdr{x}']:.0f} %" for x in RADII) + f" | {r['seconds']:.0f} |")
    singles = [r["mre"] for r in rows if r["k"] == 1]
    if len(singles) > 1:
        md += ["", f"One labelled image, {len(singles)} choices: MRE {np.mean(singles):.1f} px on average "
               f"(standard deviation {np.std(singles, ddof=1):.1f}, range {min(singles):.1f}-{max(singles):.1f})."]
    landmarks = [r for r in rows if r["k"] == 1 or r["k"] == max(args.templates)]
    md += per_landmark_table([(r["templates"], r["per_landmark"]) for r in landmarks])
    write_results(args.out, result, md, meta)


if __name__ == "__main__":
    main()
