"""How much of OneShotLandmarkLocator's error is the labelled template's own annotation noise?

A one-shot matcher carries the template's point to the same place on every image, so
whatever the template's annotator did differently on that one image becomes an offset of
every prediction. On the shared cephalograms (template 001, images 002-100 unlabelled and
evaluated) the template is labelled three ways: by the annotator used as truth
(mollabashi, what ``benchmarks.landmarks`` does), by the other annotator (farhadifar),
and by the mean of the two. Each is fitted with the locator's defaults on one shared
pretrained encoder for each ``--seeds`` value (the seed draws the correspondence
fine-tuning's pairs and points) and scored against mollabashi and against the mean of the
two annotators.

``--encoder PATH`` reuses a saved encoder (default: pretrain one as the locator does,
``skuld.landmarks.ENCODER_DEFAULTS`` with random_state 0 on images 002-100 and 001: 8-13 minutes
on 2 cores); then about 4 minutes per fit.

    python -m benchmarks.landmark_template_labels [--encoder enc.joblib] [--seeds 0 1 2]

Writes ``benchmarks/results/landmark_template_labels.{json,md}``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.landmarks import ENC_NOTE, fit_and_predict, landmark_parser, locator_encoder
from benchmarks.common.results import run_metadata, write_results
from skuld.io import read_image

LABELS = ("mollabashi", "farhadifar", "mean of both")


def main():
    ap = landmark_parser(__doc__, "landmark_template_labels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random_state of each set of fits")
    args = ap.parse_args()
    files = ceph_files()
    first, second = load_truth("mollabashi"), load_truth("farhadifar")
    both = (first + second) / 2
    template_labels = dict(zip(LABELS, (first[0], second[0], both[0])))
    encoder = locator_encoder(files, args.encoder)
    images = [read_image(f) for f in files[1:]]
    runs = []
    for seed in args.seeds:
        for name, marks in template_labels.items():
            loc, pred, seconds = fit_and_predict(encoder, files, marks, images, random_state=seed)
            err = np.linalg.norm(pred - first[1:], axis=-1)
            err_both = np.linalg.norm(pred - both[1:], axis=-1)
            runs.append({"seed": seed, "template_labels": name, "mre": float(np.nanmean(err)),
                         "mre_vs_mean_of_annotators": float(np.nanmean(err_both)),
                         "per_landmark": np.nanmean(err, axis=0).round(2).tolist(),
                         "fit_seconds": loc.fit_time_, "seconds_per_image": seconds})
            print(f"seed {seed}, template labelled by {name}: MRE {runs[-1]['mre']:.2f} "
                  f"(vs mean of annotators {runs[-1]['mre_vs_mean_of_annotators']:.2f})", flush=True)
    by = {(r["seed"], r["template_labels"]): r for r in runs}
    # How far the template's labels are from each other, on image 001 itself.
    label_shift = np.linalg.norm(second[0] - first[0], axis=-1)
    result = {"runs": runs, "template_annotator_distance": label_shift.round(2).tolist()}
    meta = run_metadata()
    command = ("python -m benchmarks.landmark_template_labels" + (" --encoder ENC" if args.encoder else "")
               + " --seeds " + " ".join(map(str, args.seeds)))
    md = ["# One-shot landmarks: who labelled the template (cephalograms 002-100, px)", "",
          f"`{command}`" + (ENC_NOTE if args.encoder else "")
          + f": template 001 labelled three ways, the locator's defaults, one shared pretrained encoder, "
          f"{meta['torch_threads']} CPU threads. MRE against mollabashi (the truth of `benchmarks.landmarks`) "
          "and against the mean of the two annotators.", "",
          "| seed | " + " | ".join(f"{n}: MRE / vs mean" for n in LABELS) + " |",
          "|---|" + "---|" * len(LABELS)]
    for s in args.seeds:
        md.append(f"| {s} | " + " | ".join(f"{by[s, n]['mre']:.1f} / {by[s, n]['mre_vs_mean_of_annotators']:.1f}"
                                          for n in LABELS) + " |")
    md += ["", "Mean over seeds: " + ", ".join(
        f"{n} {np.mean([by[s, n]['mre'] for s in args.seeds]):.2f} px "
        f"(vs mean of annotators {np.mean([by[s, n]['mre_vs_mean_of_annotators'] for s in args.seeds]):.2f})"
        for n in LABELS) + ".", "",
        "Per-landmark MRE against mollabashi, mean over seeds (px):", "",
        "| landmark | the two annotators' distance on template 001 | " + " | ".join(LABELS) + " |",
        "|---|---|" + "---|" * len(LABELS)]
    for j in range(first.shape[1]):
        md.append(f"| {j + 1} | {label_shift[j]:.0f} | " + " | ".join(
            f"{np.mean([by[s, n]['per_landmark'][j] for s in args.seeds]):.0f}" for n in LABELS) + " |")
    write_results(args.out, result, md, meta)


if __name__ == "__main__":
    main()
