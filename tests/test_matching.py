"""Property tests of the point-matching maths behind OneShotLandmarkLocator."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld import matching

finite = st.floats(-50, 50, allow_nan=False)


@given(st.lists(st.tuples(st.floats(-0.5, 99.5), st.floats(-0.5, 79.5)), min_size=1, max_size=8),
       st.integers(8, 300), st.integers(8, 300))
def test_rescale_points_round_trips(points, h2, w2):
    p = np.array(points)
    there = matching.rescale_points(p, (80, 100), (h2, w2))
    back = matching.rescale_points(there, (h2, w2), (80, 100))
    np.testing.assert_allclose(back, p, atol=1e-9)
    # Pixel edges map to pixel edges: the image's extent is preserved.
    edges = matching.rescale_points([[-0.5, -0.5], [99.5, 79.5]], (80, 100), (h2, w2))
    np.testing.assert_allclose(edges, [[-0.5, -0.5], [w2 - 0.5, h2 - 0.5]], atol=1e-9)


def test_rescale_points_matches_resizing_an_image():
    """A bright pixel at (x, y) lands where rescale_points says after a bilinear resize."""
    from skuld.preprocessing import resize

    img = torch.zeros(1, 60, 90)
    img[0, 20, 30] = 1.0
    big = resize(img, (180, 270))
    y, x = np.unravel_index(big[0].argmax().item(), (180, 270))
    expected = matching.rescale_points([[30, 20]], (60, 90), (180, 270))[0]
    assert abs(x - expected[0]) <= 0.5 and abs(y - expected[1]) <= 0.5


@given(st.floats(0.5, 6))
@settings(deadline=None, max_examples=20)
def test_gaussian_blur_preserves_constants_and_mass(sigma):
    x = torch.full((2, 40, 50), 3.0)
    np.testing.assert_allclose(matching.gaussian_blur(x, sigma).numpy(), 3.0, rtol=1e-5)
    k = matching.gaussian_kernel1d(sigma)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.argmax(k).item() == k.numel() // 2


def test_sample_points_is_exact_on_pixel_centres_and_bilinear_between():
    f = torch.arange(3 * 5 * 7, dtype=torch.float32).view(3, 5, 7)
    pts = torch.tensor([[0.0, 0.0], [6.0, 4.0], [2.0, 3.0], [2.5, 3.0]])
    out = matching.sample_points(f, pts)
    np.testing.assert_allclose(out[0].numpy(), f[:, 0, 0].numpy())
    np.testing.assert_allclose(out[1].numpy(), f[:, 4, 6].numpy())
    np.testing.assert_allclose(out[2].numpy(), f[:, 3, 2].numpy())
    np.testing.assert_allclose(out[3].numpy(), (f[:, 3, 2] + f[:, 3, 3]).numpy() / 2, rtol=1e-6)


def test_sample_patches_centres_and_linear_map():
    img = torch.arange(30 * 40, dtype=torch.float32).view(1, 30, 40)
    p = matching.sample_patches(img, torch.tensor([[20.0, 15.0]]), 5)
    np.testing.assert_allclose(p[0, 0].numpy(), img[0, 13:18, 18:23].numpy(), rtol=1e-6)
    # A 90-degree turn of the sampling grid reads the same pixels transposed and flipped.
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    q = matching.sample_patches(img, torch.tensor([[20.0, 15.0]]), 5, linear=rot)
    np.testing.assert_allclose(q[0, 0].numpy(), np.rot90(img[0, 13:18, 18:23].numpy(), k=1), rtol=1e-6)


@given(st.floats(0.2, 5), st.floats(-3, 3), st.integers(0, 10_000))
@settings(deadline=None, max_examples=25)
def test_ncc_is_bounded_and_invariant_to_affine_intensity(gain, offset, seed):
    g = torch.Generator().manual_seed(seed)
    regions = torch.rand(3, 1, 21, 21, generator=g)
    templates = regions[:, :, 4:13, 6:15].clone()
    a = matching.ncc_maps(regions, templates)
    b = matching.ncc_maps(regions * gain + offset, templates)
    assert a.shape == (3, 13, 13)
    assert (a.abs() <= 1).all()
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-3)
    # The template correlates perfectly where it was cut out, and that is the maximum.
    np.testing.assert_allclose(a[:, 4, 6].numpy(), 1.0, atol=1e-4)
    assert (a.flatten(1).argmax(1) == 4 * 13 + 6).all()


def test_ncc_of_flat_windows_is_zero_and_multichannel_works():
    regions = torch.zeros(1, 3, 9, 9)
    templates = torch.rand(1, 3, 3, 3)
    assert (matching.ncc_maps(regions, templates) == 0).all()
    regions = torch.rand(2, 3, 12, 12)
    out = matching.ncc_maps(regions, regions[:, :, 2:7, 3:8].clone())
    np.testing.assert_allclose(out[:, 2, 3].numpy(), 1.0, atol=1e-4)


@given(st.floats(0.2, 0.8), st.floats(0.2, 0.8))
def test_subpixel_argmax_recovers_a_parabola_peak(fx, fy):
    ys, xs = torch.meshgrid(torch.arange(15.0), torch.arange(17.0), indexing="ij")
    cx, cy = 8 + fx - 0.5, 6 + fy - 0.5
    scores = -((xs - cx) ** 2 + (ys - cy) ** 2)
    pts, vals = matching.subpixel_argmax(scores[None].double())
    np.testing.assert_allclose(pts[0].numpy(), [cx, cy], atol=1e-6)
    scores[0, 0] = float("-inf")
    pts, _ = matching.subpixel_argmax(scores[None].double())
    np.testing.assert_allclose(pts[0].numpy(), [cx, cy], atol=1e-6)


@given(st.floats(-np.pi, np.pi), st.floats(0.5, 2.0), finite, finite, st.sampled_from(["similarity", "affine"]))
def test_fit_transform_recovers_a_similarity(angle, scale, tx, ty, kind):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (10, 2))
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ a.T + [tx, ty]
    fa, ft = matching.fit_transform(src, dst, kind=kind)
    np.testing.assert_allclose(fa, a, atol=1e-6)
    np.testing.assert_allclose(ft, [tx, ty], atol=1e-5)


def test_fit_transform_affine_recovers_shear_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 50, (6, 2))
    a = np.array([[1.1, 0.3], [-0.1, 0.8]])
    fa, ft = matching.fit_transform(src, src @ a.T + [2, -3], kind="affine")
    np.testing.assert_allclose(fa, a, atol=1e-8)
    with pytest.raises(ValueError, match="kind"):
        matching.fit_transform(src, src, kind="projective")
    with pytest.raises(ValueError, match="positive weight"):
        matching.fit_transform(src, src, weights=np.zeros(6))


@given(st.integers(0, 10_000), st.integers(1, 5))
@settings(deadline=None, max_examples=25)
def test_robust_transform_ignores_outliers(seed, n_out):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 200, (19, 2))
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2)
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ a.T + rng.uniform(-30, 30, 2)
    dst_noisy = dst + rng.normal(0, 0.5, dst.shape)
    bad = rng.choice(19, n_out, replace=False)
    dst_noisy[bad] += rng.uniform(60, 150, (n_out, 2)) * rng.choice([-1, 1], (n_out, 2))
    tr, inliers = matching.robust_transform(src, dst_noisy, threshold=10)
    assert not inliers[bad].any()
    assert inliers.sum() >= 19 - n_out - 1
    np.testing.assert_allclose(matching.apply_transform(src, tr), dst, atol=2.0)
