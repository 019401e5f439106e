"""The ``skuld`` command line: ``demo``, ``fit``, ``embed``, ``index`` and ``query``.

Models are read and written as skuld model files (:func:`skuld.save`), which cannot run code;
a pickle is read only with ``--allow-pickle``. Every output that holds embeddings records the
model that computed them and refuses to mix in another model's (``--overwrite`` replaces).
"""

from __future__ import annotations

import argparse
import json
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


def _paths(specs) -> list[str]:
    from .io import expand_paths

    return [p for spec in specs for p in expand_paths(spec)]


def _cmd_fit(args) -> int:
    from .distributed import rank, world_size
    from .estimators import LocalDiscriminativeEncoder
    from .estimators.persistence import save
    from .io import check_writable

    params = dict(max_iter=args.max_iter, crop_size=args.crop_size, batch_size=args.batch_size,
                  image_size=None if args.image_size == 0 else args.image_size, random_state=args.random_state,
                  device=args.device, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                  intensity_range=tuple(args.intensity_range) if args.intensity_range else None,
                  on_error=args.on_error, verbose=1)
    if args.no_rotation:
        params.update(rotation=0.0, rot90=False)
    params = {k: v for k, v in params.items() if v is not None}
    paths = _paths(args.images)
    if rank() == 0:  # a run that cannot keep its result must fail now, not after training
        check_writable(args.out, "model")
        if args.checkpoint_dir:
            check_writable(args.checkpoint_dir, "checkpoints", folder=True)
    enc = LocalDiscriminativeEncoder(**params)
    if rank() != 0:
        enc.set_params(verbose=0)
    enc.fit(paths)
    if rank() == 0:
        save(enc, args.out)
        print(f"wrote {os.path.abspath(args.out)} ({enc.n_iter_} steps of {world_size()} x {enc.batch_size} items, "
              f"final loss {enc.loss_history_[-1]['loss']:.3f})")
    return 0


