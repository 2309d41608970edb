import numpy as np
import pydicom
import pytest

from dicom_cae import codec, derive, guard, image, io, pipeline, private_tags
from dicom_cae.convert import output_path
from tests.conftest import SAMPLES
from dicom_cae.weights import DEFAULT_MODEL


@pytest.fixture(scope="module")
def ct_derived(pipe):
    ds = io.read(SAMPLES / "ct_phantom_2.dcm")
    prep = pipeline.prepare(ds, "ct", quality=10)
    return ds, prep, pipe.run([prep])[0]


def test_derived_ct_is_a_new_lossy_derived_instance(ct_derived):
    src, _, d = ct_derived
    ds = d.dataset
    assert ds.SOPClassUID == src.SOPClassUID
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert (ds.PatientID, ds.PatientName) == (src.PatientID, src.PatientName)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]  # value 3 kept for CT
    assert ds.LossyImageCompression == "01"
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1"] or ds.LossyImageCompressionMethod == "ISO_10918_1"
    ratio = float(ds.LossyImageCompressionRatio)
    assert ratio == pytest.approx(65536 / d.frames[0].jpeg_bytes, rel=1e-3)  # original/compressed
    assert ds.DerivationCodeSequence[0].CodeValue == "113040"
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    assert "quality 10" in ds.DerivationDescription and "320x320 to 256x256" in ds.DerivationDescription
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.09375 * 320 / 256] * 2)
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
    assert ds.RescaleIntercept == src.RescaleIntercept


def test_uids_are_deterministic_and_depend_on_the_setting(ct_derived, pipe):
    src, prep, d = ct_derived
    again = pipe.run([prep])[0].dataset
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (d.dataset.SOPInstanceUID, d.dataset.SeriesInstanceUID)
    other = derive.derived_uids(src, key=pipe.key(20))
    assert other.instance != d.dataset.SOPInstanceUID
    # The other slices of the series land in the same derived series.
    src3 = io.read(SAMPLES / "ct_phantom_3.dcm")
    assert derive.derived_uids(src3, key=pipe.key(10)).series == d.dataset.SeriesInstanceUID
    assert pydicom.uid.UID(d.dataset.SOPInstanceUID).is_valid


def test_written_file_reads_back_with_its_private_block(ct_derived, tmp_path):
    _, _, d = ct_derived
    path = tmp_path / "out.dcm"
    io.write(d.dataset, path)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    tags = private_tags.read(back)
    assert tags["ModelName"] == DEFAULT_MODEL
    assert tags["JPEGQuality"] == 10
    assert tags["PSNR"][0] == pytest.approx(d.frames[0].model.psnr)
    assert tags["JPEGOnlyPSNR"][0] == pytest.approx(d.frames[0].jpeg.psnr)
    assert not any(e.tag.is_private and e.tag.group != private_tags.PRIVATE_GROUP for e in back)
    np.testing.assert_array_equal(back.pixel_array, image.to_stored(
        image.from_stored(back.pixel_array[None], private_tags.normalization(back)), private_tags.normalization(back))[0])


def _lanczos(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame.astype(np.float32), mode="F").resize((256, 256), Image.Resampling.LANCZOS),
                      np.float64)


def test_metrics_describe_the_stored_pixels(ct_derived, tmp_path):
    """Recompute the seed's PSNR/SSIM and the display PSNR from the written pixels and the
    source, independently of the pipeline's own normalization: they match the tags."""
    from dicom_cae import metrics

    src, prep, d = ct_derived
    path = tmp_path / "out.dcm"
    io.write(d.dataset, path)
    back = pydicom.dcmread(path)
    tags = private_tags.read(back)
    modality = src.pixel_array.astype(np.float64) * float(src.RescaleSlope) + float(src.RescaleIntercept)
    lo, hi = modality.min(), modality.max()
    reference = np.clip(_lanczos((modality - lo) / (hi - lo)), 0, 1)
    stored = back.pixel_array.astype(np.float64) * float(back.RescaleSlope) + float(back.RescaleIntercept)
    stored_unit = (stored - lo) / (hi - lo)
    assert metrics.psnr(reference, stored_unit) == pytest.approx(tags["PSNR"][0], abs=1e-3)
    assert metrics.ssim(reference, stored_unit) == pytest.approx(tags["SSIM"][0], abs=1e-3)
    assert tags["MeanIntensityReconstructed"][0] == pytest.approx(float(stored_unit.mean()), abs=1e-4)
    # What a viewer shows: both through the window the sample names (C40/W400), and HU errors.
    assert (src.WindowCenter, src.WindowWidth, tags["DisplayWindowName"]) == (40, 400, ["C40/W400"])
    original = _lanczos(modality)
    shown = [np.clip((x - 39.5) / 399 + 0.5, 0, 1) for x in (original, stored)]
    assert metrics.psnr(*shown) == pytest.approx(tags["DisplayPSNR"][0], abs=1e-3)
    soft = (original >= -100) & (original <= 200)
    assert tags["HUMeanAbsoluteError"][0] == pytest.approx(float(np.abs(stored - original)[soft].mean()), abs=1e-3)
    assert tags["HUBias"][0] == pytest.approx(float((stored - original)[soft].mean()), abs=1e-3)


