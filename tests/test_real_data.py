"""Integration tests on real clinical images from ../shared/data (skipped when it is absent).

Each fit is a short CPU budget (about a minute); what is checked is that learning happens
(the loss falls) and that the clusters are not degenerate, not a quality target.
"""

import numpy as np
import pytest

from skuld import LocalDiscriminativeEncoder
from skuld.io import expand_paths

pytestmark = pytest.mark.shared_data


def _mean(history, key, steps):
    return float(np.mean([history[s][key] for s in steps]))


def check_learning(enc, X_eval, n_steps):
    h = enc.loss_history_
    pd_end = next(i for i, r in enumerate(h) if r["stage"] == "ld")
    early, late = range(0, 10), range(n_steps - 10, n_steps)
    assert _mean(h, "patch", late) < 0.9 * _mean(h, "patch", early), "patch discrimination did not fall"
    ld_early = range(pd_end, pd_end + 10)
    assert _mean(h, "loss", late) < _mean(h, "loss", ld_early), "the LD loss did not fall"
    labels = enc.predict(X_eval)
    labels = np.concatenate([lab.ravel() for lab in labels]) if isinstance(labels, list) else labels.ravel()
    coverage = np.bincount(labels, minlength=enc.n_clusters) / labels.size
    assert (coverage >= 0.01).sum() >= 4, f"degenerate clusters, coverage {np.round(coverage, 3)}"
    return coverage


def test_fit_on_the_40_drive_fundus_images(shared_data):
    paths = expand_paths(shared_data / "drive" / "training" / "images") + expand_paths(shared_data / "drive" / "test" / "images")
    assert len(paths) == 40
    n = 160
    enc = LocalDiscriminativeEncoder(max_iter=n, batch_size=2, crop_size=128, image_size=256, random_state=0)
    enc.fit(paths)
    assert enc.n_channels_in_ == 3
    check_learning(enc, paths[:6], n)


def test_fit_on_the_cxr_covid_radiographs(shared_data):
    paths = expand_paths(shared_data / "cxr_covid" / "images")
    assert len(paths) == 100
    n = 160
    enc = LocalDiscriminativeEncoder(max_iter=n, batch_size=2, crop_size=128, image_size=256, rotation=0.0,
                                     rot90=False, random_state=0)
    enc.fit(paths)  # gray, RGB and RGBA files, all converted to the first file's gray
    assert enc.n_channels_in_ == 1
    check_learning(enc, paths[:6], n)


def _ceph_truth(root):
    import csv

    out = np.full((100, 19, 2), np.nan)
    with open(root / "annotations" / "landmarks_mollabashi.csv") as f:
        for row in csv.DictReader(f):
            out[int(row["image"]) - 1, int(row["landmark"]) - 1] = float(row["x"]), float(row["y"])
    return out


def test_one_shot_landmarks_on_cephalograms(shared_data):
    """A short end-to-end run on real 1340 x 1671 images: pretraining (80 steps, about a
    minute), correspondence fine-tuning (30 steps), pseudo templates, prediction. The
    template's own coordinates are at 71.5 px on these 10 images."""
    from skuld import OneShotLandmarkLocator
    from skuld.metrics import mean_radial_error

    root = shared_data / "ceph_hamedan"
    files = expand_paths(root / "images")
    truth = _ceph_truth(root)
    loc = OneShotLandmarkLocator(OneShotLandmarkLocator.default_encoder(max_iter=80, batch_size=2),
                                 correspondence_steps=30, n_pseudo_templates=2, random_state=0)
    loc.fit(files[0], truth[0], X_unlabeled=files[1:21])
    pred, conf = loc.predict_confidence(files[1:11])
    assert pred.shape == (10, 19, 2) and conf.shape == (10, 19)
    mre = mean_radial_error(pred, truth[1:11])
    stay_put = mean_radial_error(np.broadcast_to(truth[0], pred.shape), truth[1:11])
    assert mre < 40 and mre < 0.6 * stay_put, (mre, stay_put)


def test_transfer_segmenter_on_drive_vessels(shared_data, tmp_path):
    """Two labelled DRIVE images, a short CPU fit from random initialisation, files in and out:
    vessels must be found (the quality targets are in benchmarks/transfer.py)."""
    from skuld import TransferSegmenter
    from skuld.io import read_image
    from skuld.metrics import dice

    root = shared_data / "drive"

    def load(part, numbers):
        paths = [root / part / "images" / f"{k}_{part}.tif" for k in numbers]
        vessels = [read_image(root / part / "1st_manual" / f"{k}_manual1.gif") > 127 for k in numbers]
        fovs = [read_image(root / part / "mask" / f"{k}_{part}_mask.gif") > 127 for k in numbers]
        return [str(p) for p in paths], vessels, fovs

    X, y, _ = load("training", (21, 22))
    Xt, yt, ft = load("test", ("01", "02"))
    seg = TransferSegmenter(max_iter=150, crop_size=128, image_size=None, random_state=0).fit(X, y)
    pred = seg.predict(Xt)
    assert [p.shape for p in pred] == [(584, 565), (584, 565)] and pred[0].dtype == bool
    assert dice(pred, yt, ft) > 0.65  # 0.74 measured
