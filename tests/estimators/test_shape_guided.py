"""ShapeGuidedSegmenter: a structure learned without its labels, guided by shapes from elsewhere."""

import copy
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skuld import ClusterCollapseWarning, ShapeGuidedSegmenter
from skuld.estimators import auto
from skuld.nn.shape_prior import PriorSampler, structure_width
from skuld.segmentation import ShapePriorTerm, fundus_field_of_view

from ..helpers import branching_shapes, ellipse_shapes, lung_shapes, lungs, tubes

#: Small and fast: 96 px images, 48 px crops cut at working resolution.
TINY_ENCODER = dict(batch_size=1, crop_size=48, image_size=96, width=0.25, embedding_dim=8, patch_grid=4)


def small(max_iter=12, encoder=None, **params):
    """A ShapeGuidedSegmenter on a tiny default encoder of ``max_iter`` steps."""
    enc = ShapeGuidedSegmenter.default_encoder(**{**TINY_ENCODER, "max_iter": max_iter, **(encoder or {})})
    return ShapeGuidedSegmenter(**{"encoder": enc, "refine_iter": 4, "rotation": 180.0, "random_state": 0, **params})


@pytest.fixture(scope="module")
def data():
    X, y = tubes(n=6, size=96, seed=0)
    return X, y, branching_shapes(n=6, size=128, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    X, _, priors = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        return small().fit(X, priors)


def test_outputs_have_the_documented_shapes(fitted, data):
    X, y, _ = data
    for mode in ("cluster", "similarity"):
        proba = fitted.predict_proba(X[:2], mode=mode)
        assert proba.shape == (2, 96, 96, 2) and proba.dtype == np.float32
        np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-6)
        assert ((proba >= 0) & (proba <= 1)).all()
    pred = fitted.predict(X[:2], mode="cluster")
    assert pred.shape == (2, 96, 96) and pred.dtype == bool
    ragged = fitted.predict([X[0], X[1][:80, :64]], mode="similarity")
    assert [p.shape for p in ragged] == [(96, 96), (80, 64)]
    assert 0 <= fitted.score(X[:2], y[:2], mode="cluster") <= 1
    assert fitted.encoder_.n_clusters == 8 and fitted.encoder_.n_iter_ == 12
    history = fitted.encoder_.loss_history_
    ld = [h for h in history if h["stage"] == "ld"]
    assert ld and all("shape" in h and "discriminator" in h for h in ld)
    assert all("shape" not in h for h in history if h["stage"] == "pd")


def test_field_of_view_mask_blanks_the_outside(fitted, data):
    X = data[0][:1]
    region = np.zeros((1, 96, 96), bool)
    region[:, 20:60, 30:70] = True
    p = fitted.predict_proba(X, mask=region, mode="similarity")[..., 1]
    assert (p[~region] == 0).all()
    with pytest.raises(ValueError, match="field-of-view mask 0"):
        fitted.predict(X, mask=np.ones((1, 50, 50), bool))


def test_fundus_field_of_view_finds_the_disc():
    yy, xx = np.mgrid[0:200, 0:220]
    disc = (yy - 100) ** 2 + (xx - 110) ** 2 < 90**2
    img = np.zeros((200, 220, 3), np.uint8)
    img[disc] = (180, 90, 40)
    img[90:110, 100:120] = (20, 10, 5)  # a dark lesion inside stays in the field of view
    fov = fundus_field_of_view(img, erosion=0)
    assert (fov == disc).mean() > 0.999
    assert fundus_field_of_view(np.full((64, 64, 3), 120, np.uint8)).all()  # no black frame: all of it


def test_structure_width_of_a_bar():
    bar = np.zeros((60, 60), bool)
    bar[10:50, 28:33] = True  # 5 px wide
    assert 4 <= structure_width(bar) <= 6
    assert np.isnan(structure_width(np.zeros((8, 8), bool)))


