"""The one input path: working resolution, normalisation, padding, and outputs mapped back."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from skuld.io import ImageCollection
from skuld.preprocessing import (
    InputSpec,
    check_min_size,
    intensity_normalizer,
    normalize,
    pad_to_multiple,
    resample_rows,
    resize,
    to_tensor,
    working_shape,
)

sizes = st.integers(32, 400)


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, side=st.integers(32, 300))
def test_the_working_shape_has_the_asked_shorter_side_and_keeps_the_aspect(h, w, side):
    wh, ww = working_shape(h, w, side)
    assert min(wh, ww) == side
    assert abs(wh / ww - h / w) <= (1 / min(wh, ww)) * max(h / w, 1)  # rounding of the longer side only
    assert working_shape(h, w, None) == (h, w)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70))
def test_padding_reaches_a_multiple_of_16_and_crops_back(h, w):
    x = torch.rand(1, 2, h, w)
    y, h0, w0 = pad_to_multiple(x)
    assert y.shape[-2] % 16 == 0 and y.shape[-1] % 16 == 0 and (h0, w0) == (h, w)
    assert torch.equal(y[..., :h, :w], x)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), H=st.integers(2, 90), W=st.integers(2, 90), rows=st.integers(1, 50))
def test_row_blocks_equal_one_bilinear_resampling(h, w, H, W, rows):
    src = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * w))
    whole = F.interpolate(src[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    blocks = torch.cat([b for _, b in resample_rows(src, (H, W), rows)], dim=1)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=1e-5)


def test_the_spec_is_the_same_steps_as_by_hand():
    img = np.random.default_rng(0).random((90, 60, 3), dtype=np.float32)
    spec = InputSpec.from_params(3, 48, "auto")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.working_shape(90, 60) == (72, 48)
    by_hand = normalize(resize(to_tensor(img), (72, 48))[None], spec.mean, spec.std)
    assert torch.equal(spec.network_batch(img), by_hand)
    assert torch.equal(spec.working_image(img), resize(to_tensor(img), (72, 48)))
    native = InputSpec.from_params(1, None, "half")
    assert native.network_batch(np.ones((40, 50, 1), np.float32)).shape == (1, 1, 40, 50)


def test_normalisation_and_size_errors_are_named():
    assert intensity_normalizer((0.2, 0.1), 3) == ((0.2, 0.2, 0.2), (0.1, 0.1, 0.1))
    assert intensity_normalizer(((0.1, 0.2, 0.3), (1, 2, 3)), 1) == ((0.1,), (1.0,))
    with pytest.raises(ValueError, match="normalization must be"):
        intensity_normalizer((0.1, 0.2, 0.3), 1)
    with pytest.raises(ValueError, match="X.1. is 31 x 80 pixels"):
        check_min_size(31, 80, "X[1]")
    check_min_size(32, 32)


def test_read_only_images_reach_the_network():
    img = np.zeros((40, 40, 1), np.float32)
    img.setflags(write=False)
    x = InputSpec.from_params(1, 32).network_batch(ImageCollection([img])[0])
    assert x.shape == (1, 1, 32, 32)
