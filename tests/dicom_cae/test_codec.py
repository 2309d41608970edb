import numpy as np
import pytest

from dicom_cae import codec


def _image():
    y, x = np.mgrid[:256, :256] / 255.0
    return 0.5 + 0.3 * np.sin(9 * x) * np.cos(7 * y)


def test_jpeg_is_baseline_grayscale_and_shrinks_with_quality():
    img = _image()
    data = {q: codec.jpeg_encode(img, q) for q in (1, 10, 50, 95)}
    assert all(d[:2] == b"\xff\xd8" for d in data.values())
    assert b"\xff\xc0" in data[10]  # SOF0: baseline
    sizes = [len(data[q]) for q in (1, 10, 50, 95)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    dec, n = codec.jpeg_roundtrip(img, 95)
    assert n == len(data[95])
    assert dec.dtype == np.float32 and dec.shape == (256, 256)
    assert np.abs(dec - img).max() < 0.05


@pytest.mark.parametrize("q", [0, 101, -5])
def test_quality_out_of_range_is_refused(q):
    with pytest.raises(ValueError, match="JPEG quality must be in 1..100"):
        codec.jpeg_encode(_image(), q)
