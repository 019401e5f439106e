"""Ridge strength: thin dark or bright tubes answer, flat regions and blobs do not."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld.metrics import dice
from skuld.segmentation.ridges import ridge_pseudo_labels, ridge_segmentation, ridge_strength

from ..helpers import tubes


def _top(v, fraction):
    return v > np.quantile(v, 1 - fraction)


def test_dark_tubes_answer_most():
    X, y = tubes(n=3, size=96, seed=0)
    right = [_top(ridge_strength(x), m.mean()) for x, m in zip(X, y)]
    assert dice(right, list(y)) > 0.6
    # The wrong polarity answers beside the tubes, not on them.
    wrong = [_top(ridge_strength(x, polarity="bright"), m.mean()) for x, m in zip(X, y)]
    assert dice(wrong, list(y)) < dice(right, list(y)) - 0.3


def test_segmentation_of_clean_tubes():
    _, y = tubes(n=2, size=96, seed=3)
    clean = [np.where(m, 0.35, 0.7).astype(np.float32) for m in y]
    assert dice([ridge_segmentation(x) for x in clean], list(y)) > 0.6
    bright = [1 - x for x in clean]
    assert dice([ridge_segmentation(x, polarity="bright") for x in bright], list(y)) > 0.6


def test_colour_images_use_the_green_channel():
    X, y = tubes(n=1, size=64, seed=1)
    rgb = np.stack([np.full_like(X[0], 0.5), X[0], np.zeros_like(X[0])], axis=-1)
    np.testing.assert_allclose(ridge_strength(rgb), ridge_strength(X[0]), atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(16, 48))
def test_a_flat_image_has_no_ridges(value, size):
    v = ridge_strength(np.full((size, size), value, np.float32))
    assert v.shape == (size, size) and v.dtype == np.float32
    assert (v >= 0).all() and v.max() < 1e-6


def test_pseudo_labels_mark_sure_and_unsure_pixels():
    X, y = tubes(n=1, size=96, seed=2)
    region = np.zeros((96, 96), bool)
    region[8:-8, 8:-8] = True
    lab = ridge_pseudo_labels(X[0], region, sure=1.5)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 255}
    assert (lab[~region] == 0).all()
    assert (lab == 255).any() and (lab == 1).any()
    every = ridge_pseudo_labels(X[0], region, sure=1.0, fraction_range=(0.05, 0.2))
    assert not (every[region] == 255).any()
    assert 0.05 <= (every[region] == 1).mean() <= 0.2 + 1e-3  # the triangle threshold alone takes far more
    assert dice(every == 1, y[0], mask=region) > 0.6
    with pytest.raises(ValueError, match="sure"):
        ridge_pseudo_labels(X[0], region, sure=0.5)
    with pytest.raises(ValueError, match="polarity"):
        ridge_strength(X[0], polarity="up")
