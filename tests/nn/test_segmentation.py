"""Soft Dice loss, crops and augmentations of the supervised segmentation training."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld.nn.segmentation import IGNORE, augment, random_crops, segmentation_loss, soft_dice_loss


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), k=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_soft_dice_loss_lies_in_unit_interval(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, 8, 8, generator=g) * 3, 1)
    target = torch.randint(-1, k, (n, 8, 8), generator=g)
    loss = float(soft_dice_loss(probs, target))
    assert 0.0 <= loss <= 1.0


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_perfect_prediction_scores_zero_and_inverted_nearly_one(k, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (2, 16, 16), generator=g)
    onehot = torch.nn.functional.one_hot(target, k).permute(0, 3, 1, 2).float()
    assert float(soft_dice_loss(onehot, target)) == pytest.approx(0.0, abs=1e-6)
    if k == 2 and 0 < int(target.sum()) < target.numel():
        assert float(soft_dice_loss(1 - onehot, target)) > 0.9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_soft_dice_loss_ignores_marked_pixels_and_batch_order(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(3, 3, 8, 8, generator=g), 1)
    target = torch.randint(0, 3, (3, 8, 8), generator=g)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(soft_dice_loss(probs, target), soft_dice_loss(probs[perm], target[perm]))
    ignored = target.clone()
    ignored[:, :4] = IGNORE
    changed = probs.clone()
    changed[:, :, :4] = torch.softmax(torch.randn(3, 3, 4, 8, generator=g), 1)
    assert torch.allclose(soft_dice_loss(probs, ignored), soft_dice_loss(changed, ignored))


def test_loss_errors_and_bce_option():
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    assert float(segmentation_loss(logits, target, "dice+bce")) > float(segmentation_loss(logits, target, "dice"))
    with pytest.raises(ValueError, match="loss must be"):
        segmentation_loss(logits, target, "focal")
    with pytest.raises(ValueError, match="at least 2 classes"):
        soft_dice_loss(torch.ones(2, 1, 8, 8), target)
    with pytest.raises(ValueError, match="do not match"):
        soft_dice_loss(torch.ones(2, 2, 8, 8), target[:, :4])


def test_crops_pad_small_images_with_ignored_labels():
    g = torch.Generator().manual_seed(0)
    x, y = random_crops([torch.ones(1, 10, 40)], [torch.ones(10, 40, dtype=torch.long)], 16, 3, g)
    assert x.shape == (3, 1, 16, 16) and y.shape == (3, 16, 16)
    assert (y[:, 10:] == IGNORE).all() and (y[:, :10] == 1).all()
    assert (x[:, :, 10:] == 0).all()


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_augmentation_moves_images_and_labels_together(rotation):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (6, 32, 32))
    y = torch.nn.functional.max_pool2d(y[:, None].float(), 5, 1, 2)[:, 0].long()  # regions, not noise
    x = y[:, None].float().repeat(1, 2, 1, 1)
    xa, ya = augment(x.clone(), y.clone(), g, flips=True, rotation=rotation, intensity=0.0)
    agree = (xa[:, 0].round().long() == ya).float().mean()
    assert agree == 1.0 if rotation == 0 else agree > 0.97
    assert not torch.equal(ya, y)  # something happened


def test_intensity_jitter_changes_only_intensities():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    y = torch.randint(0, 2, (4, 16, 16))
    xa, ya = augment(x.clone(), y.clone(), g, flips=False, rotation=0.0, intensity=0.2)
    assert torch.equal(ya, y) and not torch.allclose(xa, x)
    corr = np.corrcoef(xa.flatten().numpy(), x.flatten().numpy())[0, 1]
    assert corr > 0.9
