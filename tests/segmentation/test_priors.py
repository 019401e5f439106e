"""Shape priors: validation, zooms, and the adversarial term of the training engine."""

import numpy as np
import pytest
import torch

from skuld.engine import Step
from skuld.nn.shape_prior import PriorSampler, ShapeDiscriminator
from skuld.nn.views import ViewConfig, make_views
from skuld.segmentation import ShapePriorTerm, check_priors, prior_zooms


def test_discriminator_has_a_real_slope_and_learns_to_separate():
    d = ShapeDiscriminator(slope=0.2)
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, torch.nn.LeakyReLU))
    prior = np.zeros((64, 64), bool)
    prior[:, 30:34] = True
    term = ShapePriorTerm(PriorSampler([prior], [1.0]), learning_rate=5e-3, seed=0)
    fake = torch.full((8, 1, 32, 32), 0.5)  # uniform grey maps: easy to tell from bars
    step = Step(0, "ld", 1e-3, torch.Generator(), torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):  # what the engine does with the term's second player
        g_loss = term.generator_loss(fake)
        d_loss = term.auxiliary_loss(step)
        term.optimizer.zero_grad()
        d_loss.backward()
        term.optimizer.step()
        losses.append(float(d_loss.detach()))
    assert losses[-1] < losses[0]
    assert float(term.generator_loss(fake)) > float(g_loss) - 1e-6  # the fake looks ever less real
    term.auxiliary_loss(step)  # takes the maps the generator loss saw
    assert term.auxiliary_loss(step) is None  # none since: nothing to learn from


def test_generator_loss_does_not_train_the_discriminator():
    prior = np.ones((32, 32), bool)
    prior[:, :16] = False
    term = ShapePriorTerm(PriorSampler([prior], [1.0]), seed=0)
    a0 = torch.rand(2, 1, 32, 32, requires_grad=True)
    term.generator_loss(a0).backward()
    assert a0.grad is not None and a0.grad.abs().sum() > 0
    assert all(p.grad is None for p in term.discriminator.parameters())


def test_the_term_adds_nothing_in_the_warm_up_and_reads_the_cluster_maps_after_it():
    prior = np.zeros((64, 64), bool)
    prior[:, 30:34] = True
    term = ShapePriorTerm(PriorSampler([prior], [1.0]), seed=0, crop_size=32)
    step = Step(0, "pd", 1e-3, torch.Generator(), torch.Generator().manual_seed(0))
    assert term.loss({"clusters": None}, step) is None
    views = make_views(torch.rand(1, 2, 1, 32, 32), ViewConfig(rot90=False))
    clusters = torch.softmax(torch.rand(4, 3, 32, 32), dim=1)
    loss = term.loss({"clusters": clusters, "views": views}, step)
    assert loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, term.generator_loss(clusters[:, :1], images=views.images[:4]))


def test_state_round_trip_restores_the_discriminator():
    prior = np.zeros((64, 64), bool)
    prior[:, 30:34] = True
    a = ShapePriorTerm(PriorSampler([prior], [1.0]), seed=0)
    b = ShapePriorTerm(PriorSampler([prior], [1.0]), seed=5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(a.discriminator.eval()(x), b.discriminator.eval()(x))


def test_priors_are_validated_by_name():
    with pytest.raises(ValueError, match="requires y"):
        check_priors(None)
    with pytest.raises(ValueError, match="wrap it in a list"):
        check_priors(np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="at least 16 x 16"):
        check_priors([np.ones((8, 40), bool)])
    m = np.zeros((20, 30), np.uint8)
    m[5:9] = 255
    (mask,) = check_priors([m])
    assert mask.dtype == bool and mask.sum() == 4 * 30


def test_prior_zooms_by_frame_and_by_width():
    tube = np.zeros((100, 200), bool)
    tube[:, 10:14] = True
    assert prior_zooms([tube], "frame", 50) == [0.5]
    assert prior_zooms([tube], 8.0, 50) == [2.0]
