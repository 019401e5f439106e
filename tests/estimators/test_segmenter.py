"""TransferSegmenter: a U-Net trained on few labels, with or without a pretrained encoder."""

import copy

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

import skuld
from skuld import LocalDiscriminativeEncoder, TransferSegmenter
from skuld.nn import SegmentationUNet
from skuld.segmentation import SegmentationTask

from ..helpers import TINY, blobs

#: A small, fast U-Net for tests.
SMALL = dict(max_iter=40, batch_size=2, crop_size=32, image_size=None, width=0.25, learning_rate=3e-3,
             rotation=0.0, random_state=0)


def task(n=4, size=64, seed=0, channels=None):
    """Images with bright blobs; the mask is where a blob is bright."""
    X = blobs(n, size, channels=channels, seed=seed)
    gray = X if X.ndim == 3 else X[..., 0]
    return X, gray > 0.5


@pytest.fixture(scope="module")
def encoder():
    return LocalDiscriminativeEncoder(**{**TINY, "image_size": None}).fit(blobs(4, 64, seed=5))


@pytest.fixture(scope="module")
def fitted():
    X, y = task()
    return TransferSegmenter(**SMALL).fit(X, y)


def test_learns_a_synthetic_structure(fitted):
    X, y = task(seed=1)
    pred = fitted.predict(X)
    assert pred.shape == y.shape and pred.dtype == bool
    assert fitted.score(X, y) > 0.8
    proba = fitted.predict_proba(X)
    assert proba.shape == (*y.shape, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)
    assert fitted.loss_history_[-1]["loss"] < fitted.loss_history_[0]["loss"]
    assert fitted.n_iter_ == SMALL["max_iter"] and not fitted.pretrained_


def test_outputs_are_at_each_input_resolution():
    X, y = task(n=2, size=96)
    seg = TransferSegmenter(**{**SMALL, "max_iter": 2, "image_size": 48}).fit(X, y)
    ragged = [X[0], X[1, :80, :64]]
    out = seg.predict(ragged)
    assert isinstance(out, list) and [o.shape for o in out] == [(96, 96), (80, 64)]


