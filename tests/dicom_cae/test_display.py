"""display.py against figures computed here: the windows a source carries, their mapping, the
measures taken through them and the HU error. No TensorFlow."""

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicom_cae import codec, display, metrics


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def _lut_item(table, first, bits=16, n=None, explanation=None, as_bytes=False) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table) if n is None else n, first, bits]
    item.LUTData = np.asarray(table, "<u2").tobytes() if as_bytes else list(table)
    if explanation is not None:
        item.LUTExplanation = explanation
    return item


# --- Window.apply and span -------------------------------------------------------------------


@pytest.mark.parametrize("center,width", [(40.0, 400.0), (35.0, 80.0), (-600.0, 1500.0), (0.5, 2.0)])
def test_a_linear_window_maps_as_ps3_3_c11_2_1_2_1_says(center, width):
    x = np.linspace(center - width, center + width, 997)
    want = np.empty_like(x)
    for i, v in enumerate(x):  # the standard's piecewise form, written out
        if v <= center - 0.5 - (width - 1) / 2:
            want[i] = 0.0
        elif v > center - 0.5 + (width - 1) / 2:
            want[i] = 1.0
        else:
            want[i] = (v - (center - 0.5)) / (width - 1) + 0.5
    got = display.Window("w", center, width, "source").apply(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got.min() == 0.0 and got.max() == 1.0


def test_a_window_of_width_one_is_a_threshold_not_a_division_by_zero():
    got = display.Window("w", 100.0, 1.0, "source").apply(np.array([98.0, 99.0, 99.5, 100.0, 101.0]))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_a_voi_lut_maps_through_its_table_from_its_first_value_and_clips_outside():
    table = (0, 100, 4095, 2000)
    w = display.Window("lut", 0.0, 0.0, "source", lut=table, lut_first=-1.0, lut_bits=12)
    got = w.apply(np.array([-5.0, -1.0, -0.2, 0.0, 0.6, 2.0, 9.0]))
    np.testing.assert_allclose(got, np.array([0, 0, 100, 100, 4095, 2000, 2000]) / 4095.0)
    assert w.span == (-1.0, 2.0)


def test_span_of_a_linear_window_is_centre_plus_minus_half_the_width():
    assert display.Window("w", 40.0, 400.0, "soft-tissue").span == (-160.0, 240.0)


# --- what a source carries --------------------------------------------------------------------


def test_window_pairs_are_read_with_their_explanations_and_labels_for_the_rest():
    ds = _ds(WindowCenter=[40, 35, 300], WindowWidth=[400, 80, 0.5],
             WindowCenterWidthExplanation=["SOFT", ""])
    wins = display.source_windows(ds)
    # the third pair (width below 1) is no window
    assert [(w.name, w.center, w.width, w.origin) for w in wins] == [("SOFT", 40.0, 400.0, "source"),
                                                                      ("C35/W80", 35.0, 80.0, "source")]
    assert all(w.lut is None for w in wins)


def test_one_window_pair_single_valued_is_read_and_width_one_is_kept():
    wins = display.source_windows(_ds(WindowCenter=12.5, WindowWidth=1))
    assert [(w.name, w.center, w.width) for w in wins] == [("C12.5/W1", 12.5, 1.0)]


def _raw(keyword_values) -> Dataset:
    """A dataset holding values as received, not checked when set (as read from a file)."""
    ds = Dataset()
    for keyword, (vr, value) in keyword_values.items():
        t = Tag(keyword)
        ds[t] = RawDataElement(t, vr, len(value), value, 0, True, True)
    return ds


def test_windows_that_are_not_numbers_or_not_finite_are_passed_over():
    assert display.source_windows(_raw({"WindowCenter": ("DS", b"abc "), "WindowWidth": ("DS", b"400 ")})) == []
    assert display.source_windows(_raw({"WindowCenter": ("DS", b"40"), "WindowWidth": ("DS", b"4x0 ")})) == []
    assert display.source_windows(_ds(WindowCenter=["nan", "40"], WindowWidth=["400", "inf"])) == []
    assert display.source_windows(_ds(WindowCenter="", WindowWidth="")) == []
    assert display.source_windows(Dataset()) == []


def test_a_received_explanation_becomes_one_bounded_printable_line():
    ds = _ds(WindowCenter=40, WindowWidth=400, WindowCenterWidthExplanation="A" * 60 + "\x1b[2J" + "B" * 20)
    (w,) = display.source_windows(ds)
    assert len(w.name) <= 64 and "\x1b" not in w.name and w.name.startswith("A" * 60)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_voi_lut_item_becomes_a_window_spanning_its_table(as_bytes):
    table = [0, 10, 500, 4095, 4095]
    ds = Dataset()
    ds.VOILUTSequence = Sequence([_lut_item(table, -2, bits=12, as_bytes=as_bytes, explanation="LUNG LUT"),
                                  _lut_item([7, 9, 11], 100)])
    a, b = display.source_windows(ds)
    assert (a.name, a.origin, a.lut, a.lut_first, a.lut_bits) == ("LUNG LUT", "source", tuple(table), -2.0, 12)
    assert (a.center, a.width, a.span) == (0.0, 5.0, (-2.0, 2.0))
    assert (b.name, b.lut, b.lut_first, b.lut_bits, b.center, b.width) == ("VOI LUT 2", (7, 9, 11), 100.0, 16, 101.0, 3.0)


def test_a_voi_lut_is_cut_to_its_descriptors_count_and_zero_means_65536():
    ds = Dataset()
    ds.VOILUTSequence = Sequence([_lut_item([1, 2, 3, 4, 5, 6], 0, n=4), _lut_item([5, 6, 7], 0, n=0)])
    a, b = display.source_windows(ds)
    assert a.lut == (1, 2, 3, 4) and a.span == (0.0, 3.0)
    assert b.lut == (5, 6, 7)


def test_a_voi_lut_that_cannot_serve_is_passed_over_and_the_rest_kept():
    broken = Dataset()
    broken.LUTDescriptor = [3, 0]  # two values, not three
    broken.LUTData = [1, 2, 3]
    ds = Dataset()
    ds.VOILUTSequence = Sequence([broken, _lut_item([1], 0), Dataset(), _lut_item([3, 4], 0)])
    (w,) = display.source_windows(ds)
    assert w.lut == (3, 4) and w.name == "VOI LUT 4"


# --- the windows measured ------------------------------------------------------------------------

FLAT = np.zeros((8, 8))


@pytest.mark.parametrize("modality", ["CT", "ct"])
def test_a_ct_naming_no_window_is_measured_in_soft_tissue(modality):
    (w,) = display.windows(_ds(Modality=modality), FLAT)
    assert (w.center, w.width, w.origin) == (40.0, 400.0, "soft-tissue")
    assert w.name == "soft tissue C40/W400"


def test_a_ct_window_as_narrow_as_soft_tissue_needs_no_soft_tissue_window():
    assert [w.origin for w in display.windows(_ds(Modality="CT", WindowCenter=50, WindowWidth=400), FLAT)] == ["source"]
    assert [w.origin for w in display.windows(_ds(Modality="CT", WindowCenter=50, WindowWidth=401), FLAT)] == [
        "source", "soft-tissue"]


def test_a_narrow_voi_lut_counts_as_a_narrow_window_for_ct():
    ds = _ds(Modality="CT")
    ds.VOILUTSequence = Sequence([_lut_item(list(range(100)), -10)])
    assert [w.origin for w in display.windows(ds, FLAT)] == ["source"]


def test_other_modalities_get_no_soft_tissue_window():
    wins = display.windows(_ds(Modality="MR", WindowCenter=600, WindowWidth=1200), FLAT)
    assert [(w.origin, w.center) for w in wins] == [("source", 600.0)]


def test_a_source_naming_no_window_is_measured_in_its_1st_to_99th_percentiles():
    values = np.arange(1000, dtype=np.float64).reshape(25, 40) * 2.0 - 300.0
    lo, hi = np.percentile(values, [1, 99])
    (w,) = display.windows(_ds(Modality="MR"), values)
    assert (w.name, w.origin) == ("p1-p99", "percentile")
    assert w.center == pytest.approx((lo + hi) / 2) and w.width == pytest.approx(hi - lo)
    # most of the image is spread over [0, 1]; the 1 % tails clip
    shown = w.apply(values)
    assert 0.01 <= np.mean(shown == 0.0) <= 0.02 and 0.005 <= np.mean(shown == 1.0) <= 0.02


def test_a_flat_source_naming_no_window_gets_a_window_one_wide_at_its_value():
    (w,) = display.windows(Dataset(), np.full((4, 4), 7.0))
    assert (w.center, w.width) == (7.5, 1.0 + 1e-3)
    assert np.all(np.isfinite(w.apply(np.full((4, 4), 7.0))))


def test_a_nearly_flat_source_keeps_a_window_at_least_one_wide():
    values = np.full((10, 10), 3.0)
    values[0, 0] = 3.4  # the 1st and 99th percentiles 0.4 apart at most
    (w,) = display.windows(Dataset(), values)
    lo, hi = np.percentile(values, [1, 99])
    assert w.width == 1.0 + 1e-3 and w.center == pytest.approx((lo + hi) / 2)


# --- measures through the windows ------------------------------------------------------------------


def _phantom(seed=0, n=256):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    return 40.0 + 60.0 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 3, (n, n))


