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
