"""OneShotLandmarkLocator on synthetic phantoms with known landmarks."""

import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

import skuld
from skuld import LocalDiscriminativeEncoder, OneShotLandmarkLocator
from skuld.matching import rescale_points
from skuld.preprocessing import resize, to_tensor

from ..helpers import TINY, phantom, rotation


@pytest.fixture(scope="module")
def encoder():
    imgs = np.stack([phantom(rotation(d, 1, (d, -d)), seed=0)[0] for d in (0, 3, -3, 5)])
    return LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False}).fit(imgs)


def locator(encoder, **kw):
    return OneShotLandmarkLocator(**{"encoder": encoder, "refine_patch": 15, "refine_radius": 6, **kw})


def test_finds_landmarks_of_moved_phantoms(encoder):
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    moves = [rotation(0, 1, (6, -4)), rotation(4, 1.03, (-5, 3)), rotation(-3, 0.97, (3, 5))]
    queries = [phantom(m) for m in moves]
    pred = loc.predict(np.stack([q[0] for q in queries]))
    true = np.stack([q[1] for q in queries])
    assert pred.shape == (3, 6, 2) and pred.dtype == np.float64
    assert (pred >= 0).all() and (pred[..., 0] <= 159).all() and (pred[..., 1] <= 127).all()
    err = np.linalg.norm(pred - true, axis=-1)
    assert np.median(err) < 1.5 and err.max() < 4, err
    assert loc.score(np.stack([q[0] for q in queries]), true) > -2


def test_the_template_finds_itself(encoder):
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    pred, conf = loc.predict_confidence(template[None])
    np.testing.assert_allclose(pred[0], marks, atol=0.3)
    assert conf.shape == (1, 6) and (conf > 0.95).all()


def test_confidence_drops_where_the_query_lost_the_landmark(encoder):
    """Confidence is the correlation at the found point: not saturated, and low for a landmark
    whose neighbourhood in the query was replaced by noise."""
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    query, true = phantom(rotation(2, 1.0, (3, -2)))
    x, y = true[0].round().astype(int)
    patch = np.s_[y - 12: y + 13, x - 12: x + 13]
    query[patch] = np.random.default_rng(5).random(query[patch].shape)
    lost = (np.abs(true - true[0]) <= 12).all(axis=1)  # landmarks inside the noise: 0 and 2
    _, conf = loc.predict_confidence(query[None])
    assert lost.sum() == 2 and conf[0, lost].max() < 0.5 < conf[0, ~lost].min(), conf
    assert conf.max() < 1.0


def test_coordinates_round_trip_through_resizing(encoder):
    """A query that is the template at another size gets the template's points rescaled."""
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    for shape in [(192, 240), (100, 125), (128, 200)]:
        big = resize(to_tensor(template[..., None]), shape)[0].numpy()
        pred = loc.predict([big])
        expected = rescale_points(marks, template.shape, shape)
        tolerance = 0.05 * max(shape) / 128 * 4  # a few tenths of a pixel, scaled with anisotropy
        assert np.abs(pred[0] - expected).max() < max(1.0, tolerance), (shape, np.abs(pred[0] - expected).max())


def test_rgb_and_several_templates(encoder):
    t1, m1 = phantom(channels=3)
    t2, m2 = phantom(rotation(2, 1, (3, 2)), channels=3)
    enc = LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False}).fit(np.stack([t1, t2]))
    loc = locator(enc).fit([t1, t2], [m1, m2])
    assert loc.n_templates_ == 2
    q, mq = phantom(rotation(-2, 1.02, (-4, 4)), channels=3)
    err = np.linalg.norm(loc.predict(q[None])[0] - mq, axis=-1)
    assert np.median(err) < 1.5 and err.max() < 4, err


def test_similarity_maps_for_plotting(encoder):
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    pred, maps = loc.predict(template[None], return_similarity=True)
    h, w = encoder.image_size_, round(160 * encoder.image_size_ / 128)
    assert len(maps) == 1 and maps[0].shape == (6, h, w) and maps[0].dtype == np.float32
    assert maps[0].max() <= 1 + 1e-5


