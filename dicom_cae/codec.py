"""JPEG (ISO 10918-1 baseline, 8-bit) round trip of normalized images.

Two encoders, by name, both writing plain baseline (SOF0) streams that any decoder reads alike:

- ``trellis`` (the default): mozjpeg's trellis quantization (rate-distortion optimized choice of
  every coefficient, DC included) with a flat quantization table scaled by the quality as IJG
  scales its tables, optimized Huffman tables, and no JFIF APP0 segment (DICOM does not use it:
  PS3.5 A.4.1 asks for the interchange format, tables included, not JFIF). mozjpeg writes
  progressive streams, which DICOM retired, so its coefficients are rewritten losslessly as a
  baseline stream by libjpeg-turbo: the same quantized coefficients, the same pixels. Both
  libraries come from the ``jpeglib`` package. What it gains over Pillow's encoder at the same
  bytes: docs/evaluation.md (``evaluate`` shows both).
- ``pillow``: libjpeg through Pillow with the IJG (Annex K) table and optimized Huffman
  tables, as the project coded before; kept so that ``evaluate`` can show the encoder's gain
  apart from the model's.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading

import numpy as np
from PIL import Image

QUALITY_MIN, QUALITY_MAX = 1, 100
SIZE = 256
#: The sizes an image can be JPEG-coded at: the full 256x256 grid, or a smaller square (multiples
#: of the 8-pixel JPEG block) where bytes are so few that fewer, better-coded pixels pay more;
#: upsampled again on decoding. Measured: the intermediate sizes add 0.1 dB BD-PSNR over 256 and
#: 128 alone (validation subset, 0.07-0.5 bpp).
CODING_SIZES = (256, 224, 192, 160, 128)


def block_edges(coding_size: int = SIZE, size: int = SIZE) -> np.ndarray:
    """Indices x (1..size-1) where an 8x8 block edge of a ``coding_size`` coding falls, between
    pixels x-1 and x, once decoded and brought to ``size`` (every 8 pixels for 256; every 16
    for 128; rounded where the step is not whole)."""
    step = 8 * size / coding_size
    return np.unique(np.rint(np.arange(step, size - 0.5, step)).astype(np.int64))


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float image to 8-bit, rounding to nearest."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def check_quality(quality: int) -> int:
    """Return ``quality`` as int, or raise ValueError if it is outside 1..100."""
    q = int(quality)
    if not QUALITY_MIN <= q <= QUALITY_MAX:
        raise ValueError(f"JPEG quality must be in {QUALITY_MIN}..{QUALITY_MAX}, got {quality}")
    return q


TRELLIS = "trellis"
PILLOW = "pillow"
ENCODERS = (TRELLIS, PILLOW)
DEFAULT_ENCODER = TRELLIS
#: The flat table's base value: IJG's scaling at quality 50 keeps it, at 30 it becomes 27.
FLAT_BASE = 16


def check_encoder(name: str) -> str:
    """``name`` if it is a known encoder, else ValueError naming the known ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown JPEG encoder {name!r}; known: {', '.join(ENCODERS)}")
    return name