def test_derive_checks_its_inputs(ct_derived):
    src, prep, d = ct_derived
    with pytest.raises(ValueError, match="expected \\(1, 256, 256\\)"):
        derive.derive(src, np.zeros((2, 256, 256), "<i2"), prep.norm, uids=derive.derived_uids(src, key="k"),
                      private={}, derivation="", compression_ratio=10)
    with pytest.raises(ValueError, match="private block values missing"):
        private_tags.write(pydicom.Dataset(), {"ModelName": "x"})


def test_untrusted_uids_never_become_paths(tmp_path):
    p = output_path(tmp_path, "../../etc/passwd", "1.2.3", "1.2.3.4")
    assert p.parent.parent.parent == tmp_path and ".." not in p.parts
    assert output_path(tmp_path, "1.2.840.1", "1.2", "1.2.3").parts[-3:] == ("1.2.840.1", "1.2", "1.2.3.dcm")


def test_private_tags_doc_matches_the_module():
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "private-tags.md").read_text()
    assert private_tags.markdown_table() in doc
    assert private_tags.PRIVATE_CREATOR in doc


def _enhanced(tmp_path):
    """pydicom-data's Enhanced MR (10 frames, 64x64) with its geometry in functional groups:
    Pixel Spacing 2.0 shared, and per frame 2.0 then 3.0 on odd frames (a per-frame override)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.conftest import pydicom_test_file

    ds = pydicom.dcmread(pydicom_test_file("emri_small.dcm"))
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = ["2.0", "2.0"]
    shared.PixelMeasuresSequence[0].SliceThickness = "5"
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for i in range(int(ds.NumberOfFrames)):
        group = Dataset()
        group.PixelMeasuresSequence = Sequence([Dataset()])
        group.PixelMeasuresSequence[0].PixelSpacing = ["3.0", "3.0"] if i % 2 else ["2.0", "2.0"]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def test_a_multi_frame_instance_scales_its_functional_group_spacing_and_counts_every_frame(tmp_path, pipe):
    """Issue 19 behaviours 6 and 7: in an enhanced multi-frame instance the Pixel Spacing of
    the shared and of each per-frame functional group is scaled to the 256 grid (recomputed
    here from the source's), and Lossy Image Compression Ratio counts every frame: all the
    frames' 8-bit 256x256 bytes over all their JPEG bytes (from the private block's lengths)."""
    ds = _enhanced(tmp_path)
    n, rows = int(ds.NumberOfFrames), int(ds.Rows)
    d = pipe.run([pipe.prepare(ds, "emri", quality=10)])[0].dataset
    scale = rows / 256  # 64 source rows spread over 256
    shared = d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in shared.PixelSpacing] == pytest.approx([2.0 * scale] * 2)
    per = [[float(v) for v in g.PixelMeasuresSequence[0].PixelSpacing] for g in d.PerFrameFunctionalGroupsSequence]
    assert per == [pytest.approx([(3.0 if i % 2 else 2.0) * scale] * 2) for i in range(n)]
    jpeg_bytes = private_tags.read(d)["JPEGBytes"]
    assert len(jpeg_bytes) == n
    ratios = d.LossyImageCompressionRatio  # the source's own ratios first, if it was lossy
    ratio = float(ratios[-1] if isinstance(ratios, pydicom.multival.MultiValue) else ratios)
    assert ratio == pytest.approx(n * 65536 / sum(jpeg_bytes), rel=1e-3)
    assert ratio != pytest.approx(65536 / sum(jpeg_bytes), rel=0.1)


def test_other_value_mappings_give_other_uids_and_both_live_in_one_folder(tmp_path):
    """Issue 19 behaviour 8: two conversions of one source with different value mappings get
    different derived UIDs (compared across two real runs into one output folder): the second
    is not skipped as done, and both series are there."""
    from dicom_cae import cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes())
    out = tmp_path / "out"
    uids = {}
    for mapping in ("window", "minmax"):
        assert cli.main(["convert", "--no-progress", "--value-mapping", mapping, str(src), str(out)]) == 0
        uids[mapping] = {(str(x.SeriesInstanceUID), str(x.SOPInstanceUID)) for x in
                         (pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm"))
                         if x.Modality == "CT" and private_tags.read(x)["ValueMapping"] == mapping}
    assert len(uids["window"]) == len(uids["minmax"]) == 1
    (ws, wi), = uids["window"]
    (ms, mi), = uids["minmax"]
    assert ws != ms and wi != mi


def test_the_filter_after_the_model_gives_other_uids(pipe):
    """Issue 15: the deblock model's output is filtered at the block edges; the same weights
    without the filter wrote other pixels, so its outputs get other UIDs (a folder converted
    before is not taken as done). The seed, unfiltered, keeps the UIDs it always had."""
    from dicom_cae.model import load

    r = pipe.reconstructor
    assert r.edge_filter == codec.EDGE_FILTER_ID
    unfiltered = pipeline.key(r.name, r.sha256, 30, pipe.mapping)
    unguarded = unfiltered.removesuffix(f":{guard.GUARD_ID}")
    assert pipe.key(30) != unfiltered and pipe.key(30).startswith(unguarded)
    # the mean over the input's flips is part of the decoding too (the model alone gives other
    # pixels), and so is bfloat16 where the model runs in it (see the next test)
    precision = [] if r.precision == "float32" else [r.precision]
    assert pipe.key(30) == ":".join([unguarded, *precision, "flips4", codec.EDGE_FILTER_ID, guard.GUARD_ID])
    assert pipe.key(30) != pipeline.key(r.name, r.sha256, 30, pipe.mapping, codec.EDGE_FILTER_ID)
    src = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    assert derive.derived_uids(src, key=pipe.key(30)).instance != derive.derived_uids(src, key=unfiltered).instance
    seed = pipeline.Pipeline(load("seed"), mapping="minmax")
    assert seed.reconstructor.edge_filter is None
    # how the guard chooses what is stored decides the pixels too: the seed's outputs changed
    # with the view-ranked guard, and so did their UIDs
    assert seed.key(10) == f"seed:{seed.reconstructor.sha256}:q10:{guard.GUARD_ID}"


def test_bfloat16_gives_other_uids_and_says_so():
    """The deblock model run in bfloat16 stores pixels a little other than in float32, so its
    outputs get other UIDs (one UID, two pixel data would be a DICOM error) and the Derivation
    Description says the precision; in float32 it says nothing of it."""
    from dicom_cae.model import load

    src = io.read(SAMPLES / "ct_phantom_1.dcm")
    img = image.prepare(src, "ct", mapping="window")
    keys, texts = {}, {}
    for precision in ("float32", "bfloat16"):
        p = pipeline.Pipeline(load(precision=precision), batch_size=4, mapping="window")
        assert p.reconstructor.precision == precision
        keys[precision] = p.key(10)
        (d,) = p.run([pipeline.compress(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", img, 10)])
        assert private_tags.read(d.dataset)["ModelWeight"][0] > 0
        texts[precision] = d.dataset.DerivationDescription
    assert keys["bfloat16"] == keys["float32"].replace(":flips4", ":bfloat16:flips4")
    uids = {p: derive.derived_uids(src, key=k) for p, k in keys.items()}
    assert uids["bfloat16"].instance != uids["float32"].instance and uids["bfloat16"].series != uids["float32"].series
    assert "its convolutions computed in bfloat16" in texts["bfloat16"] and "bfloat16" not in texts["float32"]


def test_a_stand_in_series_uid_depends_on_the_study():
    """Issue 19 behaviour 9: two studies whose series lack a Series Instance UID and share
    number, modality and description get different stand-ins (one series UID would merge them)."""
    from dicom_cae import identity

    made = []
    for study in ("1.2.3.4", "1.2.3.5"):
        ds = io.read(SAMPLES / "ct_phantom_1.dcm", pixels=False)
        del ds.SeriesInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesNumber, ds.SeriesDescription = "2", "HEAD"
        made.append(identity.identify(ds, "x").series)
    assert made[0] != made[1]
