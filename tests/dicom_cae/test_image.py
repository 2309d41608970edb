import dataclasses
import numpy as np
import pydicom
import pytest

from dicom_cae import image, io
from dicom_cae.errors import DicomInputError, NotAnImageError, NotDicomError
from tests.conftest import SAMPLES, pydicom_test_file, shared


def test_signed_ct_with_rescale_normalizes_in_hounsfield_units_and_maps_back():
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    unit, norm = image.normalize(ds, "ct")
    assert unit.shape == (1, 256, 256) and unit.dtype == np.float32
    assert 0.0 <= unit.min() and unit.max() <= 1.0
    assert norm.lo[0] == -2000.0  # padding, in HU (stored -976 with intercept -1024)
    assert norm.hi[0] > 600  # the spine
    assert norm.dtype == np.dtype("<i2") and norm.resampled
    stored = image.to_stored(unit, norm)
    assert stored.dtype == np.dtype("<i2")
    back = image.from_stored(stored, norm)
    assert np.abs(back - unit).max() <= 0.5 / (norm.hi[0] - norm.lo[0]) + 1e-6


def test_source_256_grid_round_trips_exactly_through_stored_values():
    ds = io.read(shared("mr", "trio-mprage", "00050.dcm"))
    unit, norm = image.normalize(ds, "mr")
    assert not norm.resampled
    stored = image.to_stored(unit, norm)
    np.testing.assert_array_equal(stored[0], ds.pixel_array)


def test_monochrome1_is_inverted_so_one_is_bright_and_inverted_back():
    ds = io.read(SAMPLES / "cr_monochrome1.dcm")
    unit, norm = image.normalize(ds, "cr")
    assert norm.invert
    # The spine (high attenuation, low stored values) is bright in the normalized image.
    assert unit[0, 128, 124:132].mean() > unit[0, 128, 60:70].mean()
    stored = image.to_stored(unit, norm)
    assert stored.dtype == np.dtype("<u2") and stored.max() <= 1023
    assert stored[0, 128, 124:132].mean() < stored[0, 128, 60:70].mean()


def test_non_square_is_resampled_without_aliasing():
    ds = io.read(SAMPLES / "mr_nonsquare.dcm")
    unit, norm = image.normalize(ds, "mr")
    assert (norm.src_rows, norm.src_cols) == (192, 160)
    assert unit.shape == (1, 256, 256)


def test_bits_stored_below_bits_allocated_clips_to_the_stored_range():
    ds = io.read(SAMPLES / "mr_nonsquare.dcm")
    _, norm = image.normalize(ds, "mr")
    assert (norm.bits_allocated, norm.bits_stored) == (16, 12)
    assert (norm.stored_min, norm.stored_max) == (0, 4095)
    over = np.full((1, 256, 256), 5.0, np.float32)  # far above 1: the frame's maximum, within 12 bits
    assert image.to_stored(over, norm).max() == norm.hi[0] == 976
    wide = dataclasses.replace(norm, lo=(0.0,), hi=(9000.0,), mappings=())  # a range beyond BitsStored
    assert image.to_stored(np.ones((1, 256, 256), np.float32), wide).max() == 4095


def test_compressed_sample_decodes():
    ds = io.read(SAMPLES / "mr_rle.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    unit, _ = image.normalize(ds, "rle")
    assert unit.std() > 0.05


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "JPGExtended.dcm",
        "JPEG-LL.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "emri_small_RLE.dcm",
        "693_J2KR.dcm",
        "MR2_J2KI.dcm",
    ],
)
def test_transfer_syntaxes_from_pydicom_data_decode(name):
    ds = io.read(pydicom_test_file(name))
    unit, norm = image.normalize(ds, name)
    assert unit.shape == (int(ds.get("NumberOfFrames", 1) or 1), 256, 256)
    assert unit.std() > 0.01
    assert len(norm.lo) == unit.shape[0]


def test_transfer_syntaxes_in_shared_data_decode_to_the_same_pixels():
    files = sorted(shared("transfer-syntaxes").glob("*.dcm"))
    assert len(files) == 9
    arrays = [image.modality_frames(io.read(f), f.name) for f in files]
    for a in arrays[1:]:
        np.testing.assert_array_equal(a, arrays[0])


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("SC_rgb.dcm", NotAnImageError, "not a grayscale image .*RGB"),
        ("liver.dcm", NotAnImageError, "BitsAllocated 1 is not supported"),
        ("rtdose.dcm", NotAnImageError, "BitsAllocated 32 is not supported"),
        ("MR_truncated.dcm", DicomInputError, "cannot decode Pixel Data"),
        ("JPEG-lossy.dcm", DicomInputError, "cannot decode Pixel Data \\(JPEG Extended"),
    ],
)
def test_unusable_pixel_data_gets_a_precise_error(name, error, match):
    path = pydicom_test_file(name)
    with pytest.raises(error, match=match) as info:
        image.normalize(io.read(path), path)
    assert info.value.source == path


def test_objects_without_pixels_and_non_dicom_files(tmp_path):
    with pytest.raises(NotAnImageError, match="no Pixel Data: not an image object \\(Basic Text SR"):
        image.normalize(io.read(SAMPLES / "sr_not_an_image.dcm"), "sr")
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(NotDicomError, match="not a DICOM file"):
        io.read(junk)
    with pytest.raises(DicomInputError, match="cannot read file"):
        io.read(tmp_path / "missing.dcm")
