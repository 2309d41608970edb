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
