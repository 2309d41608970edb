"""What the viewer shows (issue 8): display windows, the window-aware value mapping, display and
HU metrics, adaptive coding at a byte budget, and the labels of what the output is."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from dicom_cae import cli, codec, display, image, io, mapping, metrics, pipeline, private_tags, targets
from tests.conftest import SAMPLES, derived_images, shared


def test_windows_come_from_the_source_then_soft_tissue_then_percentiles():
    ct = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    values = np.linspace(-1000, 1000, 100)
    assert [(w.center, w.width, w.origin) for w in display.windows(ct, values)] == [(40, 400, "source")]
    del ct.WindowCenter, ct.WindowWidth
    assert [(w.name, w.origin) for w in display.windows(ct, values)] == [("soft tissue C40/W400", "soft-tissue")]
    ct.WindowCenter, ct.WindowWidth = ["-600", "40"], ["1500", "80"]  # lung and brain: brain is narrower
    assert [w.width for w in display.windows(ct, values)] == [1500, 80]
    mr = pydicom.dcmread(SAMPLES / "mr_nonsquare.dcm")
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in mr:
            del mr[kw]
    (w,) = display.windows(mr, np.arange(1000.0))
    assert w.origin == "percentile" and w.span == pytest.approx((9.99, 989.01), abs=0.02)


def test_a_window_shows_values_as_dicom_defines_it():
    """PS3.3 C.11.2.1.2.1, scaled to [0, 1]: c - 0.5 - (w - 1) / 2 and below is black."""
    w = display.Window("brain", 40, 80, "source")
    shown = w.apply(np.array([-1000, 0.5 - 39.5, 40, 40 - 0.5 + 39.5, 1000]))
    assert shown == pytest.approx([0, 0, 0.5 + 0.5 / 79, 1, 1])


def test_the_window_mapping_is_monotonic_invertible_and_spends_codes_on_the_window():
    m = mapping.make("window", -1024, 3071, [(-5.0, 75.0), (-100.0, 200.0)])
    x = np.linspace(-1024, 3071, 5000)
    y = m.forward(x)
    assert (np.diff(y) >= 0).all() and y[0] == 0 and y[-1] == 1
    assert m.inverse(y) == pytest.approx(x, abs=1e-6)
    codes_in_brain = 255 * (m.forward(75) - m.forward(-5))
    minmax_codes = 255 * 80 / 4095
    assert codes_in_brain > 10 * minmax_codes  # 5 codes over the brain window with min/max
    assert mapping.make("minmax", 0, 10, []).x == (0, 10)
    with pytest.raises(ValueError, match="unknown value mapping 'gamma'"):
        mapping.check("gamma")


def test_head_ct_in_its_brain_window_with_the_defaults():
    """Regression: with the defaults, head CT brain tissue was off by ~58 HU and 11.3 dB in its
    own window (CT2_UNC) while the private tags said 32 dB. Target: >= 25 dB in the brain
    window and <= 10 HU mean absolute error over soft tissue, at <= 0.5 bpp."""
    from dicom_cae.model import load

    path = shared("ct", "nema-wg04", "CT2_UNC.dcm")
    pipe = pipeline.Pipeline(load(), batch_size=4)  # the defaults: window mapping, DEFAULT_QUALITY
    d = pipe.run([pipe.prepare(io.read(path), str(path), quality=pipeline.DEFAULT_QUALITY)])[0]
    tags = private_tags.read(d.dataset)
    assert tags["ValueMapping"] == "window" and tags["DisplayWindowName"] == ["BRAIN"]
    assert tags["BitsPerPixel"][0] <= 0.5
    assert tags["DisplayPSNR"][0] >= 25.0
    assert tags["HUMeanAbsoluteError"][0] <= 10.0 and abs(tags["HUBias"][0]) <= 2.0
    # The same through the seed's mapping is what the issue saw: far worse in the window.
    seed = pipeline.Pipeline(load(), batch_size=4, mapping="minmax")
    s = seed.run([seed.prepare(io.read(path), str(path), quality=10)])[0]
    assert s.frames[0].display_model[0].quality.psnr < 15 and s.frames[0].hu_model.mae > 40


def test_head_ct_at_the_defaults_shows_no_blocks_in_its_brain_window(pipe):
    """Issue 15: at the defaults the derived head CT showed JPEG's 8x8 blocks over the whole
    brain in its BRAIN window (blockiness 1.57 x the original's, plain JPEG 1.88) while its
    PSNR and HU error looked fine. Target: <= 1.15 x the original's, with the model applied
    and its block edges smoothed, said in the tags and in the Derivation Description."""
    path = shared("ct", "nema-wg04", "CT2_UNC.dcm")
    d = pipe.run([pipe.prepare(io.read(path), str(path), quality=pipeline.DEFAULT_QUALITY)])[0]
    tags = private_tags.read(d.dataset)
    assert tags["DisplayWindowName"] == ["BRAIN"] and tags["ModelWeight"][0] > 0  # 0.75: best seen (the guard)
    assert tags["EdgeFilter"] == "ramp 1" and "block edges smoothed (filter ramp 1" in d.dataset.DerivationDescription
    blockiness = tags["DisplayBlockiness"][0] / tags["OriginalDisplayBlockiness"][0]
    assert blockiness <= 1.15 < tags["JPEGOnlyDisplayBlockiness"][0] / tags["OriginalDisplayBlockiness"][0]
    assert tags["DisplayPSNR"][0] > tags["JPEGOnlyDisplayPSNR"][0] and tags["HUMeanAbsoluteError"][0] <= 10.0


def test_the_default_model_filters_its_block_edges_and_says_so(pipe):
    """Issue 15, on the samples (no shared data needed): the deblock model's output is its raw
    output with codec.smooth_block_edges applied, at the coding's strength, and the derived
    instance names the filter (EdgeFilter, Derivation Description); the seed's is not filtered."""
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    img = image.prepare(ds, "ct", mapping=pipe.mapping)
    r = pipe.reconstructor
    for size, name in ((256, "ramp 1"), (128, "ramp 0.5")):
        jpeg = codec.decode_to(codec.encode_at(img.unit[0], 10, size))[None]
        raw = r(jpeg, 10, mapping=pipe.mapping, coding_size=size, filter_edges=False)
        filtered = r(jpeg, 10, mapping=pipe.mapping, coding_size=size)
        assert not np.array_equal(raw, filtered)
        np.testing.assert_array_equal(filtered, codec.smooth_block_edges(raw, 10, size))
        prep = pipeline.compress(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", img, 10, coding_size=size)
        (d,) = pipe.run([prep])
        tags = private_tags.read(d.dataset)
        assert tags["ModelWeight"][0] > 0, size
        assert tags["EdgeFilter"] == name and f"block edges smoothed (filter {name}" in d.dataset.DerivationDescription
        assert "the mean of its outputs over 4 flips of its input" in d.dataset.DerivationDescription
    # Where the guard stores the JPEG decode alone, no filter is named (nothing of it is stored).
    prep = pipeline.compress(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", img, 90, coding_size=128)
    (d,) = pipe.run([prep])
    tags = private_tags.read(d.dataset)
    assert tags["ModelWeight"] == [0.0] and "EdgeFilter" not in tags and "smoothed" not in d.dataset.DerivationDescription
    assert "flips" not in d.dataset.DerivationDescription
    from dicom_cae.model import load

    seed = pipeline.Pipeline(load("seed"), mapping="minmax")
    (s,) = seed.run([seed.prepare(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", quality=10)])
    assert "EdgeFilter" not in private_tags.read(s.dataset) and "smoothed" not in s.dataset.DerivationDescription


def test_the_seeds_metrics_are_unchanged_by_the_mapping(pipe):
    """The seed's PSNR is always on the min/max image: with minmax it is the coded space itself."""
    ds = io.read(SAMPLES / "ct_phantom_2.dcm")
    seed = pipeline.Pipeline(pipe.reconstructor, batch_size=4, mapping="minmax")
    prep = seed.prepare(ds, "ct", quality=10)
    d = seed.run([prep])[0]
    stored = image.from_stored(d.dataset.pixel_array[None], prep.norm)
    assert d.frames[0].model.psnr == pytest.approx(metrics.psnr(prep.reference[0], stored[0]), abs=1e-3)


def test_coding_at_128_decodes_back_to_256():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.5, 0.1, (256, 256)), 0, 1).astype(np.float32)
    data = codec.encode_at(img, 20, 128)
    from PIL import Image
    import io as _io

    assert Image.open(_io.BytesIO(data)).size == (128, 128)
    assert codec.decode_to(data).shape == (256, 256)
    with pytest.raises(ValueError, match="coding size"):
        codec.encode_at(img, 20, 64)


def test_a_byte_budget_picks_size_and_quality_and_beats_plain_jpeg_there(pipe):
    """At the seed's operating point (compression ratio 0.0093) the 256x256 JPEG is starved:
    the encoder codes a smaller image where that stores a better one, within the budget."""
    path = shared("ct", "lung-dx-a0002-b40f", "1-07.dcm")
    seed = pipeline.Pipeline(pipe.reconstructor, batch_size=4, mapping="minmax")
    target = pipeline.RatioTarget(0.0093)
    prep = seed.prepare_for_ratio(io.read(path), str(path), target)
    d = seed.run([prep])[0]
    tags = private_tags.read(d.dataset)
    assert sum(prep.jpeg_bytes) <= target.budget
    assert tags["CodingSize"] == prep.coding_size < 256 and tags["TargetRatio"] == 0.0093
    assert f"reduced to {prep.coding_size}x{prep.coding_size}" in d.dataset.DerivationDescription
    plain = seed.run([seed.prepare(io.read(path), str(path), quality=1)])[0]  # quality 1 at 256x256
    assert plain.frames[0].jpeg_bytes <= target.budget * 1.05
    assert d.frames[0].model.psnr > plain.frames[0].model.psnr + 0.5
    assert seed.key(target) != seed.key(1)


def test_convert_says_what_the_output_is(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["convert", "--no-progress", str(SAMPLES / "ct_phantom_1.dcm"), str(out)]) == 0
    (path,) = derived_images(out)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "not for primary diagnosis" in ds.ImageComments and "not for primary diagnosis" in ds.DerivationDescription
    assert "window-aware" in ds.DerivationDescription
    report = json.loads(next(out.glob("*/report.json")).read_text())
    assert "not for primary diagnosis" in report["use"]
    assert report["summary"]["display_psnr"]["model"]["mean"] > 20
    assert report["summary"]["hu_mae"]["model"]["mean"] is not None
    assert report["per_image"][0]["worst_window"] == "C40/W400"
    html = next(out.glob("*/report.html")).read_text()
    assert html.index("PSNR in the worst display window") < html.index("PSNR, min/max image (seed's, dB)")
    assert "not for primary diagnosis" in html


def test_a_window_name_with_a_line_break_does_not_stop_the_report(tmp_path):
    """Regression: window names written joined by newlines were read back with splitlines(),
    which also splits on \\x85 (a cp1252 ellipsis read as ISO_IR 100): the report failed."""
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    ds.WindowCenter, ds.WindowWidth = ["40", "500"], ["80", "2000"]
    ds.WindowCenterWidthExplanation = ["BRAIN\x85X", "BONE\nY"]
    ds.save_as(src / "ct.dcm")
    out = tmp_path / "out"
    assert cli.main(["convert", "--no-progress", str(src), str(out)]) == 0
    report = json.loads(next(out.glob("*/report.json")).read_text())
    assert sorted(report["display_windows"]) == ["BONE\\nY", "BRAIN\\x85X"]


def test_a_window_edge_at_the_frames_maximum_keeps_the_mapping_increasing():
    m = mapping.make("window", -1024, 3071, [(2995.7 - 50.2, 2995.7 + 50.2), (-100.0, 200.0)])
    assert (np.diff(m.x) > 0).all() and (np.diff(m.y) > 0).all()


def test_a_reconstruction_below_plain_jpeg_is_not_stored():
    """Issue 8: never below plain JPEG at the same bytes. A frame whose reconstruction is worse
    than the JPEG decode (here: the decode with noise added) stores the JPEG decode, says so,
    and its metrics are those of what is stored; a better one (the original itself) is kept."""
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    prep = pipeline.prepare(ds, "ct_phantom_1.dcm", quality=10)
    noisy = np.clip(prep.jpeg + np.random.default_rng(0).normal(0, 0.05, prep.jpeg.shape), 0, 1).astype(np.float32)
    worse = pipeline.finish(prep, noisy, model_name="test", weights_sha256="0" * 64)
    tags = private_tags.read(worse.dataset)
    assert tags["ModelWeight"] == [0.0]
    assert worse.frames[0].model.psnr == pytest.approx(worse.frames[0].jpeg.psnr, abs=0.05)
    assert np.array_equal(worse.dataset.pixel_array, image.to_stored(prep.jpeg, prep.norm)[0])
    assert "JPEG decode kept: the reconstruction by test was below it" in worse.dataset.DerivationDescription

    better = pipeline.finish(prep, prep.reference, model_name="test", weights_sha256="0" * 64)
    assert private_tags.read(better.dataset)["ModelWeight"] == [1.0]
    assert better.frames[0].model.psnr > better.frames[0].jpeg.psnr + 3
    assert metrics.not_below(better.frames[0].scores("model"), better.frames[0].scores("jpeg"))


def test_part_of_a_correction_is_stored_where_all_of_it_would_be_below_jpeg():
    """A correction that overshoots (three times the way to the original) is below JPEG at full
    weight, 0.9 and 0.75 (2x, 1.7x and 1.25x JPEG's error), not at 0.5 or 0.25 (half and a
    quarter of it): the quarter, which a viewer sees best, is stored, and the tags say 0.25."""
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    prep = pipeline.prepare(ds, "ct_phantom_1.dcm", quality=10)
    overshoot = prep.jpeg + 3.0 * (prep.reference - prep.jpeg)
    derived = pipeline.finish(prep, overshoot.astype(np.float32), model_name="test", weights_sha256="0" * 64)
    assert private_tags.read(derived.dataset)["ModelWeight"] == [0.25]
    quarter = prep.jpeg + 0.25 * (overshoot - prep.jpeg)
    assert np.array_equal(derived.dataset.pixel_array, image.to_stored(quarter.astype(np.float32), prep.norm)[0])
    assert "JPEG decode + 0.25 x its correction" in derived.dataset.DerivationDescription


def test_every_coding_size_is_restored_by_the_model_told_its_size(pipe):
    """Issue 8, then 15: the decodes of a smaller coding (upsampled to 256) are restored by the
    default model told the coding size, in one batch with other sizes (each frame gets its own
    size); a model not told the size (the seed) passes them through."""
    from dicom_cae.model import load

    img = image.prepare(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", mapping=pipe.mapping)
    preps = {size: pipeline.compress(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", img, 10, coding_size=size)
             for size in (128, 160, 256)}
    outs = dict(zip(preps, pipe.reconstruct(list(preps.values()))))
    for size, prep in preps.items():
        assert not np.allclose(outs[size], prep.jpeg, atol=1e-3), size
        assert np.allclose(pipe.reconstructor(prep.jpeg, 10, coding_size=size), outs[size], atol=1e-5), size
    seed = pipeline.Pipeline(load("seed"), mapping=pipe.mapping)
    (passed,) = seed.reconstruct([preps[160]])
    assert np.array_equal(passed, preps[160].jpeg)


def test_a_reconstruction_with_more_blocking_than_plain_jpeg_is_not_stored():
    """Issue 15: never below plain JPEG, in blocking too. A "reconstruction" that is the
    original plus a faint 8x8-block pattern beats the JPEG decode (quality 85) in PSNR in
    every display window, yet shows more blocking in them (both computed here independently,
    through each window): the JPEG decode is stored, and the tags say so."""
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    prep = pipeline.prepare(ds, "ct_phantom_1.dcm", quality=85)
    blocks = np.random.default_rng(0).normal(0, 1, (32, 32)).repeat(8, 0).repeat(8, 1)
    blocky = np.clip(prep.reference + 0.6 / 255 * blocks, 0, 1).astype(np.float32)
    ref = prep.modality[0]
    shown = {name: image.unit_to_modality(x, prep.norm)[0] for name, x in (("blocky", blocky), ("jpeg", prep.jpeg))}
    edges = codec.block_edges(256)
    for w in prep.windows:
        assert metrics.psnr(w.apply(ref), w.apply(shown["blocky"])) > metrics.psnr(w.apply(ref), w.apply(shown["jpeg"]))
    assert max(metrics.blockiness(w.apply(shown["blocky"]), edges) for w in prep.windows) > \
        max(metrics.blockiness(w.apply(shown["jpeg"]), edges) for w in prep.windows)
    derived = pipeline.finish(prep, blocky, model_name="test", weights_sha256="0" * 64)
    tags = private_tags.read(derived.dataset)
    assert tags["ModelWeight"] == [0.0]
    assert np.array_equal(derived.dataset.pixel_array, image.to_stored(prep.jpeg, prep.norm)[0])
    assert tags["DisplayBlockiness"] == tags["JPEGOnlyDisplayBlockiness"]


def test_the_reports_worst_window_column_is_the_worst_window_recomputed_from_the_pixels(tmp_path):
    """Issue 19 behaviour 1: report.json's display_psnr / display_ssim per image are the lowest
    over the windows, recomputed here from the derived pixels and the source through each
    window (a CT that names a brain and a lung window: their figures differ widely)."""
    from dicom_cae import report

    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["80", "1500"]
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "ct.dcm")
    assert cli.main(["convert", "--no-progress", "--quality", "10", str(src), str(tmp_path / "out")]) == 0
    (path,) = derived_images(tmp_path / "out")
    derived = pydicom.dcmread(path)
    tags = private_tags.PrivateBlock.from_dataset(derived)
    stored = image.stored_to_modality(derived.pixel_array[None].astype(np.float64), private_tags.normalization(derived, tags))[0]
    reference = image.prepare(io.read(src / "ct.dcm"), "ct", mapping=tags.ValueMapping).modality[0]
    windows = [display.Window(n, c, w, "source") for n, c, w in zip(tags.DisplayWindowName, tags.DisplayWindowCenter, tags.DisplayWindowWidth)]
    psnrs = [metrics.psnr(w.apply(reference), w.apply(stored)) for w in windows]
    ssims = [metrics.ssim(w.apply(reference).astype(np.float32), w.apply(stored).astype(np.float32)) for w in windows]
    assert max(psnrs) - min(psnrs) > 3  # the windows really differ
    (row,) = report.build(path.parent.parent)["per_image"]
    assert row["display_psnr"] == pytest.approx(min(psnrs), abs=0.01)
    assert row["display_ssim"] == pytest.approx(min(ssims), abs=0.002)
    assert row["worst_window"] == windows[int(np.argmin(psnrs))].name


def test_the_guard_compares_in_the_worst_window_not_the_best():
    """Issue 19 behaviour 2: a reconstruction better than plain JPEG in a wide window but worse
    in the narrow one (exact outside the narrow window's values, noisy inside) is not stored
    whole; the figures are recomputed here through each window."""
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["80", "1500"]
    prep = pipeline.prepare(ds, "ct", quality=30)
    narrow = min(prep.windows, key=lambda w: w.width)
    inside = (prep.modality[0] > narrow.span[0]) & (prep.modality[0] < narrow.span[1])
    noise = np.random.default_rng(0).normal(0, 0.06, prep.reference.shape) * inside
    recon = np.clip(prep.reference + noise, 0, 1).astype(np.float32)
    ref = prep.modality[0]
    test = {"recon": image.unit_to_modality(recon, prep.norm)[0], "jpeg": image.unit_to_modality(prep.jpeg, prep.norm)[0]}
    score = {k: [metrics.psnr(w.apply(ref), w.apply(v)) for w in prep.windows] for k, v in test.items()}
    better_somewhere = any(r > j for r, j in zip(score["recon"], score["jpeg"]))
    assert better_somewhere and min(score["recon"]) < min(score["jpeg"])
    derived = pipeline.finish(prep, recon, model_name="test", weights_sha256="0" * 64)
    assert private_tags.read(derived.dataset)["ModelWeight"] != [1.0]
    stored = derived.frames[0]
    assert min(q.quality.psnr for q in stored.display_model) >= min(q.quality.psnr for q in stored.display_jpeg)


def test_a_ct_that_names_only_wide_windows_is_measured_in_soft_tissue_too():
    """Issue 19 behaviour 3: the CT soft-tissue window is added when the source names no window
    as narrow (a lung or a bone window alone), not only when it names none."""
    ct = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    values = np.linspace(-1000, 1000, 100)
    for center, width in (("-600", "1500"), ("400", "1800")):
        ct.WindowCenter, ct.WindowWidth = center, width
        assert [w.origin for w in display.windows(ct, values)] == ["source", "soft-tissue"]
    ct.WindowCenter, ct.WindowWidth = ["-600", "40"], ["1500", "350"]
    assert [w.origin for w in display.windows(ct, values)] == ["source", "source"]


def test_the_ratio_search_goes_on_to_smaller_sizes_when_a_larger_cannot_fit():
    """Issue 19 behaviour 4: with a budget that 256 and 224 cannot meet even at quality 1 but
    smaller codings can, the search still finds a size (the sizes are tried down to 128)."""
    noisy = np.random.default_rng(0).random((1, 256, 256)).astype(np.float32)
    q1 = {s: len(codec.encode_at(noisy[0], 1, s)) for s in codec.CODING_SIZES}
    assert q1[256] > q1[128]
    budget = (q1[192] + q1[160]) // 2 if q1[192] > q1[160] else q1[128] + 1
    assert q1[256] > budget and q1[224] > budget
    size, quality = targets.choose_coding(noisy, budget, lambda jpeg, q, s: jpeg)
    assert size is not None and size < 224 and len(codec.encode_at(noisy[0], quality, size)) <= budget


def test_a_smaller_coding_is_described_by_the_weights_that_restore_it(pipe):
    """Issue 19 behaviour 5: a frame coded at 128x128 is described (model, weights hash,
    Derivation Description) by the weights that served it, and a coding no weights serve (the
    seed model, trained for 256x256 JPEG only) says that the decode passed through."""
    from dicom_cae.model import load

    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    img = image.prepare(ds, "ct", mapping=pipe.mapping)
    prep = pipeline.compress(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", img, 10, coding_size=128)
    served = pipe.reconstructor.for_coding(10, pipe.mapping, 128)
    assert served is not None
    (d,) = pipe.run([prep])
    tags = private_tags.read(d.dataset)
    assert tags["WeightsSHA256"] == served.sha256 and tags["ModelName"] == served.name
    assert tags["CodingSize"] == 128 and "reduced to 128x128" in d.dataset.DerivationDescription
    assert f"reconstructed by convolutional autoencoder {served.name}" in d.dataset.DerivationDescription
    assert "has no weights for" not in d.dataset.DerivationDescription
    seed = pipeline.Pipeline(load("seed"), mapping=pipe.mapping)
    assert seed.reconstructor.for_coding(10, pipe.mapping, 128) is None
    (kept,) = seed.run([prep])
    assert private_tags.read(kept.dataset)["ModelWeight"] == [0.0]
    assert "JPEG decode kept: seed has no weights for a 128x128 coding" in kept.dataset.DerivationDescription


def test_the_default_quality_spends_no_more_than_the_defaults_before_the_trellis_encoder():
    """Issue 15: the defaults must reach the display targets by a better codec, not by spending
    more bytes. The trellis encoder at quality 30 spent 0.456 bpp on the validation CT, above the
    0.425 of the defaults before it (Pillow's encoder at 30). The default quality now spends no
    more than Pillow at 30 on validation CT slices (here chest CT A0002, the pancreas CT and the
    NEMA head CT), and plain JPEG there is already ahead of Pillow's in the worst display window."""
    from dicom_cae import dataset, evaluation

    roots = [shared("ct", name) for name in ("lung-dx-a0002-b40f", "pancreas-ct-cb-001", "nema-wg04")]
    images = dataset.load(roots, mapping=mapping.DEFAULT)
    pick = np.linspace(0, len(images) - 1, 24).round().astype(int)
    new, new_bytes = evaluation.jpeg_set(images.images[pick], pipeline.DEFAULT_QUALITY)
    old, old_bytes = evaluation.jpeg_set(images.images[pick], 30, encoder=codec.PILLOW)
    assert new_bytes.mean() <= old_bytes.mean()

    def worst(decoded: np.ndarray) -> float:
        return float(np.mean([evaluation.measure_view(images.modality[i], decoded[k], images.views[i], "CT")["display_psnr"]
                              for k, i in enumerate(pick)]))

    assert worst(new) > worst(old) + 0.5


def test_a_default_conversion_keeps_the_models_correction_on_chest_ct(pipe):
    """Issue 15: at the defaults the model must contribute (ModelWeight > 0) on >= 90 % of
    frames. At quality 27 (the flat table's step 30) the never-below-JPEG guard stored plain
    JPEG on 29 of chest CT A0002's 30 slices: the model smoothed the texture that JPEG keeps at
    that step, and the seed's SSIM fell at every weight (the default is now 26)."""
    paths = sorted(shared("ct", "lung-dx-a0002-b40f").glob("*.dcm"))
    derived = pipe.run([pipe.prepare(io.read(p), str(p), quality=pipeline.DEFAULT_QUALITY) for p in paths])
    weights = [private_tags.read(d.dataset)["ModelWeight"][0] for d in derived]
    assert len(weights) == len(paths) >= 20
    assert np.mean([w > 0 for w in weights]) >= 0.9


def test_a_partial_correction_has_its_block_edges_smoothed_again():
    """Issue 15: where the guard keeps part of the model's correction (JPEG + w x correction),
    JPEG's share brought its block steps back (at the seed's budget CT was left at 1.41 x the
    original's blockiness). The blend's block edges are smoothed again when the model's were;
    the smoothed blend is stored when it is not below plain JPEG, and it shows fewer blocks than
    the blend as it is."""
    from dicom_cae import guard

    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    prep = pipeline.prepare(ds, "ct", quality=10)
    filtered = codec.smooth_block_edges(prep.jpeg, 10)
    noise = np.random.default_rng(0).normal(0, 0.005, prep.jpeg.shape).astype(np.float32)
    recon = np.clip(filtered + noise, 0, 1)  # the whole correction is noisier than JPEG: a part is kept
    windows = list(prep.windows)
    stored = {}
    for edge_quality in (None, 10):
        _, (frame,), (weight,) = guard.choose_stored(prep.modality, prep.jpeg, recon, prep.norm, windows, is_ct=True,
                                                     edge_quality=edge_quality)
        stored[edge_quality] = weight, frame.stored.summary(frame.original_blockiness), frame.plain.summary(
            frame.original_blockiness)
    (w_as_is, as_is, jpeg), (w_smoothed, smoothed, _) = stored[None], stored[10]
    assert 0 < w_as_is < 1 and 0 < w_smoothed < 1
    assert smoothed["display_blockiness"] < as_is["display_blockiness"] <= jpeg["display_blockiness"]
    assert metrics.not_below(smoothed, jpeg)
    # The pipeline asks for it where the model's output was filtered, and only there.
    for edge_filter, expected in ((True, smoothed), (False, as_is)):
        frame = pipeline.finish(prep, recon, model_name="test", weights_sha256="0" * 64, edge_filter=edge_filter).frames[0]
        assert frame.stored.summary(frame.original_blockiness)["display_blockiness"] == expected["display_blockiness"]
    candidates = list(guard.stored_candidates(prep.jpeg[0], recon[0], 0.5, edge_quality=10))
    blend = prep.jpeg[0] + 0.5 * (recon[0] - prep.jpeg[0])
    np.testing.assert_array_equal(candidates[1], blend)
    np.testing.assert_array_equal(candidates[0], codec.smooth_block_edges(blend[None], 10, strength=0.5)[0])
    assert [np.array_equal(c, recon[0]) for c in guard.stored_candidates(prep.jpeg[0], recon[0], 1.0, edge_quality=10)] == [True]
    assert len(list(guard.stored_candidates(prep.jpeg[0], recon[0], 0.5))) == 1


def _at_quality_22(pipe):
    """The CT phantom coded at quality 22, the model's reconstruction, and the frame as shown."""
    from dicom_cae import display

    prep = pipe.prepare(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", quality=22)
    recon = pipe.reconstructor(prep.jpeg, 22, mapping=pipe.mapping, coding_size=256)
    one = image.one_frame(prep.norm, 0)
    shown = display.Shown(prep.modality[0], list(prep.windows), invert=prep.norm.invert)
    return prep, recon, lambda unit: shown.worst_psnr(image.unit_to_modality(unit[None], one)[0]), shown, one


def test_a_partial_correction_is_smoothed_only_as_much_as_jpegs_share_brought_back(pipe):
    """Issue 15: JPEG + 0.75 x correction brings back a quarter of JPEG's block steps, and the
    filter smoothed them at its full strength, taking the image's own steps across the block
    edges for blocks: in the worst window that blend lost 0.14 dB on this phantom against the
    same blend as it is (0.2-0.3 dB on the validation CT). At JPEG's share of the strength it
    keeps the blend's PSNR and still shows fewer blocks."""
    from dicom_cae import guard

    prep, recon, worst, shown, _ = _at_quality_22(pipe)
    smoothed, as_is = guard.stored_candidates(prep.jpeg[0], recon[0], 0.75, edge_quality=22)
    assert worst(smoothed) >= worst(as_is) - 0.03
    blocking = [max(q.blockiness for q in shown.measure(image.unit_to_modality(u[None], image.one_frame(prep.norm, 0))[0]))
                for u in (smoothed, as_is)]
    assert blocking[0] < blocking[1]


def test_the_guard_stores_the_weight_whose_image_a_viewer_sees_best(pipe):
    """Issue 15: above quality 15 the model corrects a little more than the error it sees, and
    on this phantom at quality 22 half of its correction shows best in the worst window (29.74
    dB against 29.63 for all of it). The guard tried the weights from 1 down and stored the
    first not below plain JPEG: all of it. It now ranks them by what a viewer sees (the worst
    window's PSNR) and stores the best that is not below JPEG in any guarded metric."""
    from dicom_cae import guard

    prep, recon, worst, shown, one = _at_quality_22(pipe)
    seen = {w: worst(next(iter(guard.stored_candidates(prep.jpeg[0], recon[0], w, edge_quality=22))))
            for w in metrics.MODEL_WEIGHTS[:-1]}
    assert guard.ranked_weights(prep.jpeg[0], recon[0], shown, one, edge_quality=22) == tuple(
        sorted(seen, key=lambda w: -seen[w]))
    _, (frame,), (weight,) = guard.choose_stored(prep.modality, prep.jpeg, recon, prep.norm, list(prep.windows),
                                                 is_ct=True, edge_quality=22)
    stored = frame.stored.scores()["display_psnr"]
    assert weight < 1 and seen[weight] == max(seen.values())
    assert stored >= seen[1.0] + 0.05
    assert metrics.not_below(frame.stored.scores(), frame.plain.scores())


def test_weights_that_show_alike_keep_the_order_more_of_the_model_first():
    """Ties in the guard's ranking (here: a reconstruction equal to the JPEG decode, so every
    weight's image is the same) keep MODEL_WEIGHTS' order, and so does a frame shown in no
    window."""
    from dicom_cae import guard

    prep = pipeline.prepare(io.read(SAMPLES / "ct_phantom_1.dcm"), "ct", quality=26)
    one = image.one_frame(prep.norm, 0)
    shown = display.Shown(prep.modality[0], list(prep.windows), invert=prep.norm.invert)
    assert guard.ranked_weights(prep.jpeg[0], prep.jpeg[0].copy(), shown, one) == metrics.MODEL_WEIGHTS[:-1]
    better = prep.jpeg[0] + 0.5 * (prep.reference[0] - prep.jpeg[0])  # half way to the original
    assert guard.ranked_weights(prep.jpeg[0], better, shown, one)[0] == 1.0
    nowhere = display.Shown(prep.modality[0], [], invert=prep.norm.invert)
    assert guard.ranked_weights(prep.jpeg[0], better, nowhere, one) == metrics.MODEL_WEIGHTS[:-1]
