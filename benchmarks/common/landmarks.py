"""What the one-shot landmark benchmarks share: the encoder the locator pretrains, one fit and
prediction on it, the scores and the annotator rows.

The data (cephalograms 001-100 and their two annotators) is read by
:func:`benchmarks.common.data.ceph_files` and :func:`benchmarks.common.data.load_truth`; the
template is image 001, labelled by mollabashi (the truth) unless a script says otherwise.
"""

from __future__ import annotations

import argparse
import time

import joblib
import numpy as np
from sklearn.frozen import FrozenEstimator

from benchmarks.common.results import RESULTS_DIR
from skuld import LocalDiscriminativeEncoder, OneShotLandmarkLocator
from skuld.landmarks import ENCODER_DEFAULTS
from skuld.metrics import radial_errors

#: Success radii (full-resolution pixels) of the SDR columns.
RADII = (20, 25, 30, 40)

#: Landmark 4, porion, is annotated at the top of the ear-rod ring, which the cephalostat holds
#: still in the image while the skull moves (docs/landmarks.md): knowledge about the
#: acquisition that a user passes as ``fixed_landmarks``.
PORION = 3

#: How a results table names the encoder a script was given with ``--encoder``.
ENC_NOTE = " (ENC: the encoder the script pretrains without --encoder, saved with joblib)"

FLOOR_ROW = "second annotator, its median offset per landmark removed (floor of a perfect one-shot matcher)"


def landmark_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The argument parser of a landmark script that evaluates on one shared encoder.

    Parameters
    ----------
    doc : str
        The script's docstring: its first line is the description.
    name : str
        The results' name: ``--out`` defaults to ``benchmarks/results/<name>``.

    Returns
    -------
    argparse.ArgumentParser
        With ``--encoder`` (a saved encoder instead of pretraining one, for
        :func:`locator_encoder`) and ``--out``; the script adds its own options.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--encoder", help="a fitted LocalDiscriminativeEncoder saved with joblib (default: pretrain)")
    ap.add_argument("--out", default=str(RESULTS_DIR / name))
    return ap


def per_landmark_table(columns, title: str = "Per-landmark MRE (px):") -> list[str]:
    """Markdown lines of a per-landmark table: a blank line, ``title``, a blank line, the table.

    Parameters
    ----------
    columns : list of (str, sequence of float)
        A column's header and its value per landmark (px), printed to the whole pixel.
    title : str
        The line above the table.
    """
    lines = ["", title, "", "| landmark | " + " | ".join(name for name, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for j in range(len(columns[0][1])):
        lines.append(f"| {j + 1} | " + " | ".join(f"{values[j]:.0f}" for _, values in columns) + " |")
    return lines


def locator_encoder(files: list[str], path=None, max_iter: int | None = None) -> LocalDiscriminativeEncoder:
    """The encoder ``OneShotLandmarkLocator(random_state=0)`` pretrains for template 001.

    Parameters
    ----------
    files : list of str
        The cephalograms 001-100 (:func:`benchmarks.common.data.ceph_files`).
    path : str, optional
        An encoder saved with joblib: loaded instead of pretraining.
    max_iter : int, optional
        Pretraining steps (default: the locator's).

    Returns
    -------
    LocalDiscriminativeEncoder
        Fitted with the locator's settings (``ENCODER_DEFAULTS``, random_state 0) on images
        002-100 then 001, the same images in the same order as the locator would.
    """
    if path:
        return joblib.load(path)
    params = {**ENCODER_DEFAULTS, "random_state": 0, "verbose": 1}
    if max_iter:
        params["max_iter"] = max_iter
    return LocalDiscriminativeEncoder(**params).fit(files[1:] + files[:1])


def fit_and_predict(encoder, files: list[str], marks: np.ndarray, images: list, **params):
    """Fit ``OneShotLandmarkLocator(**params)`` on ``encoder`` (frozen) with template
    ``files[0]`` labelled ``marks`` and ``files[1:]`` unlabelled, then predict ``images``.

    Returns
    -------
    locator : OneShotLandmarkLocator
        The fitted locator.
    pred : ndarray of shape (n, L, 2)
        (x, y) predictions for ``images``.
    seconds : float
        Seconds of ``predict`` per image.
    """
    loc = OneShotLandmarkLocator(encoder=FrozenEstimator(encoder), **params)
    loc.fit(files[0], marks, X_unlabeled=files[1:])
    start = time.perf_counter()
    pred = loc.predict(images)
    return loc, pred, (time.perf_counter() - start) / len(images)


def summarize(pred: np.ndarray, true: np.ndarray) -> dict:
    """MRE, median, SDR at ``RADII``, per-landmark MRE and the number of scored points of
    (n, L, 2) predictions against the truth (NaN points are left out)."""
    e = radial_errors(pred, true)
    ok = ~np.isnan(e)
    return {
        "mre": float(np.nanmean(e)), "median": float(np.nanmedian(e)),
        **{f"sdr{r}": float((e[ok] <= r).mean()) for r in RADII},
        "per_landmark_mre": [float(v) for v in np.nanmean(e, axis=0)],
        "n_points": int(ok.sum()),
    }


def annotator_rows(truth: np.ndarray, second: np.ndarray, idx) -> dict:
    """The second annotator against the truth, as it is and without its per-landmark offset.

    A perfect one-shot matcher carries the template's point to the same anatomy in every
    image, so it inherits the template annotation's own noise and meets the evaluated
    annotation's: if both annotators place points with alike, independent noise, the
    second annotator with its systematic offset removed has that error.
    """
    offset = np.nanmedian(second[idx] - truth[idx], axis=0)
    return {"second annotator (farhadifar) vs truth": summarize(second[idx], truth[idx]),
            FLOOR_ROW: summarize(second[idx] - offset, truth[idx])}