def test_prior_sampler_draws_binary_rotated_crops():
    prior = np.zeros((64, 64), bool)
    prior[:, 30:34] = True  # a vertical bar
    sampler = PriorSampler([prior], [1.0], rotation=180, scale_jitter=(1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    crops = sampler.sample(16, 32, g)
    assert crops.shape == (16, 1, 32, 32)
    assert set(torch.unique(crops).tolist()) <= {0.0, 1.0}
    again = PriorSampler([prior], [1.0], rotation=180, scale_jitter=(1.0, 1.0)).sample(16, 32,
                                                                                        torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    # Rotations: the bar is not vertical in every crop (column sums are not all concentrated).
    vertical = [(c[0].sum(0) > 0).sum() <= 6 for c in crops if c.sum() > 0]
    assert not all(vertical)
    # A zoom of 2 doubles the bars' width: 4 px stripes every 16 px become 8 px every 32 px.
    stripes = np.zeros((128, 128), bool)
    for c in range(0, 128, 16):
        stripes[:, c : c + 4] = True
    fixed = PriorSampler([stripes], [2.0], rotation=0, flips=False, scale_jitter=(1.0, 1.0))
    row = fixed.sample(1, 96, torch.Generator().manual_seed(1))[0, 0, 48].numpy().astype(int)
    edges = np.flatnonzero(np.diff(row))
    runs = [b - a for a, b, first in zip(edges[:-1], edges[1:], row[edges[:-1] + 1]) if first == 1]
    assert runs and all(7 <= r <= 9 for r in runs), runs


def test_random_state_gives_identical_models(data):
    X, _, priors = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        a = small(6, refine=False).fit(X[:3], priors)
        b = small(6, refine=False).fit(X[:3], priors)
    for (k, v), w in zip(a.encoder_.model_.state_dict().items(), b.encoder_.model_.state_dict().values()):
        assert torch.equal(v, w), k


def test_pickle_round_trip(fitted, data, tmp_path):
    X = data[0][:2]
    path = tmp_path / "sg.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(X, mode="similarity"), fitted.predict(X, mode="similarity"))
    twin, params = clone(fitted).get_params(), fitted.get_params()
    assert twin.pop("encoder") is not params.pop("encoder") and twin == params  # encoder__* compared too


def test_interrupted_fit_resumes_from_its_checkpoint(data, tmp_path, monkeypatch):
    X, _, priors = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        reference = small(8, refine=False).fit(X[:3], priors)
        original = ShapePriorTerm.auxiliary_loss
        calls = {"n": 0}

        def failing(self, step):
            loss = original(self, step)
            if loss is not None:
                calls["n"] += 1
                if calls["n"] == 4:  # after the network's backward, before either update
                    raise KeyboardInterrupt
            return loss

        monkeypatch.setattr(ShapePriorTerm, "auxiliary_loss", failing)
        with pytest.raises(KeyboardInterrupt):
            small(8, refine=False, checkpoint_dir=str(tmp_path)).fit(X[:3], priors)
        monkeypatch.setattr(ShapePriorTerm, "auxiliary_loss", original)
        resumed = small(8, refine=False, checkpoint_dir=str(tmp_path)).fit(X[:3], priors)
    for (k, v), w in zip(reference.encoder_.model_.state_dict().items(),
                         resumed.encoder_.model_.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)


def test_bad_priors_are_named(data):
    X = data[0][:2]
    seg = small()
    with pytest.raises(ValueError, match="empty"):
        seg.fit(X, [])
    with pytest.raises(ValueError, match="requires y to be passed"):
        seg.fit(X)
    with pytest.raises(ValueError, match="not binary"):
        seg.fit(X, [np.linspace(0, 1, 64 * 64).reshape(64, 64)])
    with pytest.raises(ValueError, match="2-D mask"):
        seg.fit(X, [np.zeros((32, 32, 3), bool)])
    with pytest.raises(ValueError, match="2-D binary masks"):
        seg.fit(X, np.zeros((2, 32, 32, 2), bool))
    with pytest.raises(ValueError, match="all foreground|empty"):
        seg.fit(X, [np.zeros((32, 32), bool)])
    with pytest.raises(ValueError, match="unknown LocalDiscriminativeEncoder parameters"), \
            pytest.warns(FutureWarning, match="deprecated"):
        ShapeGuidedSegmenter(encoder_params={"colour": 1}).fit(X, branching_shapes(1))
    with pytest.raises(ValueError, match="not also as"), pytest.warns(FutureWarning):
        small(max_iter=3).set_params(n_clusters=4).fit(X, branching_shapes(1))
    with pytest.raises(NotFittedError):
        ShapeGuidedSegmenter().predict(X)


def test_prior_files_are_read(tmp_path, data):
    import imageio.v3 as iio

    for i, p in enumerate(branching_shapes(2, seed=3)):
        iio.imwrite(tmp_path / f"p{i}.png", p.astype(np.uint8) * 255)
    X = data[0][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        seg = small(2, refine=False).fit(X, str(tmp_path))
    assert len(seg.prior_zooms_) == 2


def test_collapse_is_detected_and_reported(data, monkeypatch):
    X, _, priors = data
    import skuld.estimators.shape_guided as shape_guided_module

    monkeypatch.setattr(shape_guided_module, "ld_probabilities",
                        lambda E, P: {m: np.zeros(E.shape[:2], np.float32) for m in ("cluster", "similarity")})
    with pytest.warns(ClusterCollapseWarning, match="collapse"):
        seg = small(2, pseudo_labels="ld").fit(X[:2], priors)
    assert seg.collapsed_ and seg.cluster_fraction_ == 0 and seg.refiner_ is None
    with pytest.raises(ValueError, match="no refinement network"):
        seg.predict(X[:1], mode="refined")
    # Ridge pseudo-labels do not depend on cluster 0: refinement still runs, and predict answers
    # from it, so there is nothing to warn about; the collapse is still recorded.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClusterCollapseWarning)
        seg = small(2, pseudo_labels="ridge").fit(X[:2], priors)
    assert seg.collapsed_ and seg.refiner_ is not None and seg.pseudo_labels_ == "ridge"
    # ... but without refinement predict answers from the collapsed LD network: warned.
    with pytest.warns(ClusterCollapseWarning, match="collapse"):
        small(2, pseudo_labels="ridge", refine=False).fit(X[:2], priors)


def test_segments_synthetic_tubes_without_their_labels():
    """Dark wavy tubes in noise, guided only by straight branching shapes: Dice > 0.8 (0.93
    measured; about 30 s on 2 cores)."""
    X, y = tubes(n=8, size=96, seed=0)
    priors = branching_shapes(n=8, size=128, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        encoder = ShapeGuidedSegmenter.default_encoder(max_iter=150, batch_size=2, crop_size=64, image_size=96,
                                                       width=0.5, patch_grid=4)
        seg = ShapeGuidedSegmenter(encoder, refine_iter=100, random_state=0).fit(X, priors)
    X_test, y_test = tubes(n=4, size=96, seed=7)
    assert seg.pseudo_labels_ == "ridge" and seg.refiner_ is not None
    assert seg.score(X_test, y_test) > 0.8
    # The pseudo-labels' structure fraction is held near the priors' (the triangle threshold
    # alone marks most of these noisy images as tubes).
    assert 0.5 * seg.prior_fraction_ <= seg.pseudo_label_fraction_ <= 1.0


def test_segments_lung_like_structures_from_priors_of_another_generator():
    """The non-vessel case: dark lung-like ellipses in a bright body, guided by rounded
    rectangles from another generator in frames of another size and aspect. Thick priors in
    a fixed orientation take the atlas route, and the refined network finds the lungs."""
    X, y = lungs(n=8, size=96, seed=0)
    priors = lung_shapes(n=6, seed=1)
    encoder = ShapeGuidedSegmenter.default_encoder(max_iter=20, batch_size=2, crop_size=64, image_size=96, width=0.25,
                                                   patch_grid=4)
    seg = ShapeGuidedSegmenter(encoder, refine_iter=150, rotation=0, random_state=0)
    seg.fit(X, priors)
    assert seg.pseudo_labels_ == "atlas" and seg.refiner_ is not None
    assert seg.atlas_.shape == (128, 128) and 0 <= seg.atlas_.min() and seg.atlas_.max() <= 1
    X_test, y_test = lungs(n=4, size=96, seed=7)
    assert seg.score(X_test, y_test) > 0.8


def test_non_vessel_structure_runs_the_ld_route():
    """Lung-like blobs guided by ellipse masks through the paper's route (LD pseudo-labels,
    what "auto" picks for thick priors of images in any orientation). It runs end to end and
    reports what it found; at this tiny budget cluster 0 does not yet match the blobs
    (docs/shape_guided.md), so no quality is asserted here."""
    X, y = lungs(n=6, size=96, seed=0)
    priors = ellipse_shapes(n=6, size=128, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        encoder = ShapeGuidedSegmenter.default_encoder(max_iter=20, batch_size=2, crop_size=64, image_size=96,
                                                       width=0.25, patch_grid=4)
        seg = ShapeGuidedSegmenter(encoder, refine_iter=10, rotation=30, random_state=0).fit(X, priors)
    assert seg.pseudo_labels_ == "ld"
    assert 0 <= seg.cluster_fraction_ <= 1
    pred = seg.predict(X[:2], mode="similarity")
    assert pred.shape == (2, 96, 96) and pred.dtype == bool


def test_refined_prediction_averages_the_views_its_training_saw(fitted, data):
    X = data[0][:1]
    assert fitted.refiner_ is not None
    assert auto.test_time_views(fitted.rotation) == "dihedral"  # rotation=180: vessels have no orientation
    assert auto.test_time_views(0) is None  # lungs: flips did not help
    turned = np.ascontiguousarray(np.rot90(X, axes=(1, 2)))
    p = fitted.predict_proba(X, mode="refined")[..., 1]
    np.testing.assert_allclose(fitted.predict_proba(turned, mode="refined")[..., 1], np.rot90(p, axes=(1, 2)),
                               atol=1e-5)
    plain = copy.deepcopy(fitted).set_params(test_time_augmentation=None)
    assert not np.allclose(plain.predict_proba(X, mode="refined")[..., 1], p, atol=1e-4)
    with pytest.raises(ValueError, match="test_time_augmentation"):
        copy.deepcopy(fitted).set_params(test_time_augmentation="all").predict(X)


def test_the_encoder_parameters_of_earlier_releases_still_work_with_a_future_warning(data):
    """``n_clusters``, ``max_iter``, ... ``encoder_params`` on the segmenter itself: the same
    model as the same settings passed as an encoder recipe, and a FutureWarning naming them."""
    X, _, priors = data
    old = dict(max_iter=4, batch_size=1, crop_size=48, image_size=96, n_clusters=6,
               encoder_params=dict(width=0.25, embedding_dim=8, patch_grid=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        with pytest.warns(FutureWarning, match=r"\['batch_size', 'crop_size', 'encoder_params', 'image_size', "
                                               r"'max_iter', 'n_clusters'\] are deprecated"):
            a = ShapeGuidedSegmenter(refine=False, random_state=0, **old).fit(X[:3], priors)
        b = small(4, encoder=dict(n_clusters=6), refine=False).fit(X[:3], priors)
    assert a.encoder_.n_clusters == 6
    for (k, v), w in zip(a.encoder_.model_.state_dict().items(), b.encoder_.model_.state_dict().values()):
        assert torch.equal(v, w), k


def test_the_recipe_takes_the_segmenters_orientation_runtime_and_seed(data):
    X, _, priors = data
    recipe = ShapeGuidedSegmenter.default_encoder(**{**TINY_ENCODER, "max_iter": 2, "rotation": 180.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        seg = ShapeGuidedSegmenter(recipe, rotation=0.0, refine=False, device="cpu", random_state=3).fit(X[:2], priors)
    enc = seg.encoder_
    assert (enc.rotation, enc.rot90, enc.device, enc.random_state) == (0.0, False, "cpu", 3)
    assert recipe.rotation == 180.0 and not hasattr(recipe, "model_")  # the recipe itself is untouched
    assert enc.crop_scale == "native" and enc.lr_halvings == 3


def test_a_checkpoint_of_other_priors_is_not_resumed_and_a_fitted_encoder_is_refused(data, tmp_path):
    X, _, priors = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterCollapseWarning)
        small(2, refine=False, checkpoint_dir=str(tmp_path)).fit(X[:2], priors)
        with pytest.raises(ValueError, match="other values of terms"):
            small(2, refine=False, checkpoint_dir=str(tmp_path)).fit(X[:2], priors[::-1])
        seg = small(2, refine=False).fit(X[:2], priors)
    assert seg.ridge_sigmas_ and seg.pseudo_labels_ == "ridge"  # the route's attributes, also without refinement
    with pytest.raises(ValueError, match="encoder is fitted"):
        ShapeGuidedSegmenter(seg.encoder_).fit(X[:2], priors)
