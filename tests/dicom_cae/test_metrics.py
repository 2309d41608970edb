import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from dicom_cae import codec, metrics
from tests.conftest import SAMPLES


def _pairs():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:256, :256] / 255.0
    smooth = 0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y)
    yield smooth, np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1)
    yield smooth, codec.jpeg_roundtrip(smooth, 5)[0]
    noise = rng.random((256, 256))
    yield noise, codec.jpeg_roundtrip(noise, 30)[0]
    yield smooth, smooth * 0.8 + 0.1


@pytest.mark.parametrize("pair", list(_pairs()), ids=["noise", "jpeg-smooth", "jpeg-noise", "contrast"])
def test_ssim_matches_scikit_image_gaussian(pair):
    ref, test = pair
    ours = metrics.ssim(ref, test)
    theirs = structural_similarity(
        ref, test, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert abs(ours - theirs) < 1e-3
    assert ours < 1.0


def test_ssim_of_identical_images_is_one_and_shape_is_checked():
    img = np.random.default_rng(1).random((64, 64))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2-D images of one shape"):
        metrics.ssim(img, img[:32])


def test_psnr_and_mse_definitions():
    ref = np.zeros((16, 16))
    test = np.full((16, 16), 0.1)
    assert metrics.mse(ref, test) == pytest.approx(0.01)
    assert metrics.psnr(ref, test) == pytest.approx(20.0)
    assert metrics.psnr(ref, ref) == math.inf


def test_pixel_accuracy_counts_pixels_within_the_tolerance():
    ref = np.zeros(100)
    test = np.zeros(100)
    test[:7] = metrics.PIXEL_TOLERANCE * 1.5
    test[7:10] = metrics.PIXEL_TOLERANCE  # exactly at the tolerance counts as accurate
    assert metrics.pixel_accuracy(ref, test) == pytest.approx(0.93)


def test_compression_ratio_is_compressed_over_8bit_256x256():
    assert metrics.compression_ratio(610) == pytest.approx(610 / 65536)
    assert metrics.bits_per_pixel(8192) == pytest.approx(1.0)


def test_regression_recovers_a_line_and_handles_degenerate_input():
    x = np.linspace(0.1, 0.6, 20)
    fit = metrics.regression(x, 0.9 * x + 0.02)
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((0.9, 0.02, 1.0))
    noisy = metrics.regression(x, 0.9 * x + np.random.default_rng(0).normal(0, 0.05, 20))
    assert 0 < noisy.r2 < 1
    assert math.isnan(metrics.regression([0.3], [0.3]).slope)


def test_sample_dir_exists():
    assert any(SAMPLES.glob("*.dcm"))


def test_ssim_is_wangs_with_an_11x11_window_and_its_constants():
    """Tighter than the scikit-image comparison: the window, K1, K2 and the data range each move
    the value in the fourth decimal or more."""
    rng = np.random.default_rng(5)
    ref = rng.random((64, 64))
    test = np.clip(ref + rng.normal(0, 0.2, ref.shape), 0, 1)
    theirs = structural_similarity(ref, test, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, K1=0.01, K2=0.03, truncate=3.5)
    assert metrics.ssim(ref, test) == pytest.approx(theirs, abs=2e-5)
    dark = np.zeros((32, 32))
    dark[8:24, 8:24] = 0.02  # low mean and contrast: the constants dominate
    assert metrics.ssim(dark, np.zeros((32, 32))) == pytest.approx(
        structural_similarity(dark, np.zeros((32, 32)), data_range=1.0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, K1=0.01, K2=0.03, truncate=3.5), abs=2e-5)


def test_psnr_with_another_data_range_and_accuracy_on_signed_errors():
    ref = np.full((10, 10), 100.0)
    test = ref - 2.0
    assert metrics.psnr(ref, test, data_range=255.0) == pytest.approx(10 * math.log10(255.0 ** 2 / 4.0))
    a = np.full((4, 4), 0.5)
    b = a.copy()
    b[0, 0] -= 0.15  # an error below the reference counts too
    assert metrics.pixel_accuracy(a, b) == pytest.approx(15 / 16)
    assert metrics.PIXEL_TOLERANCE == 0.1


def test_regression_r2_and_its_edges():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    y = np.array([0.12, 0.19, 0.33, 0.38, 0.52])
    fit = metrics.regression(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    assert (fit.slope, fit.intercept, fit.r2, fit.n) == pytest.approx((slope, intercept, r2, 5))
    two = metrics.regression([0.0, 1.0], [1.0, 3.0])  # two points: a line through both
    assert (two.slope, two.intercept, two.r2) == pytest.approx((2.0, 1.0, 1.0))
    flat = metrics.regression([1.0, 2.0], [5.0, 5.0])  # constant y: a perfect flat fit
    assert flat.r2 == 1.0 and flat.slope == pytest.approx(0.0)
    assert math.isnan(metrics.regression([1.0, 1.0], [2.0, 3.0]).slope)  # constant x
    assert metrics.regression([0.0, 1.0, float("nan")], [float("nan"), 1.0, 2.0]).n == 1


def test_the_error_histogram_counts_as_numpy_histogram_does():
    """Issue 9 (no full sorts per image): the one-pass histogram gives numpy's counts, values on
    the edges included (the last bin closed)."""
    import numpy as np

    from dicom_cae import private_tags
    from dicom_cae.guard import error_histogram

    edges = np.asarray(private_tags.ERROR_BIN_EDGES)
    err = np.random.default_rng(3).normal(0, 0.1, (256, 256)).astype(np.float32)
    err.ravel()[:41] = edges
    inner, _ = np.histogram(err, bins=edges)
    assert error_histogram(err, edges).tolist() == [int((err < edges[0]).sum()), *inner.tolist(), int((err > edges[-1]).sum())]


def test_a_reference_reused_gives_the_same_ssim():
    import numpy as np

    from dicom_cae import metrics

    rng = np.random.default_rng(4)
    x = rng.random((64, 64))
    ref = metrics.Reference(x)
    for _ in range(3):
        y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
        assert metrics.ssim(ref, y) == metrics.ssim(x, y)


def test_blockiness_is_one_without_blocks_and_grows_with_them():
    """Issue 15: the blocking measure. A smooth ramp scores 1; the same ramp with +0.01 on
    every other 8-pixel column block scores what the steps add, computed by hand; a 16-pixel
    grid (a 128 coding brought to 256) is seen most on its own grid."""
    from dicom_cae import codec

    y, x = np.mgrid[:256, :256] / 255.0
    smooth = 0.3 + 0.4 * x  # every horizontal step s, every vertical step 0
    s = 0.4 / 255
    assert metrics.blockiness(smooth, codec.block_edges(256)) == pytest.approx(1.0)
    blocky = smooth + 0.01 * ((np.arange(256) // 8) % 2)[None, :]
    # 31 vertical block edges: 16 enter a raised block (s + 0.01), 15 leave it (0.01 - s); the
    # 31 x 256 vertical steps across horizontal edges are 0. Elsewhere: s (horizontal), 0 (vertical).
    across = (16 * (s + 0.01) + 15 * (0.01 - s)) / 62
    assert metrics.blockiness(blocky, codec.block_edges(256)) == pytest.approx(across / (s / 2), rel=1e-6)
    assert list(codec.block_edges(128)[:3]) == [16, 32, 48] and len(codec.block_edges(256)) == 31
    wide = smooth + 0.01 * ((np.arange(256) // 16) % 2)[None, :]
    assert metrics.blockiness(wide, codec.block_edges(128)) > metrics.blockiness(wide, codec.block_edges(256)) > 1.5


def test_psnr_b_is_psnr_less_the_blocking_effect():
    """PSNR-B (Yim and Bovik 2011) equals PSNR for an error without blocks, and is lower than
    PSNR by the blocking effect factor when the error steps at the block edges."""
    from dicom_cae import codec

    edges = codec.block_edges(256)
    ref = np.full((256, 256), 0.5)
    noise = ref + np.random.default_rng(0).normal(0, 0.01, ref.shape)
    blocks = ref + np.kron(np.random.default_rng(1).normal(0, 0.01, (32, 32)), np.ones((8, 8)))
    assert metrics.psnr_b(ref, noise, edges) == pytest.approx(metrics.psnr(ref, noise), abs=0.05)  # noise: no edge stands out
    assert metrics.psnr_b(ref, blocks, edges) < metrics.psnr(ref, blocks) - 1.0
    h, v = np.diff(blocks, axis=1), np.diff(blocks, axis=0)
    across = np.concatenate([h[:, edges - 1].ravel(), v[edges - 1, :].ravel()])
    bef = np.log2(8) / np.log2(256) * np.mean(across ** 2)  # D_B^c is 0: constant inside blocks
    assert metrics.psnr_b(ref, blocks, edges) == pytest.approx(10 * np.log10(1 / (metrics.mse(ref, blocks) + bef)))


def test_the_guard_counts_blockiness_lower_as_better():
    jpeg = {"psnr": 30.0, "ssim": 0.9, "display_psnr": 28.0, "display_ssim": 0.85, "display_blockiness": 1.4}
    assert metrics.not_below({**jpeg, "psnr": 31.0, "display_blockiness": 1.1}, jpeg)
    assert not metrics.not_below({**jpeg, "psnr": 31.0, "display_blockiness": 1.5}, jpeg)


def test_blockiness_of_a_flat_image_and_of_steps_only_at_the_edges():
    from dicom_cae import codec

    edges = codec.block_edges(256)
    assert metrics.blockiness(np.full((256, 256), 0.4), edges) == 1.0  # no step anywhere: no blocks
    steps = np.tile(((np.arange(256) // 8) % 2) * 0.1, (256, 1))  # flat blocks, steps at their edges only
    assert metrics.blockiness(steps, edges) == math.inf


def test_the_guard_holds_every_guarded_figure_and_tries_the_weights_in_order():
    """Each of the GUARDED figures alone can refuse a stored image; a figure missing from either
    side is not compared; the weights are tried 1, 0.9, 0.75, 0.5, 0.25 (or in the order given), then the JPEG decode."""
    jpeg = {"psnr": 30.0, "ssim": 0.9, "display_psnr": 28.0, "display_ssim": 0.85, "display_blockiness": 1.4}
    assert metrics.GUARDED == ("psnr", "ssim", "display_psnr", "display_ssim", "display_blockiness")
    for k in metrics.GUARDED:
        worse = {**jpeg, k: jpeg[k] + (0.1 if k in metrics.LOWER_IS_BETTER else -0.1)}
        assert not metrics.not_below(worse, jpeg), k
    assert metrics.not_below({k: v for k, v in jpeg.items() if k != "display_blockiness"}, jpeg)
    assert metrics.MODEL_WEIGHTS == (1.0, 0.9, 0.75, 0.5, 0.25, 0.0)
    tried = []

    def measure(w):
        tried.append(w)
        return [{**jpeg, "psnr": 30.0 + (0.5 - w)}]  # better than JPEG from w = 0.5 down

    assert metrics.first_not_below(measure, lambda s: s, jpeg) == (0.5, {**jpeg, "psnr": 30.0})
    assert tried == [1.0, 0.9, 0.75, 0.5]
    tried.clear()
    # in the order given (the guard's: what a viewer sees best first), 0 never among them
    assert metrics.first_not_below(measure, lambda s: s, jpeg, order=(0.9, 0.25, 1.0)) == (0.25, {**jpeg, "psnr": 30.25})
    assert tried == [0.9, 0.25]
    tried.clear()
    with pytest.raises(ValueError, match="weight 0"):
        metrics.first_not_below(measure, lambda s: s, jpeg, order=(1.0, 0.0))
    assert metrics.first_not_below(lambda w: [{**jpeg, "ssim": 0.0}], lambda s: s, jpeg) == (0.0, None)


def test_the_guard_keeps_a_weights_first_image_not_below_jpeg_and_measures_no_further():
    """A weight may store one of several images (the blend with its block edges smoothed again,
    then as it is): the first not below JPEG is kept, the next is measured only when the first
    is below, and a weight with none goes on to the next weight."""
    jpeg = {"psnr": 30.0, "display_blockiness": 1.4}
    measured = []

    def candidates(w):
        for name, psnr in ((f"smoothed {w}", 29.0 if w > 0.5 else 31.0), (f"as is {w}", 30.5 if w == 0.75 else 29.0)):
            measured.append(name)
            yield {**jpeg, "psnr": psnr, "name": name}

    assert metrics.first_not_below(candidates, lambda s: s, jpeg) == (0.75, {**jpeg, "psnr": 30.5, "name": "as is 0.75"})
    assert measured == ["smoothed 1.0", "as is 1.0", "smoothed 0.9", "as is 0.9", "smoothed 0.75", "as is 0.75"]
    measured.clear()
    jpeg = {**jpeg, "psnr": 30.6}  # now only the smoothed blend at 0.5 is above
    assert metrics.first_not_below(candidates, lambda s: s, jpeg)[0] == 0.5 and measured[-1] == "smoothed 0.5"


def test_psnr_b_adds_the_blocking_effect_only_when_edges_step_more():
    """BEF is added only when the steps across the edges exceed the others (D_B > D_B^c): an
    image whose edges step exactly as much as elsewhere is scored as PSNR."""
    from dicom_cae import codec

    edges = codec.block_edges(256)
    ref = np.zeros((256, 256))
    ramp = np.tile(np.arange(256) * 0.001, (256, 1))  # the same step everywhere
    assert metrics.psnr_b(ref, ramp, edges) == pytest.approx(metrics.psnr(ref, ramp))
