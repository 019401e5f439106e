"""DICOM files read one file at a time, as displayed; the readers never fail in an unnamed way."""

import io as _io

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skuld.io import ImageCollection, ImageReadError, read_image, read_pixels

pydicom = pytest.importorskip("pydicom", reason='DICOM reading needs the "dicom" extra: pip install -e ".[dicom]"')
from pydicom import Dataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402


def write_dicom(path, pixels, *, bits_stored=None, signed=None, slope=None, intercept=None,
                photometric="MONOCHROME2", series=None, frames=None):
    """A minimal but standard-conforming single-image DICOM file written by pydicom."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed if signed is not None else pixels.dtype.kind == "i")
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_one_file_of_a_folder_of_two_series_reads_its_own_pixels(tmp_path):
    a, b = np.full((40, 40), 100, np.uint16), np.full((40, 40), 3000, np.uint16)
    series_a, series_b = generate_uid(), generate_uid()
    write_dicom(tmp_path / "a1.dcm", a, series=series_a, bits_stored=12)
    write_dicom(tmp_path / "b1.dcm", b, series=series_b, bits_stored=12)
    write_dicom(tmp_path / "a2.dcm", a + 1, series=series_a, bits_stored=12)
    assert read_image(tmp_path / "b1.dcm")[0, 0] == 3000
    assert read_image(tmp_path / "a2.dcm")[0, 0] == 101
    images = ImageCollection(tmp_path)                 # the folder: three images, each its own
    assert [round(float(images[i][0, 0, 0]) * 4095) for i in range(3)] == [100, 101, 3000]


def test_signed_ct_with_rescale_reads_in_hounsfield_units_and_windows(tmp_path):
    stored = np.array([[-2000, 0], [1064, 2047]] * 20, np.int16).repeat(20, axis=1)   # 40 x 40
    path = write_dicom(tmp_path / "ct.dcm", stored, bits_stored=12, slope=1, intercept=-1024)
    hu, value_range = read_pixels(path)
    assert hu.dtype == np.float32 and hu[0, 0] == -3024 and hu[1, 0] == 40
    assert value_range == (-3072.0, 1023.0)                         # 12-bit signed, through the LUT
    full = ImageCollection([path])[0][..., 0]
    np.testing.assert_allclose(full[0, 0], (-3024 + 3072) / 4095, atol=1e-6)
    window = ImageCollection([path], intensity_range=(-160, 240))[0][..., 0]
    assert window[0, 0] == 0 and window[1, 0] == pytest.approx(0.5) and window.max() == 1


def test_monochrome1_is_inverted_so_that_bright_is_white(tmp_path):
    stored = np.zeros((40, 40), np.uint16)
    stored[:20] = 4095
    mono1 = ImageCollection([write_dicom(tmp_path / "m1.dcm", stored, bits_stored=12, photometric="MONOCHROME1")])
    mono2 = ImageCollection([write_dicom(tmp_path / "m2.dcm", stored, bits_stored=12)])
    np.testing.assert_allclose(mono1[0], 1 - mono2[0], atol=1e-6)


def test_multi_frame_files_are_refused_by_name(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.zeros((3, 40, 40), np.uint16), frames=3)
    with pytest.raises(ImageReadError, match=r"cine\.dcm.*multi-frame DICOM file \(3 frames\)"):
        read_image(path)


def test_shape_comes_from_the_dicom_header(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((48, 36), np.uint16))
    images = ImageCollection([path], n_channels=1)
    monkeypatch.setattr("skuld.io.read_pixels", lambda *a: pytest.fail("decoded the pixels"))
    assert images.shape(0) == (48, 36)


def test_a_missing_reader_is_named(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((40, 40), np.uint16))
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)
    with pytest.raises(ImageReadError, match=r"x\.dcm.*pip install 'skuld\[dicom\]'"):
        read_image(path)


def _samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    png, tif = _io.BytesIO(), _io.BytesIO()
    iio.imwrite(png, rng.integers(0, 255, (16, 16), dtype=np.uint8), extension=".png")
    iio.imwrite(tif, rng.integers(0, 4095, (16, 16), dtype=np.uint16), extension=".tif")
    dcm = write_dicom(folder / "s.dcm", rng.integers(0, 4095, (16, 16)).astype(np.uint16), bits_stored=12)
    return {".png": png.getvalue(), ".tif": tif.getvalue(), ".dcm": dcm.read_bytes()}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return _samples(tmp_path_factory)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom describes what it repairs in damaged files
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([".png", ".tif", ".dcm"]), data=st.data())
def test_corrupted_files_give_the_image_or_a_named_read_error(samples, tmp_path, kind, data):
    raw = bytearray(samples[kind])
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / f"fuzz{kind}"
    path.write_bytes(bytes(raw))
    try:
        images = ImageCollection([path])
        img = images[0]
    except ImageReadError as err:
        assert str(path) in str(err)
    except ValueError as err:                          # decoded, but not an image skuld takes
        assert "image file" in str(err) and str(path) in str(err)
    else:
        assert img.dtype == np.float32 and img.ndim == 3 and np.isfinite(img).all()
