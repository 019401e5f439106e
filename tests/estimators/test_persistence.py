"""skuld.save / skuld.load: every estimator round-trips to the same outputs, and a model file
can name nothing but skuld's and scikit-learn's estimators: no file runs code when read."""

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

import skuld
from skuld.estimators.persistence import MODEL_FORMAT, is_pickle, model_card, model_fingerprint

from ..helpers import TINY, blobs, branching_shapes, phantom, tubes


@pytest.fixture(scope="module")
def fitted():
    X = blobs(3, 48)
    enc = skuld.LocalDiscriminativeEncoder(**TINY).fit(X)
    template, marks = phantom()
    loc_enc = skuld.LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False}).fit(template[None])
    Xt, _ = tubes(3, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg = skuld.ShapeGuidedSegmenter(skuld.ShapeGuidedSegmenter.default_encoder(
            max_iter=2, batch_size=1, crop_size=48, image_size=96, width=0.25, embedding_dim=8, patch_grid=4),
            refine_iter=2, random_state=0).fit(Xt, branching_shapes(3))
    return {
        "encoder": (enc, lambda e: e.transform(X[:1])),
        "segmenter": (skuld.TransferSegmenter(encoder=FrozenEstimator(enc), max_iter=2, batch_size=1, crop_size=32,
                                              random_state=0).fit(X, X > 0.5), lambda e: e.predict_proba(X[:1])),
        "locator": (skuld.OneShotLandmarkLocator(encoder=FrozenEstimator(loc_enc), refine_patch=15,
                                                 refine_radius=6).fit(template, marks), lambda e: e.predict(template[None])),
        "index": (skuld.PixelIndex(index="Flat", stride=2).fit(X, encoder=enc),
                  lambda e: e.kneighbors(enc.transform(X[:1])[0, 3, 3], k=4)[1]),
        "classifier": (skuld.PixelClassifier(LogisticRegression(), n_pixels=500, random_state=0).fit(
            enc.transform(X), X > 0.5), lambda e: e.predict_proba(enc.transform(X[:1]))),
        "shape_guided": (sg, lambda e: e.predict_proba(Xt[:1])),
    }


@pytest.mark.parametrize("name", ["encoder", "segmenter", "locator", "index", "classifier", "shape_guided"])
def test_every_estimator_comes_back_with_the_same_outputs(fitted, name, tmp_path):
    est, outputs = fitted[name]
    path = tmp_path / f"{name}.skuld"
    skuld.save(est, path)
    assert not is_pickle(path)
    back = skuld.load(path)
    assert type(back) is type(est) and back.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    np.testing.assert_array_equal(outputs(back), outputs(est))
    assert model_fingerprint(back) == model_fingerprint(est)


def test_unfitted_estimators_and_the_model_card(fitted, tmp_path):
    skuld.save(skuld.LocalDiscriminativeEncoder(crop_scale="native", normalization=(0.2, 0.3)), tmp_path / "u.skuld")
    back = skuld.load(tmp_path / "u.skuld")
    assert back.get_params() == skuld.LocalDiscriminativeEncoder(crop_scale="native", normalization=(0.2, 0.3)).get_params()
    skuld.save(fitted["encoder"][0], tmp_path / "e.skuld")
    card = model_card(tmp_path / "e.skuld")
    assert card["class"] == "LocalDiscriminativeEncoder" and card["n_iter"] == TINY["max_iter"]
    assert card["format"] == MODEL_FORMAT and card["input"]["image_size"] == 48 and "final_loss" in card
    with pytest.raises(TypeError, match="skuld's estimators"):
        skuld.save(LogisticRegression(), tmp_path / "lr.skuld")


def _crafted(path, state, cls="LocalDiscriminativeEncoder", fmt=MODEL_FORMAT, arrays=None):
    doc = {"format": fmt, "kind": "skuld-model", "class": cls, "skuld_version": "x", "state": state}
    save_file(arrays or {"a0": np.zeros(1, np.uint8)}, str(path), metadata={"skuld": json.dumps(doc)})
    return path


def test_a_crafted_file_can_name_nothing_but_skuld_and_scikit_learn_estimators(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("os.system", "subprocess.Popen", "sklearn.utils.deprecated", "builtins.eval",
                 "sklearn.pipeline._name_estimators"):
        path = _crafted(tmp_path / "evil.skuld", {"estimator": name, "state": {"dict": [["cmd", "touch pwned"]]}})
        with pytest.raises(ValueError, match="damaged or crafted"):
            skuld.load(path)
    path = _crafted(tmp_path / "evil.skuld", {"dataclass": "Popen", "fields": {"args": "touch pwned"}})
    with pytest.raises(ValueError, match="unknown type 'Popen'"):
        skuld.load(path)
    assert not (tmp_path / "pwned").exists()


def test_other_formats_and_other_files_are_named(tmp_path, fitted):
    with pytest.raises(ValueError, match="format 99 .written by skuld x.; this skuld .* reads format 1"):
        skuld.load(_crafted(tmp_path / "new.skuld", None, fmt=99))
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="not a skuld model"):
        skuld.load(tmp_path / "weights.safetensors")
    (tmp_path / "garbage.skuld").write_bytes(b"\x07" * 64)
    with pytest.raises(ValueError, match="not a skuld model file"):
        skuld.load(tmp_path / "garbage.skuld")
    with pytest.raises(FileNotFoundError):
        skuld.load(tmp_path / "none.skuld")
    path = _crafted(tmp_path / "lie.skuld", {"estimator": "PixelSampler", "state": {"dict": []}}, cls="PixelIndex")
    with pytest.raises(ValueError, match="says it holds a PixelIndex but holds a PixelSampler"):
        skuld.load(path)


@pytest.fixture(scope="module")
def saved_bytes(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "classifier.skuld"
    skuld.save(fitted["classifier"][0], path)
    return path.read_bytes()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_model_files_load_or_fail_by_name(saved_bytes, tmp_path, data):
    """Flipped, cut or overwritten bytes: the result is a model or a ValueError naming the file."""
    raw = bytearray(saved_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(1, len(raw)))]
    path = tmp_path / "damaged.skuld"
    path.write_bytes(bytes(raw))
    try:
        skuld.load(path)
    except ValueError as exc:
        assert os.fspath(path) in str(exc)
