"""PixelSampler and PixelClassifier: per-pixel rows for scikit-learn, and linear probes."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline

from skuld import LocalDiscriminativeEncoder, PixelClassifier, PixelSampler

from ..helpers import TINY, blobs


def features(n=3, h=12, w=10, d=4, seed=0):
    return np.random.default_rng(seed).random((n, h, w, d), dtype=np.float32)


def test_sampled_rows_are_the_pixels_they_say():
    F = features()
    y = F[..., 0] > 0.5
    rows, labels, where = PixelSampler(50, random_state=0).sample(F, y)
    assert rows.shape == (50, 4) and labels.shape == (50,) and where.shape == (50, 3)
    np.testing.assert_array_equal(rows, F[where[:, 0], where[:, 1], where[:, 2]])
    np.testing.assert_array_equal(labels, y[where[:, 0], where[:, 1], where[:, 2]])
    assert len({tuple(w) for w in where}) == 50  # without replacement


def test_mask_ragged_input_and_everything_when_few():
    F = [features(1, 12, 10)[0], features(1, 7, 9, seed=1)[0]]
    mask = [np.zeros((12, 10), bool), np.ones((7, 9), bool)]
    mask[0][3, 4] = True
    rows, _, where = PixelSampler(None).sample(F, mask=mask)
    assert len(rows) == 1 + 63
    assert (where[where[:, 0] == 0, 1:] == [3, 4]).all()
    with pytest.raises(ValueError, match="no pixel"):
        PixelSampler().sample(F, mask=[np.zeros((12, 10), bool), np.zeros((7, 9), bool)])


def test_same_seed_same_rows_and_transform_in_a_pipeline():
    F = features()
    a = PixelSampler(20, random_state=3).fit_transform(F)
    b = PixelSampler(20, random_state=3).fit(F).transform(F)
    np.testing.assert_array_equal(a, b)
    km = make_pipeline(PixelSampler(100, random_state=0), KMeans(2, n_init=2, random_state=0)).fit(F)
    assert km[-1].cluster_centers_.shape == (2, 4)


def test_sampler_errors():
    F = features()
    with pytest.raises(ValueError, match=r"\(n_images, H, W, D\)"):
        PixelSampler().fit(F[0])
    with pytest.raises(ValueError, match="2 masks for 3 feature maps"):
        PixelSampler().sample(F, F[:2, ..., 0] > 0)
    with pytest.raises(ValueError, match="depths"):
        PixelSampler().sample([F[0], F[1, ..., :2]])
    bad = F.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PixelSampler(None).sample(bad)
    with pytest.raises(NotFittedError):
        PixelSampler().transform(F)


def test_classifier_predicts_whole_masks():
    F = features(d=3)
    y = F[..., 0] + 0.2 * F[..., 1] > 0.6
    clf = PixelClassifier(LogisticRegression(C=100.0), n_pixels=300, random_state=0).fit(F, y)
    pred = clf.predict(F)
    assert pred.shape == y.shape and pred.dtype == bool
    assert clf.score(F, y) > 0.9
    proba = clf.predict_proba(F)
    assert proba.shape == (*y.shape, 2)
    ragged = clf.predict([F[0], F[1, :5]])
    assert [p.shape for p in ragged] == [(12, 10), (5, 10)]
    with pytest.raises(ValueError, match="features per pixel"):
        clf.predict(F[..., :2])
    with pytest.raises(ValueError, match="single label"):
        PixelClassifier().fit(F, np.zeros(y.shape, bool))


def test_linear_probe_pipeline_is_grid_searchable():
    X = blobs(4, 48, seed=0)
    y = X > 0.5
    enc = LocalDiscriminativeEncoder(**TINY).fit(X)
    probe = make_pipeline(FrozenEstimator(enc), PixelClassifier(n_pixels=2000, random_state=0))
    search = GridSearchCV(probe, {"pixelclassifier__estimator": [LogisticRegression(C=c) for c in (0.1, 10.0)]},
                          cv=KFold(2)).fit(X, y)
    pred = search.predict(X)
    assert pred.shape == y.shape and pred.dtype == bool
    assert 0.0 <= search.best_score_ <= 1.0


def test_region_mask_reaches_the_probe_through_metadata_routing():
    """With routing on, ``mask`` (a field of view) passes through Pipelines and grid searches,
    split by image like X and y."""
    import sklearn

    X = blobs(4, 48, seed=1)
    y = X > 0.5
    region = np.ones_like(y)
    region[:, :, :24] = False
    enc = LocalDiscriminativeEncoder(**TINY).fit(X)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = PixelClassifier(n_pixels=300, random_state=0).set_fit_request(mask=True)
        probe = make_pipeline(FrozenEstimator(enc), clf)
        search = GridSearchCV(probe, {"pixelclassifier__n_pixels": [100, 300]}, cv=KFold(2), error_score="raise")
        search.fit(X, y, mask=list(region))
    assert np.isfinite(search.best_score_)
    rows, _, where = PixelSampler(300, random_state=0).sample(enc.transform(X), y, list(region))
    assert (where[:, 2] >= 24).all()