def test_nan_landmarks_are_ignored_with_a_warning(encoder):
    template, marks = phantom()
    marks = marks.copy()
    marks[2] = np.nan
    with pytest.warns(UserWarning, match=r"landmarks \[2\] are NaN"):
        loc = locator(encoder).fit(template, marks)
    q, mq = phantom(rotation(0, 1, (4, 4)))
    pred = loc.predict(q[None])[0]
    keep = [0, 1, 3, 4, 5]
    assert np.isfinite(pred[keep]).all()
    assert np.linalg.norm(pred[keep] - mq[keep], axis=-1).max() < 4
    # No template knows landmark 2: it has no answer, rather than a made-up point such as (0, 0).
    assert np.isnan(pred[2]).all()
    assert np.isnan(loc.predict_confidence(q[None])[1][0, 2])
    full = phantom()[1]
    with pytest.warns(UserWarning, match=r"landmarks \[2\] are NaN"):
        both = locator(encoder).fit([template, template], [marks, full])
    assert np.isfinite(both.predict(q[None])[0]).all()                # one template has it


def test_bad_input_gets_named_errors(encoder):
    template, marks = phantom()
    with pytest.raises(ValueError, match=r"\(L, 2\)"):
        locator(encoder).fit(template, marks[:, :1])
    with pytest.raises(ValueError, match="every landmark .* is NaN"):
        locator(encoder).fit(template, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="outside the 128 x 160 image"):
        locator(encoder).fit(template, [[10, 10], [170, 20]])
    with pytest.raises(ValueError, match="2 template images but 1 landmark"):
        locator(encoder).fit([template, template], [marks])
    with pytest.raises(ValueError, match="same number of landmarks"):
        locator(encoder).fit([template, template], [marks, marks[:3]])
    with pytest.raises(ValueError, match="at least 32 x 32"):
        locator(encoder).fit(template[:20, :20], [[5, 5]])
    with pytest.raises(ValueError, match="refine_scales"):
        locator(encoder, refine_scales=(1, -2)).fit(template, marks)
    with pytest.raises(ValueError, match="1-channel images but the template has 3"):
        locator(encoder).fit(np.stack([template] * 3, -1), marks)
    with pytest.raises(ValueError, match="one int per refine_scales level"):
        locator(encoder, refine_patch=(15, 15)).fit(template, marks)
    with pytest.raises(NotFittedError):
        locator(encoder).predict(template[None])
    loc = locator(encoder).fit(template, marks)
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = template.copy()
        bad[3, 3] = np.nan
        loc.predict(bad[None])
    with pytest.raises(ValueError, match="channel"):
        loc.predict(np.stack([template] * 3, -1)[None])


def test_clone_pickle_and_saved_encoder(encoder, tmp_path):
    template, marks = phantom()
    loc = locator(encoder).fit(template, marks)
    params = clone(loc).get_params()
    assert params["refine_patch"] == 15
    # clone() clones the encoder (scikit-learn's rule); FrozenEstimator keeps a fitted one.
    assert not hasattr(params["encoder"], "model_")
    frozen = clone(locator(FrozenEstimator(encoder)))
    assert frozen.get_params()["encoder"].estimator is encoder
    np.testing.assert_allclose(frozen.fit(template, marks).predict(template[None])[0], marks, atol=0.3)
    path = tmp_path / "loc.joblib"
    joblib.dump(loc, path)
    again = joblib.load(path)
    q = phantom(rotation(0, 1, (5, 0)))[0][None]
    np.testing.assert_allclose(again.predict(q), loc.predict(q), atol=1e-5)
    enc_path = tmp_path / "enc.skuld"
    skuld.save(encoder, enc_path)
    from_file = locator(str(enc_path)).fit(template, marks)
    np.testing.assert_allclose(from_file.predict(q), loc.predict(q), atol=1e-5)


