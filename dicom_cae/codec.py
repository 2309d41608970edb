"""JPEG (ISO 10918-1 baseline, 8-bit) round trip of normalized images, through Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

QUALITY_MIN, QUALITY_MAX = 1, 100
SIZE = 256
#: The sizes an image can be JPEG-coded at: the full 256x256 grid, or a smaller square (multiples
#: of the 8-pixel JPEG block) where bytes are so few that fewer, better-coded pixels pay more;
#: upsampled again on decoding. Measured: the intermediate sizes add 0.1 dB BD-PSNR over 256 and
#: 128 alone (validation subset, 0.07-0.5 bpp).
CODING_SIZES = (256, 224, 192, 160, 128)


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


def resize(unit: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] image resampled to ``size`` x ``size``: Lanczos (anti-aliased) down, bicubic up;
    clipped to [0, 1], float32."""
    img = Image.fromarray(np.asarray(unit, dtype=np.float32), mode="F")
    method = Image.Resampling.LANCZOS if size < img.width else Image.Resampling.BICUBIC
    return np.clip(np.asarray(img.resize((size, size), method), dtype=np.float32), 0.0, 1.0)


def encode_at(unit: np.ndarray, quality: int, size: int = SIZE) -> bytes:
    """JPEG of a 256x256 [0, 1] image coded at ``size`` x ``size`` (one of CODING_SIZES)."""
    if size not in CODING_SIZES:
        raise ValueError(f"coding size must be one of {CODING_SIZES}, got {size}")
    return jpeg_encode(unit if size == unit.shape[0] else resize(unit, size), quality)


def decode_to(data: bytes, size: int = SIZE) -> np.ndarray:
    """Decode a JPEG and bring it to ``size`` x ``size`` (bicubic up when coded smaller)."""
    dec = jpeg_decode(data)
    return dec if dec.shape[0] == size else resize(dec, size)


def jpeg_roundtrip(unit: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Encode then decode; returns the decoded image and the number of JPEG bytes."""
    data = jpeg_encode(unit, quality)
    return jpeg_decode(data), len(data)


def j2k_encode(unit: np.ndarray, max_bytes: int) -> bytes:
    """JPEG 2000 (OpenJPEG through Pillow, a raw codestream) of one [0, 1] image in at most
    ``max_bytes`` bytes, or as close below as OpenJPEG's rate control gets in a few tries.

    Raises ValueError when ``max_bytes`` is too small for any codestream.
    """
    img = Image.fromarray(to_uint8(unit), mode="L")
    raw = img.width * img.height
    ratio = raw / max(max_bytes, 1)
    best = b""
    for _ in range(6):
        buf = io.BytesIO()
        img.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], no_jp2=True)
        data = buf.getvalue()
        if len(data) <= max_bytes:
            if len(data) > len(best):
                best = data
            if len(data) >= 0.97 * max_bytes:
                break
            ratio *= max(len(data), 1) / max_bytes * 0.995  # room left: spend a little more
        else:
            ratio *= len(data) / max_bytes * 1.01
    if not best:
        raise ValueError(f"no JPEG 2000 codestream fits in {max_bytes} bytes")
    return best


def j2k_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
