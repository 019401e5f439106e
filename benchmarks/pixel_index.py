"""Pixel retrieval: speed, size and anatomical error of PixelIndex against exact search.

Synthetic smooth embeddings with known anatomy: every image shows the same "anatomy", a
smooth field of unit vectors over anatomical coordinates (u, v), shifted by a known offset
and perturbed by noise. Queries come from a held-out image; the anatomical error of a hit is
the distance in pixels between its anatomical position and the query's. The same queries
run through exact FAISS search (Flat), scikit-learn's NearestNeighbors and the default
("auto") PixelIndex, in one run.

    python -m benchmarks.pixel_index [--images 16 --size 256 --queries 2000]

Writes ``benchmarks/results/pixel_index.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common.results import RESULTS_DIR, run_metadata, write_results


def smooth_field(size, dim, rng, n_freq=6, max_cycles=3.0):
    """A smooth (size, size, dim) field of unit vectors over anatomical coordinates."""
    freqs = rng.uniform(-max_cycles, max_cycles, size=(n_freq, dim, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(n_freq, dim))

    def at(u, v):
        arg = 2 * np.pi * (freqs[..., 0][None] * u[:, None, None] + freqs[..., 1][None] * v[:, None, None]) + phases
        f = np.sin(arg).sum(axis=1)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    return at


def make_images(n, size, dim, seed, shift=12, noise=0.05):
    rng = np.random.default_rng(seed)
    field = smooth_field(size, dim, np.random.default_rng(1234))  # one anatomy for all images
    images, shifts = [], []
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(n):
        dy, dx = rng.integers(-shift, shift + 1, size=2)
        u, v = (rows - dy).ravel() / size, (cols - dx).ravel() / size
        e = field(u, v) + noise * rng.normal(size=(size * size, dim))
        images.append((e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32).reshape(size, size, dim))
        shifts.append((dy, dx))
    return images, np.array(shifts)


def anatomical_error(locations, shifts, q_anat):
    """Pixel distance between the anatomical position of each top hit and of its query."""
    img, r, c = locations[:, 0, 0], locations[:, 0, 1], locations[:, 0, 2]
    hit_anat = np.stack([r - shifts[img, 0], c - shifts[img, 1]], axis=1)
    return np.linalg.norm(hit_anat - q_anat, axis=1)


def timed(fn, repeats=3):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def real_embeddings(args):
    """The bundled radiographs at full resolution (4 x 512 x 512 = 1,048,576 pixels), embedded
    by an encoder pretrained on them for two CPU minutes; queries are pixels of image 0, the
    index holds images 1-3 plus image 0 with its queried pixels masked out."""
    from skuld import LocalDiscriminativeEncoder, PixelIndex
    from skuld.datasets import load_cxr_tiny
    from skuld.demo import DEMO_PARAMS

    X = load_cxr_tiny().images
    enc = LocalDiscriminativeEncoder(**DEMO_PARAMS).fit(X)
    E = enc.transform(X)
    rng = np.random.default_rng(2)
    qr, qc = rng.integers(0, 512, args.queries), rng.integers(0, 512, args.queries)
    Q = E[0, qr, qc]
    masks = [np.ones((512, 512), bool) for _ in range(4)]
    masks[0][qr, qc] = False
    exact = PixelIndex(index="Flat").fit(E, masks=masks)
    t_exact, (_, loc_exact) = timed(lambda: exact.kneighbors(Q, k=10))
    out = []
    for nprobe in (None, 8, 16):
        if nprobe is None:
            idx, t, loc, name = exact, t_exact, loc_exact, "faiss Flat (exact)"
        else:
            idx = PixelIndex(random_state=0, nprobe=nprobe).fit(E, masks=masks)
            t, (_, loc) = timed(lambda: idx.kneighbors(Q, k=10))
            name = f"PixelIndex auto = {idx.factory_}, nprobe {nprobe}" + (" (default)" if nprobe == PixelIndex().nprobe else "")
        same = loc[:, 0, 0] == loc_exact[:, 0, 0]
        dist = np.linalg.norm(loc[same, 0, 1:] - loc_exact[same, 0, 1:], axis=1)
        out.append({"method": name, "qps": args.queries / t, "speedup": t_exact / t, "bytes_per_vector": idx.bytes_per_vector,
                    "recall_at_1": float((loc[:, 0] == loc_exact[:, 0]).all(axis=1).mean()), "same_image": float(same.mean()),
                    "px_from_exact_mean": float(dist.mean()), "px_from_exact_median": float(np.median(dist)),
                    "description": f"cxr_tiny, {exact.n_vectors_:,} vectors, encoder {DEMO_PARAMS['max_iter']} CPU steps"})
        print(out[-1], flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nprobe", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--out", default=str(RESULTS_DIR))
    ap.add_argument("--no-real", dest="real", action="store_false", help="skip the real-embedding part")
    args = ap.parse_args()

    import faiss  # noqa: F401  (imported, it puts its OpenMP threads into the metadata block)
    from sklearn.neighbors import NearestNeighbors

    from skuld import PixelIndex

    images, shifts = make_images(args.images + 1, args.size, args.dim, seed=0)
    held_out, q_shift = images.pop(), shifts[-1]
    shifts = shifts[:-1]
    rng = np.random.default_rng(1)
    qr = rng.integers(16, args.size - 16, args.queries)
    qc = rng.integers(16, args.size - 16, args.queries)
    Q = held_out[qr, qc]
    q_anat = np.stack([qr - q_shift[0], qc - q_shift[1]], axis=1)
    n = args.images * args.size * args.size
    rows = []

    exact = PixelIndex(index="Flat").fit(images)
    t_exact, (_, loc_exact) = timed(lambda: exact.kneighbors(Q, k=10))
    err_exact = anatomical_error(loc_exact, shifts, q_anat)
    rows.append({"method": "faiss Flat (exact)", "qps": args.queries / t_exact, "speedup": 1.0,
                 "bytes_per_vector": exact.bytes_per_vector, "recall_at_1": 1.0,
                 "anat_error_mean": float(err_exact.mean()), "anat_error_median": float(np.median(err_exact)),
                 "added_error": 0.0})
    print(rows[-1], flush=True)

    flat = np.concatenate([e.reshape(-1, args.dim) for e in images])
    nn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(flat)
    t_sk, (_, ids_sk) = timed(lambda: nn.kneighbors(Q), repeats=1)
    loc_sk = exact.locations(ids_sk)
    err_sk = anatomical_error(loc_sk, shifts, q_anat)
    rows.append({"method": "sklearn NearestNeighbors (brute, cosine)", "qps": args.queries / t_sk,
                 "speedup": t_exact / t_sk, "bytes_per_vector": 4 * args.dim,
                 "recall_at_1": float((ids_sk[:, 0] == exact.ids_of(loc_exact[:, 0])).mean()),
                 "anat_error_mean": float(err_sk.mean()), "anat_error_median": float(np.median(err_sk)),
                 "added_error": float(err_sk.mean() - err_exact.mean())})
    print(rows[-1], flush=True)
    del flat

    t0 = time.perf_counter()
    auto = PixelIndex(random_state=0).fit(images)
    build = time.perf_counter() - t0
    exact_ids = exact.ids_of(loc_exact[:, 0])
    for nprobe in args.nprobe:
        auto.set_params(nprobe=nprobe)
        t, (_, loc) = timed(lambda: auto.kneighbors(Q, k=10))
        err = anatomical_error(loc, shifts, q_anat)
        rows.append({"method": f"PixelIndex auto = {auto.factory_}, nprobe {nprobe}"
                     + (" (default)" if nprobe == PixelIndex().nprobe else ""),
                     "qps": args.queries / t, "speedup": t_exact / t, "bytes_per_vector": auto.bytes_per_vector,
                     "recall_at_1": float((auto.ids_of(loc[:, 0]) == exact_ids).mean()),
                     "anat_error_mean": float(err.mean()), "anat_error_median": float(np.median(err)),
                     "added_error": float(err.mean() - err_exact.mean()), "build_seconds": build})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        auto.save(os.path.join(tmp, "idx"))
        saved = sum(os.path.getsize(os.path.join(tmp, "idx", f)) for f in os.listdir(os.path.join(tmp, "idx")))
    real_rows = real_embeddings(args) if args.real else []
    meta = run_metadata()
    result = {"n_vectors": n, "dim": args.dim, "queries": args.queries, "saved_bytes_per_vector_default": saved / n,
              "rows": rows, "real": real_rows}
    lines = [f"# Pixel retrieval, {n:,} vectors of {args.dim} dims, {args.queries} queries, "
             f"{meta['cpu_count']} CPU threads ({meta['date']})", "", f"`{meta['command']}`", "",
             f"Default index saved to disk: {result['saved_bytes_per_vector_default']:.1f} bytes per vector "
             f"(raw float32: {4 * args.dim}).", "",
             "| method | queries/s | speed vs exact | bytes/vector | recall@1 vs exact | anatomical error mean / median (px) | added error (px) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['qps']:.0f} | {r['speedup']:.1f}x | {r['bytes_per_vector']:.1f} | "
                     f"{r['recall_at_1']:.3f} | {r['anat_error_mean']:.2f} / {r['anat_error_median']:.2f} | {r['added_error']:+.2f} |")
    if real_rows:
        lines += ["", f"## Real embeddings: {real_rows[0]['description']}", "",
                  "No anatomical ground truth across patients here: the error is the pixel distance between the top hit",
                  "and the exact search's top hit when both lie in the same image, and how often they lie in different images.",
                  "", "| method | queries/s | speed vs exact | bytes/vector | recall@1 vs exact | same image as exact | px from exact hit (mean / median) |",
                  "|---|---|---|---|---|---|---|"]
        for r in real_rows:
            lines.append(f"| {r['method']} | {r['qps']:.0f} | {r['speedup']:.1f}x | {r['bytes_per_vector']:.1f} | "
                         f"{r['recall_at_1']:.3f} | {r['same_image']:.3f} | {r['px_from_exact_mean']:.2f} / {r['px_from_exact_median']:.2f} |")
    write_results(os.path.join(args.out, "pixel_index"), result, lines, meta)


if __name__ == "__main__":
    main()
