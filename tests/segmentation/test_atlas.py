"""Shape atlases and atlas-guided EM (skuld.atlas)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld.metrics import dice
from skuld.segmentation.atlas import atlas_probability, shape_atlas

from ..helpers import lung_shapes, lungs


def _block_image(size=(80, 96), top=20, left=10, height=30, width=24, dark=0.25, bright=0.75, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(size, bright) + rng.normal(0, noise, size)
    truth = np.zeros(size, bool)
    truth[top:top + height, left:left + width] = True
    img[truth] = dark + rng.normal(0, noise, truth.sum())
    return img.clip(0, 1).astype(np.float32), truth


def test_shape_atlas_is_the_mean_over_stretched_frames():
    a = np.zeros((40, 80), np.uint8)
    a[:, :40] = 255  # left half, 0/255
    b = np.zeros((60, 30), bool)
    b[:30] = True  # top half
    atlas = shape_atlas([a, b], size=16)
    assert atlas.shape == (16, 16) and atlas.dtype == np.float32
    assert atlas[:6, :6].min() == pytest.approx(1.0)  # both
    assert atlas[10:, 10:].max() == pytest.approx(0.0)  # neither
    assert atlas[:6, 10:].mean() == pytest.approx(0.5, abs=0.01)  # top only
    assert atlas[10:, :6].mean() == pytest.approx(0.5, abs=0.01)  # left only


def test_shape_atlas_errors():
    with pytest.raises(ValueError, match="at least one"):
        shape_atlas([])
    with pytest.raises(ValueError, match="2-D"):
        shape_atlas([np.zeros((4, 4, 3))])


def test_atlas_probability_finds_a_structure_the_atlas_only_roughly_places():
    img, truth = _block_image(top=30, left=20)
    atlas = np.zeros((80, 96), np.float32)
    atlas[20:50, 10:34] = 1.0  # the same block 10 px higher and left
    p = atlas_probability(img, atlas)
    assert p.shape == img.shape and p.dtype == np.float32
    assert dice(p > 0.5, truth) > 0.95


@pytest.mark.parametrize("seed, noise", [(0, 0.05), (1, 0.1)])
def test_moving_the_atlas_finds_a_displaced_structure_and_ignores_a_distant_look_alike(seed, noise):
    """Noisy, low-contrast block 14 px below-right of the atlas, and a dark look-alike in a far
    corner: where the atlas stays, EM labels the atlas' place; moved, it finds the block."""
    rng = np.random.default_rng(seed)
    img = np.full((96, 96), 0.6) + rng.normal(0, noise, (96, 96))
    truth = np.zeros((96, 96), bool)
    truth[32:72, 32:72] = True
    img[truth] -= 0.2
    img[80:94, 2:20] -= 0.2  # the look-alike
    atlas = np.zeros((96, 96), np.float32)
    atlas[18:58, 18:58] = 1.0
    fixed = dice(atlas_probability(img.clip(0, 1), atlas, rounds=0) > 0.5, truth)
    moved = dice(atlas_probability(img.clip(0, 1), atlas, rounds=2) > 0.5, truth)
    assert moved > 0.85 and moved > fixed + 0.1


def test_field_of_view_and_flat_images():
    img, truth = _block_image()
    atlas = np.zeros((10, 10), np.float32)
    atlas[2:6, 1:4] = 1
    fov = np.zeros(img.shape, bool)
    fov[:, :60] = True
    p = atlas_probability(img, atlas, fov=fov)
    assert (p[~fov] == 0).all() and (p[truth & fov] > 0.5).mean() > 0.9
    assert (atlas_probability(np.full((40, 40), 0.5), atlas) == 0).all()


def test_atlas_probability_errors():
    img, _ = _block_image()
    with pytest.raises(ValueError, match="atlas must be"):
        atlas_probability(img, np.full((8, 8), 2.0))
    with pytest.raises(ValueError, match="atlas must be"):
        atlas_probability(img, np.full((8, 8, 2), 0.5))
    with pytest.raises(ValueError, match="fov has shape"):
        atlas_probability(img, np.full((8, 8), 0.5), fov=np.ones((3, 3), bool))


def test_lungs_from_priors_of_another_generator():
    atlas = shape_atlas(lung_shapes(n=6, seed=1))
    X, y = lungs(n=4, size=96, seed=3)
    assert np.mean([dice(atlas_probability(x, atlas) > 0.5, t) for x, t in zip(X, y)]) > 0.85


@settings(max_examples=15, deadline=None)
@given(st.integers(24, 70), st.integers(24, 70), st.integers(0, 10_000), st.booleans())
def test_probabilities_are_bounded_and_at_input_resolution(h, w, seed, rgb):
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3) if rgb else (h, w)).astype(np.float32)
    atlas = rng.random((12, 9)).astype(np.float32)
    p = atlas_probability(img, atlas)
    assert p.shape == (h, w) and p.dtype == np.float32
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_mirroring_image_and_atlas_mirrors_the_answer(seed):
    """Nothing in the method prefers left to right: mirrored inputs give the mirrored map
    (CLAHE's tiles make it approximate)."""
    img, _ = _block_image(size=(64, 64), top=12 + seed % 20, left=5 + seed % 30, seed=seed)
    atlas = np.zeros((16, 16), np.float32)
    atlas[4:12, 2:8] = 1
    p = atlas_probability(img, atlas) > 0.5
    q = atlas_probability(img[:, ::-1], atlas[:, ::-1]) > 0.5
    assert dice(p[:, ::-1], q) > 0.97
