"""The matching stages as plain functions, on descriptor maps made to order."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from skuld.landmarks import (
    ImageFeatures,
    MatchConfig,
    check_landmarks,
    coarse_points,
    enforce_shape,
    fixed_mask,
    frame_search,
    locate,
    make_template,
    per_level,
    refine,
    round_trip_error,
    similarity_maps,
)

H, W = 48, 64
MARKS = np.array([[8.0, 10.0], [50.0, 8.0], [12.0, 38.0], [54.0, 40.0], [30.0, 24.0]])
NO_REFINE = dict(refine_scales=(), refine_patch=(), refine_radius=())


def random_maps(seed=0, c=16):
    return F.normalize(torch.randn(c, H, W, generator=torch.Generator().manual_seed(seed)), dim=0)


def features(maps, image=None, frame=None):
    pyramid = {} if image is None else {1: image}
    return ImageFeatures((H, W), (H, W), [maps], pyramid, frame)


def shifted(maps, dx, dy):
    """The same maps with the content moved by (dx, dy) pixels (wrapping around)."""
    return torch.roll(maps, shifts=(dy, dx), dims=(1, 2))


def test_a_moved_image_is_matched_where_its_content_went():
    template = make_template(features(random_maps()), MARKS)
    query = features(shifted(random_maps(), 3, -2))
    cfg = MatchConfig(np.zeros(5, bool), **NO_REFINE)
    np.testing.assert_allclose(locate(query, [template], cfg).points, MARKS + [3, -2], atol=0.5)


def test_the_shape_window_keeps_a_far_look_alike_out():
    """Landmark 4's descriptor also stands, stronger, far away: searched in the whole image the
    look-alike wins; within search_radius of where the other landmarks put it, it does not."""
    maps = random_maps()
    template = make_template(features(maps), MARKS)
    query_maps = maps.clone()
    query_maps[:, 44, 6] = template.descriptors[0][4]  # a perfect look-alike at (6, 44)
    query_maps[:, 23:26, 29:32] = F.normalize(query_maps[:, 23:26, 29:32] + 0.6 * random_maps(5)[:, :3, :3], dim=0)
    query = features(query_maps)
    sims = similarity_maps(query, [template])
    anywhere, _ = coarse_points(query, [template], sims, MatchConfig(np.zeros(5, bool), search_radius=None))
    windowed, _ = coarse_points(query, [template], sims, MatchConfig(np.zeros(5, bool), search_radius=0.1))
    np.testing.assert_allclose(anywhere[4], [6, 44], atol=0.5)
    np.testing.assert_allclose(windowed[4], [30, 24], atol=0.5)


def test_refinement_pulls_an_estimate_onto_the_correlation_peak():
    image = torch.rand(1, H, W, generator=torch.Generator().manual_seed(1))
    f = features(torch.ones(1, H, W), image)
    template = make_template(f, MARKS)
    cfg = MatchConfig(np.zeros(5, bool), refine_scales=(1,), refine_patch=(11,), refine_radius=(4,), coarse_weight=0)
    pts, conf = refine(f, MARKS + [[3, -2], [-4, 1], [2, 2], [0, -3], [1, 0]], [template], similarity_maps(f, [template]),
                       (1,), cfg)
    np.testing.assert_allclose(pts, MARKS, atol=0.3)
    assert (conf > 0.8).all()  # the patch is resampled in the geometry fitted to the (moved) estimates


def test_the_shape_check_replaces_only_the_outlier():
    f = features(torch.ones(1, H, W))
    template = make_template(f, MARKS)
    found = MARKS.copy()
    found[2] += [9, -7]
    pts, conf = enforce_shape(f, found, np.full(5, 0.8), [template], None, MatchConfig(np.zeros(5, bool), **NO_REFINE))
    np.testing.assert_allclose(pts, MARKS, atol=1e-6)
    assert conf.tolist() == [0.8, 0.8, 0.0, 0.8, 0.8]


def test_fixed_landmarks_are_searched_in_the_frame_not_with_the_anatomy():
    frame = torch.rand(1, H, W, generator=torch.Generator().manual_seed(2))
    template = make_template(features(random_maps(), frame=frame), MARKS)
    # The anatomy moves by (5, 3); the device part at landmark 1 stays put in the frame.
    query = features(shifted(random_maps(), 5, 3), frame=frame)
    fixed = np.array([False, True, False, False, False])
    cfg = MatchConfig(fixed, frame_patch=9, **NO_REFINE)
    pts, conf = frame_search(query, [template], cfg)
    np.testing.assert_allclose(pts[1], MARKS[1], atol=0.3)
    assert np.isnan(pts[[0, 2, 3, 4]]).all() and conf[1] > 0.99
    located = locate(query, [template], cfg).points
    np.testing.assert_allclose(located[1], MARKS[1], atol=0.3)
    np.testing.assert_allclose(located[fixed == 0], MARKS[fixed == 0] + [5, 3], atol=0.5)


def test_the_median_of_template_votes_outvotes_one_wrong_template():
    maps = random_maps()
    f = features(maps)
    good = make_template(f, MARKS)
    wrong = MARKS.copy()
    wrong[0] = [40.0, 30.0]  # one template annotated landmark 0 elsewhere
    cfg = MatchConfig(np.zeros(5, bool), **NO_REFINE)
    votes = locate(f, [good, make_template(f, wrong), good], cfg)
    np.testing.assert_allclose(votes.points, MARKS, atol=0.5)
    assert votes.similarity is None and locate(f, [good], cfg, return_similarity=True).similarity.shape == (5, H, W)


def test_missing_landmarks_do_not_vote_and_round_trips_of_a_template_are_exact():
    f = features(random_maps())
    partial = MARKS.copy()
    partial[3] = np.nan
    cfg = MatchConfig(np.zeros(5, bool), **NO_REFINE)
    found = locate(f, [make_template(f, partial), make_template(f, MARKS)], cfg).points
    np.testing.assert_allclose(found, MARKS, atol=0.5)
    assert round_trip_error(make_template(f, MARKS), [make_template(f, MARKS)], [MARKS], cfg) < 0.5


def test_settings_are_validated_by_name():
    assert per_level(7, 2, "refine_radius") == (7, 7)
    with pytest.raises(ValueError, match="refine_patch must be an int or one int per refine_scales level .3."):
        per_level([48, 32], 3, "refine_patch")
    with pytest.raises(ValueError, match=r"fixed_landmarks \[5\] are not landmark indices \(0 to 4"):
        fixed_mask([5], 5)
    with pytest.raises(ValueError, match="list of landmark indices"):
        fixed_mask([1.5], 5)
    with pytest.raises(ValueError, match=r"landmarks \[1\] of t lie outside the 48 x 64 image"):
        check_landmarks([[1, 1], [70, 1]], (H, W), "t")
    with pytest.warns(UserWarning, match=r"landmarks \[0\] are NaN"):
        check_landmarks([[np.nan, np.nan], [3, 3]], (H, W), "t")
