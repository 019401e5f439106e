"""Where the benchmarks' real data is, and the loaders that several scripts share.

The data sets are not in the repository: they lie in ``shared/data`` beside it
(``../shared/data`` from the repository root), one folder each: ``ceph_hamedan``
(cephalograms with landmarks), ``drive`` (fundus vessels), ``cxr_covid`` (chest X-rays with lung
and heart masks), ``shape_priors`` (vessel masks of other modalities). Fitted models that
scripts keep between runs go to ``benchmarks/cache/`` (ignored by git).

Splits (fixed, no randomness), used by ``transfer``, ``shape_guided`` and ``shape_guided_lungs``:

* DRIVE: the 20 training images are the labelled pool (subsets of 1, 2, 5, 20 in file
  order), the 20 test images are the test set (Dice inside the field of view, against the
  first observer). Pretraining sees all 40 images without their labels, as the issue asks.
* cxr_covid: images grouped by patient (``metadata.csv``); patients sorted by id and dealt
  round-robin into test (2 of every 5), labelled pool (1 of 5) and pretraining (2 of 5), so
  no patient appears in two parts. Only images with both lung masks take part. Pretraining
  sees the pretraining part only: masks of those images are never used.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT
from skuld.io import read_image

#: ``shared/data`` beside the repository root.
DATA = ROOT.parent / "shared" / "data"
#: Models the scripts fit once and reuse (pretrained encoders, fitted segmenters).
CACHE = ROOT / "benchmarks" / "cache"


def has_dataset(name: str) -> bool:
    """Whether the data set folder ``shared/data/<name>`` is there."""
    return (DATA / name).is_dir()


def dataset_dir(name: str) -> Path:
    """The folder of data set ``name``, or exit with a message saying what is missing.

    Parameters
    ----------
    name : str
        The data set's folder in ``shared/data`` (``"ceph_hamedan"``, ``"drive"``, ...).

    Returns
    -------
    Path
        ``shared/data/<name>``; the process exits (status 1, the message on stderr) when it is
        not a folder, so that a benchmark stops before any work rather than deep inside it.
    """
    path = DATA / name
    if not path.is_dir():
        sys.exit(f"{path} not found: this benchmark needs the data set {name!r} in ../shared/data "
                 "(the folder shared/data beside the repository)")
    return path


def encoder_path(name: str) -> Path:
    """Where pretraining run ``name`` of the transfer benchmark keeps its encoder (``benchmarks.transfer_data``)."""
    return CACHE / f"encoder-{name}.joblib"


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W) uint8 of a gray, RGB(A) or boolean image (masks are stored in all of these)."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return img.astype(np.uint8) if img.dtype != np.uint8 else img


# ---------------------------------------------------------------------------- cephalograms
def ceph_files() -> list[str]:
    """Paths of the cephalograms 001-100 (``ceph_hamedan``), in order; exits with a message when they are absent."""
    return sorted(str(p) for p in (dataset_dir("ceph_hamedan") / "images").glob("*.png"))


def load_truth(annotator: str) -> np.ndarray:
    """Landmarks of one annotator of the cephalograms.

    Parameters
    ----------
    annotator : str
        ``"mollabashi"`` (the benchmarks' truth) or ``"farhadifar"``.

    Returns
    -------
    ndarray of shape (100, 19, 2)
        (x, y) in full-resolution pixels per image and landmark, NaN where missing.
    """
    out = np.full((100, 19, 2), np.nan)
    with open(dataset_dir("ceph_hamedan") / "annotations" / f"landmarks_{annotator}.csv") as f:
        for row in csv.DictReader(f):
            out[int(row["image"]) - 1, int(row["landmark"]) - 1] = float(row["x"]), float(row["y"])
    return out


# ---------------------------------------------------------------------------- DRIVE
def drive_files(part: str) -> list[Path]:
    """The DRIVE images of ``part`` (``"training"`` or ``"test"``), in file order."""
    return sorted((dataset_dir("drive") / part / "images").glob("*.tif"))


def load_drive(part: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Images (H, W, 3) uint8, vessel masks (H, W) bool (first observer), FOV masks (H, W) bool."""
    root = dataset_dir("drive") / part
    images, vessels, fovs = [], [], []
    for path in drive_files(part):
        number = path.name.split("_")[0]
        images.append(read_image(path))
        manual = next((root / "1st_manual").glob(f"{number}_manual1.*"))
        vessels.append(_gray(read_image(manual)) > 127)
        fov = next((root / "mask").glob(f"{number}_*mask.*"))
        fovs.append(_gray(read_image(fov)) > 127)
    return images, vessels, fovs


def drive_second_observer() -> list[np.ndarray]:
    """Vessel masks (H, W) bool of the second observer on the 20 DRIVE test images, in file order."""
    out = []
    for path in drive_files("test"):
        number = path.name.split("_")[0]
        manual = next((dataset_dir("drive") / "test" / "2nd_manual").glob(f"{number}_manual2.*"))
        out.append(_gray(read_image(manual)) > 127)
    return out


# ---------------------------------------------------------------------------- chest X-rays
def cxr_split() -> dict[str, list[str]]:
    """File names of the test, labelled-pool and pretraining parts (patient-disjoint)."""
    root = dataset_dir("cxr_covid")
    present = {p.name for p in (root / "images").iterdir()}
    masks = {p.name for p in (root / "fullsize_masks").iterdir()}
    by_patient: dict[str, list[str]] = {}
    with open(root / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["filename"]
            stem = Path(name).stem
            if name in present and {f"{stem}__left_lung.png", f"{stem}__right_lung.png"} <= masks:
                by_patient.setdefault(row["patientid"], []).append(name)
    parts = {"test": [], "pool": [], "pretrain": []}
    deal = ("test", "pretrain", "pool", "test", "pretrain")
    for i, patient in enumerate(sorted(by_patient, key=lambda p: (len(p), p))):
        parts[deal[i % len(deal)]].extend(sorted(set(by_patient[patient])))
    return parts


def load_cxr(names: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gray images (H, W) uint8 and label maps (H, W) uint8: 0 background, 1 lungs, 2 heart
    (the cardiomediastinum mask where it does not overlap a lung)."""
    root = dataset_dir("cxr_covid")
    images, labels = [], []
    for name in names:
        stem = Path(name).stem
        img = _gray(read_image(root / "images" / name))
        lab = np.zeros(img.shape, np.uint8)
        heart = root / "fullsize_masks" / f"{stem}__cardiomediastinum.png"
        if heart.exists():
            lab[_gray(read_image(heart)) > 127] = 2
        for side in ("left_lung", "right_lung"):
            lab[_gray(read_image(root / "fullsize_masks" / f"{stem}__{side}.png")) > 127] = 1
        images.append(img)
        labels.append(lab)
    return images, labels