def _blocky(img, block=8, amount=12.0):
    out = img.copy()
    n = img.shape[0]
    for by in range(0, n, block):
        for bx in range(0, n, block):
            out[by:by + block, bx:bx + block] += amount * ((by + bx) // block % 2 - 0.5)
    return out


def test_measure_is_the_metrics_of_each_window_as_shown():
    ref, test = _phantom(0), _phantom(0) + np.random.default_rng(5).normal(0, 8, (256, 256))
    wins = [display.Window("brain", 40.0, 80.0, "source"), display.Window("wide", 0.0, 2000.0, "source")]
    got = display.measure(ref, test, wins)
    edges = codec.block_edges(256)
    assert [g.window for g in got] == wins
    for g, w in zip(got, wins):
        r, t = w.apply(ref).astype(np.float32), w.apply(test).astype(np.float32)
        assert g.quality == metrics.measure(r, t)
        assert g.blockiness == pytest.approx(metrics.blockiness(t, edges))
        assert g.psnr_b == pytest.approx(metrics.psnr_b(r, t, edges, 8.0))
    assert got[0].quality.psnr < got[1].quality.psnr  # errors show more in the narrow window


def test_an_inverted_display_measures_the_image_as_monochrome1_shows_it():
    ref, test = _phantom(1), _phantom(1) + 5.0
    (w,) = wins = [display.Window("w", 40.0, 200.0, "source")]
    (g,) = display.measure(ref, test, wins, invert=True)
    r, t = (1.0 - w.apply(ref)).astype(np.float32), (1.0 - w.apply(test)).astype(np.float32)
    assert g.quality == metrics.measure(r, t)
    assert g.quality.mean_reference == pytest.approx(1.0 - float(np.mean(w.apply(ref))), abs=1e-6)


def test_blocking_is_measured_on_the_grid_of_the_coding():
    ref = _phantom(2)
    coarse = _blocky(ref, block=16)  # 8x8 blocks of a 128 coding, brought to 256
    w = [display.Window("w", 40.0, 200.0, "source")]
    on_16 = display.Shown(ref, w, coding_size=128)
    on_8 = display.Shown(ref, w)
    assert on_16.block == 16.0 and on_8.block == 8.0
    np.testing.assert_array_equal(on_16.edges, np.arange(16, 256, 16))
    (g16,), (g8,) = on_16.measure(coarse), on_8.measure(coarse)
    assert g16.blockiness > 2.0 and g16.blockiness > g8.blockiness
    shown = w[0].apply(coarse).astype(np.float32)
    assert g16.psnr_b == pytest.approx(metrics.psnr_b(w[0].apply(ref).astype(np.float32), shown,
                                                      np.arange(16, 256, 16), 16.0))
    assert on_16.original_blockiness[0] == pytest.approx(
        metrics.blockiness(w[0].apply(ref), np.arange(16, 256, 16)), rel=1e-6)
    assert 0.8 < on_16.original_blockiness[0] < 1.2


def test_a_shown_reference_measures_several_images_alike():
    ref = _phantom(3)
    wins = [display.Window("w", 40.0, 120.0, "source")]
    shown = display.Shown(ref, wins)
    for k in range(3):
        test = ref + np.random.default_rng(k).normal(0, 2 + 3 * k, ref.shape)
        assert shown.measure(test) == display.measure(ref, test, wins)
    assert display.WindowQuality(wins[0], shown.measure(ref)[0].quality).blockiness == 1.0
    assert math.isnan(display.WindowQuality(wins[0], shown.measure(ref)[0].quality).psnr_b)


# --- HU error --------------------------------------------------------------------------------------


def test_the_hu_error_is_taken_over_the_references_pixels_in_range_bounds_included():
    ref = np.array([[-1000.0, -100.0, 0.0], [50.0, 200.0, 201.0]])
    test = ref + np.array([[500.0, 4.0, -2.0], [6.0, -8.0, 900.0]])
    e = display.hu_error(ref, test)
    assert (e.range, e.pixels) == ((-100.0, 200.0), 4)
    assert e.mae == pytest.approx((4 + 2 + 6 + 8) / 4) and e.bias == pytest.approx((4 - 2 + 6 - 8) / 4)
    brighter = display.hu_error(ref, ref + 3.0)
    assert brighter.bias == pytest.approx(3.0) and brighter.mae == pytest.approx(3.0)
    e2 = display.hu_error(ref, test, (0.0, 60.0))
    assert e2.pixels == 2 and e2.bias == pytest.approx(2.0) and e2.mae == pytest.approx(4.0)


def test_no_pixel_in_range_gives_no_hu_error_figure():
    e = display.hu_error(np.full((3, 3), 1000.0), np.zeros((3, 3)))
    assert e.pixels == 0 and math.isnan(e.mae) and math.isnan(e.bias)


def test_a_voi_lut_window_by_default_starts_at_zero_with_16_bit_output():
    w = display.Window("lut", 1.0, 3.0, "source", lut=(0, 65535, 32768))
    np.testing.assert_allclose(w.apply(np.array([0.0, 1.0, 2.0])), [0.0, 1.0, 32768 / 65535])
    assert w.span == (0.0, 2.0)


def test_a_received_lut_explanation_is_bounded_too():
    ds = Dataset()
    ds.VOILUTSequence = Sequence([_lut_item([1, 2], 0, explanation="L" * 64)])
    ds.VOILUTSequence[0].LUTExplanation = "L" * 70
    (w,) = display.source_windows(ds)
    assert len(w.name) <= 64 and w.name.startswith("L" * 60)