def test_predictions_stay_inside_the_image(encoder):
    """A template whose landmarks sit at the border, a query shifted so far that the shape
    transform puts them outside: the answers are still pixels of the query."""
    template, _ = phantom()
    marks = np.array([[0.0, 0.0], [159.0, 0.0], [0.0, 127.0], [159.0, 127.0], [80.0, 64.0]])
    loc = locator(encoder).fit(template, marks)
    q = phantom(rotation(0, 1.1, (20, 15)))[0]
    pred = loc.predict(q[None])[0]
    assert (pred >= 0).all() and (pred[:, 0] <= 159).all() and (pred[:, 1] <= 127).all()


def test_an_unfitted_encoder_is_fitted_as_a_copy():
    template, marks = phantom()
    recipe = LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False})
    loc = locator(recipe).fit(template, marks, X_unlabeled=np.stack([phantom(rotation(2, 1, (2, 2)))[0]] * 2))
    assert not hasattr(recipe, "model_") and loc.encoder_.n_iter_ == TINY["max_iter"]


def test_fit_pretrains_an_encoder_and_picks_pseudo_templates():
    template, marks = phantom()
    pool = np.stack([phantom(rotation(d, 1, (d, 2)))[0] for d in (-3, 2, 4)])
    params = {k: v for k, v in TINY.items() if k != "random_state"}
    loc = OneShotLandmarkLocator(OneShotLandmarkLocator.default_encoder(**params), n_pseudo_templates=1,
                                 refine_patch=15, refine_radius=6, random_state=0).fit(template, marks, X_unlabeled=pool)
    assert loc.encoder_.n_iter_ == TINY["max_iter"] and loc.encoder_.rot90 is False
    assert len(loc.templates_) == 2 and loc.n_templates_ == 1
    assert loc.fit_time_ > 0
    q, mq = phantom(rotation(1, 1, (-3, 3)))
    err = np.linalg.norm(loc.predict(q[None])[0] - mq, axis=-1)
    assert np.median(err) < 2, err