def _load_model(path: str, allow_pickle: bool):
    from .estimators.persistence import load

    model = load(path, allow_pickle=allow_pickle)
    if not hasattr(model, "transform") or not hasattr(model, "n_channels_in_"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a fitted encoder (from 'skuld fit')")
    return model


def _record(path: str, record: dict, overwrite: bool, what: str) -> int:
    """Compare an output's model record with ``record``: refuse another model's output unless
    ``overwrite``; write the record. Returns 1 when an earlier record of this model was found."""
    from .io import atomic_write

    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        same = [old.get(k, 1 if k == "stride" else None) == record[k] for k in ("model", "dtype", "stride")]
        if all(same) and not overwrite:
            return 1
        if not overwrite:
            raise ValueError(f"{what} holds embeddings of another model or kind ({old.get('model')}, {old.get('dtype')}, "
                             f"stride {old.get('stride', 1)}; this one is {record['model']}, {record['dtype']}, stride "
                             f"{record['stride']}): use --overwrite to replace them, or another output")
    atomic_write(path, lambda tmp: _write_text(tmp, json.dumps(record, indent=1)))
    return 0


def _cmd_embed(args) -> int:
    import numpy as np

    from .estimators.persistence import model_fingerprint
    from .io import atomic_write
    from .retrieval import embed_each

    if sum(bool(x) for x in (args.out, args.stack, args.store)) != 1:
        raise ValueError("give one of --out (one .npy per image), --stack (one (n, H, W, D) array, one image size) "
                         "or --store (a folder for images of any sizes)")
    enc = _load_model(args.model, args.allow_pickle)
    paths = _paths(args.images)
    dtype = np.float16 if args.float16 else np.float32
    images = enc.input_spec_.collect(paths)
    record = {"model": model_fingerprint(enc), "model_file": os.path.abspath(args.model),
              "dtype": np.dtype(dtype).name, "stride": args.stride}
    if args.stride < 1:
        raise ValueError(f"--stride must be at least 1, got {args.stride}")
    if args.stride > 1 and args.store:
        raise ValueError("--stride applies to --out and --stack; a --store holds every pixel (its coordinates are "
                         "pixels of the images)")
    if args.stride > 1:
        enc = _Strided(enc, args.stride)
    if args.stack:
        return _embed_stacked(enc, images, args.stack, dtype, args.overwrite, args.jobs, record)
    if args.store:
        return _embed_store(enc, images, args.store, dtype, args.overwrite, args.jobs, record)
    os.makedirs(args.out, exist_ok=True)
    _record(os.path.join(args.out, "skuld-embeddings.json"), record, args.overwrite, args.out)
    targets = [os.path.join(args.out, os.path.splitext(os.path.basename(p))[0] + ".npy") for p in paths]
    # Files already there were written by an earlier, interrupted run of this model (writes are atomic).
    todo = [i for i, t in enumerate(targets) if args.overwrite or not os.path.exists(t)]
    _report_skipped(len(paths) - len(todo))
    for i, E in embed_each(enc, images, todo, args.jobs):
        E = E.astype(dtype, copy=False)
        atomic_write(targets[i], lambda tmp: _save_npy(tmp, E))
        print(f"[{i + 1}/{len(paths)}] {paths[i]} -> {targets[i]} {E.shape} {E.dtype}", flush=True)
    return 0


class _Strided:
    """An encoder whose ``transform`` keeps every ``stride``-th row and column."""

    def __init__(self, enc, stride: int):
        self.enc, self.stride = enc, stride
        self.model_ = getattr(enc, "model_", None)

    def transform(self, X):
        return self.enc.transform(X, stride=self.stride)


def _report_skipped(n: int) -> None:
    if n:
        print(f"skipped {n} image(s) already embedded by this model (--overwrite recomputes them)", flush=True)


def _embed_store(enc, images, folder, dtype, overwrite, jobs, record) -> int:
    """Every image's embeddings in one EmbeddingStore folder (any sizes); resumes an
    interrupted run over the same images with the same model."""
    from .retrieval import EmbeddingStore, embed_each

    paths = images.paths
    shapes = [images.shape(i) for i in range(len(images))]
    store = None
    if not overwrite and os.path.exists(os.path.join(folder, "images.json")):
        store = EmbeddingStore(folder, mode="r+")
        if store.paths != paths or store.shapes != shapes or store.dtype != dtype:
            raise ValueError(f"{folder} holds a store of other images or another dtype: remove it or use --overwrite")
        if store.model != record["model"]:
            raise ValueError(f"{folder} holds embeddings of another model ({store.model}; this one is "
                             f"{record['model']}): use --overwrite to replace them, or another folder")
    if store is None:
        store = EmbeddingStore.create(folder, paths, shapes, _dim(enc, images), dtype, model=record["model"])
    start = store.n_complete
    _report_skipped(start)
    for i, E in embed_each(enc, images, range(start, len(paths)), jobs):
        store.write(i, E)
        print(f"[{i + 1}/{len(paths)}] embedded into {folder}", flush=True)
    print(f"wrote {os.path.abspath(folder)}: {len(paths)} images, {store.n_pixels:,} pixels x {store.dim} "
          f"{store.dtype} (read it with skuld.retrieval.EmbeddingStore)")
    return 0


def _dim(enc, images) -> int:
    """D of the model's embeddings (a skuld encoder says; another model is asked with one image)."""
    model = getattr(enc, "model_", None)
    if model is not None and hasattr(model, "embedding_dim"):
        return int(model.embedding_dim)
    return int(enc.transform(images[0][None]).shape[-1])


def _write_text(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _save_npy(path, array) -> None:
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, array)


def _embed_stacked(enc, images, target, dtype, overwrite, jobs, record) -> int:
    """All embeddings in one (n, H, W, D) .npy written through a memory map, so memory holds
    one image at a time; a progress file lets a rerun resume, the final name appears last."""
    import numpy as np

    from .inference import output_shape
    from .io import atomic_write
    from .retrieval import embed_each

    paths = images.paths
    stride = getattr(enc, "stride", 1)
    shapes = {output_shape(*images.shape(i), stride) for i in range(len(paths))}
    if len(shapes) != 1:
        raise ValueError(f"--stack needs images of one size; found {len(shapes)} sizes, e.g. {sorted(shapes)[:3]}")
    (h, w) = shapes.pop()
    partial, progress = f"{target}.partial.npy", f"{target}.progress"
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    known = _record(f"{target}.model.json", record, overwrite, target)
    if known and os.path.exists(target) and not os.path.exists(partial):  # complete: this model's, done before
        done = np.load(target, mmap_mode="r")
        if done.shape[:3] == (len(paths), h, w) and done.dtype == dtype:
            _report_skipped(len(paths))
            return 0
    start = 0
    if known and os.path.exists(partial) and os.path.exists(progress):
        mm = np.lib.format.open_memmap(partial, mode="r+")
        if mm.shape[:3] != (len(paths), h, w) or mm.dtype != dtype:
            raise ValueError(f"{partial} holds {mm.shape} {mm.dtype}, not {(len(paths), h, w)} {np.dtype(dtype)}: "
                             "remove it or use --overwrite")
        start = int(open(progress).read())
    else:
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(len(paths), h, w, _dim(enc, images)))
    _report_skipped(start)
    for i, E in embed_each(enc, images, range(start, len(paths)), jobs):
        mm[i] = E
        mm.flush()  # the image is on disk before the progress file counts it
        atomic_write(progress, lambda tmp, n=i + 1: _write_text(tmp, str(n)))
        print(f"[{i + 1}/{len(paths)}] embedded into {partial}", flush=True)
    shape = mm.shape
    del mm
    os.replace(partial, target)
    os.remove(progress)
    atomic_write(f"{target}.paths.txt", lambda tmp: _write_text(tmp, "\n".join(paths) + "\n"))
    print(f"wrote {os.path.abspath(target)} {shape} {np.dtype(dtype)} (image order: {target}.paths.txt)")
    return 0


