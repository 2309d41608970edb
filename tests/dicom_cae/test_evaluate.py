"""Rate-distortion evaluation, fidelity targets, and the default model at every quality."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from dicom_cae import cli, codec, image, io, pipeline, private_tags
from dicom_cae.evaluation import bd_psnr, bd_rate
from tests.conftest import SAMPLES, derived_images
from dicom_cae.weights import DEFAULT_MODEL


def test_bjontegaard_deltas_of_known_shifts():
    rate = np.array([0.08, 0.15, 0.3, 0.6])
    psnr = np.array([26.0, 29.0, 32.5, 36.0])
    assert bd_psnr(rate, psnr, rate, psnr + 1.0) == pytest.approx(1.0)
    assert bd_rate(rate, psnr, rate * 0.8, psnr) == pytest.approx(-20.0)
    assert bd_psnr(rate, psnr, rate, psnr, bpp_range=(0.07, 0.5)) == pytest.approx(0.0)
    assert np.isnan(bd_psnr(rate, psnr, rate * 10, psnr))  # no common rates


def test_jpeg2000_stays_within_the_jpeg_byte_budget():
    unit, _ = image.normalize(io.read(SAMPLES / "ct_phantom_2.dcm"), "ct")
    for q in (1, 10, 50):
        budget = len(codec.jpeg_encode(unit[0], q))
        j2k = codec.j2k_encode(unit[0], budget)
        assert 0.9 * budget <= len(j2k) <= budget
        assert codec.j2k_decode(j2k).shape == (256, 256)


@pytest.mark.slow
def test_evaluate_writes_compressai_json_plot_and_tables(tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(SAMPLES), "--qualities", "1,5,10,20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Bjontegaard" in printed and "seed's operating point" in printed
    for name, codec_name in (("jpeg.json", "JPEG"), (f"jpeg-{DEFAULT_MODEL}.json", f"JPEG+{DEFAULT_MODEL}"), ("jpeg2000.json", "JPEG 2000")):
        data = json.loads((out / name).read_text())
        assert data["name"] == codec_name and data["description"]
        assert {"bpp", "psnr", "ssim", "pixel_accuracy", "compression_ratio"} <= set(data["results"])
        assert len(data["results"]["psnr"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and set(summary["by_modality"]) == {"CT", "MR", "CR"}
    # The encoder's gain apart from the model's: the old encoder (Pillow) is a codec of its own.
    ours = f"JPEG+{DEFAULT_MODEL}"
    assert set(summary["bjontegaard"]) == {f"{ours} vs JPEG", f"{ours} vs JPEG 2000", f"{ours} vs JPEG (Pillow)",
                                           "JPEG vs JPEG (Pillow)", "JPEG vs JPEG 2000", "JPEG (Pillow) vs JPEG 2000"}
    assert "display_blockiness" in json.loads((out / "jpeg.json").read_text())["results"]
    assert summary["seed_table"]["quality"] == 1
    assert summary["seed_table"]["published seed (5 epochs)"]["psnr"] == 25.11
    assert (out / "rd.png").stat().st_size > 20_000
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 4 * 4  # images x qualities x codecs (JPEG, JPEG (Pillow), JPEG + model, JPEG 2000)


@pytest.mark.slow
def test_fidelity_target_picks_the_lowest_quality_that_reaches_it(pipe, tmp_path):
    ds = io.read(SAMPLES / "mr_nonsquare.dcm")
    target = pipeline.Target(psnr=32.0)
    prep = pipe.prepare_for_target(ds, "mr", target)
    derived = pipe.run([prep])[0]
    assert derived.frames[0].model.psnr >= 32.0
    below = pipe.run([pipe.prepare(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr", quality=prep.quality - 1)])[0]
    assert below.frames[0].model.psnr < 32.0  # one quality lower does not reach it
    tags = private_tags.read(derived.dataset)
    assert tags["TargetPSNR"] == 32.0 and tags["JPEGQuality"] == prep.quality
    assert "lowest quality reaching PSNR >= 32.0 dB" in derived.dataset.DerivationDescription
    # The CLI: --target-psnr instead of --quality; outputs in their own series.
    assert cli.main(["convert", "--no-progress", "--target-psnr", "32", "--target-on", "seed", str(SAMPLES),
                     str(tmp_path / "o")]) == 1
    for f in derived_images(tmp_path / "o"):
        t = private_tags.read(pydicom.dcmread(f, stop_before_pixels=True))
        assert t["PSNR"][0] >= 32.0 and t["TargetPSNR"] == 32.0
    with pytest.raises(ValueError, match="needs a PSNR or an SSIM"):
        pipeline.Target()


def test_a_display_target_is_met_in_the_worst_window(pipe):
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    target = pipeline.Target(psnr=30.0, metric="display")
    prep = pipe.prepare_for_target(ds, "ct", target)
    derived = pipe.run([prep])[0]
    assert min(q.quality.psnr for q in derived.frames[0].display_model) >= 30.0
    below = pipe.run([pipe.prepare(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", quality=prep.quality - 1)])[0]
    assert min(q.quality.psnr for q in below.frames[0].display_model) < 30.0


def test_the_model_is_applied_above_the_old_bands(model):
    """Issue 15: the default model used to pass every image above quality 15 through (a gap
    the default quality 30 fell in). Now it acts at every quality (the store's guard decides
    what is kept)."""
    rng = np.random.default_rng(2)
    jpeg = np.stack([codec.jpeg_roundtrip(rng.random((256, 256)), 60)[0] for _ in range(2)])
    assert model.max_quality == 100
    assert not np.array_equal(model(jpeg, 60), jpeg) and not np.array_equal(model(jpeg, 30), jpeg)