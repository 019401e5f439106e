"""What goes in is what the user meant: the intensity rules of skuld.io (docs/conventions.md)."""

import warnings

import numpy as np
import pytest

from skuld.io import ImageCollection, IntensityRangeWarning, check_intensity_range, to_float_image


def test_float_images_outside_unit_range_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"X\[0\] has float intensities from 0 to 255.*divide.*255.*intensity_range"):
        ImageCollection([np.linspace(0, 255, 64 * 64).reshape(64, 64)])
    with pytest.raises(ValueError, match="from -2.5"):
        to_float_image(np.full((4, 4), -2.5, np.float32))


def test_floats_a_little_outside_unit_range_from_resampling_are_kept():
    img = np.full((4, 4), 1.01, np.float32)
    img[0, 0] = -0.01
    assert np.array_equal(to_float_image(img)[..., 0], img)


def test_intensity_range_windows_any_numeric_dtype():
    hu = np.array([[-1024, -160], [40, 3071]], np.int16)       # signed CT data
    out = to_float_image(hu, intensity_range=(-160, 240))[..., 0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0], [0.5, 1]])
    np.testing.assert_allclose(to_float_image(np.array([[0.0, 255.0]]), intensity_range=(0, 255))[..., 0], [[0, 1]])


def test_twelve_bit_data_in_sixteen_bit_images_warns_once_per_collection():
    twelve = np.random.default_rng(0).integers(0, 4096, (3, 40, 40)).astype(np.uint16)
    with pytest.warns(IntensityRangeWarning, match=r"largest value is 40.*intensity_range=\(0, 4095\)") as record:
        ImageCollection(twelve)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = ImageCollection(twelve, intensity_range=(0, 4095))
        eight = ImageCollection((twelve >> 4).astype(np.uint8))
    # The same image in 12 and 8 bits reads alike once the range is said.
    assert np.abs(images[0] - eight[0]).max() < 1 / 255 + 1 / 4095
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageCollection(np.random.default_rng(0).integers(0, 60, (2, 8, 8)).astype(np.uint8))  # a dark 8-bit photo


@pytest.mark.parametrize("bad", [(1, 1), (2, 1), (0, np.inf), (0,), "wide", (np.nan, 1)])
def test_bad_intensity_ranges_are_named(bad):
    with pytest.raises((ValueError, TypeError), match="intensity_range"):
        check_intensity_range(bad)


def test_intensities_are_never_windowed_twice():
    hu = np.linspace(-1000, 1000, 64 * 64).reshape(64, 64)
    once = to_float_image(hu, intensity_range=(-160, 240))
    assert np.array_equal(to_float_image(once, intensity_range=(-160, 240)), once)


def test_an_encoder_keeps_its_intensity_range_for_every_later_input():
    from skuld import LocalDiscriminativeEncoder

    rng = np.random.default_rng(0)
    hu = [rng.integers(-1024, 2000, (48, 48)).astype(np.int16) for _ in range(2)]
    enc = LocalDiscriminativeEncoder(embedding_dim=4, n_clusters=2, width=0.125, max_iter=1, batch_size=1,
                                     crop_size=32, image_size=None, intensity_range=(-160, 240), random_state=0)
    with pytest.raises(ValueError, match="signed integer dtype int16: give intensity_range"):
        LocalDiscriminativeEncoder(max_iter=1).fit(hu)
    enc.fit(hu)
    assert enc.input_spec_.intensity_range == (-160.0, 240.0)
    windowed = [((h.astype(np.float32) + 160) / 400).clip(0, 1) for h in hu]
    np.testing.assert_allclose(enc.transform(hu)[0], enc.transform(windowed)[0], atol=1e-5)
