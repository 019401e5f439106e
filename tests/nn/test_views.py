import torch

from skuld.nn import ViewConfig, color_jitter, make_views, undo_rot90

NO_PHOTOMETRY = dict(brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0, view_rotation=0)


def pairs(b=2, c=3, s=32, seed=0):
    return torch.rand(b, 2, c, s, s, generator=torch.Generator().manual_seed(seed))


def gens(seed=0):
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def test_order_and_shapes():
    p = pairs()
    v = make_views(p, ViewConfig(), *gens())
    assert v.images.shape == (10, 3, 32, 32)
    assert len(v.rot90_k) == 4 and v.mix_lambda.shape == (2,)
    assert v.n_items == 2
    assert (v.images >= 0).all() and (v.images <= 1).all()
    assert make_views(p, ViewConfig(mixup=None), *gens()).images.shape == (8, 3, 32, 32)


def test_identity_config_returns_the_crops():
    p = pairs()
    cfg = ViewConfig(flips=False, rotation=0, rot90=False, mixup=None, **NO_PHOTOMETRY)
    v = make_views(p, cfg, *gens())
    torch.testing.assert_close(v.images[:2], p[:, 0])  # view 1 of I1
    torch.testing.assert_close(v.images[2:4], p[:, 1])  # view 1 of I2
    torch.testing.assert_close(v.images[4:8], v.images[:4])


def test_second_view_grid_matches_first_after_undoing_quarter_turns():
    cfg = ViewConfig(rotation=180, rot90=True, mixup=None, **NO_PHOTOMETRY)
    for seed in range(5):
        v = make_views(pairs(seed=seed), cfg, *gens(seed))
        torch.testing.assert_close(undo_rot90(v.images[4:8], v.rot90_k), v.images[:4])


def test_flips_are_real_mirrors():
    cfg = ViewConfig(rotation=0, rot90=False, mixup=None, **NO_PHOTOMETRY)
    p = pairs(b=8, s=16)
    v = make_views(p, cfg, *gens(3))
    originals = p.transpose(0, 1).reshape(16, 3, 16, 16)
    kinds = set()
    for out, src in zip(v.images[:16], originals):
        for name, t in {"none": src, "h": src.flip(-1), "v": src.flip(-2), "hv": src.flip(-1, -2)}.items():
            if torch.allclose(out, t, atol=1e-5):
                kinds.add(name)
                break
        else:
            raise AssertionError("a view is neither the crop nor a mirror of it")
    assert {"h", "v"} & kinds  # mirrors, not only 180-degree turns


def test_mixup_is_the_weighted_sum_of_first_views():
    v = make_views(pairs(), ViewConfig(), *gens(1))
    lam = v.mix_lambda.view(2, 1, 1, 1)
    torch.testing.assert_close(v.images[8:], lam * v.images[:2] + (1 - lam) * v.images[2:4])
    assert ((v.mix_lambda >= 0.2) & (v.mix_lambda <= 0.8)).all()


def test_same_generators_same_views_and_gray_input_works():
    p = pairs(c=1)
    a = make_views(p, ViewConfig(), *gens(7)).images
    b = make_views(p, ViewConfig(), *gens(7)).images
    assert a.shape[1] == 1 and torch.equal(a, b)
    assert not torch.equal(a, make_views(p, ViewConfig(), *gens(8)).images)


def test_color_jitter_keeps_range_and_grayscale_makes_channels_equal():
    x = torch.rand(6, 3, 8, 8)
    y = color_jitter(x, ViewConfig(grayscale_p=1.0), torch.Generator().manual_seed(0))
    assert (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(y[:, 0], y[:, 1])


def test_bad_pairs_shape_is_named():
    import pytest

    with pytest.raises(ValueError, match=r"\(B, 2, C, S, S\)"):
        make_views(torch.rand(2, 3, 8, 8), ViewConfig())
