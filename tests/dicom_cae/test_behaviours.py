"""Behaviours the README promises, each tested where it would break (issue 11): known values
through the pixel path, band routing, fidelity searches where the model runs, errors.tsv kinds,
re-runs, report figures against values computed here, the lossy history."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_cae import codec, image, io, metrics, pipeline, private_tags
from dicom_cae.convert import ERRORS_FILE, convert
from tests.conftest import SAMPLES, derived_images
from dicom_cae.weights import DEFAULT_MODEL


def test_rescale_slope_and_intercept_reach_the_modality_values():
    """Known pixel values through a non-unit Rescale Slope (as a real MR with slope 3.77)."""
    ds = pydicom.dcmread(SAMPLES / "mr_nonsquare.dcm")
    ds.Rows = ds.Columns = 256
    raw = np.tile(np.arange(256, dtype=np.uint16), (256, 1))
    ds.PixelData = raw.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "3.77", "-12"
    prepared = image.prepare(ds, "mr", mapping="minmax")
    assert prepared.modality[0] == pytest.approx(raw * 3.77 - 12, abs=1e-3)
    assert (prepared.norm.lo[0], prepared.norm.hi[0]) == pytest.approx((-12, 255 * 3.77 - 12))
    stored = image.to_stored(prepared.unit, prepared.norm)
    assert np.abs(stored[0].astype(int) - raw).max() <= 1  # back to the stored values


def test_shrinking_does_not_fold_fine_detail_into_coarse():
    """Aliasing check: one-pixel stripes on a 512 grid are finer than the 256 grid can hold; an
    anti-aliased resampling shows them as their mean, sampling would show one phase."""
    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    ds.Rows = ds.Columns = 512
    stripes = np.tile(np.array([0, 1000], np.int16), (512, 256))
    ds.PixelData = stripes.tobytes()
    modality = image.prepare(ds, "ct", mapping="minmax").modality[0]
    expected = 500 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert abs(float(modality[8:-8, 8:-8].mean()) - expected) < 20
    assert float(modality[8:-8, 8:-8].std()) < 20


@pytest.mark.parametrize("quality", [1, 5, 30, 60, 95])
@pytest.mark.parametrize("size", [256, 192, 128])
def test_one_set_of_weights_serves_every_quality_and_coding_size(model, quality, size):
    """Issue 15: no pass-through gaps. The default model is told the quality and the coding
    size and serves them all itself; what it is told changes what it does."""
    assert model.uses_coding and model.for_coding(quality, "window", size) is model and model.max_quality == 100
    img = image.prepare(io.read(SAMPLES / "ct_phantom_2.dcm"), "ct", mapping="window").unit[0]
    jpeg = codec.decode_to(codec.encode_at(img, quality, size))[None]
    out = model(jpeg, quality, coding_size=size)
    assert not np.array_equal(out, jpeg)
    other = model(jpeg, quality, coding_size=256 if size != 256 else 128)
    assert not np.allclose(out, other, atol=1e-6)
    # The model itself, before the block-edge filter (which reads the quality too): what it is
    # told of the quality changes its own output.
    alone = model(jpeg, quality, coding_size=size, filter_edges=False)
    told_another_quality = model(jpeg, 50 if quality != 50 else 10, coding_size=size, filter_edges=False)
    assert not np.allclose(alone, told_another_quality, atol=1e-6)


def test_reconstruction_uses_the_weights_the_tags_name(pipe):
    ds = io.read(SAMPLES / "ct_phantom_2.dcm")
    prep = pipe.prepare(ds, "ct", quality=5)
    derived = pipe.run([prep])[0]
    tags = private_tags.read(derived.dataset)
    assert tags["WeightsSHA256"] == pipe.reconstructor.sha256 and tags["ModelName"] == DEFAULT_MODEL
    w = tags["ModelWeight"][0]
    assert w > 0  # the model's correction is stored (not below JPEG)
    recon = pipe.reconstructor(prep.jpeg, 5, coding_size=prep.coding_size)
    stored = image.to_stored(prep.jpeg + w * (recon - prep.jpeg), prep.norm)
    assert np.array_equal(derived.dataset.pixel_array, stored[0])


def _seed_psnr_ssim(pipe, path, quality):
    d = pipe.run([pipe.prepare(io.read(path), "x", quality=quality)])[0]
    return d.frames[0].model.psnr, d.frames[0].model.ssim, d.frames[0].jpeg.psnr


@pytest.mark.slow
def test_an_ssim_target_is_met_and_the_quality_below_misses_it(pipe):
    """At the coding size the search chose (it may choose a smaller one than 256)."""
    path = SAMPLES / "mr_nonsquare.dcm"
    target = pipeline.Target(ssim=0.9)
    prep = pipe.prepare_for_target(io.read(path), "mr", target)

    def ssim_at(quality: int) -> float:
        img = image.prepare(io.read(path), "mr", mapping=pipe.mapping)
        coded = pipeline.compress(io.read(path), "mr", img, quality, coding_size=prep.coding_size)
        return pipe.run([coded])[0].frames[0].model.ssim

    assert ssim_at(prep.quality) >= 0.9
    assert ssim_at(prep.quality - 1) < 0.9


def test_the_fidelity_search_reaches_high_qualities(pipe):
    path = SAMPLES / "mr_nonsquare.dcm"
    prep = pipe.prepare_for_target(io.read(path), "mr", pipeline.Target(psnr=42.0))
    assert prep.quality > 50
    assert _seed_psnr_ssim(pipe, path, prep.quality)[0] >= 42.0


@pytest.mark.slow
def test_the_fidelity_search_measures_the_models_output(pipe):
    """A target the model reaches at quality 5 where plain JPEG does not: the search (over
    coding sizes and qualities) must spend no more than that, and plain JPEG at what it chose
    misses the target (it would spend more if it measured the JPEG)."""
    path = SAMPLES / "ct_phantom_2.dcm"
    model_psnr, _, jpeg_psnr = _seed_psnr_ssim(pipe, path, 5)
    assert model_psnr > jpeg_psnr + 0.3  # what the model stores is better at quality 5
    target = pipeline.Target(psnr=model_psnr - 0.01)
    prep = pipe.prepare_for_target(io.read(path), "ct", target)
    at_q5 = pipe.prepare(io.read(path), "ct", quality=5)
    assert sum(prep.jpeg_bytes) <= sum(at_q5.jpeg_bytes)
    derived = pipe.run([prep])[0].frames[0]
    assert derived.model.psnr >= target.psnr > derived.jpeg.psnr  # JPEG alone misses it there


@pytest.fixture
def odd_folder(tmp_path):
    """Two copies of one instance, a garbage .dcm, a garbage .txt."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLES / "ct_phantom_1.dcm", src / "a.dcm")
    shutil.copy(SAMPLES / "ct_phantom_1.dcm", src / "b.dcm")
    (src / "garbage.dcm").write_bytes(b"not dicom at all" * 10)
    (src / "notes.txt").write_text("a README-like file")
    return src


