import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skuld.metrics import dice, mean_radial_error, radial_errors, successful_detection_rate

points = arrays(np.float64, (3, 4, 2), elements=st.floats(-500, 500))


@given(p=points, t=points, shift=st.tuples(st.floats(-100, 100), st.floats(-100, 100)))
@settings(max_examples=50, deadline=None)
def test_radial_error_is_a_translation_invariant_distance(p, t, shift):
    e = radial_errors(p, t)
    assert e.shape == (3, 4) and (e >= 0).all()
    np.testing.assert_allclose(radial_errors(p + shift, t + shift), e, atol=1e-6)
    np.testing.assert_allclose(radial_errors(t, p), e)
    assert np.allclose(radial_errors(p, p), 0)


def test_spacing_scales_to_millimetres_and_nan_is_ignored():
    p = np.array([[[0.0, 0.0], [np.nan, 1.0], [3.0, 4.0]]])
    t = np.zeros((1, 3, 2))
    assert mean_radial_error(p, t) == pytest.approx(2.5)  # (0 + 5) / 2, the NaN point left out
    assert mean_radial_error(p, t, spacing=0.1) == pytest.approx(0.25)
    assert radial_errors(p, t, spacing=(1.0, 0.0))[0, 2] == pytest.approx(3.0)
    assert successful_detection_rate(p, t, radii=(1, 5)) == {1.0: 0.5, 5.0: 1.0}
    with pytest.raises(ValueError, match="missing"):
        mean_radial_error(np.full((1, 2), np.nan), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        radial_errors(np.zeros((2, 3)), np.zeros((2, 3)))


def test_dice():
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a[0], b[0]) == pytest.approx(0.5)
    assert dice(a, b) == pytest.approx((0.5 + 1.0) / 2)  # both empty counts as 1
    assert dice([a[0], np.ones((2, 3), bool)], [a[0], np.ones((2, 3), bool)]) == 1.0
    with pytest.raises(ValueError, match="differ"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))


def test_dice_inside_a_region():
    pred = np.zeros((4, 4), bool)
    true = np.zeros((4, 4), bool)
    pred[0, :2] = True  # right inside the region
    true[0, :2] = True
    pred[3, 3] = True  # wrong, but outside the region
    region = np.ones((4, 4), bool)
    region[3, 3] = False
    assert dice(pred, true) < 1
    assert dice(pred, true, region) == 1.0
    assert dice([pred, pred], [true, true], [region, region]) == 1.0
    with pytest.raises(ValueError, match="region"):
        dice(pred, true, region[:2])