def test_pretrained_encoder_weights_reach_the_unet(encoder):
    unet = SegmentationUNet(2, encoder=encoder.export_encoder())
    for (name, a), b in zip(unet.encoder.state_dict().items(), encoder.model_.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    X, y = task(n=2)
    seg = TransferSegmenter(encoder=encoder, freeze="encoder", **{**SMALL, "max_iter": 3}).fit(X, y)
    assert seg.pretrained_ and seg.encoder_ is None
    # Frozen: weights and batch-norm statistics are still the pretrained ones after training.
    for (name, a), b in zip(seg.net_.encoder.state_dict().items(), encoder.model_.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    tuned = TransferSegmenter(encoder=encoder, freeze="none", **{**SMALL, "max_iter": 3}).fit(X, y)
    first = "stages.0.0.0.weight"
    assert not torch.equal(tuned.net_.encoder.state_dict()[first], encoder.model_.encoder.state_dict()[first])


def test_schedule_trains_decoder_first_then_everything(encoder):
    X, y = task(n=2)
    seg = TransferSegmenter(encoder=FrozenEstimator(encoder), **{**SMALL, "max_iter": 6}).fit(X, y)
    assert [r["stage"] for r in seg.loss_history_] == ["decoder"] * 3 + ["all"] * 3
    baseline = TransferSegmenter(**{**SMALL, "max_iter": 2}).fit(X, y)  # random encoder: always trained
    assert [r["stage"] for r in baseline.loss_history_] == ["all", "all"]


def test_saved_encoder_path_and_unfitted_encoder_recipe(encoder, tmp_path):
    X, y = task(n=2)
    skuld.save(encoder, tmp_path / "enc.skuld")
    seg = TransferSegmenter(encoder=str(tmp_path / "enc.skuld"), **{**SMALL, "max_iter": 2}).fit(X, y)
    assert seg.pretrained_ and seg.image_size_ == encoder.image_size_
    recipe = LocalDiscriminativeEncoder(**{**TINY, "image_size": None})
    seg = TransferSegmenter(encoder=recipe, **{**SMALL, "max_iter": 2}).fit(X, y, X_unlabeled=blobs(2, 64, seed=9))
    assert seg.encoder_.n_iter_ == TINY["max_iter"] and not hasattr(recipe, "model_")


def test_multiclass_masks():
    X, _ = task(n=3)
    y = np.zeros(X.shape, np.int64)
    y[X > 0.5] = 2
    y[(X > 0.3) & (X <= 0.5)] = 1
    seg = TransferSegmenter(**{**SMALL, "max_iter": 60}).fit(X, y)
    assert list(seg.classes_) == [0, 1, 2]
    pred = seg.predict(X)
    assert pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1, 2}
    assert seg.predict_proba(X).shape == (*y.shape, 3)
    assert seg.score(X, y) > 0.5


def test_rgb_images_and_zero_one_masks():
    X, y = task(n=2, channels=3)
    seg = TransferSegmenter(**{**SMALL, "max_iter": 2}).fit(X, y.astype(np.uint8))
    assert seg.n_channels_in_ == 3 and seg.predict(X).dtype == bool


def test_same_seed_same_model_and_clone():
    X, y = task(n=2)
    a = TransferSegmenter(**{**SMALL, "max_iter": 3}).fit(X, y)
    b = TransferSegmenter(**{**SMALL, "max_iter": 3}).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = clone(a)
    assert c.get_params() == a.get_params() and not hasattr(c, "net_")


def test_pickle_round_trip(fitted, tmp_path):
    X, _ = task(n=2, seed=3)
    joblib.dump(fitted, tmp_path / "seg.joblib")
    loaded = joblib.load(tmp_path / "seg.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


def test_interrupted_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    X, y = task(n=2)
    params = {**SMALL, "max_iter": 6, "checkpoint_dir": str(tmp_path), "checkpoint_every": 100}
    straight = TransferSegmenter(**{**params, "checkpoint_dir": None}).fit(X, y)
    real_loss, calls = SegmentationTask.loss, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(SegmentationTask, "loss", failing)
    with pytest.raises(KeyboardInterrupt):
        TransferSegmenter(**params).fit(X, y)
    monkeypatch.setattr(SegmentationTask, "loss", real_loss)
    resumed = TransferSegmenter(**params).fit(X, y)
    assert [r["step"] for r in resumed.loss_history_] == list(range(6))
    np.testing.assert_array_equal(resumed.predict_proba(X), straight.predict_proba(X))
    with pytest.raises(ValueError, match="other values of learning_rate"):
        TransferSegmenter(**{**params, "learning_rate": 1e-2}).fit(X, y)


def test_bad_input_is_named(encoder, tmp_path):
    X, y = task(n=2)
    seg = TransferSegmenter(**{**SMALL, "max_iter": 1})
    with pytest.raises(ValueError, match="1 masks for 2 images"):
        seg.fit(X, y[:1])
    with pytest.raises(ValueError, match="mask 0 is 32 x 32"):
        seg.fit(X, [m[:32, :32] for m in y])
    with pytest.raises(ValueError, match="single value"):
        seg.fit(X, np.zeros_like(y))
    bad = y.astype(float)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        seg.fit(X, bad)
    with pytest.raises(ValueError, match="distinct values"):
        seg.fit(X, (X * 255).astype(np.uint8))
    inf = X.copy()
    inf[1, 5, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        seg.fit(inf, y)
    with pytest.raises(ValueError, match="at least 32 x 32"):
        seg.fit(X[:, 20:40, 20:40], np.ones((2, 20, 20), bool) ^ np.eye(20, dtype=bool))
    with pytest.raises(NotFittedError):
        seg.predict(X)
    with pytest.raises(ValueError, match="fitted on 1-channel"):
        TransferSegmenter(encoder=encoder, **{**SMALL, "max_iter": 1}).fit(np.stack([X] * 3, -1), y)
    with pytest.raises(FileNotFoundError, match="no saved encoder"):
        TransferSegmenter(encoder=str(tmp_path / "missing.joblib")).fit(X, y)
    with pytest.raises(ValueError, match="freeze"):
        TransferSegmenter(freeze="half").fit(X, y)
    with pytest.raises(ValueError, match="multiple of 16"):
        TransferSegmenter(**{**SMALL, "crop_size": 40}).fit(X, y)


def test_ignore_label_pixels_count_for_nothing():
    X, y = task(n=4, seed=3)
    partial = y.astype(np.uint8)
    partial[:, :, 32:] = 255  # only the left half is annotated
    seg = TransferSegmenter(**{**SMALL, "ignore_label": 255, "max_iter": 80}).fit(X, partial)
    assert seg.classes_.tolist() == [0, 1]
    assert seg.predict(X).dtype == bool
    assert seg.score(X, y.astype(np.uint8)) > 0.7  # learned the structure from half the pixels
    # Scoring leaves the ignored pixels out: a prediction wrong only there still scores 1.
    pred = seg.predict(X)
    fake = pred.astype(np.uint8)
    fake[:, :, 32:] = 255
    from skuld.metrics import class_dice
    regions = [m != 255 for m in fake]
    assert class_dice(pred.astype(np.uint8), fake, [1], regions=regions) == 1.0
    with pytest.raises(ValueError, match="single value"):
        TransferSegmenter(**{**SMALL, "ignore_label": 255}).fit(X, np.full(y.shape, 255, np.uint8))


def _dihedral(a, k):
    """View k of the square's dihedral group on the (H, W) axes of (n, H, W[, C]) arrays."""
    a = a[:, :, ::-1] if k & 1 else a
    a = a[:, ::-1] if k & 2 else a
    return np.ascontiguousarray(np.swapaxes(a, 1, 2) if k & 4 else a)


@pytest.mark.parametrize("views, n_views", [("flips", 4), ("dihedral", 8)])
def test_test_time_augmentation_is_equivariant_to_its_views(fitted, views, n_views):
    X = task(n=2, seed=3)[0]  # 64 x 64 at native resolution: no padding breaks the symmetry
    plain = fitted.predict_proba(X)
    seg = copy.deepcopy(fitted).set_params(test_time_augmentation=views)
    averaged = seg.predict_proba(X)
    inverse = [0, 1, 2, 3, 4, 6, 5, 7]  # transpose-then-flip-rows undoes flip-columns-then-transpose
    by_hand = np.mean([_dihedral(fitted.predict_proba(_dihedral(X, k)), inverse[k]) for k in range(n_views)], axis=0)
    np.testing.assert_allclose(averaged, by_hand, atol=1e-5)
    for k in range(n_views):
        np.testing.assert_allclose(seg.predict_proba(_dihedral(X, k)), _dihedral(averaged, k), atol=1e-5)
    # Without averaging, the network alone is not equivariant: the check above has teeth.
    assert not np.allclose(fitted.predict_proba(_dihedral(X, 1)), _dihedral(plain, 1), atol=1e-3)
    np.testing.assert_allclose(averaged.sum(-1), 1, atol=1e-5)


def test_bad_test_time_augmentation_is_named_and_old_models_load(fitted):
    seg = copy.deepcopy(fitted).set_params(test_time_augmentation="rot45")
    with pytest.raises(ValueError, match="test_time_augmentation"):
        seg.predict_proba(task(n=1)[0])
    state = fitted.__getstate__()
    del state["test_time_augmentation"]  # a model pickled before the parameter existed
    old = TransferSegmenter.__new__(TransferSegmenter)
    old.__setstate__(state)
    assert old.test_time_augmentation is None
    np.testing.assert_array_equal(old.predict(task(n=1)[0]), fitted.predict(task(n=1)[0]))


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_each_view_is_undone_and_the_eight_views_differ(h, w, seed):
    from skuld.inference import dihedral_view as _view
    from skuld.inference import undo_dihedral_view as _unview

    x = torch.from_numpy(np.random.default_rng(seed).random((2, h, w)))
    for k in range(8):
        np.testing.assert_array_equal(_unview(_view(x, k), k).numpy(), x.numpy())
    square = torch.arange(16.0).reshape(4, 4)
    assert len({tuple(_view(square, k).flatten().tolist()) for k in range(8)}) == 8
