"""Does OneShotLandmarkLocator's confidence tell good landmarks from bad ones?

On the shared cephalograms (template 001, mollabashi truth, images 002-100), the locator with
default settings predicts every landmark with ``predict_confidence``; this script reports how
the confidence ranks the errors: Spearman correlation, and the error of the least confident
10 % against the most confident half. ``--locator PATH`` reuses a fitted locator saved with
joblib (fitting it pretrains an encoder: about 14 minutes on 2 cores).

    python benchmarks/landmark_confidence.py [--locator loc.joblib]

Writes ``benchmarks/results/landmark_confidence.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import joblib
import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from landmarks import DATA, load_truth  # noqa: E402

from skuld import OneShotLandmarkLocator  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--locator", help="a fitted OneShotLandmarkLocator saved with joblib (default: fit one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "landmark_confidence"))
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/ceph_hamedan")
    files = sorted(str(p) for p in (DATA / "images").glob("*.png"))
    truth = load_truth("mollabashi")
    if args.locator:
        loc = joblib.load(args.locator)
    else:
        loc = OneShotLandmarkLocator(random_state=0, verbose=1).fit(files[0], truth[0], X_unlabeled=files[1:])
    start = time.perf_counter()
    pred, conf = loc.predict_confidence(files[1:])
    seconds = (time.perf_counter() - start) / (len(files) - 1)
    err = np.linalg.norm(pred - truth[1:], axis=-1)
    ok = ~np.isnan(err)
    e, c = err[ok], conf[ok]
    low, high = c <= np.quantile(c, 0.1), c >= np.quantile(c, 0.5)
    rho = spearmanr(c, e)
    result = {
        "n_images": len(files) - 1, "n_points": int(ok.sum()), "seconds_per_image": seconds,
        "mre": float(e.mean()), "confidence_median": float(np.median(c)),
        "confidence_share_at_1": float((c >= 0.999).mean()),
        "spearman_confidence_error": float(rho.statistic), "spearman_p": float(rho.pvalue),
        "mre_least_confident_10pct": float(e[low].mean()), "mre_most_confident_half": float(e[high].mean()),
        "sdr40_least_confident_10pct": float((e[low] <= 40).mean()),
        "sdr40_most_confident_half": float((e[high] <= 40).mean()),
        "per_landmark_spearman": [float(spearmanr(conf[ok[:, i], i], err[ok[:, i], i]).statistic)
                                  for i in range(err.shape[1])],
        "command": "python benchmarks/landmark_confidence.py" + (" --locator ..." if args.locator else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = ["# Landmark confidence on the cephalograms (template 001, 99 images, defaults)", "",
          f"`{result['command']}`", "",
          "| measure | value |", "|---|---|",
          f"| mean radial error, all points | {result['mre']:.1f} px |",
          f"| median confidence (share at 1.0) | {result['confidence_median']:.2f} "
          f"({100 * result['confidence_share_at_1']:.0f} %) |",
          f"| Spearman correlation, confidence vs error | {result['spearman_confidence_error']:.2f} |",
          f"| MRE of the least confident 10 % of points | {result['mre_least_confident_10pct']:.1f} px |",
          f"| MRE of the most confident half | {result['mre_most_confident_half']:.1f} px |",
          f"| SDR@40 least confident 10 % / most confident half | {100 * result['sdr40_least_confident_10pct']:.0f} % / "
          f"{100 * result['sdr40_most_confident_half']:.0f} % |", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