def _cmd_index(args) -> int:
    from .estimators import PixelIndex
    from .io import check_writable

    enc = _load_model(args.model, args.allow_pickle)
    paths = _paths(args.images)
    check_writable(args.out, "index")
    index = PixelIndex(index=args.index, stride=args.stride, n_jobs=args.jobs, random_state=0, verbose=1)
    index.fit(paths, encoder=enc)
    index.save(args.out)
    with open(os.path.join(args.out, "images.txt"), "w") as f:
        f.write("\n".join(paths) + "\n")
    print(f"wrote {os.path.abspath(args.out)}: {index.n_vectors_:,} vectors of {len(paths)} images, "
          f"{index.factory_}, {index.bytes_per_vector:.1f} bytes/vector (image numbers: line numbers of images.txt)")
    return 0


def _cmd_query(args) -> int:
    from .estimators import PixelIndex
    from .estimators.persistence import model_fingerprint

    index = PixelIndex.load(args.index)
    enc = _load_model(args.model, args.allow_pickle)
    if index.embedding_model_ is not None and index.embedding_model_ != model_fingerprint(enc):
        raise ValueError(f"{args.index} was built with another model ({index.embedding_model_}) than {args.model} "
                         f"({model_fingerprint(enc)}): its neighbours would mean nothing")
    images = enc.input_spec_.collect([args.image])
    h, w = images.shape(0)
    if not (0 <= args.row < h and 0 <= args.col < w):
        raise ValueError(f"pixel ({args.row}, {args.col}) is outside the {h} x {w} image {args.image}")
    E = enc.transform(images[0][None])[0]
    sims, where = index.kneighbors(E[args.row, args.col], k=args.k)
    names_file = os.path.join(args.index, "images.txt")
    names = open(names_file).read().splitlines() if os.path.exists(names_file) else None
    print("similarity\timage\trow\tcol")
    for s, (img, row, col) in zip(sims[0], where[0]):
        if img < 0:
            continue
        print(f"{s:.4f}\t{names[img] if names and img < len(names) else img}\t{row}\t{col}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="skuld", description="Self-supervised per-pixel embeddings for medical images.")
    parser.add_argument("--version", action="version", version=f"skuld {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    pickles = "also read a pickled model (it runs code when read: only for files you trust)"

    demo = sub.add_parser("demo", help="pretrain on the bundled chest X-rays and write cluster and similarity pictures")
    demo.add_argument("--out", default="skuld-demo", help="folder for the PNGs (default: ./skuld-demo)")
    demo.add_argument("--max-iter", type=int, default=None, help="training steps (default 300)")
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser("fit", help="pretrain a LocalDiscriminativeEncoder on folders, globs or files of images "
                                     "(several processes: torchrun --nproc-per-node=N -m skuld fit ...)")
    fit.add_argument("images", nargs="+", help="directories, glob patterns ('scans/*.png') or files")
    fit.add_argument("--out", required=True, help="where to save the fitted model (a skuld model file, e.g. model.skuld)")
    fit.add_argument("--max-iter", type=int)
    fit.add_argument("--crop-size", type=int)
    fit.add_argument("--image-size", type=int, help="shorter side at working resolution; 0 keeps native size")
    fit.add_argument("--batch-size", type=int)
    fit.add_argument("--random-state", type=int)
    fit.add_argument("--device", help="auto, cpu or cuda")
    fit.add_argument("--checkpoint-dir", help="save and resume training checkpoints here")
    fit.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    fit.add_argument("--intensity-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="raw values shown as black and white, e.g. -160 240 (a CT window in HU) or 0 4095 "
                          "(12-bit data in 16-bit files); default: each DICOM file's range, the dtype's maximum")
    fit.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                     help="unreadable or too small images: stop before training (raise, default) or leave them "
                          "out with a warning (skip)")
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
    embed.add_argument("--stride", type=int, default=1,
                       help="embeddings of every stride-th row and column only (stride^2 times less disk and memory); "
                            "with --out and --stack")
    embed.add_argument("--overwrite", action="store_true",
                       help="recompute every image and replace what the output holds (by default a rerun with the "
                            "same model resumes, and another model's output is refused)")
    embed.add_argument("--allow-pickle", action="store_true", help=pickles)
    embed.set_defaults(func=_cmd_embed)

    index = sub.add_parser("index", help="build a PixelIndex of images' pixels (embedded one image at a time)")
    index.add_argument("model", help="a model saved by 'skuld fit'")
    index.add_argument("images", nargs="+", help="image files, directories or glob patterns")
    index.add_argument("--out", required=True, help="output folder of the index")
    index.add_argument("--stride", type=int, default=1, help="index every stride-th row and column")
    index.add_argument("--index", default="auto", help="FAISS factory string, or auto")
    index.add_argument("--jobs", type=int, default=None,
                       help="processes decoding the next images while one is embedded (default: none; -1: all cores)")
    index.add_argument("--allow-pickle", action="store_true", help=pickles)
    index.set_defaults(func=_cmd_index)

    query = sub.add_parser("query", help="which indexed pixels look like this one: the k most similar, one a line")
    query.add_argument("index", help="an index folder written by 'skuld index'")
    query.add_argument("model", help="the model the index was built with")
    query.add_argument("image", help="the image holding the query pixel")
    query.add_argument("row", type=int)
    query.add_argument("col", type=int)
    query.add_argument("-k", type=int, default=10, help="neighbours (default 10)")
    query.add_argument("--allow-pickle", action="store_true", help=pickles)
    query.set_defaults(func=_cmd_query)
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
    except (ValueError, FileNotFoundError, TypeError, RuntimeError, MemoryError) as exc:
        print(f"skuld {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if distributed_run:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
