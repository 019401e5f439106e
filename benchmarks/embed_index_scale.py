"""Embed and index 2,000 images of 512 x 512 on this machine, in bounded memory, then query.

The images are the four bundled radiographs repeated with random shifts and intensity
changes, written as PNG files; ``skuld index`` (one process, measured from outside for its
peak memory) embeds them one at a time with a briefly trained encoder and builds a compressed
index by blocks; the saved index is then memory-mapped and queried.

    python -m benchmarks.embed_index_scale [--images 2000 --stride 4]

Writes ``benchmarks/results/embed_index_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args()

    import imageio.v3 as iio
    import joblib

    from skuld import LocalDiscriminativeEncoder, PixelIndex
    from skuld.datasets import load_cxr_tiny

    tmp = tempfile.mkdtemp()
    try:
        X = load_cxr_tiny().images
        rng = np.random.default_rng(0)
        img_dir = os.path.join(tmp, "images")
        os.makedirs(img_dir)
        t0 = time.perf_counter()
        for i in range(args.images):
            img = np.roll(X[i % 4], tuple(rng.integers(-20, 21, 2)), axis=(0, 1)).astype(np.float32)
            img = np.clip(img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
            iio.imwrite(os.path.join(img_dir, f"{i:05d}.png"), img)
        write_s = time.perf_counter() - t0

        enc = LocalDiscriminativeEncoder(max_iter=50, batch_size=2, crop_size=128, rotation=0.0, rot90=False,
                                         random_state=0).fit(X)
        model = os.path.join(tmp, "model.joblib")
        joblib.dump(enc, model)

        idx_dir = os.path.join(tmp, "index")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "skuld", "index", model, img_dir, "--out", idx_dir,
                               "--stride", str(args.stride)], capture_output=True, text=True)
        build_s = time.perf_counter() - t0
        peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        print(proc.stdout.strip().splitlines()[-1], flush=True)

        index = PixelIndex.load(idx_dir, mmap=True)
        E0 = enc.transform([os.path.join(img_dir, "00000.png")])[0]
        rows = rng.integers(0, 512 // args.stride, size=(args.queries, 2)) * args.stride
        Q = E0[rows[:, 0], rows[:, 1]]
        t0 = time.perf_counter()
        _, loc = index.kneighbors(Q, k=10)
        query_s = time.perf_counter() - t0
        disk = sum(os.path.getsize(os.path.join(idx_dir, f)) for f in os.listdir(idx_dir))
        self_hit = float((loc[:, 0] == np.column_stack([np.zeros(len(rows), int), rows])).all(axis=1).mean())
        result = {
            "images": args.images, "image_size": "512 x 512", "stride": args.stride, "n_vectors": index.n_vectors_,
            "factory": index.factory_, "write_png_seconds": write_s, "embed_and_index_seconds": build_s,
            "seconds_per_image": build_s / args.images, "peak_rss_GiB_embed_and_index": peak_child,
            "disk_bytes": disk, "bytes_per_vector_on_disk": disk / index.n_vectors_,
            "queries_per_second_mmap": args.queries / query_s, "self_hit_rate_at_1": self_hit,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    meta = run_metadata()
    md = (f"# Embed and index {args.images} images of 512 x 512 ({meta['date']}, {meta['cpu_count']} CPU threads)\n\n"
          f"`{meta['command']}` (the build is `skuld index MODEL DIR --out IDX --stride {args.stride}`, "
          "one process)\n\n"
          "| images | vectors | index | embed + index s | s / image | peak RSS GiB | bytes/vector on disk | queries/s (mmap) | self-hit@1 |\n"
          "|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.images} | {result['n_vectors']:,} | {result['factory']} | {build_s:.0f} | {result['seconds_per_image']:.3f} | "
          f"{peak_child:.2f} | {result['bytes_per_vector_on_disk']:.1f} | {result['queries_per_second_mmap']:.0f} | {self_hit:.3f} |\n")
    write_results(os.path.join(args.out, "embed_index_scale"), result, md, meta)


if __name__ == "__main__":
    main()
