"""One-shot cephalometric landmarks: OneShotLandmarkLocator against template matching.

Data: ``../shared/data/ceph_hamedan`` (100 lateral cephalograms 1340 x 1671, 19 landmarks by
two annotators; mollabashi's are the truth). Template: image 001 with its landmarks. The
locator pretrains its encoder on images 002-100 without their labels (and picks its pseudo
templates among them), then predicts images 002-100; errors are in full-resolution pixels.

In the same run:
* normalised cross-correlation template matching (``skimage.feature.match_template``),
  coarse to fine: a coarse search in a window around the template's own coordinates, then
  a finer pass; patch sizes and window tuned on images 002-011;
* the second annotator (farhadifar) scored against the first: the floor of what "correct"
  means on this data;
* the locator told that porion (landmark 4: on these images the top of the cephalostat's
  ear-rod ring) is fixed to the device (``fixed_landmarks``), a full fit of its own;
* ablations of every part of the locator: the cumulative rows on the pretrained encoder
  (the last of them again on the correspondence-fine-tuned encoder), one-change variants
  on the default's fine-tuned encoder and pseudo templates, the default without fine-tuning,
  and the same pipeline on an untrained (random-weights) encoder.

The encoder is pretrained by the script with the locator's own settings
(``skuld.landmarks.ENCODER_DEFAULTS``, random_state 0, images 002-100 then 001) and handed to the
locator, so the ablations can use it before fine-tuning; "fit s" is pretraining plus the
locator's fit.

Usage::

    python -m benchmarks.landmarks                  # full run (about 45 min on 2 cores)
    python -m benchmarks.landmarks --quick          # 20 evaluation images, shorter pretraining

Writes ``benchmarks/results/landmarks.json`` and ``landmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.frozen import FrozenEstimator

from benchmarks.common.data import ceph_files, has_dataset, load_truth
from benchmarks.common.landmarks import PORION, RADII, annotator_rows, locator_encoder, per_landmark_table, summarize
from benchmarks.common.results import RESULTS_DIR, atomic_write_text, run_metadata, write_markdown, write_results
from skuld import LocalDiscriminativeEncoder, OneShotLandmarkLocator
from skuld.io import read_image
from skuld.metrics import radial_errors


# ---------------------------------------------------------------------------- NCC baseline
def _to_gray(img):
    return img[..., 0] if img.ndim == 3 else img


def _downscale(img, factor):
    from skimage.transform import rescale

    return rescale(img, factor, anti_aliasing=True, preserve_range=True).astype(np.float32)


def ncc_locate(template, marks, query, coarse=(0.2, 61, 150), fine=(0.5, 41, 20)):
    """Template matching coarse to fine.

    ``coarse`` and ``fine`` are (scale, patch side in scaled pixels, search radius in
    full-resolution pixels); the coarse search is centred on the template's own coordinates
    and the fine one on the coarse result.
    """
    from skimage.feature import match_template

    pts = np.array(marks, dtype=float)
    out = pts.copy()
    centres = pts.copy()
    for scale, patch, radius in (coarse, fine):
        t = _downscale(template, scale)
        q = _downscale(query, scale)
        half = patch // 2
        r = int(round(radius * scale))
        pad_t, pad_q = half + 1, half + r + 1
        tp = np.pad(t, pad_t, mode="reflect")
        qp = np.pad(q, pad_q, mode="reflect")
        for i, (p, c) in enumerate(zip(pts, centres)):
            tx, ty = (int(round(v * scale)) + pad_t for v in p)
            cx = int(np.clip(round(c[0] * scale), 0, q.shape[1] - 1)) + pad_q
            cy = int(np.clip(round(c[1] * scale), 0, q.shape[0] - 1)) + pad_q
            patch_img = tp[ty - half : ty + half + 1, tx - half : tx + half + 1]
            region = qp[cy - half - r : cy + half + r + 1, cx - half - r : cx + half + r + 1]
            score = match_template(region, patch_img)
            dy, dx = np.unravel_index(np.argmax(score), score.shape)
            # Window (dy, dx) is centred on padded pixel (cy - r + dy, cx - r + dx).
            out[i] = ((cx - r + dx - pad_q) / scale, (cy - r + dy - pad_q) / scale)
        centres = out.copy()
    return out


def run_ncc(images, truth, template_index, eval_idx, tune_idx, log):
    template = _to_gray(images(template_index))
    marks = truth[template_index]
    grid = [((0.2, p, w), (0.5, f, 20)) for p in (41, 61, 81) for w in (100, 150, 200) for f in (31, 61)]
    tune_imgs = {i: _to_gray(images(i)) for i in tune_idx}
    best = None
    for coarse, fine in grid:
        pred = np.stack([ncc_locate(template, marks, tune_imgs[i], coarse, fine) for i in tune_idx])
        mre = float(np.nanmean(radial_errors(pred, truth[tune_idx])))
        log(f"  NCC tuning coarse={coarse} fine={fine}: MRE {mre:.1f}")
        if best is None or mre < best[0]:
            best = (mre, coarse, fine)
    _, coarse, fine = best
    start = time.perf_counter()
    pred = np.stack([ncc_locate(template, marks, _to_gray(images(i)), coarse, fine) for i in eval_idx])
    seconds = (time.perf_counter() - start) / len(eval_idx)
    return pred, {"coarse": coarse, "fine": fine, "seconds_per_image": seconds}


# ---------------------------------------------------------------------------- skuld
#: Cumulative: each row adds one part to the row above, on the pretrained encoder; the last
#: one is the default locator.
CUMULATIVE = [
    ("paper: embedding, whole image, argmax", dict(features="embedding", search_radius=None, refine_scales=(),
                                                   shape_tolerance=None, n_pseudo_templates=0)),
    ("+ shape-consistent search window", dict(features="embedding", refine_scales=(), shape_tolerance=None,
                                              n_pseudo_templates=0)),
    ("+ encoder feature maps (strides 4, 8, 16) as descriptors", dict(refine_scales=(), shape_tolerance=None,
                                                                      n_pseudo_templates=0)),
    ("+ correlation refinement (1x, 2x, 4x)", dict(shape_tolerance=None, n_pseudo_templates=0)),
    ("+ final shape check", dict(n_pseudo_templates=0)),
]
#: Same as the last cumulative row, on the default's fine-tuned encoder.
FINE_TUNED_ROW = "+ cross-image correspondence fine-tuning"
#: One change each to the default locator (same fine-tuned encoder, same pseudo templates).
VARIANTS = [
    ("  templates fused by averaging maps (fusion='maps')", dict(fusion="maps")),
    ("  correlation alone in refinement (coarse_weight=0)", dict(coarse_weight=0.0)),
    ("  refinement at 1x, 2x only", dict(refine_scales=(1, 2))),
    ("  affine shape model", dict(shape_model="affine")),
    ("  encoder maps and final embedding (features='multiscale')", dict(features="multiscale")),
    ("  final embedding only", dict(features="embedding")),
]
#: Porion declared fixed (``PORION``, landmark 4: the top of the ear-rod ring).
FIXED_ROW = "skuld, porion declared fixed to the cephalostat (fixed_landmarks=[3])"
NO_FINE_TUNING_ROW = "  no correspondence fine-tuning (pretrained encoder, its own pseudo templates)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 evaluation images and 150 pretraining steps")
    ap.add_argument("--max-iter", type=int, default=None, help="pretraining steps (default: the locator's)")
    ap.add_argument("--pseudo", type=int, default=None, help="n_pseudo_templates (default: the locator's)")
    ap.add_argument("--correspondence-steps", type=int, default=None,
                    help="correspondence_steps (default: the locator's)")
    ap.add_argument("--encoder", default=None, help="use this saved encoder instead of pretraining")
    ap.add_argument("--also-encoder", action="append", default=[], metavar="LABEL=PATH",
                    help="also evaluate the pipeline (and the paper's recipe) with this saved encoder")
    ap.add_argument("--table-only", action="store_true", help="rewrite the Markdown table from the JSON at --out")
    ap.add_argument("--out", default=str(RESULTS_DIR / "landmarks"))
    args = ap.parse_args(argv)
    if args.table_only:
        with open(Path(args.out).with_suffix(".json")) as f:
            results = json.load(f)
        if has_dataset("ceph_hamedan"):  # the annotator rows are recomputed: they need no model
            n_eval = results["n_eval"]
            annot = annotator_rows(load_truth("mollabashi"), load_truth("farhadifar"), list(range(1, 1 + n_eval)))
            results["rows"] = {**annot, **{k: v for k, v in results["rows"].items() if k not in annot}}
            # Rewritten as it was read, its metadata block included: it describes the run
            # that measured the rows, not this rewrite.
            atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(results, indent=1))
        write_markdown(args.out, table(results))
        return
    files = ceph_files()

    def log(msg):
        print(msg, flush=True)

    truth, second = load_truth("mollabashi"), load_truth("farhadifar")
    template_index = 0
    others = list(range(1, len(files)))
    eval_idx = others[:20] if args.quick else others
    tune_idx = others[:10]
    cache = {}

    def image(i):
        if i not in cache:
            cache[i] = read_image(files[i]).astype(np.float32) / 255.0
        return cache[i]

    results = {"n_eval": len(eval_idx), "rows": {}}
    rows = results["rows"]

    log("annotator agreement")
    rows.update(annotator_rows(truth, second, eval_idx))

    log("template matching baseline")
    pred, info = run_ncc(image, truth, template_index, eval_idx, tune_idx, log)
    rows["NCC template matching (skimage, tuned, coarse to fine)"] = {**summarize(pred, truth[eval_idx]), **info}

    log("skuld: fit (pretraining included)")
    # The encoder is pretrained here, as the locator would (same settings, same images in
    # the same order), so that the ablations can run on it before fine-tuning.
    unlabeled = [files[i] for i in others]
    start = time.perf_counter()
    pretrained = locator_encoder(files, args.encoder, args.max_iter or (150 if args.quick else None))
    pretrain_seconds = 0.0 if args.encoder else time.perf_counter() - start
    if not args.encoder:
        log(f"  pretraining {pretrain_seconds:.0f} s")
    params = {"encoder": FrozenEstimator(pretrained), "random_state": 0, "verbose": 1}
    if args.pseudo is not None:
        params["n_pseudo_templates"] = args.pseudo
    if args.correspondence_steps is not None:
        params["correspondence_steps"] = args.correspondence_steps
    loc = OneShotLandmarkLocator(**params)
    loc.fit(files[template_index], truth[template_index], X_unlabeled=unlabeled)
    fit_seconds = pretrain_seconds + loc.fit_time_
    log(f"  fit {fit_seconds:.0f} s (pretraining {pretrain_seconds:.0f} s, locator {loc.fit_time_:.0f} s)")
    eval_files = [files[i] for i in eval_idx]

    def evaluate(name, locator, extra=None):
        start = time.perf_counter()
        pred = locator.predict(eval_files)
        seconds = (time.perf_counter() - start) / len(eval_files)
        rows[name] = {**summarize(pred, truth[eval_idx]), "seconds_per_image": seconds, **(extra or {})}
        log(f"  {name}: MRE {rows[name]['mre']:.1f} median {rows[name]['median']:.1f} ({seconds:.2f} s/image)")
        return pred

    default_row = "skuld OneShotLandmarkLocator (defaults)"
    evaluate(default_row, loc,
             {"fit_seconds": fit_seconds, "pretraining_seconds": pretrain_seconds, "locator_fit_seconds": loc.fit_time_,
              "pretraining_steps": pretrained.n_iter_, "correspondence_steps": loc.correspondence_steps,
              "n_pseudo_templates": loc.n_pseudo_templates,
              "pseudo_template_round_trip_errors": loc.pseudo_template_errors_})
    fixed = OneShotLandmarkLocator(**{**params, "verbose": 0, "fixed_landmarks": [PORION]})
    fixed.fit(files[template_index], truth[template_index], X_unlabeled=unlabeled)
    evaluate(FIXED_ROW, fixed, {"fit_seconds": pretrain_seconds + fixed.fit_time_,
                                "locator_fit_seconds": fixed.fit_time_,
                                "pseudo_template_round_trip_errors": fixed.pseudo_template_errors_})
    defaults = {**loc.get_params(deep=False), "encoder": loc.encoder_, "verbose": 0}
    for name, change in CUMULATIVE:
        variant = OneShotLandmarkLocator(**{**defaults, "encoder": pretrained, **change})
        evaluate(name, variant.fit(files[template_index], truth[template_index]))
    variant = OneShotLandmarkLocator(**{**defaults, **CUMULATIVE[-1][1]})
    evaluate(FINE_TUNED_ROW, variant.fit(files[template_index], truth[template_index]))
    rows["+ 4 pseudo templates, median fusion (= defaults)"] = rows[default_row]
    for name, change in VARIANTS:
        variant = OneShotLandmarkLocator(**{**defaults, **change}).fit(files[template_index], truth[template_index])
        variant.templates_ = loc.templates_  # the default's pseudo templates
        evaluate(name, variant)
    untuned = OneShotLandmarkLocator(**{**defaults, "encoder": pretrained, "correspondence_steps": 0})
    evaluate(NO_FINE_TUNING_ROW, untuned.fit(files[template_index], truth[template_index], X_unlabeled=unlabeled))

    log("same pipeline, untrained encoder")
    rand = LocalDiscriminativeEncoder(max_iter=1, rotation=0, rot90=False, flips=False, image_size=256, crop_size=160,
                                      random_state=0).fit(files[1:3])
    same = {"correspondence_steps": loc.correspondence_steps, "n_pseudo_templates": loc.n_pseudo_templates,
            "random_state": 0}
    template = (files[template_index], truth[template_index])
    rand_loc = OneShotLandmarkLocator(encoder=rand, **same).fit(*template, X_unlabeled=unlabeled)
    evaluate("random-weights encoder, same pipeline", rand_loc)

    for spec in args.also_encoder:
        label, path = spec.split("=", 1)
        other = OneShotLandmarkLocator(encoder=path, **same).fit(*template, X_unlabeled=unlabeled)
        evaluate(f"{label}, same pipeline", other)
        paper = OneShotLandmarkLocator(encoder=path, **CUMULATIVE[0][1]).fit(*template)
        evaluate(f"{label}, paper's recipe", paper)  # one template, the encoder as pretrained

    write_results(args.out, results, table(results), run_metadata(argv))


PER_LANDMARK_ROWS = ("second annotator (farhadifar) vs truth", "NCC template matching (skimage, tuned, coarse to fine)",
                     "skuld OneShotLandmarkLocator (defaults)", FIXED_ROW)


def table(results) -> str:
    lines = [f"One-shot landmarks, ceph_hamedan, template 001, {results['n_eval']} evaluation images, "
             "errors in full-resolution pixels\n",
             "| method | MRE | median | " + " | ".join(f"SDR@{r}" for r in RADII) + " | s/image | fit s |",
             "|---|---|---|" + "---|" * len(RADII) + "---|---|"]
    for name, r in results["rows"].items():
        sdr = " | ".join(f"{100 * r[f'sdr{x}']:.0f} %" for x in RADII)
        sec = f"{r['seconds_per_image']:.2f}" if "seconds_per_image" in r else "-"
        fit = f"{r['fit_seconds']:.0f}" if "fit_seconds" in r else "-"
        lines.append(f"| {name} | {r['mre']:.1f} | {r['median']:.1f} | {sdr} | {sec} | {fit} |")
    per = [(name, results["rows"][name]["per_landmark_mre"]) for name in PER_LANDMARK_ROWS if name in results["rows"]]
    if per:
        lines += per_landmark_table(per)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
