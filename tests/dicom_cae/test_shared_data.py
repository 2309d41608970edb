"""Conversion of the real CT and MR series in ../shared/data (skipped where it is absent)."""

from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest

from dicom_cae import private_tags
from dicom_cae.convert import convert
from tests.conftest import dciodvfy_errors, derived_images, shared


def _by_source(out):
    derived = {}
    for f in derived_images(out):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        derived[ds.SourceImageSequence[0].ReferencedSOPInstanceUID] = (f, ds)
    return derived


def _sources(folder):
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in sorted(folder.rglob("*.dcm"))}


@pytest.mark.slow
def test_trio_mprage_converts_every_slice_without_new_dciodvfy_errors(tmp_path, pipe):
    src = shared("mr", "trio-mprage")
    s = convert(src, tmp_path, pipe, quality=10, progress=False)
    assert (s.converted, s.frames, len(s.failed), len(s.not_images)) == (176, 176, 0, 0)
    derived = _by_source(tmp_path)
    sources = _sources(src)
    assert set(derived) == set(sources)
    for _, ds in derived.values():
        tags = private_tags.read(ds)
        assert tags is not None and 15 < tags["PSNR"][0] < 80 and 0 < tags["SSIM"][0] <= 1
    pairs = [(sources[uid], f) for uid, (f, _) in derived.items()]
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda p: (p, set(dciodvfy_errors(p[1])) - set(dciodvfy_errors(p[0]))), pairs))
    new = {str(p[1].name): errs for p, errs in results if errs}
    assert not new
    assert len(list(tmp_path.glob("*/report.json"))) == 1


def test_ct_series_outputs_add_no_dciodvfy_errors(tmp_path, pipe):
    src = shared("ct", "lung-dx-a0002-b40f")
    s = convert(src, tmp_path, pipe, quality=5, progress=False)
    assert s.converted == 30 and not s.failed
    sources = _sources(src)
    derived = _by_source(tmp_path)
    for uid in list(derived)[:5]:
        assert not set(dciodvfy_errors(derived[uid][0])) - set(dciodvfy_errors(sources[uid]))
    ds = pydicom.dcmread(next(iter(derived.values()))[0])
    assert list(ds.ImageType)[:3] == ["DERIVED", "SECONDARY", "AXIAL"]
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.646484375 * 2)


def test_studyforrest_mends_overlong_decimal_strings(tmp_path, pipe):
    """The source's DS values of 17+ characters (an error) are rewritten within 16."""
    folder = shared("mr", "studyforrest-t1")
    one = tmp_path / "in"
    one.mkdir()
    first = sorted(folder.glob("*.dcm"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    s = convert(one, tmp_path / "out", pipe, quality=10, progress=False)
    assert s.converted == 1
    out = derived_images(tmp_path / "out")[0]
    before, after = set(dciodvfy_errors(first)), set(dciodvfy_errors(out))
    assert not after - before
    assert not any("Length invalid for this VR = 17" in e for e in after)
    assert any("Length invalid for this VR = 17" in e for e in before)


def test_nine_transfer_syntaxes_convert(tmp_path, pipe):
    src = shared("transfer-syntaxes")
    s = convert(src, tmp_path, pipe, quality=10, progress=False)
    assert s.converted + len(s.failed) + len(s.duplicates) == 9
    assert s.converted == 9, [str(e) for e in s.failed]
