"""Real files that break the rules, converted rather than refused; geometry built for the new grid
(issue 10, items 2, 3, 6 and 9), in the library, without the network."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from dicom_cae import image, io, metrics, pipeline
from dicom_cae.convert import ERRORS_FILE, convert
from dicom_cae.errors import DicomInputError
from tests.conftest import SAMPLES, shared


def _centre(ds) -> np.ndarray:
    """Patient coordinates of the centre of the field of view (not of any pixel)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp + iop[:3] * (int(ds.Columns) - 1) / 2 * dc + iop[3:] * (int(ds.Rows) - 1) / 2 * dr


def test_image_position_moves_to_the_first_pixel_of_the_new_grid(pipe):
    """Regression: resampling 512 -> 256 kept Image Position (Patient), shifting the image by
    half a source pixel along each direction."""
    path = sorted(shared("ct", "lung-dx-a0002-b40f").glob("*.dcm"))[5]
    src = io.read(path)
    derived = pipe.run([pipeline.prepare(io.read(path), str(path), quality=10)])[0].dataset
    s_row, s_col = (float(v) for v in src.PixelSpacing)
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    expected = np.array([float(v) for v in src.ImagePositionPatient]) + iop[:3] * s_col / 2 + iop[3:] * s_row / 2
    assert [float(v) for v in derived.ImagePositionPatient] == pytest.approx(expected, abs=1e-3)
    assert (src.Rows, src.Columns) == (512, 512)
    # Independently: the field of view keeps its centre (and size) on the new grid.
    assert _centre(derived) == pytest.approx(_centre(src), abs=1e-3)


def test_a_non_square_image_keeps_its_field_of_view_centre(pipe):
    src = io.read(SAMPLES / "mr_nonsquare.dcm")  # 192 x 160, 1.25 x 1.0 mm
    derived = pipe.run([pipeline.prepare(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr", quality=10)])[0].dataset
    assert [float(v) for v in derived.PixelSpacing] == pytest.approx([1.25 * 192 / 256, 1.0 * 160 / 256])
    assert _centre(derived) == pytest.approx(_centre(src), abs=1e-3)


def test_files_without_series_or_study_uid_are_converted_with_a_warning(tmp_path, pipe):
    """Regression: real files that miss a Type 1 UID were refused ("missing Study, Series or SOP
    Instance UID"); DCMTK and most archives store them."""
    src = tmp_path / "src"
    src.mkdir()
    no_series = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    del no_series.SeriesInstanceUID
    no_series.save_as(src / "no_series.dcm")
    no_study = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
    del no_study.StudyInstanceUID
    no_study.save_as(src / "no_study.dcm")
    no_sop = pydicom.dcmread(SAMPLES / "ct_phantom_3.dcm")
    del no_sop.SOPInstanceUID
    no_sop.save_as(src / "no_sop.dcm", enforce_file_format=False)
    out = tmp_path / "out"
    summary = convert(src, out, pipe, progress=False)
    assert summary.converted == 2 and len(summary.warnings) == 2
    assert [str(e.source) for e in summary.failed] == [str(src / "no_sop.dcm")]
    assert "SOPInstanceUID is missing or empty" in summary.failed[0].reason
    rows = [line.split("\t") for line in (out / ERRORS_FILE).read_text().splitlines()[1:]]
    kinds = sorted((r[0].rsplit("/", 1)[1], r[1]) for r in rows)
    assert kinds == [("no_series.dcm", "warning"), ("no_sop.dcm", "failed"), ("no_study.dcm", "warning")]
    # The stand-ins are stable: a second run skips both as done.
    again = convert(src, out, pipe, progress=False)
    assert again.skipped_done == 2 and again.converted == 0
    reports = [json.loads(p.read_text()) for p in out.glob("*/report.json")]
    warnings = [w for r in reports for w in r["warnings"]]
    assert any("Series Instance UID missing" in w for w in warnings)
    assert any("Study Instance UID missing" in w for w in warnings)
    assert all(r["study_instance_uid"] for r in reports)


def test_stand_ins_are_stable_and_distinct():
    from dicom_cae.identity import identify

    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm", stop_before_pixels=True)
    del ds.SeriesInstanceUID
    a, b = identify(ds, "a"), identify(ds, "a")
    assert a.series == b.series and a.series.startswith("1.2.826.0.1.3680043.8.498.")
    ds.SeriesNumber = 99
    assert identify(ds, "a").series != a.series  # another series of the same study


@pytest.mark.parametrize("value", ["../../evil", "1.2.3\nX", "1..2", "1.2.a", "1" * 65, ""])
def test_an_instance_with_an_invalid_sop_instance_uid_is_not_named(value):
    from dicom_cae.identity import identify

    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm", stop_before_pixels=True)
    ds.SOPInstanceUID = value
    with pytest.raises(DicomInputError, match="SOPInstanceUID"):
        identify(ds, "x")


@pytest.mark.parametrize(("keyword", "value", "reason"), [
    ("RescaleSlope", "NaN", "RescaleSlope 'NaN' is not a finite, non-zero number"),
    ("RescaleSlope", "0", "RescaleSlope '0' is not a finite, non-zero number"),
    ("RescaleIntercept", "-inf", "RescaleIntercept '-inf' is not a finite number"),
    ("SamplesPerPixel", None, "SamplesPerPixel is present but empty"),
    ("BitsAllocated", None, "BitsAllocated is present but empty"),
])
def test_a_broken_pixel_description_fails_this_instance_with_its_reason(keyword, value, reason):
    """Regression: an empty SamplesPerPixel raised int(None); a NaN slope gave NaN metrics."""
    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    ds[keyword].value = value
    with pytest.raises(DicomInputError) as info:
        image.normalize(ds, "x")
    assert info.value.reason == reason


def test_regression_over_non_finite_points_does_not_raise():
    """Regression: a NaN mean in one image made numpy's SVD fail and stopped every report."""
    fit = metrics.regression([0.1, 0.2, float("nan"), 0.4], [0.1, 0.2, 0.3, float("inf")])
    assert fit.n == 2 and fit.slope == pytest.approx(1.0)
