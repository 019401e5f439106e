"""The ``skuld`` command line: ``skuld demo``, ``skuld fit``, ``skuld embed``, ``skuld index``."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    print(f"skuld demo: pretraining on the 4 bundled chest X-rays (about two CPU minutes) -> {args.out}/")
    result = run_demo(args.out, max_iter=args.max_iter, verbose=1)
    cov = result["cluster_coverage"]
    print(f"trained {result['encoder'].n_iter_} steps in {result['fit_seconds']:.0f} s; "
          f"loss {result['first_loss']:.2f} -> {result['final_loss']:.2f}")
    print(f"clusters covering >= 1 % of pixels: {int((cov >= 0.01).sum())} of {len(cov)}")
    print(f"pixels most similar to a lung pixel that lie in the lungs: {100 * result['lung_hit_rate']:.0f} % "
          f"(lungs cover {100 * result['lung_fraction']:.0f} % of the images)")
    for path in result["files"]:
        print(f"wrote {os.path.abspath(path)}")
    return 0


def _cmd_fit(args) -> int:
    import joblib

    from .estimators import LocalDiscriminativeEncoder
    from .io import atomic_write

    params = dict(max_iter=args.max_iter, crop_size=args.crop_size, batch_size=args.batch_size,
                  image_size=None if args.image_size == 0 else args.image_size, random_state=args.random_state,
                  device=args.device, checkpoint_dir=args.checkpoint_dir, verbose=1)
    if args.no_rotation:
        params.update(rotation=0.0, rot90=False)
    params = {k: v for k, v in params.items() if v is not None}
    from .distributed import rank, world_size

    enc = LocalDiscriminativeEncoder(**params)
    if rank() != 0:
        enc.set_params(verbose=0)
    enc.fit(args.images)
    if rank() == 0:
        atomic_write(args.out, lambda tmp: joblib.dump(enc, tmp))
        print(f"wrote {os.path.abspath(args.out)} ({enc.n_iter_} steps of {world_size()} x {enc.batch_size} items, "
              f"final loss {enc.loss_history_[-1]['loss']:.3f})")
    return 0


def _cmd_embed(args) -> int:
    import joblib
    import numpy as np

    from .io import ImageCollection, atomic_write, expand_paths
    from .retrieval import embed_each

    enc = joblib.load(args.model)
    paths = [p for spec in args.images for p in expand_paths(spec)]
    dtype = np.float16 if args.float16 else np.float32
    if sum(bool(x) for x in (args.out, args.stack, args.store)) != 1:
        raise ValueError("give one of --out (one .npy per image), --stack (one (n, H, W, D) array, one image size) "
                         "or --store (a folder for images of any sizes)")
    images = ImageCollection(paths, n_channels=enc.n_channels_in_)
    if args.stack:
        return _embed_stacked(enc, images, args.stack, dtype, args.overwrite, args.jobs)
    if args.store:
        return _embed_store(enc, images, args.store, dtype, args.overwrite, args.jobs)
    os.makedirs(args.out, exist_ok=True)
    targets = [os.path.join(args.out, os.path.splitext(os.path.basename(p))[0] + ".npy") for p in paths]
    # Files already there were written by an earlier, interrupted run (writes are atomic).
    todo = [i for i, t in enumerate(targets) if args.overwrite or not os.path.exists(t)]
    for i, E in embed_each(enc, images, todo, args.jobs):
        E = E.astype(dtype, copy=False)
        atomic_write(targets[i], lambda tmp: _save_npy(tmp, E))
        print(f"[{i + 1}/{len(paths)}] {paths[i]} -> {targets[i]} {E.shape} {E.dtype}", flush=True)
    return 0


def _embed_store(enc, images, folder, dtype, overwrite, jobs) -> int:
    """Every image's embeddings in one EmbeddingStore folder (any sizes); resumes an
    interrupted run over the same images."""
    from .retrieval import EmbeddingStore, embed_each

    paths = images.paths
    shapes = [images.shape(i) for i in range(len(images))]
    store = None
    if not overwrite and os.path.exists(os.path.join(folder, "images.json")):
        store = EmbeddingStore(folder, mode="r+")
        if store.paths != paths or store.shapes != shapes or store.dtype != dtype:
            raise ValueError(f"{folder} holds a store of other images or another dtype: remove it or use --overwrite")
    if store is None:
        store = EmbeddingStore.create(folder, paths, shapes, enc.model_.embedding_dim, dtype)
    start = store.n_complete
    for i, E in embed_each(enc, images, range(start, len(paths)), jobs):
        store.write(i, E)
        print(f"[{i + 1}/{len(paths)}] embedded into {folder}", flush=True)
    print(f"wrote {os.path.abspath(folder)}: {len(paths)} images, {store.n_pixels:,} pixels x {store.dim} "
          f"{store.dtype} (read it with skuld.retrieval.EmbeddingStore)")
    return 0


def _write_text(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _save_npy(path, array) -> None:
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, array)


def _embed_stacked(enc, images, target, dtype, overwrite, jobs) -> int:
    """All embeddings in one (n, H, W, D) .npy written through a memory map, so memory holds
    one image at a time; a progress file lets a rerun resume, the final name appears last."""
    import numpy as np

    from .io import atomic_write
    from .retrieval import embed_each

    paths = images.paths
    shapes = {images.shape(i) for i in range(len(paths))}
    if len(shapes) != 1:
        raise ValueError(f"--stack needs images of one size; found {len(shapes)} sizes, e.g. {sorted(shapes)[:3]}")
    (h, w), d = shapes.pop(), enc.model_.embedding_dim
    shape = (len(paths), h, w, d)
    partial, progress = f"{target}.partial.npy", f"{target}.progress"
    start = 0
    if not overwrite and os.path.exists(partial) and os.path.exists(progress):
        mm = np.lib.format.open_memmap(partial, mode="r+")
        if mm.shape != shape or mm.dtype != dtype:
            raise ValueError(f"{partial} holds {mm.shape} {mm.dtype}, not {shape} {np.dtype(dtype)}: remove it or use --overwrite")
        start = int(open(progress).read())
    else:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
    for i, E in embed_each(enc, images, range(start, len(paths)), jobs):
        mm[i] = E
        mm.flush()  # the image is on disk before the progress file counts it
        atomic_write(progress, lambda tmp, n=i + 1: _write_text(tmp, str(n)))
        print(f"[{i + 1}/{len(paths)}] embedded into {partial}", flush=True)
    del mm
    os.replace(partial, target)
    os.remove(progress)
    atomic_write(f"{target}.paths.txt", lambda tmp: _write_text(tmp, "\n".join(paths) + "\n"))
    print(f"wrote {os.path.abspath(target)} {shape} {np.dtype(dtype)} (image order: {target}.paths.txt)")
    return 0


def _cmd_index(args) -> int:
    import joblib

    from .estimators import PixelIndex
    from .io import expand_paths

    enc = joblib.load(args.model)
    paths = [p for spec in args.images for p in expand_paths(spec)]
    index = PixelIndex(index=args.index, stride=args.stride, n_jobs=args.jobs, random_state=0, verbose=1)
    index.fit(paths, encoder=enc)
    index.save(args.out)
    with open(os.path.join(args.out, "images.txt"), "w") as f:
        f.write("\n".join(paths) + "\n")
    print(f"wrote {os.path.abspath(args.out)}: {index.n_vectors_:,} vectors of {len(paths)} images, "
          f"{index.factory_}, {index.bytes_per_vector:.1f} bytes/vector (image numbers: line numbers of images.txt)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skuld", description="Self-supervised per-pixel embeddings for medical images.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="pretrain on the bundled chest X-rays and write cluster and similarity pictures")
    demo.add_argument("--out", default="skuld-demo", help="folder for the PNGs (default: ./skuld-demo)")
    demo.add_argument("--max-iter", type=int, default=None, help="training steps (default 300)")
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser("fit", help="pretrain a LocalDiscriminativeEncoder on a folder or glob of images "
                                     "(several processes: torchrun --nproc-per-node=N -m skuld fit ...)")
    fit.add_argument("images", help="directory, glob pattern ('scans/*.png') or single file")
    fit.add_argument("--out", required=True, help="where to save the fitted model (joblib)")
    fit.add_argument("--max-iter", type=int)
    fit.add_argument("--crop-size", type=int)
    fit.add_argument("--image-size", type=int, help="shorter side at working resolution; 0 keeps native size")
    fit.add_argument("--batch-size", type=int)
    fit.add_argument("--random-state", type=int)
    fit.add_argument("--device", help="auto, cpu or cuda")
    fit.add_argument("--checkpoint-dir", help="save and resume training checkpoints here")
    fit.add_argument("--no-rotation", action="store_true",
                     help="no rotation invariance (images that share one orientation: X-rays, cephalograms)")
    fit.set_defaults(func=_cmd_fit)

    embed = sub.add_parser("embed", help="write per-pixel embeddings (H, W, D) of images as .npy files")
    embed.add_argument("model", help="a model saved by 'skuld fit'")
    embed.add_argument("images", nargs="+", help="image files, directories or glob patterns")
    embed.add_argument("--out", help="output folder, one <name>.npy per image")
    embed.add_argument("--stack", help="instead: one (n, H, W, D) .npy for images of one size, written through a "
                                       "memory map (bounded memory, resumable)")
    embed.add_argument("--store", help="instead: a folder holding images of any sizes as one memory-mapped array "
                                       "(skuld.retrieval.EmbeddingStore; bounded memory, resumable)")
    embed.add_argument("--jobs", type=int, default=None,
                       help="processes decoding the next images while one is embedded (default: none; -1: all cores)")
    embed.add_argument("--float16", action="store_true", help="store half-precision embeddings (half the disk)")
    embed.add_argument("--overwrite", action="store_true",
                       help="recompute images whose .npy exists (by default they are skipped, so a rerun resumes)")
    embed.set_defaults(func=_cmd_embed)

    index = sub.add_parser("index", help="build a PixelIndex of images' pixels (embedded one image at a time)")
    index.add_argument("model", help="a model saved by 'skuld fit'")
    index.add_argument("images", nargs="+", help="image files, directories or glob patterns")
    index.add_argument("--out", required=True, help="output folder of the index")
    index.add_argument("--stride", type=int, default=1, help="index every stride-th row and column")
    index.add_argument("--index", default="auto", help="FAISS factory string, or auto")
    index.add_argument("--jobs", type=int, default=None,
                       help="processes decoding the next images while one is embedded (default: none; -1: all cores)")
    index.set_defaults(func=_cmd_index)
    return parser


def _init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    distributed_run = _init_distributed()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        print(f"skuld {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if distributed_run:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
