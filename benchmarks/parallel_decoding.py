"""Does decoding images in worker processes speed up ``skuld embed`` / ``skuld index``?

Writes ``--images`` PNG files of ``--size`` px (the bundled radiographs, resized), embeds
them with ``skuld embed --store`` with ``--jobs 1`` and ``--jobs 2`` in alternation (two
rounds each, fresh processes), and measures, in the same run, what one image costs to decode
and to embed. Writes ``benchmarks/results/parallel_decoding.{json,md}``.

    python -m benchmarks.parallel_decoding [--images 40 --size 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args()

    import imageio.v3 as iio
    import joblib
    from skimage.transform import resize

    from skuld import LocalDiscriminativeEncoder
    from skuld.datasets import load_cxr_tiny
    from skuld.io import read_image

    tmp = tempfile.mkdtemp()
    try:
        X = load_cxr_tiny().images
        img_dir = os.path.join(tmp, "images")
        os.makedirs(img_dir)
        big = [(resize(x, (args.size, args.size)) * 255).astype(np.uint8) for x in X]
        paths = []
        for i in range(args.images):
            paths.append(os.path.join(img_dir, f"{i:04d}.png"))
            iio.imwrite(paths[-1], big[i % 4])
        enc = LocalDiscriminativeEncoder(max_iter=2, batch_size=1, crop_size=64, image_size=256, rotation=0.0,
                                         rot90=False, random_state=0).fit(X)
        model = os.path.join(tmp, "model.joblib")
        joblib.dump(enc, model)

        t0 = time.perf_counter()
        for p in paths[:10]:
            read_image(p)
        decode_s = (time.perf_counter() - t0) / 10
        t0 = time.perf_counter()
        for x in big[:2]:
            enc.transform(x[None])
        embed_s = (time.perf_counter() - t0) / 2

        runs = []
        for round_ in range(2):
            for jobs in (1, 2):
                store = os.path.join(tmp, f"store-{jobs}-{round_}")
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "skuld", "embed", model, img_dir, "--store", store,
                                "--jobs", str(jobs)], check=True, stdout=subprocess.DEVNULL)
                runs.append({"jobs": jobs, "round": round_, "seconds": time.perf_counter() - t0})
                shutil.rmtree(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mean = {j: float(np.mean([r["seconds"] for r in runs if r["jobs"] == j])) for j in (1, 2)}
    result = {"images": args.images, "size": args.size, "format": "png", "decode_s_per_image": decode_s,
              "embed_s_per_image": embed_s, "decode_share": decode_s / (decode_s + embed_s), "runs": runs,
              "mean_seconds": mean, "speedup_jobs2": mean[1] / mean[2]}
    meta = run_metadata()
    md = [f"# Parallel decoding in skuld embed ({meta['date']}, {meta['cpu_count']} CPU threads)", "",
          f"`python -m benchmarks.parallel_decoding --images {args.images} --size {args.size}` "
          f"({args.size} x {args.size} PNG, encoder at 256 px working resolution)", "",
          "| measure | value |", "|---|---|",
          f"| decode one image | {1000 * decode_s:.0f} ms |",
          f"| embed one image (transform) | {1000 * embed_s:.0f} ms |",
          f"| decoding's share of the work | {100 * result['decode_share']:.1f} % |",
          f"| `skuld embed --store`, --jobs 1 (mean of 2) | {mean[1]:.1f} s |",
          f"| `skuld embed --store`, --jobs 2 (mean of 2) | {mean[2]:.1f} s |",
          f"| speed-up of --jobs 2 | {result['speedup_jobs2']:.2f}x |"]
    write_results(os.path.join(args.out, "parallel_decoding"), result, md, meta)


if __name__ == "__main__":
    main()
