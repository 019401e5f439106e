import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from skuld.nn import (
    area_balance_loss,
    binary_entropy,
    hypersphere_mixup_targets,
    instance_spreading_loss,
    patch_features,
    patch_weights,
    region_discrimination_loss,
    region_features,
)
from skuld.nn.losses import region_loss_bounds

seeds = st.integers(0, 2**31 - 1)


def unit(shape, seed, dim=-1):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim)


def soft_maps(n, k, h, w, seed, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.sigmoid(sharp * torch.randn(n, k, h, w, generator=g, dtype=torch.float64))
    return a / a.sum(1, keepdim=True)


@given(seed=seeds, grid=st.sampled_from([1, 2, 4]), sigma=st.sampled_from([None, 0.25, 1.0]))
@settings(max_examples=25, deadline=None)
def test_patch_features_are_unit_vectors(seed, grid, sigma):
    z = unit((3, 6, 8, 8), seed, dim=1)
    u = patch_features(z, grid, sigma)
    assert u.shape == (3, 6, grid, grid)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3, grid, grid))


def test_flat_patch_pooling_is_adaptive_average_pooling():
    z = unit((2, 4, 16, 16), 0, dim=1).float()
    torch.testing.assert_close(patch_features(z, 4), F.normalize(F.adaptive_avg_pool2d(z, 4), dim=1))


@given(cell=st.integers(1, 40), sigma=st.sampled_from([None, 0.1, 0.5, 3.0]))
@settings(max_examples=30, deadline=None)
def test_patch_weights_sum_to_one_and_peak_at_the_centre(cell, sigma):
    w = patch_weights(cell, sigma)
    assert w.shape == (cell, cell)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-5)
    c = (cell - 1) // 2
    assert float(w[c, c]) >= float(w.max()) - 1e-7


def test_gaussian_pooling_is_dominated_by_the_centre():
    z = torch.zeros(1, 2, 16, 16)
    z[:, 0] = 1.0
    z[:, 0, 7:9, 7:9] = 0.0
    z[:, 1, 7:9, 7:9] = 1.0  # only the 2x2 centre points along axis 1
    flat = patch_features(z, 1)[0, :, 0, 0]
    centred = patch_features(z, 1, sigma=0.05)[0, :, 0, 0]
    assert flat[0] > flat[1] and centred[1] > centred[0]


@given(seed=seeds, m=st.integers(2, 12), d=st.integers(2, 8), tau=st.sampled_from([0.05, 0.1, 0.5]))
@settings(max_examples=40, deadline=None)
def test_instance_loss_is_non_negative_and_symmetric_under_permutations(seed, m, d, tau):
    a, p = unit((m, d), seed), unit((m, d), seed + 1)
    loss = instance_spreading_loss(a, p, tau)
    assert torch.isfinite(loss) and loss >= 0
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    # Equal up to float32 rounding: when one negative holds nearly all of Z_i, log(1 - Q_ij)
    # is the log of a tiny difference of float32 numbers (seen: 1.3e-4 relative at tau 0.05).
    torch.testing.assert_close(instance_spreading_loss(a[perm], p[perm], tau), loss, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(instance_spreading_loss(p, a, tau), loss, rtol=1e-3, atol=1e-5)


def test_instance_loss_matches_its_definition():
    a, p = unit((3, 4), 1), unit((3, 4), 2)
    v = torch.cat([a, p])
    s = torch.exp(v @ v.T / 0.1)
    total = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        z = sum(s[i, j] for j in range(6) if j != i)
        total += math.log(s[i, pos] / z) + sum(math.log(1 - s[i, j] / z) for j in range(6) if j not in (i, pos))
    assert math.isclose(float(instance_spreading_loss(a, p, 0.1)), -total / 6, rel_tol=1e-5)  # computed in float32


def test_instance_loss_prefers_aligned_pairs():
    a = unit((8, 16), 3)
    assert instance_spreading_loss(a, a, 0.1) < instance_spreading_loss(a, unit((8, 16), 4), 0.1)


def test_mixup_targets_are_detached_unit_vectors_between_the_two():
    u1 = unit((2, 4, 2, 2), 0, dim=1).requires_grad_()
    u2 = unit((2, 4, 2, 2), 1, dim=1)
    t = hypersphere_mixup_targets(u1, u2, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert not t.requires_grad
    torch.testing.assert_close(t[0], u1[0].detach())
    torch.testing.assert_close(t[1], u2[1])


@given(seed=seeds, n=st.integers(1, 4), k=st.integers(2, 5), d=st.integers(2, 6), hw=st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_region_features_equal_the_naive_broadcast(seed, n, k, d, hw):
    a, z = soft_maps(n, k, hw, hw + 1, seed), unit((n, d, hw, hw + 1), seed + 1, dim=1)
    naive = F.normalize((a[:, :, None] * z[:, None]).sum(dim=(-1, -2)), dim=2)
    torch.testing.assert_close(region_features(a, z), naive.float())


@given(seed=seeds, n=st.integers(1, 5), k=st.integers(2, 6), tau=st.sampled_from([0.1, 0.2, 1.0]),
       sharp=st.sampled_from([0.1, 1.0, 20.0]))
@settings(max_examples=40, deadline=None)
def test_region_loss_bounds_and_batch_permutation_invariance(seed, n, k, tau, sharp):
    a, z = soft_maps(n, k, 5, 5, seed, sharp), unit((n, 4, 5, 5), seed + 1, dim=1)
    loss = region_discrimination_loss(a, z, tau)
    lo, hi = region_loss_bounds(k, tau)
    assert lo - 1e-5 <= float(loss) <= hi + 1e-5
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(region_discrimination_loss(a[perm], z[perm], tau), loss)


def test_region_loss_gradient_reaches_both_branches():
    a_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_raw = torch.randn(2, 5, 4, 4, requires_grad=True)
    a = torch.sigmoid(a_logits)
    a = a / a.sum(1, keepdim=True)
    region_discrimination_loss(a, F.normalize(z_raw, dim=1)).backward()
    assert a_logits.grad.abs().sum() > 0 and z_raw.grad.abs().sum() > 0


@given(seed=seeds)
@settings(max_examples=20, deadline=None)
def test_binary_entropy_is_in_zero_one(seed):
    h = float(binary_entropy(soft_maps(2, 3, 4, 4, seed)))
    assert 0 <= h <= 1


def test_binary_entropy_extremes():
    assert float(binary_entropy(torch.full((4,), 0.5))) == np.float32(1.0)
    assert float(binary_entropy(torch.tensor([0.0, 1.0]))) < 1e-5


def test_area_balance_is_zero_when_balanced_and_k_minus_1_when_collapsed():
    k = 4
    balanced = torch.full((2, k, 3, 3), 1 / k)
    collapsed = torch.zeros(2, k, 3, 3)
    collapsed[:, 0] = 1
    assert float(area_balance_loss(balanced)) < 1e-7
    assert math.isclose(float(area_balance_loss(collapsed)), k - 1, rel_tol=1e-6)
