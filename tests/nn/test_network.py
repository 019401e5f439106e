import pytest
import torch
from torch.nn import functional as F

from skuld.nn import LDNet, SegmentationUNet, VGGEncoder, count_parameters
from skuld.nn.network import l2_normalize


def test_default_parameter_count_is_about_1_43_million():
    # 0.92 M encoder (the paper's figure) + decoder + heads; the paper quotes about 1.43 M.
    assert count_parameters(VGGEncoder(3)) == 922_896
    n = count_parameters(LDNet(3))
    assert 1.40e6 < n < 1.47e6, n


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_of_every_output(channels):
    net = LDNet(channels, embedding_dim=32, n_clusters=16).eval()
    x = torch.rand(2, channels, 64, 96)
    feats = net.encoder(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 64, 96), (32, 32, 48), (64, 16, 24), (128, 8, 12), (128, 4, 6)]
    assert net.encoder.strides == (1, 2, 4, 8, 16)
    z, a = net(x)
    assert z.shape == (2, 32, 64, 96) and a.shape == (2, 16, 64, 96)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 64, 96))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 64, 96))
    assert (a >= 0).all()


def test_width_multiplier_scales_channels():
    enc = VGGEncoder(3, width=2.0)
    assert enc.out_channels == (32, 64, 128, 256, 256)
    assert LDNet(3, width=2.0)(torch.rand(1, 3, 32, 32))[0].shape == (1, 32, 32, 32)


def test_bad_sizes_and_channels_are_named():
    net = LDNet(3)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 3, 40, 48))
    with pytest.raises(ValueError, match="3 channel"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        LDNet(2)


def test_pretrained_encoder_weights_reach_the_unet():
    enc = VGGEncoder(1)
    unet = SegmentationUNet(n_classes=2, encoder=enc)
    for (k, v), (k2, v2) in zip(enc.state_dict().items(), unet.encoder.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert unet(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_l2_normalize_matches_autograd_normalize():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=1))


def test_memory_saving_gives_the_same_loss_gradients_and_running_stats():
    x = torch.rand(2, 1, 32, 32)
    results = []
    for saving in (False, True):
        torch.manual_seed(0)
        net = LDNet(1, embedding_dim=8, n_clusters=4, width=0.5).train()
        net.memory_saving = saving
        z, a = net(x)
        (z.square().mean() + (a * z[:, :4]).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters()])
        stats = torch.cat([b.flatten() for n, b in net.named_buffers() if "running" in n])
        results.append((z.detach(), grads, stats))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
