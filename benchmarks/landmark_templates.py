"""How much do a few more labelled images help OneShotLandmarkLocator?

On the shared cephalograms (mollabashi truth): the locator with default settings fitted on
the first K images as templates (K = 1, 2, 5), all sharing one pretrained encoder and the same
pool of unlabelled images (006-100, for pseudo templates), scored on images 006-100.
``--encoder PATH`` reuses a saved encoder (default: pretrain one as the locator does, on
images 001-100 without labels: about 14 minutes on 2 cores).

    python benchmarks/landmark_templates.py [--encoder enc.joblib]

Writes ``benchmarks/results/landmark_templates.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import joblib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from landmarks import DATA, RADII, load_truth  # noqa: E402

from skuld import OneShotLandmarkLocator  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", help="a fitted LocalDiscriminativeEncoder saved with joblib (default: pretrain)")
    ap.add_argument("--templates", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "landmark_templates"))
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/ceph_hamedan")
    files = sorted(str(p) for p in (DATA / "images").glob("*.png"))
    truth = load_truth("mollabashi")
    first_eval = max(args.templates)
    evaluation = list(range(first_eval, len(files)))
    if args.encoder:
        encoder = joblib.load(args.encoder)
    else:
        encoder = OneShotLandmarkLocator(random_state=0, verbose=1).fit(
            files[0], truth[0], X_unlabeled=files[1:]).encoder_
    rows = []
    for k in args.templates:
        start = time.perf_counter()
        loc = OneShotLandmarkLocator(encoder=encoder, random_state=0)
        loc.fit(files[:k], list(truth[:k]), X_unlabeled=[files[i] for i in evaluation])
        pred = loc.predict([files[i] for i in evaluation])
        err = np.linalg.norm(pred - truth[evaluation], axis=-1)
        rows.append({"templates": k, "mre": float(np.nanmean(err)), "median": float(np.nanmedian(err)),
                     **{f"sdr{r}": float(np.nanmean(err[~np.isnan(err)] <= r)) for r in RADII},
                     "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    result = {"evaluation_images": f"{first_eval + 1:03d}-{len(files):03d}", "rows": rows,
              "command": "python benchmarks/landmark_templates.py" + (" --encoder ENC" if args.encoder else "")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# Landmarks with K labelled templates (cephalograms {result['evaluation_images']}, px)", "",
          f"`{result['command']}`", "",
          "| labelled templates | MRE | median | " + " | ".join(f"SDR@{r}" for r in RADII) + " |",
          "|---|---|---|" + "---|" * len(RADII)]
    for r in rows:
        md.append(f"| {r['templates']} | {r['mre']:.1f} | {r['median']:.1f} | "
                  + " | ".join(f"{100 * r[f'sdr{x}']:.0f} %" for x in RADII) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
