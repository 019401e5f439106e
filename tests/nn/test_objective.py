import pytest
import torch

from benchmarks.naive_ld import naive_objective
from skuld.nn import LDNet, ObjectiveConfig, ViewConfig, ld_objective, make_views
from skuld.preprocessing import normalize


def batch(channels=3, b=2, s=32, seed=0):
    p = torch.rand(b, 2, channels, s, s, generator=torch.Generator().manual_seed(seed))
    v = make_views(p, ViewConfig(), torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))
    return normalize(v.images, (0.5,) * channels, (0.5,) * channels), v


@pytest.mark.parametrize("area", [0.0, 1.0])
def test_objective_equals_the_naive_published_formulation(area):
    torch.manual_seed(0)
    net = LDNet(3, embedding_dim=8, n_clusters=4, width=0.5)
    x, v = batch()
    cfg = ObjectiveConfig(patch_grid=4, area_weight=area)
    loss, parts = ld_objective(net, x, v, "ld", cfg)
    naive = naive_objective(net, x, v, "ld", cfg)
    torch.testing.assert_close(loss, naive, rtol=1e-4, atol=1e-4)
    assert set(parts) == {"patch", "mixup", "region", "entropy"} | ({"area"} if area else set())


def test_warm_up_stage_does_not_train_the_clustering_head():
    net = LDNet(1, embedding_dim=8, n_clusters=4, width=0.5)
    x, v = batch(channels=1)
    loss, parts = ld_objective(net, x, v, "pd", ObjectiveConfig(patch_grid=4))
    loss.backward()
    assert set(parts) == {"patch", "mixup"}
    assert all(p.grad is None for p in net.cluster_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.embedding_head.parameters())


def test_ld_stage_trains_both_heads():
    net = LDNet(1, embedding_dim=8, n_clusters=4, width=0.5)
    x, v = batch(channels=1)
    ld_objective(net, x, v, "ld", ObjectiveConfig(patch_grid=4))[0].backward()
    for head in (net.cluster_head, net.embedding_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_unknown_stage_is_named():
    net = LDNet(1, embedding_dim=8, n_clusters=4, width=0.5)
    x, v = batch(channels=1)
    with pytest.raises(ValueError, match="stage"):
        ld_objective(net, x, v, "xx", ObjectiveConfig(patch_grid=4))