def quant_table(quality: int) -> np.ndarray:
    """The trellis encoder's 8x8 luminance table at ``quality``: a flat table of FLAT_BASE
    scaled as IJG scales its tables (5000/q below 50, 200 - 2q from 50), within 1..255 so that
    the stream stays baseline."""
    q = check_quality(quality)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.full((8, 8), min(max((FLAT_BASE * scale + 50) // 100, 1), 255), np.uint16)


_JPEGLIB = threading.Lock()  # jpeglib switches its C library globally: one encode at a time
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _segments_without_app0(data: bytes) -> bytes:
    """The stream with its JFIF APP0 segment(s) removed (SOI, then the rest as written)."""
    out, i = [data[:2]], 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] != 0xE0:
            out.append(data[i : i + 2 + length])
        i += 2 + length
    out.append(data[i:])
    return b"".join(out)


def _trellis_encode(pixels: np.ndarray, quality: int) -> bytes:
    import jpeglib  # imported here: only the trellis encoder needs it

    table = quant_table(quality)[None]
    with _JPEGLIB, tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
        progressive, baseline = os.path.join(tmp, "p.jpg"), os.path.join(tmp, "b.jpg")
        jpeglib.version.set("mozjpeg403")
        jpeglib.from_spatial(pixels[:, :, None]).write_spatial(
            progressive, qt=table,
            flags=["+TRELLIS_QUANT", "+TRELLIS_QUANT_DC", "+OPTIMIZE_CODING", "-OPTIMIZE_SCANS"])
        jpeglib.version.set("turbo210")
        jpeglib.read_dct(progressive).write_dct(
            baseline, flags=["+OPTIMIZE_CODING"])  # libjpeg-turbo writes the coefficients as a baseline stream
        with open(baseline, "rb") as f:
            return _segments_without_app0(f.read())


def jpeg_encode(unit: np.ndarray, quality: int, *, encoder: str = DEFAULT_ENCODER) -> bytes:
    """Encode one [0, 1] image (2-D) as a baseline (SOF0) grayscale JPEG with optimized Huffman
    tables, by the named encoder (see the module's docstring).

    Raises ValueError: quality outside 1..100 or an unknown encoder.
    """
    quality = check_quality(quality)
    if check_encoder(encoder) == TRELLIS:
        return _trellis_encode(to_uint8(unit), quality)
    buf = io.BytesIO()
    Image.fromarray(to_uint8(unit), mode="L").save(buf, format="JPEG", quality=quality, optimize=True)
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


def encode_at(unit: np.ndarray, quality: int, size: int = SIZE, *, encoder: str = DEFAULT_ENCODER) -> bytes:
    """JPEG of a 256x256 [0, 1] image coded at ``size`` x ``size`` (one of CODING_SIZES)."""
    if size not in CODING_SIZES:
        raise ValueError(f"coding size must be one of {CODING_SIZES}, got {size}")
    return jpeg_encode(unit if size == unit.shape[0] else resize(unit, size), quality, encoder=encoder)


def decode_to(data: bytes, size: int = SIZE) -> np.ndarray:
    """Decode a JPEG and bring it to ``size`` x ``size`` (bicubic up when coded smaller)."""
    dec = jpeg_decode(data)
    return dec if dec.shape[0] == size else resize(dec, size)


#: The block-edge filter applied after a model that restores JPEG block by block (the deblock
#: model): at each of the coding's block edges, the part e of the step between the two pixels
#: beside the edge that the steps within the blocks beside it do not explain (their mean) is
#: taken where it goes the step's way, as e x (1 - |e| / limit) (all of a small one, less of one
#: near the limit, none past it: larger steps are edges of the anatomy), and spread linearly over
#: the two blocks' halves (so that 1 / (2 x half) of it stays at the edge). The limit is the
#: strength times the quantizer step (the flat table's value / 255 of the [0, 1] image), the
#: step capped at EDGE_STEP_CAP: at low qualities the step is so coarse that edges of the
#: anatomy would pass for block steps. Columns, then rows. A function of what the decoder knows
#: (the quality and the coding size): no side information. Strength 1 for codings 256 to 160,
#: 0.5 for 128 (its blocks, 16 pixels wide on the 256 grid, reach it softened by the 2x
#: upsampling; at 224-160 the blocks of 9-13 pixels keep more of their steps).
#: Measured on 37 slices of patients the model was not trained on (python bench/edge_filter.py,
#: deblock-6046c889): at quality 26 (the default), 256 coding, blockiness in the most blocking
#: window 1.36 -> 0.99 x the original's (plain JPEG 1.72), the seed's PSNR +0.43 -> +0.54 dB over
#: plain JPEG, CT's worst window +0.19 -> +0.20 dB; at quality 10 1.41 -> 1.02, +0.69 -> +0.74. At the low qualities a byte
#: budget picks for codings 224-160 (quality 5-10, 20 CT slices, what the guard stores), strength
#: 1 against 0.5: blockiness in the narrowest window 3.44 -> 2.60 (224, q5), 2.43 -> 2.03 (160,
#: q5), 1.83 -> 1.63 (192, q10), the worst window's gain over JPEG as high or higher; at 128 it
#: was as blocky or more (q5 0.97 -> 1.16): 0.5 kept there.
EDGE_FILTER = "ramp"
EDGE_STRENGTH_FULL = 1.0  # codings 256 to 160
EDGE_STRENGTH_128 = 0.5  # the 128 coding
EDGE_STEP_CAP = 40  # the quantizer step at quality 20
#: What decides the filter's output: part of the derived UIDs' key (another filter, other UIDs).
EDGE_FILTER_ID = f"{EDGE_FILTER}(256-160:{EDGE_STRENGTH_FULL:g},128:{EDGE_STRENGTH_128:g},cap:{EDGE_STEP_CAP})"


def edge_strength(coding_size: int) -> float:
    """The block-edge filter's strength for a ``coding_size`` coding."""
    return EDGE_STRENGTH_128 if coding_size <= 128 else EDGE_STRENGTH_FULL


def edge_filter_name(coding_size: int) -> str:
    """The block-edge filter as the private block names it (EdgeFilter): 'ramp 1'..."""
    return f"{EDGE_FILTER} {edge_strength(coding_size):g}"


def quantizer_step(quality: int) -> int:
    """The trellis encoder's quantizer step at ``quality`` (its flat table's value)."""
    return int(quant_table(quality)[0, 0])


def smooth_block_edges(images: np.ndarray, quality: int | np.ndarray, coding_size: int = SIZE, *,
                       strength: float | None = None) -> np.ndarray:
    """``images`` ((n, 256, 256) in [0, 1], coded at ``quality``, one or one per image, and
    ``coding_size``) with their block edges smoothed as EDGE_FILTER says, at ``strength`` (by
    default edge_strength(coding_size)); float32, clipped to [0, 1]. The blocks of a smaller
    coding are wider once upsampled: the ramps are too."""
    strength = edge_strength(coding_size) if strength is None else strength
    out = np.array(images, np.float32, copy=True)
    if out.ndim != 3 or out.shape[1] != out.shape[2]:
        raise ValueError(f"expected square images (n, side, side), got {out.shape}")
    if strength <= 0:
        return out
    n = out.shape[0]
    qualities = np.broadcast_to(np.ravel(np.asarray(quality)), (n,))
    steps = np.array([min(quantizer_step(int(q)), EDGE_STEP_CAP) for q in qualities], np.float32)
    limit = (strength * steps / 255.0)[:, None, None]
    edges = block_edges(coding_size, out.shape[-1])
    half = int(np.min(np.diff(np.concatenate([[0], edges]))) // 2)  # ramps of neighbouring edges do not meet
    edges = edges[(edges >= 2) & (edges <= out.shape[-1] - 2)]
    for y in (out, np.swapaxes(out, -1, -2)):  # columns, then rows (a view: written in place)
        left, right = y[..., edges - 1], y[..., edges]
        step = right - left
        excess = step - 0.5 * ((left - y[..., edges - 2]) + (y[..., edges + 1] - right))
        excess = np.where(excess * step > 0, excess, 0.0)  # only a step larger than its neighbours explain
        excess *= np.clip(1.0 - np.abs(excess) / limit, 0.0, 1.0)
        for k in range(half):
            share = 0.5 - (k + 0.5) / (2 * half)
            y[..., edges - 1 - k] += share * excess
            y[..., edges + k] -= share * excess
    return np.clip(out, 0.0, 1.0)


def jpeg_roundtrip(unit: np.ndarray, quality: int, *, encoder: str = DEFAULT_ENCODER) -> tuple[np.ndarray, int]:
    """Encode then decode; returns the decoded image and the number of JPEG bytes."""
    data = jpeg_encode(unit, quality, encoder=encoder)
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
