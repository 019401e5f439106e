"""Where OneShotLandmarkLocator's errors come from, and whether its confidence ranks them.

On the shared cephalograms (template 001, mollabashi truth, images 002-100), the locator with
default settings predicts every landmark with ``predict_confidence``. Reported:

* confidence vs error: Spearman correlation, the error of the least confident 10 % of points
  against the most confident half;
* bias vs scatter: per landmark, the length of the mean error vector (an offset shared by
  every image), and the error left if those offsets were known (an oracle: it uses the truth);
  the same offsets for the locator without its correlation refinement (the coarse stage);
* a population shape model tried as a fix: PCA of the 99 predicted shapes (generalised
  Procrustes, 2-12 modes), fitted to each image by iteratively reweighted least squares, the
  points farther than a tolerance (20-60 px) from the fit replaced by the fit.

``--locator PATH`` reuses a fitted locator saved with joblib (fitting one pretrains an encoder:
about 14 minutes on 2 cores).

    python -m benchmarks.landmark_errors [--locator loc.joblib]

Writes ``benchmarks/results/landmark_errors.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

import joblib
import numpy as np
from scipy.stats import spearmanr

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.results import RESULTS_DIR, write_results
from skuld import OneShotLandmarkLocator
from skuld.matching import apply_transform, fit_transform

SHAPE_MODES = (2, 4, 6, 8, 12)
SHAPE_TOLERANCES = (20, 30, 45, 60)


def _shape_model(shapes: np.ndarray, n_modes: int):
    """Mean shape, modes and their variances of (n, L, 2) shapes after generalised Procrustes."""
    aligned = np.array([apply_transform(s, fit_transform(s, shapes[0])) for s in shapes])
    for _ in range(3):
        mean = aligned.mean(0)
        aligned = np.array([apply_transform(s, fit_transform(s, mean)) for s in aligned])
    mean = aligned.mean(0)
    _, sv, vt = np.linalg.svd((aligned - mean).reshape(len(aligned), -1), full_matrices=False)
    return mean, vt[:n_modes].T, (sv**2 / (len(aligned) - 1))[:n_modes]


def _fit_shape(points: np.ndarray, mean, modes, var, tolerance: float, iterations: int = 10):
    """The model shape closest to ``points`` (similarity pose + modes, ridge on the modes),
    reweighted so that points beyond ``tolerance`` stop pulling; returns it and the residuals."""
    n_points = len(points)
    weights, b = np.ones(n_points), np.zeros(modes.shape[1])
    for _ in range(iterations):
        shape = mean + (modes @ b).reshape(n_points, 2)
        a, t = fit_transform(shape, points, weights)
        in_model = (points - t) @ np.linalg.inv(a).T
        w2 = np.repeat(weights, 2)
        lhs = modes.T @ (w2[:, None] * modes) + np.diag(1 / var)
        b = np.linalg.solve(lhs, modes.T @ (w2 * (in_model - mean).reshape(-1)))
        fitted = apply_transform(mean + (modes @ b).reshape(n_points, 2), (a, t))
        residual = np.linalg.norm(fitted - points, axis=1)
        weights = (residual < tolerance) + 1e-3
    return fitted, residual


def shape_model_trials(pred: np.ndarray, truth: np.ndarray) -> dict:
    """MRE after a population shape model replaced each image's outlying points."""
    out = {}
    for k in SHAPE_MODES:
        model = _shape_model(pred, k)
        for tol in SHAPE_TOLERANCES:
            fixed = pred.copy()
            for i in range(len(pred)):
                fitted, residual = _fit_shape(pred[i], *model, tol)
                fixed[i, residual > tol] = fitted[residual > tol]
            out[f"{k}/{tol}"] = float(np.nanmean(np.linalg.norm(fixed - truth, axis=-1)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--locator", help="a fitted OneShotLandmarkLocator saved with joblib (default: fit one)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "landmark_errors"))
    args = ap.parse_args()
    files = ceph_files()
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
    # Where do the offsets arise? The same locator without the correlation refinement: its
    # coarse descriptor stage (and shape check) alone.
    refine_scales = loc.refine_scales
    loc.set_params(refine_scales=())
    coarse = loc.predict(files[1:])
    loc.set_params(refine_scales=refine_scales)
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
        # Error structure: a landmark's mean error vector (the same offset in every image)
        # against its mean radial error; offsets that large are matching bias, not outliers.
        "per_landmark_mre": [float(np.nanmean(err[:, i])) for i in range(err.shape[1])],
        "per_landmark_bias": [float(np.linalg.norm(np.nanmean(pred[:, i] - truth[1:, i], axis=0)))
                              for i in range(err.shape[1])],
        # Oracle (uses the truth): the error left if each landmark's shared offset were known.
        "mre_without_bias_oracle": float(np.nanmean(np.linalg.norm(
            (pred - truth[1:]) - np.nanmean(pred - truth[1:], axis=0), axis=-1))),
        "coarse_mre": float(np.nanmean(np.linalg.norm(coarse - truth[1:], axis=-1))),
        "per_landmark_bias_coarse": [float(np.linalg.norm(np.nanmean(coarse[:, i] - truth[1:, i], axis=0)))
                                     for i in range(err.shape[1])],
        "per_landmark_spearman": [float(spearmanr(conf[ok[:, i], i], err[ok[:, i], i]).statistic)
                                  for i in range(err.shape[1])],
        "shape_model": shape_model_trials(pred, truth[1:]),
    }
    command = "python -m benchmarks.landmark_errors" + (" --locator LOC" if args.locator else "")
    md = ["# Landmark errors and confidence on the cephalograms (template 001, 99 images, defaults)", "",
          f"`{command}`" + (": LOC is a locator fitted as the script fits it without --locator, saved with "
                            "joblib." if args.locator else ""), "",
          "| measure | value |", "|---|---|",
          f"| mean radial error, all points | {result['mre']:.1f} px |",
          f"| median confidence (share at 1.0) | {result['confidence_median']:.2f} "
          f"({100 * result['confidence_share_at_1']:.0f} %) |",
          f"| Spearman correlation, confidence vs error | {result['spearman_confidence_error']:.2f} |",
          f"| MRE of the least confident 10 % of points | {result['mre_least_confident_10pct']:.1f} px |",
          f"| MRE of the most confident half | {result['mre_most_confident_half']:.1f} px |",
          f"| SDR@40 least confident 10 % / most confident half | {100 * result['sdr40_least_confident_10pct']:.0f} % / "
          f"{100 * result['sdr40_most_confident_half']:.0f} % |", "",
          "Per landmark: mean radial error, and the length of the mean error vector (an offset shared",
          "by all images: matching bias rather than scattered mistakes).", "",
          f"Removing each landmark's mean error vector (an oracle: it uses the truth) would leave "
          f"{result['mre_without_bias_oracle']:.1f} px of the {result['mre']:.1f} px.", "",
          "The last column is the mean error vector of the same locator without correlation refinement",
          f"(`refine_scales=()`: coarse descriptor stage and shape check, MRE {result['coarse_mre']:.1f} px): "
          "where the refined offsets are as long, they arise before the refinement.", "",
          "| landmark | MRE | mean error vector | Spearman (confidence, error) | mean error vector, coarse stage |",
          "|---|---|---|---|---|"]
    for i, (m, b, r, bc) in enumerate(zip(result["per_landmark_mre"], result["per_landmark_bias"],
                                          result["per_landmark_spearman"], result["per_landmark_bias_coarse"])):
        md.append(f"| {i + 1} | {m:.1f} | {b:.1f} | {r:.2f} | {bc:.1f} |")
    md += ["", "A population shape model as a fix (MRE after replacing the points far from the fitted model; "
           f"without it {result['mre']:.1f} px):", "",
           "| modes | " + " | ".join(f"tolerance {t} px" for t in SHAPE_TOLERANCES) + " |",
           "|---|" + "---|" * len(SHAPE_TOLERANCES)]
    for k in SHAPE_MODES:
        md.append(f"| {k} | " + " | ".join(f"{result['shape_model'][f'{k}/{t}']:.2f}" for t in SHAPE_TOLERANCES) + " |")
    write_results(args.out, result, md)


if __name__ == "__main__":
    main()
