"""DICOM files, one file at a time, through pydicom (the ``dicom`` extra).

What a DICOM file stores is not what it shows: stored values go through the modality LUT
(``RescaleSlope``/``RescaleIntercept``, or a Modality LUT Sequence) to physical units such as
Hounsfield units, they may be signed, and ``MONOCHROME1`` images show low values as white. This
module turns a file into the values it means, bright as displayed, together with the range those
values can take (``BitsStored`` through the same LUT), so that :mod:`skuld.io` can map that range
to [0, 1] unless the user gives a window of their own (``intensity_range``).
"""

from __future__ import annotations

import os

import numpy as np

#: Photometric interpretations read as they are (gray, RGB) or converted to RGB.
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a DICOM file: a ``.dcm`` name, or the ``DICM`` marker at byte 128.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    bool

    Examples
    --------
    >>> from skuld.datasets import cxr_tiny_dir
    >>> from skuld.dicom import is_dicom
    >>> is_dicom(f"{cxr_tiny_dir()}/1.jpg")
    False
    """
    path = os.fspath(path)
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("reading DICOM files needs pydicom: pip install 'skuld[dicom]'") from None
    return pydicom


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The pixels of one DICOM file as displayed, and the range of values they can take.

    Parameters
    ----------
    path : str or path-like
        One file (never the series it belongs to).

    Returns
    -------
    pixels : ndarray of shape (H, W), float32, or (H, W, 3), uint8/uint16
        Gray images: stored values through the modality LUT (e.g. Hounsfield units), with
        ``MONOCHROME1`` inverted within the range so that bright is white. Colour images: RGB
        (YBR and palette images converted).
    value_range : (float, float) or None
        Gray images: ``(low, high)`` of the stored values ``BitsStored`` and
        ``PixelRepresentation`` allow, through the modality LUT. None for colour images (their
        dtype's range applies).

    Raises
    ------
    ValueError
        Naming the file: not DICOM, no pixel data, a multi-frame file (a series of slices or a
        cine loop: skuld reads 2-D images; pass the frames you want as arrays), a compressed
        transfer syntax without its decoder, or a photometric interpretation skuld does not read.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from pydicom import Dataset
    >>> from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    >>> from skuld.dicom import read_dicom
    >>> ds = Dataset()
    >>> ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 1, "MONOCHROME2"
    >>> ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    >>> ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    >>> ds.PixelData = np.array([[0, 1024], [1064, 2047]], np.int16).tobytes()
    >>> ds.file_meta = Dataset()
    >>> ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    >>> ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    >>> ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    >>> path = os.path.join(tempfile.mkdtemp(), "slice.dcm")
    >>> ds.save_as(path, enforce_file_format=True)
    >>> pixels, value_range = read_dicom(path)
    >>> pixels.tolist(), value_range                     # HU; 12-bit signed: -2048..2047 stored
    ([[-1024.0, 0.0], [40.0, 1023.0]], (-3072.0, 1023.0))
    """
    pydicom = _pydicom()
    from pydicom.pixels import apply_modality_lut, convert_color_space

    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct errors, ...
        raise ValueError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("the DICOM file holds no image (no Pixel Data element)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM file ({frames} frames); skuld reads 2-D images one file at a time: "
                         f"read it with pydicom and pass the frames you want as arrays")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in _GRAY + _COLOUR:
        raise ValueError(f"DICOM photometric interpretation {photometric!r} is not supported")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated data, ...
        raise ValueError(f"cannot decode the DICOM pixel data: {type(exc).__name__}: {exc}") from None
    if photometric in _COLOUR:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            return np.asarray(apply_color_lut(stored, ds)), None
        if photometric != "RGB":
            stored = convert_color_space(stored, photometric, "RGB")
        return np.asarray(stored), None
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    ends = np.asarray(apply_modality_lut(np.array([low, high], stored.dtype), ds), dtype=np.float64)
    low, high = float(ends.min()), float(ends.max())
    if photometric == "MONOCHROME1":
        values = low + high - values
    return values.astype(np.float32), (low, high)


def dicom_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of a DICOM file from its header, without reading the pixels.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    (int, int)
        ``ValueError`` naming the problem when the header cannot be read or has no image size.

    Examples
    --------
    >>> import os, tempfile
    >>> from pydicom import Dataset
    >>> from skuld.dicom import dicom_shape
    >>> ds = Dataset()
    >>> ds.Rows, ds.Columns = 512, 384
    >>> path = os.path.join(tempfile.mkdtemp(), "x.dcm")
    >>> ds.save_as(path, implicit_vr=True, little_endian=True)
    >>> dicom_shape(path)
    (512, 384)
    """
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, force=os.fspath(path).lower().endswith(".dcm"))
        return int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ValueError(f"not a readable DICOM header: {type(exc).__name__}: {exc}") from None
