import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld.io import ImageCollection
from skuld.preprocessing import working_shape
from skuld.pretraining import PairCropDataset, random_resized_crop_box


@given(h=st.integers(1, 3000), w=st.integers(1, 3000), size=st.sampled_from([None, 64, 512]))
@settings(max_examples=50, deadline=None)
def test_working_shape_sets_the_shorter_side(h, w, size):
    wh, ww = working_shape(h, w, size)
    if size is None:
        assert (wh, ww) == (h, w)
    else:
        assert min(wh, ww) == size or abs(min(wh, ww) - size) <= 1
        assert abs(wh / ww - h / w) <= max(1 / ww, 1 / wh) * (h / w + 1) + 1e-9


@given(h=st.integers(1, 500), w=st.integers(1, 500), seed=st.integers(0, 10**6))
@settings(max_examples=60, deadline=None)
def test_crop_boxes_stay_inside_the_image(h, w, seed):
    top, left, ch, cw = random_resized_crop_box(h, w, (0.9, 1.0), np.random.default_rng(seed))
    assert 0 <= top and 0 <= left and ch >= 1 and cw >= 1
    assert top + ch <= h and left + cw <= w


def test_samples_depend_only_on_seed_and_index():
    imgs = ImageCollection([np.random.default_rng(i).random((40 + i, 50)) for i in range(3)])
    ds = PairCropDataset(imgs, crop_size=32, image_size=48, scale=(0.5, 1.0), seed=1, length=100)
    a = ds[7]
    assert a.shape == (2, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, ds[7]) and not torch.equal(a, ds[8])
    other = PairCropDataset(imgs, crop_size=32, image_size=48, scale=(0.5, 1.0), seed=2, length=100)
    assert not torch.equal(a, other[7])
