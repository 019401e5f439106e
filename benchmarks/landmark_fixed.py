"""Does declaring porion fixed to the cephalostat help OneShotLandmarkLocator, beyond the
fine-tuning's draw-to-draw spread?

On the shared cephalograms (template 001, mollabashi truth, images 002-100 unlabelled and
evaluated): for each ``--seeds`` value, the default locator and the same locator with
``fixed_landmarks=[3]`` (landmark 4, porion, annotated at the top of the ear-rod ring, which
the cephalostat holds still in the image) are fitted on one shared pretrained encoder; the
seed draws the correspondence fine-tuning's pairs and points. Paired differences per seed,
overall and per landmark.

``--encoder PATH`` reuses a saved encoder (default: pretrain one as the locator does,
``skuld.landmarks.ENCODER_DEFAULTS`` with random_state 0 on images 002-100 and 001: 8-13 minutes
on 2 cores); then about 5 minutes per seed.

    python -m benchmarks.landmark_fixed [--encoder enc.joblib] [--seeds 0 1 2]

Writes ``benchmarks/results/landmark_fixed.{json,md}``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.landmarks import ENC_NOTE, PORION, fit_and_predict, landmark_parser, locator_encoder
from benchmarks.common.results import run_metadata, write_results
from skuld.io import read_image

CONFIGS = {"defaults": {}, "porion fixed": {"fixed_landmarks": [PORION]}}


def main():
    ap = landmark_parser(__doc__, "landmark_fixed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random_state of each pair of fits")
    args = ap.parse_args()
    files = ceph_files()
    truth = load_truth("mollabashi")
    encoder = locator_encoder(files, args.encoder)
    images = [read_image(f) for f in files[1:]]
    runs = []
    for seed in args.seeds:
        for name, change in CONFIGS.items():
            loc, pred, seconds = fit_and_predict(encoder, files, truth[0], images, random_state=seed, **change)
            err = np.linalg.norm(pred - truth[1:], axis=-1)
            runs.append({"seed": seed, "config": name, "mre": float(np.nanmean(err)),
                         "median": float(np.nanmedian(err)),
                         "per_landmark": np.nanmean(err, axis=0).round(2).tolist(),
                         "fit_seconds": loc.fit_time_, "seconds_per_image": seconds})
            print(f"seed {seed} {name}: MRE {runs[-1]['mre']:.2f} ({seconds:.2f} s/image)", flush=True)
    by = {(r["seed"], r["config"]): r for r in runs}
    diffs = np.array([by[s, "porion fixed"]["mre"] - by[s, "defaults"]["mre"] for s in args.seeds])
    per = np.array([np.subtract(by[s, "porion fixed"]["per_landmark"], by[s, "defaults"]["per_landmark"])
                    for s in args.seeds])
    result = {"runs": runs, "paired_mre_difference": diffs.tolist()}
    meta = run_metadata()
    command = ("python -m benchmarks.landmark_fixed" + (" --encoder ENC" if args.encoder else "")
               + " --seeds " + " ".join(map(str, args.seeds)))
    md = ["# Porion declared fixed to the cephalostat, paired over fine-tuning draws (cephalograms 002-100, px)", "",
          f"`{command}`" + (ENC_NOTE if args.encoder else "")
          + f": template 001, one shared pretrained encoder, {meta['torch_threads']} CPU threads.", "",
          "| seed | defaults MRE | porion fixed MRE | difference | porion: defaults / fixed "
          "| s/image: defaults / fixed |",
          "|---|---|---|---|---|---|"]
    for s, d in zip(args.seeds, diffs):
        a, b = by[s, "defaults"], by[s, "porion fixed"]
        md.append(f"| {s} | {a['mre']:.1f} | {b['mre']:.1f} | {d:+.1f} | {a['per_landmark'][PORION]:.0f} / "
                  f"{b['per_landmark'][PORION]:.0f} | {a['seconds_per_image']:.2f} / {b['seconds_per_image']:.2f} |")
    spread = diffs.std(ddof=1) if len(diffs) > 1 else 0.0
    md += ["", f"Mean difference {diffs.mean():+.2f} px (standard deviation {spread:.2f},"
           f" fixed ahead in {(diffs < 0).sum()} of {len(diffs)}).", "",
           "Mean per-landmark difference (fixed - defaults, px): "
           + ", ".join(f"{j + 1}: {v:+.1f}" for j, v in enumerate(per.mean(axis=0))) + "."]
    write_results(args.out, result, md, meta)


if __name__ == "__main__":
    main()