def _with_ring(img, centre=(128.0, 28.0), radius=9.0, strength=0.08):
    """The image with a thin bright ring drawn in the image frame (a device part, such as a
    cephalostat's ear rod, that stays put while the anatomy moves), and the ring's top point."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - centre[0], yy - centre[1])
    ring = np.exp(-((d - radius) ** 2) / 2.0) + np.exp(-(d**2) / 4.0)
    # Faint by default, so that the anatomy, not the ring, decides the default matching.
    return np.clip(img * 0.9 + strength * ring, 0, 1).astype(np.float32), np.array([centre[0], centre[1] - radius])


def test_fixed_landmarks_are_found_in_the_image_frame(encoder):
    """A landmark on a ring that holds still while the phantom moves is carried off with the
    anatomy by default, and found where it is when declared fixed; the others are unaffected."""
    template, marks = phantom()
    template, top = _with_ring(template)
    marks = np.vstack([marks, top])
    moves = [rotation(0, 1, (7, -5)), rotation(3, 1.02, (-6, 4))]
    queries = [phantom(m) for m in moves]
    images = np.stack([_with_ring(q)[0] for q, _ in queries])
    true = np.stack([np.vstack([m, top]) for _, m in queries])
    default = np.linalg.norm(locator(encoder).fit(template, marks).predict(images) - true, axis=-1)
    loc = locator(encoder, fixed_landmarks=[6]).fit(template, marks)
    assert loc.fixed_landmarks_.tolist() == [False] * 6 + [True]
    pred, conf = loc.predict_confidence(images)
    err = np.linalg.norm(pred - true, axis=-1)
    assert err[:, 6].max() < 1.0 and default[:, 6].min() > 5, (err[:, 6], default[:, 6])
    assert np.median(err[:, :6]) < 1.5 and err[:, :6].max() < 4, err
    assert (conf[:, 6] > 0.8).all()
    # Without refinement levels the search runs at the working resolution (48 px here: a
    # ring as faint as above is gone, a bright one is found to about a working pixel).
    bright = [_with_ring(img, strength=0.5)[0] for img in (phantom()[0], *(q for q, _ in queries))]
    coarse = locator(encoder, fixed_landmarks=[6], refine_scales=()).fit(bright[0], marks).predict(np.stack(bright[1:]))
    assert np.linalg.norm(coarse[:, 6] - true[:, 6], axis=-1).max() < 3.0


def test_fixed_landmarks_stay_out_of_the_correspondence_fine_tuning(encoder, monkeypatch):
    import skuld.estimators.locator as locator_module

    seen = {}

    def record(encoder, images, marks, **kw):
        seen["marks"] = marks
        return encoder

    monkeypatch.setattr(locator_module, "fine_tune_correspondence", record)
    template, marks = phantom()
    pool = np.stack([phantom(rotation(d, 1, (d, 2)))[0] for d in (-3, 2)])
    locator(encoder, fixed_landmarks=[1], n_pseudo_templates=0).fit(template, marks, X_unlabeled=pool)
    assert len(seen["marks"]) == 3
    for m in seen["marks"]:
        assert np.isnan(m[1]).all() and np.isfinite(np.delete(m, 1, axis=0)).all()


def test_bad_fixed_landmarks_get_named_errors(encoder):
    template, marks = phantom()
    with pytest.raises(ValueError, match=r"fixed_landmarks \[6\] are not landmark indices \(0 to 5"):
        locator(encoder, fixed_landmarks=[0, 6]).fit(template, marks)
    with pytest.raises(ValueError, match="list of landmark indices"):
        locator(encoder, fixed_landmarks=[1.5]).fit(template, marks)
    with pytest.raises(ValueError, match="list of landmark indices"):
        locator(encoder, fixed_landmarks=[[1], [2]]).fit(template, marks)
    with pytest.raises(ValueError, match="refine_patch as one int"):
        locator(encoder, fixed_landmarks=[1], refine_scales=(), refine_patch=()).fit(template, marks)
    with pytest.warns(UserWarning, match="at least 3 landmarks not in fixed_landmarks"):
        locator(encoder, fixed_landmarks=[0, 1, 2, 3], n_pseudo_templates=0).fit(
            template, marks, X_unlabeled=phantom(rotation(0, 1, (2, 2)))[0][None])


def test_the_parameters_of_earlier_releases_still_work_with_a_future_warning(encoder):
    """``encoder_params`` (now ``encoder=OneShotLandmarkLocator.default_encoder(...)``) and
    ``prior_weight`` (now ``coarse_weight``) give the same model, with a FutureWarning."""
    template, marks = phantom()
    query = phantom(rotation(3, 1, (4, -2)))[0][None]
    with pytest.warns(FutureWarning, match=r"\[.prior_weight.\] are deprecated.*prior_weight is now coarse_weight"):
        old = locator(encoder, prior_weight=0.5).fit(template, marks).predict(query)
    np.testing.assert_array_equal(old, locator(encoder, coarse_weight=0.5).fit(template, marks).predict(query))
    params = {k: v for k, v in TINY.items() if k != "random_state"}
    with pytest.warns(FutureWarning, match=r"\[.encoder_params.\] are deprecated"):
        a = OneShotLandmarkLocator(encoder_params=params, correspondence_steps=0, n_pseudo_templates=0,
                                   random_state=0).fit(template, marks)
    b = OneShotLandmarkLocator(OneShotLandmarkLocator.default_encoder(**params), correspondence_steps=0,
                               n_pseudo_templates=0, random_state=0).fit(template, marks)
    np.testing.assert_array_equal(a.predict(query), b.predict(query))
    assert b.encoder_.random_state == 0  # a recipe without a seed takes the locator's


def test_a_deprecated_name_warns_at_fit_only(encoder):
    template, marks = phantom()
    with pytest.warns(FutureWarning):
        loc = locator(encoder, prior_weight=0.5).fit(template, marks)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loc.predict(template[None])
    with pytest.raises(ValueError, match="not both"), pytest.warns(FutureWarning):
        locator(encoder, prior_weight=0.5, coarse_weight=0.2).fit(template, marks)