def test_errors_tsv_lists_each_kind(odd_folder, tmp_path, pipe):
    out = tmp_path / "out"
    summary = convert(odd_folder, out, pipe, progress=False)
    assert summary.converted == 1 and summary.exit_code == 1
    rows = {tuple(line.split("\t")[:2]) for line in (out / ERRORS_FILE).read_text().splitlines()[1:]}
    assert rows == {(str(odd_folder / "b.dcm"), "duplicate"), (str(odd_folder / "garbage.dcm"), "failed"),
                    (str(odd_folder / "notes.txt"), "not-dicom")}
    assert len(derived_images(out)) == 1  # the duplicate was not converted twice


@pytest.mark.slow
def test_a_rerun_with_another_target_converts_again(tmp_path, pipe):
    out = tmp_path / "out"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(SAMPLES / "mr_nonsquare.dcm", one)
    assert convert(one, out, pipe, progress=False, target=pipeline.Target(psnr=30)).converted == 1
    assert convert(one, out, pipe, progress=False, target=pipeline.Target(psnr=30)).skipped_done == 1
    again = convert(one, out, pipe, progress=False, target=pipeline.Target(psnr=36))
    assert again.converted == 1 and again.skipped_done == 0
    assert convert(one, out, pipe, progress=False, target=pipeline.RatioTarget(0.02)).converted == 1


def test_report_figures_match_values_computed_here(converted_samples):
    """The report's PSNR column and regression against numbers read straight from the tags."""
    out, _ = converted_samples
    for report_path in out.glob("*/report.json"):
        report = json.loads(report_path.read_text())
        tags = {}
        for f in derived_images(report_path.parent):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            tags[str(ds.SOPInstanceUID)] = private_tags.read(ds)
        for row in report["per_image"]:
            t = tags[row["sop_instance_uid"]]
            assert row["psnr"] == pytest.approx(t["PSNR"][0], abs=1e-5)
            assert row["jpeg_only"]["psnr"] == pytest.approx(t["JPEGOnlyPSNR"][0], abs=1e-5)
            assert row["display_psnr"] == pytest.approx(min(t["DisplayPSNR"]), abs=1e-5)
            assert row["edge_filter"] == t.get("EdgeFilter")  # the block-edge filter, as the instance names it
        filters = {f", block edges smoothed ({t['EdgeFilter']})" for t in tags.values() if t.get("EdgeFilter")}
        assert all(any(f in m for m in report["models"]) for f in filters)
        x = [t["MeanIntensityOriginal"][0] for t in tags.values()]
        y = [t["MeanIntensityReconstructed"][0] for t in tags.values()]
        if len(x) >= 2:
            slope, intercept = np.polyfit(x, y, 1)  # y (reconstructed) on x (original)
            assert report["regression"]["slope"] == pytest.approx(slope, abs=1e-4)
            assert report["regression"]["intercept"] == pytest.approx(intercept, abs=1e-4)
        assert report["summary"]["psnr"]["model"]["mean"] == pytest.approx(
            float(np.mean([t["PSNR"][0] for t in tags.values()])), abs=1e-4)


def test_the_lossy_history_of_the_source_is_kept(pipe):
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ["8.5"]
    ds.LossyImageCompressionMethod = ["ISO_15444_1"]
    ds.SOPInstanceUID = generate_uid()
    derived = pipe.run([pipe.prepare(ds, "ct", quality=10)])[0].dataset
    assert list(derived.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]
    assert [float(v) for v in derived.LossyImageCompressionRatio][0] == 8.5
    assert float(derived.LossyImageCompressionRatio[1]) == pytest.approx(
        65536 / private_tags.read(derived)["JPEGBytes"][0], rel=1e-3)


def test_psnr_is_mse_based_and_pixel_accuracy_uses_its_tolerance():
    ref = np.full((16, 16), 0.5)
    test = ref.copy()
    test[0, :4] += 0.2  # 4 pixels off by 0.2
    assert metrics.mse(ref, test) == pytest.approx(4 * 0.04 / 256)
    assert metrics.psnr(ref, test) == pytest.approx(10 * np.log10(256 / 0.16))
    assert metrics.pixel_accuracy(ref, test) == pytest.approx(252 / 256)
    assert codec.to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
