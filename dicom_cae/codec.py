"""JPEG (ISO 10918-1 baseline, 8-bit) round trip of normalized images, through Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

QUALITY_MIN, QUALITY_MAX = 1, 100


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float image to 8-bit, rounding to nearest."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def check_quality(quality: int) -> int:
    """Return ``quality`` as int, or raise ValueError if it is outside 1..100."""
    q = int(quality)
    if not QUALITY_MIN <= q <= QUALITY_MAX:
        raise ValueError(f"JPEG quality must be in {QUALITY_MIN}..{QUALITY_MAX}, got {quality}")
    return q


def jpeg_encode(unit: np.ndarray, quality: int) -> bytes:
    """Encode one [0, 1] image (2-D) as a baseline grayscale JPEG with optimized Huffman tables."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(unit), mode="L").save(
        buf, format="JPEG", quality=check_quality(quality), optimize=True
    )
    return buf.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    """Decode a grayscale JPEG to a float32 image in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def jpeg_roundtrip(unit: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Encode then decode; returns the decoded image and the number of JPEG bytes."""
    data = jpeg_encode(unit, quality)
    return jpeg_decode(data), len(data)
