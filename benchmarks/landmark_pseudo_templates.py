"""How many pseudo templates should OneShotLandmarkLocator vote with? Error against prediction time.

On the shared cephalograms (template 001, mollabashi truth, images 002-100 unlabelled and
evaluated), the default locator is fitted once with ``n_pseudo_templates`` = the largest K
asked for; pseudo templates are ranked by their round-trip error, so keeping the first K of
them is what fitting with ``n_pseudo_templates=K`` chooses (fitting does not depend on K
otherwise). Each K is then scored with the median fusion of the defaults: MRE, median, SDR
and seconds per image of ``predict``.

``--encoder PATH`` reuses a saved encoder (default: pretrain one as the locator does,
``skuld.landmarks.ENCODER_DEFAULTS`` with random_state 0 on images 002-100 and 001: 8-13 minutes
on 2 cores); the rest takes about 12 minutes.

    python -m benchmarks.landmark_pseudo_templates [--encoder enc.joblib] [--k 0 4 8 12 16 24]

Writes ``benchmarks/results/landmark_pseudo_templates.{json,md}``.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.frozen import FrozenEstimator

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.landmarks import ENC_NOTE, RADII, landmark_parser, locator_encoder, per_landmark_table
from benchmarks.common.results import run_metadata, write_results
from skuld import OneShotLandmarkLocator
from skuld.io import read_image


def main():
    ap = landmark_parser(__doc__, "landmark_pseudo_templates")
    ap.add_argument("--k", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24], help="numbers of pseudo templates")
    args = ap.parse_args()
    files = ceph_files()
    truth = load_truth("mollabashi")
    encoder = locator_encoder(files, args.encoder)
    start = time.perf_counter()
    loc = OneShotLandmarkLocator(encoder=FrozenEstimator(encoder), n_pseudo_templates=max(args.k), random_state=0)
    loc.fit(files[0], truth[0], X_unlabeled=files[1:])
    fit_seconds = time.perf_counter() - start
    ranked = list(loc.templates_)
    # Decoded once, outside the timing: predict's own cost per image is what is compared.
    images = [read_image(f) for f in files[1:]]
    rows = []
    for k in sorted(args.k):
        loc.templates_ = ranked[: loc.n_templates_ + k]  # what n_pseudo_templates=k keeps
        loc.set_params(n_pseudo_templates=k)
        start = time.perf_counter()
        pred = loc.predict(images)
        seconds = (time.perf_counter() - start) / len(images)
        err = np.linalg.norm(pred - truth[1:], axis=-1)
        rows.append({"k": k, "mre": float(np.nanmean(err)), "median": float(np.nanmedian(err)),
                     **{f"sdr{r}": float(np.nanmean(err[~np.isnan(err)] <= r)) for r in RADII},
                     "seconds_per_image": seconds, "per_landmark": np.nanmean(err, axis=0).round(2).tolist()})
        print(rows[-1], flush=True)
    result = {"rows": rows, "fit_seconds_without_pretraining": fit_seconds}
    meta = run_metadata()
    command = ("python -m benchmarks.landmark_pseudo_templates" + (" --encoder ENC" if args.encoder else "")
               + " --k " + " ".join(map(str, args.k)))
    md = ["# Pseudo templates: how many (cephalograms, template 001, 99 images, px)", "",
          f"`{command}`" + (ENC_NOTE if args.encoder else "")
          + f"; one fit ({fit_seconds:.0f} s after pretraining), median fusion; {meta['torch_threads']} CPU threads.",
          "",
          "| pseudo templates | MRE | median | " + " | ".join(f"SDR@{r}" for r in RADII) + " | predict s/image |",
          "|---|---|---|" + "---|" * len(RADII) + "---|"]
    for r in rows:
        md.append(f"| {r['k']} | {r['mre']:.2f} | {r['median']:.1f} | "
                  + " | ".join(f"{100 * r[f'sdr{x}']:.0f} %" for x in RADII) + f" | {r['seconds_per_image']:.2f} |")
    md += per_landmark_table([(str(r["k"]), r["per_landmark"]) for r in rows])
    write_results(args.out, result, md, meta)


if __name__ == "__main__":
    main()
