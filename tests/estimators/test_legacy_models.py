"""Models pickled by skuld 0.1.0 (before the engine) load and give the outputs they gave then.

The fixtures were written by ``tests/data/legacy_0_1_0/make.py`` on commit 3926aa3, with their
outputs beside them (float32 on one CPU thread).
"""

import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from skuld import (
    LocalDiscriminativeEncoder,
    OneShotLandmarkLocator,
    PixelIndex,
    ShapeGuidedSegmenter,
    TransferSegmenter,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "legacy_0_1_0"


@pytest.fixture(scope="module")
def saved():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield np.load(FIXTURES / "outputs.npz")
    torch.set_num_threads(threads)


def load(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading itself warns about nothing
        return joblib.load(FIXTURES / f"{name}.joblib")


def test_an_encoder_of_0_1_0_transforms_as_it_did(saved):
    enc = load("encoder")
    assert isinstance(enc, LocalDiscriminativeEncoder) and enc.input_spec_.image_size == 48
    np.testing.assert_allclose(enc.transform(saved["X"][:1]), saved["E"], atol=1e-5)
    enc.set_params(warm_start=True, max_iter=1).fit(saved["X"])  # and trains on, with its Adam state
    assert enc.n_iter_ == 3


def test_a_segmenter_locator_and_index_of_0_1_0_predict_as_they_did(saved):
    seg, loc, index = load("segmenter"), load("locator"), load("index")
    assert isinstance(seg, TransferSegmenter) and isinstance(loc, OneShotLandmarkLocator)
    np.testing.assert_allclose(seg.predict_proba(saved["X"][:1]), saved["P"], atol=1e-5)
    assert loc.coarse_weight == 0.5 and loc.prior_weight == "deprecated"  # the old name, carried over
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        np.testing.assert_allclose(loc.predict(saved["X"][1:2]), saved["L"], atol=1e-4)
    assert isinstance(index, PixelIndex)
    enc = load("encoder")
    D, where = index.kneighbors(enc.transform(saved["X"][:1])[0, 4, 4], k=3)
    np.testing.assert_allclose(D, saved["D"], atol=1e-5)
    np.testing.assert_array_equal(where, saved["W"])


def test_a_shape_guided_segmenter_of_0_1_0_predicts_as_it_did(saved):
    sg = load("shape_guided")
    assert isinstance(sg, ShapeGuidedSegmenter) and sg.encoder is None and sg.max_iter == 2
    np.testing.assert_allclose(sg.predict_proba(saved["X"][:1]), saved["S"], atol=1e-5)
