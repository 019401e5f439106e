"""Cross-image correspondence fine-tuning: splines, the loss, and what fine-tuning does."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld import LocalDiscriminativeEncoder, OneShotLandmarkLocator
from skuld.landmarks import (
    correspondence_loss,
    encoder_descriptor_maps,
    fine_tune_correspondence,
    sample_descriptors,
    thin_plate_spline,
)

from ..helpers import TINY, phantom, rotation

finite = st.floats(-5, 5, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(a=st.tuples(finite, finite, finite, finite).filter(lambda v: abs(v[0] * v[3] - v[1] * v[2]) > 0.1),
       t=st.tuples(finite, finite), seed=st.integers(0, 1000))
def test_the_spline_reproduces_affine_maps_and_passes_through_its_points(a, t, seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 100, (6, 2))
    m = np.array(a).reshape(2, 2)
    warp = thin_plate_spline(src, src @ m.T + t, smoothing=0.0)
    query = rng.uniform(-20, 120, (10, 2))
    np.testing.assert_allclose(warp(query), query @ m.T + t, atol=1e-6 * (1 + np.abs(query @ m.T).max()))
    bent = src @ m.T + t + rng.normal(0, 3, src.shape)
    np.testing.assert_allclose(thin_plate_spline(src, bent, smoothing=0.0)(src), bent, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), temperature=st.floats(0.05, 1.0))
def test_the_loss_is_non_negative_bounded_and_rotation_invariant(seed, n, temperature):
    g = torch.Generator().manual_seed(seed)
    da = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)
    db = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)
    pts = torch.rand(n, 2, generator=g) * 100
    loss = float(correspondence_loss(da, db, pts, temperature))
    # Cross-entropy over n classes with logits in [-1/T, 1/T]: at most log(n) + 2/T.
    assert 0 <= loss <= np.log(n) + 2 / temperature + 1e-5
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert float(correspondence_loss(da @ q, db @ q, pts, temperature)) == pytest.approx(loss, rel=1e-4, abs=1e-5)


def test_the_loss_prefers_matching_descriptors_and_skips_near_negatives():
    d = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    pts = torch.stack([torch.arange(16.0) * 10, torch.zeros(16)], 1)
    assert float(correspondence_loss(d, d, pts)) < float(correspondence_loss(d, d.roll(1, 0), pts))
    # Every other point within the exclusion radius: nothing to tell apart, zero loss.
    assert float(correspondence_loss(d, d.roll(1, 0), pts, exclusion=1000.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def pairs():
    """Phantoms moved by small rotations and shifts, with their true landmarks."""
    moves = [rotation(d, s, (d, -d)) for d, s in ((0, 1), (4, 1.05), (-4, 0.95), (7, 1), (-6, 1.1), (2, 0.9))]
    data = [phantom(m) for m in moves]
    return [img[..., None] for img, _ in data], [marks for _, marks in data]


@pytest.fixture(scope="module")
def encoder(pairs):
    return LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False}).fit(np.stack(pairs[0]))


def _held_out_loss(enc, pairs):
    """Correspondence loss of the encoder on images 0 and 1 at their true landmarks."""
    (a, b), (ma, mb) = pairs[0][:2], pairs[1][:2]
    model = enc.model_.eval()
    with torch.no_grad():
        maps = [encoder_descriptor_maps(model, torch.as_tensor(x).permute(2, 0, 1)[None] * 2 - 1, (2, 3, 4), 4.0)
                for x in (a, b)]
        return float(correspondence_loss(sample_descriptors(maps[0], ma), sample_descriptors(maps[1], mb), mb, exclusion=4.0))


def test_fine_tuning_pulls_corresponding_points_together_and_leaves_the_encoder_alone(encoder, pairs):
    before = {k: v.clone() for k, v in encoder.model_.state_dict().items()}
    tuned = fine_tune_correspondence(encoder, *pairs, steps=40, learning_rate=1e-3, points_per_pair=64,
                                     random_state=0)
    assert all(torch.equal(v, encoder.model_.state_dict()[k]) for k, v in before.items())
    assert tuned is not encoder and len(tuned.correspondence_losses_) == 40
    first, last = np.mean(tuned.correspondence_losses_[:5]), np.mean(tuned.correspondence_losses_[-5:])
    assert last < first, tuned.correspondence_losses_
    assert _held_out_loss(tuned, pairs) < _held_out_loss(encoder, pairs)
    # Only the encoder is trained; the decoder and heads are those of pretraining.
    for part in ("decoder", "embedding_head", "cluster_head"):
        tuned_part, original = getattr(tuned.model_, part).state_dict(), getattr(encoder.model_, part).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in tuned_part.items()), part
    one = np.stack(pairs[0][:1])
    assert tuned.transform(one).shape == encoder.transform(one).shape


def test_fine_tuning_is_deterministic(encoder, pairs):
    a = fine_tune_correspondence(encoder, *pairs, steps=3, points_per_pair=32, random_state=1)
    b = fine_tune_correspondence(encoder, *pairs, steps=3, points_per_pair=32, random_state=1)
    assert a.correspondence_losses_ == b.correspondence_losses_
    assert all(torch.equal(v, b.model_.state_dict()[k]) for k, v in a.model_.state_dict().items())


def test_fine_tuning_names_bad_input(encoder, pairs):
    images, marks = pairs
    with pytest.raises(ValueError, match="6 images but 5 landmark arrays"):
        fine_tune_correspondence(encoder, images, marks[:5], steps=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        fine_tune_correspondence(encoder, images[:1], marks[:1], steps=1)
    two = [m.copy() for m in marks]
    for m in two:
        m[2:] = np.nan  # two landmarks left: no spline
    with pytest.raises(ValueError, match="shares 3 landmarks"):
        fine_tune_correspondence(encoder, images, two, steps=1)


def test_the_locator_fine_tunes_a_copy_only_with_unlabelled_images(encoder, pairs):
    images, marks = pairs
    kw = dict(encoder=encoder, refine_patch=15, refine_radius=6, n_pseudo_templates=0, random_state=0)
    alone = OneShotLandmarkLocator(**kw, correspondence_steps=5).fit(images[0], marks[0])
    assert alone.encoder_ is encoder  # nothing to fine-tune on
    off = OneShotLandmarkLocator(**kw, correspondence_steps=0).fit(images[0], marks[0], X_unlabeled=images[1:])
    assert off.encoder_ is encoder
    on = OneShotLandmarkLocator(**kw, correspondence_steps=5).fit(images[0], marks[0], X_unlabeled=images[1:])
    assert on.encoder_ is not encoder and len(on.encoder_.correspondence_losses_) == 5
    assert not hasattr(encoder, "correspondence_losses_")
    q, mq = phantom(rotation(1, 1, (-3, 3)))
    assert np.median(np.linalg.norm(on.predict(q[None])[0] - mq, axis=-1)) < 2


def test_the_locator_skips_fine_tuning_with_fewer_than_three_landmarks(encoder, pairs):
    images, marks = pairs
    loc = OneShotLandmarkLocator(encoder=encoder, refine_patch=15, refine_radius=6, n_pseudo_templates=0,
                                 correspondence_steps=5)
    with pytest.warns(UserWarning, match="at least 3 landmarks, the templates have 2: skipped"):
        loc.fit(images[0], marks[0][:2], X_unlabeled=images[1:])
    assert loc.encoder_ is encoder
