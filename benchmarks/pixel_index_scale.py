"""Scale test: build, save, memory-map and query a 20M-vector compressed PixelIndex.

The vectors are synthetic (20 "images" of 1024 x 1024 pixels, 32-d unit vectors), generated
one image at a time so that they are never all in memory: the index is trained on a sample
and filled block by block, as for a real collection embedded by an encoder.

    python -m benchmarks.pixel_index_scale [--images 20 --size 1024]

Writes ``benchmarks/results/pixel_index_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


class LazyImage:
    """(size, size, dim) embeddings made on demand from a seed; numpy sees an array."""

    def __init__(self, seed, size, dim):
        self.seed, self.shape, self.ndim = seed, (size, size, dim), 3

    def __array__(self, dtype=None, copy=None):
        rng = np.random.default_rng(self.seed)
        e = rng.standard_normal(self.shape, dtype=np.float32)
        e /= np.linalg.norm(e, axis=-1, keepdims=True)
        return e


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args()

    from skuld import PixelIndex

    images = [LazyImage(i, args.size, args.dim) for i in range(args.images)]
    n = args.images * args.size * args.size
    t0 = time.perf_counter()
    idx = PixelIndex(random_state=0).fit(images)
    build = time.perf_counter() - t0
    rss_build = peak_rss_gib()
    tmp = tempfile.mkdtemp(dir=os.environ.get("SKULD_SCALE_TMP"))
    try:
        t0 = time.perf_counter()
        idx.save(os.path.join(tmp, "idx"))
        save_s = time.perf_counter() - t0
        disk = sum(os.path.getsize(os.path.join(tmp, "idx", f)) for f in os.listdir(os.path.join(tmp, "idx")))
        del idx
        t0 = time.perf_counter()
        mm = PixelIndex.load(os.path.join(tmp, "idx"), mmap=True)
        load_s = time.perf_counter() - t0
        probe_image = min(7, args.images - 1)
        probe = np.asarray(images[probe_image])
        rows = np.random.default_rng(0).integers(0, args.size, size=(args.queries, 2))
        Q = probe[rows[:, 0], rows[:, 1]]
        del probe
        t0 = time.perf_counter()
        _, loc = mm.kneighbors(Q, k=10)
        query_s = time.perf_counter() - t0
        self_hit = float((loc[:, 0] == np.column_stack([np.full(len(rows), probe_image), rows])).all(axis=1).mean())
        result = {
            "n_vectors": n, "dim": args.dim, "factory": mm.factory_, "build_seconds": build,
            "peak_rss_GiB_during_build": rss_build, "save_seconds": save_s, "disk_bytes": disk,
            "bytes_per_vector_on_disk": disk / n, "mmap_load_seconds": load_s, "queries": args.queries,
            "queries_per_second_mmap": args.queries / query_s, "self_hit_rate_at_1": self_hit,
            "nprobe": mm.nprobe, "peak_rss_GiB": peak_rss_gib(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    meta = run_metadata()
    md = (f"# PixelIndex scale test ({meta['date']}, {meta['cpu_count']} CPU threads)\n\n`{meta['command']}`\n\n"
          "| vectors | index | build s | peak RSS GiB | bytes/vector on disk | save s | mmap load s | queries/s (mmap) | self-hit@1 |\n"
          "|---|---|---|---|---|---|---|---|---|\n"
          f"| {n:,} | {result['factory']} | {build:.0f} | {result['peak_rss_GiB']:.2f} | {result['bytes_per_vector_on_disk']:.1f} | "
          f"{save_s:.1f} | {load_s:.2f} | {result['queries_per_second_mmap']:.0f} | {self_hit:.3f} |\n\n"
          "Random (not smooth) vectors: the self-hit rate measures how often PQ16 codes keep a pixel its own nearest\n"
          "neighbour among 20M random 32-d vectors, a harsh case; smooth real embeddings have near-duplicate neighbours.\n")
    write_results(os.path.join(args.out, "pixel_index_scale"), result, md, meta)


if __name__ == "__main__":
    main()
