"""Pixel data to normalized 256x256 images in [0, 1], and back to stored values.

No TensorFlow here: numpy, pydicom and Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from dicom_cae import display
from dicom_cae import mapping as value_mapping
from dicom_cae.errors import DicomInputError, NotAnImageError
from dicom_cae.mapping import ValueMapping

SIZE = 256
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class Normalization:
    """How one instance's frames were mapped to [0, 1]; enough to map reconstructions back.

    ``mappings`` (one per frame) take modality values (after the Modality LUT) to [0, 1],
    inverted for MONOCHROME1 so that 1 is always bright on display. ``lo`` and ``hi`` are each
    frame's minimum and maximum (modality units): the seed's metrics are computed on the frame
    mapped linearly from them to [0, 1], whatever the mapping that coded it. Stored values are
    ``(modality - intercept) / slope``, clipped to the output's bit range.
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    invert: bool
    src_rows: int
    src_cols: int
    slope: float
    intercept: float
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    mappings: tuple[ValueMapping, ...] = ()  # per frame; empty: minmax from lo and hi

    def mapping(self, frame: int) -> ValueMapping:
        if self.mappings:
            return self.mappings[frame]
        return value_mapping.minmax(self.lo[frame], self.hi[frame])

    @property
    def mapping_name(self) -> str:
        return self.mappings[0].name if self.mappings else value_mapping.MINMAX

    @property
    def stored_min(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.pixel_representation else 0

    @property
    def stored_max(self) -> int:
        if self.pixel_representation:
            return (1 << (self.bits_stored - 1)) - 1
        return (1 << self.bits_stored) - 1

    @property
    def dtype(self) -> np.dtype:
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"<{kind}{self.bits_allocated // 8}")

    @property
    def resampled(self) -> bool:
        return (self.src_rows, self.src_cols) != (SIZE, SIZE)


#: Refuse images whose decoded pixels would exceed this (a header can promise any size).
MAX_DECODED_BYTES = 1 << 30


def int_attr(ds: Dataset, keyword: str, default: int, source: str) -> int:
    """An integer attribute: ``default`` when absent; DicomInputError when present but empty or
    not an integer (a Type 1 attribute sent empty must fail this instance, nothing else)."""
    if keyword not in ds:
        return default
    try:
        value = ds[keyword].value
    except (TypeError, ValueError) as exc:  # bytes that pydicom cannot convert
        raise DicomInputError(source, f"{keyword} cannot be decoded ({exc})") from exc
    if value is None or value == "":
        raise DicomInputError(source, f"{keyword} is present but empty")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomInputError(source, f"{keyword} {str(value)[:20]!r} is not an integer") from exc


def float_attr(ds: Dataset, keyword: str, default: float, source: str, *, nonzero: bool = False) -> float:
    """A finite number attribute (``default`` when absent or empty); DicomInputError when it is
    NaN, infinite, not a number or (with ``nonzero``) zero."""
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError) as exc:  # bytes that pydicom cannot convert
        raise DicomInputError(source, f"{keyword} cannot be decoded ({exc})") from exc
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise DicomInputError(source, f"{keyword} {str(value)[:20]!r} is not a number") from exc
    if not math.isfinite(number) or (nonzero and number == 0):
        need = "a finite, non-zero number" if nonzero else "a finite number"
        raise DicomInputError(source, f"{keyword} {str(value)[:20]!r} is not {need}")
    return number


def check_image(ds: Dataset, source: str) -> None:
    """Raise NotAnImageError unless ``ds`` holds a grayscale image that we can process, and
    DicomInputError when its pixel description is broken (empty, non-numeric, NaN rescale,
    a size no decoder should be asked to allocate)."""
    if "PixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or str(ds.get("SOPClassUID", "unknown"))
        raise NotAnImageError(source, f"no Pixel Data: not an image object ({kind})")
    spp = int_attr(ds, "SamplesPerPixel", 1, source)
    pi = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if spp != 1 or pi not in GRAYSCALE:
        raise NotAnImageError(
            source,
            f"not a grayscale image (PhotometricInterpretation {pi or 'missing'}, "
            f"SamplesPerPixel {spp}); only MONOCHROME1/MONOCHROME2 are processed",
        )
    bits = int_attr(ds, "BitsAllocated", 0, source)
    if bits not in (8, 16):
        raise NotAnImageError(source, f"BitsAllocated {bits} is not supported (8 or 16 bits per pixel)")
    stored = int_attr(ds, "BitsStored", bits, source)
    if not 1 <= stored <= bits:
        raise DicomInputError(source, f"BitsStored {stored} is not between 1 and BitsAllocated {bits}")
    if int_attr(ds, "PixelRepresentation", 0, source) not in (0, 1):
        raise DicomInputError(source, "PixelRepresentation is neither 0 nor 1")
    size = 1
    for kw in ("Rows", "Columns"):
        n = int_attr(ds, kw, 0, source)
        if n < 8:
            raise DicomInputError(source, f"{kw} is missing or smaller than 8")
        size *= n
    frames = int_attr(ds, "NumberOfFrames", 1, source)
    if frames < 1:
        raise DicomInputError(source, f"NumberOfFrames {frames} is not a positive number")
    if size * frames * bits // 8 > MAX_DECODED_BYTES:
        raise DicomInputError(
            source, f"{frames} frame(s) of {ds.Rows}x{ds.Columns} would decode to more than "
            f"{MAX_DECODED_BYTES >> 20} MiB: refused"
        )
    float_attr(ds, "RescaleSlope", 1.0, source, nonzero=True)
    float_attr(ds, "RescaleIntercept", 0.0, source)


def modality_frames(ds: Dataset, source: str) -> np.ndarray:
    """Decode all frames and apply the Modality LUT: float64 array (frames, rows, cols).

    Raises:
        NotAnImageError: no pixel data, or not grayscale.
        DicomInputError: pixel data that no installed decoder handles, or that is truncated.
    """
    check_image(ds, source)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises NotImplementedError, ValueError, RuntimeError...
        tsyntax = getattr(ds.file_meta, "TransferSyntaxUID", None) if "file_meta" in ds.__dict__ else None
        ts = getattr(tsyntax, "name", None) or str(tsyntax or "unknown transfer syntax")
        raise DicomInputError(source, f"cannot decode Pixel Data ({ts}): {exc}") from exc
    frames = int_attr(ds, "NumberOfFrames", 1, source)
    try:
        arr = arr.reshape(frames, int(ds.Rows), int(ds.Columns))
    except ValueError as exc:
        raise DicomInputError(source, f"Pixel Data does not hold {frames} frame(s) of {ds.Rows}x{ds.Columns}") from exc
    if "ModalityLUTSequence" in ds:
        raise NotAnImageError(source, "a Modality LUT Sequence (non-linear) is not supported")
    # The Modality LUT is linear here (a LUT Sequence was refused above); the checked values.
    slope = float_attr(ds, "RescaleSlope", 1.0, source, nonzero=True)
    intercept = float_attr(ds, "RescaleIntercept", 0.0, source)
    values = arr.astype(np.float64) * slope + intercept
    if not np.isfinite(values).all():
        raise DicomInputError(source, "the Modality LUT gives values that are not finite")
    return values


def _resample(frame: np.ndarray) -> np.ndarray:
    if frame.shape == (SIZE, SIZE):
        return frame.astype(np.float32)
    # Pillow's Lanczos widens its kernel by the scale factor when it shrinks: anti-aliased.
    img = Image.fromarray(frame.astype(np.float32), mode="F")
    out = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """One instance's frames on the 256x256 grid, in modality units and mapped to [0, 1]."""

    unit: np.ndarray  # float32 (frames, 256, 256) in [0, 1]: what JPEG codes
    modality: np.ndarray  # float32 (frames, 256, 256): the resampled original, modality units
    norm: Normalization
    windows: tuple[display.Window, ...]  # what a viewer shows it in (display.windows)


def prepare(ds: Dataset, source: str, *, mapping: str = value_mapping.MINMAX) -> Prepared:
    """Frames of ``ds`` resampled to 256x256 with an anti-aliasing filter (in modality units),
    then mapped to [0, 1] by the value mapping ``mapping`` (see dicom_cae.mapping), inverted for
    MONOCHROME1.

    Raises:
        NotAnImageError, DicomInputError: as modality_frames.
        ValueError: an unknown mapping.
    """
    value_mapping.check(mapping)
    values = modality_frames(ds, source)
    invert = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    wins = tuple(display.windows(ds, values))
    spans = [w.span for w in wins]
    if str(ds.get("Modality", "")).upper() == "CT":  # soft tissue, where the HU errors are taken, too
        spans.append(display.HU_SOFT_TISSUE)
    resampled = np.stack([_resample(frame) for frame in values])
    unit = np.empty(resampled.shape, dtype=np.float32)
    los, his, maps = [], [], []
    for i, frame in enumerate(values):
        lo, hi = float(frame.min()), float(frame.max())
        m = value_mapping.make(mapping, lo, hi, spans)
        u = m.forward(resampled[i])
        unit[i] = 1.0 - u if invert else u
        los.append(lo)
        his.append(hi)
        maps.append(m)
    slope = float_attr(ds, "RescaleSlope", 1.0, source, nonzero=True)
    intercept = float_attr(ds, "RescaleIntercept", 0.0, source)
    bits_allocated = int(ds.BitsAllocated)
    norm = Normalization(
        lo=tuple(los),
        hi=tuple(his),
        invert=invert,
        src_rows=int(ds.Rows),
        src_cols=int(ds.Columns),
        slope=slope,
        intercept=intercept,
        bits_allocated=bits_allocated,
        bits_stored=int_attr(ds, "BitsStored", bits_allocated, source),
        pixel_representation=int_attr(ds, "PixelRepresentation", 0, source),
        mappings=tuple(maps),
    )
    return Prepared(unit, resampled, norm, wins)


def normalize(ds: Dataset, source: str, *, mapping: str = value_mapping.MINMAX) -> tuple[np.ndarray, Normalization]:
    """Frames of ``ds`` as float32 (frames, 256, 256) in [0, 1], with the mapping used (see
    prepare; ``minmax``, the seed's mapping, by default).

    Raises:
        NotAnImageError, DicomInputError: as modality_frames.
    """
    prepared = prepare(ds, source, mapping=mapping)
    return prepared.unit, prepared.norm


def one_frame(norm: Normalization, frame: int) -> Normalization:
    """The normalization of one frame of ``norm``, as that of a single-frame instance."""
    import dataclasses

    return dataclasses.replace(norm, lo=(norm.lo[frame],), hi=(norm.hi[frame],), mappings=(norm.mapping(frame),))


def seed_unit(modality: np.ndarray, norm: Normalization, *, clip: bool = False) -> np.ndarray:
    """Modality values (frames, 256, 256) as the seed's metrics see them: each frame mapped
    linearly from its minimum and maximum to [0, 1] (inverted for MONOCHROME1), float32."""
    lo = np.asarray(norm.lo, dtype=np.float64)[:, None, None]
    hi = np.asarray(norm.hi, dtype=np.float64)[:, None, None]
    x = (np.asarray(modality, np.float64) - lo) / np.where(hi > lo, hi - lo, 1.0)
    if clip:
        x = np.clip(x, 0.0, 1.0)
    if norm.invert:
        x = 1.0 - x
    return x.astype(np.float32)


def unit_to_modality(unit: np.ndarray, norm: Normalization) -> np.ndarray:
    """Images in [0, 1] (frames, 256, 256) back to modality values through each frame's mapping."""
    x = np.asarray(unit, dtype=np.float64)
    if norm.invert:
        x = 1.0 - x
    return np.stack([norm.mapping(i).inverse(f) for i, f in enumerate(x)])


def stored_to_modality(stored: np.ndarray, norm: Normalization) -> np.ndarray:
    return stored.astype(np.float64) * norm.slope + norm.intercept


def to_stored(unit: np.ndarray, norm: Normalization) -> np.ndarray:
    """Map images in [0, 1] (frames, 256, 256) back to the source's stored values and dtype."""
    stored = np.rint((unit_to_modality(unit, norm) - norm.intercept) / norm.slope)
    return np.clip(stored, norm.stored_min, norm.stored_max).astype(norm.dtype)


def from_stored(stored: np.ndarray, norm: Normalization) -> np.ndarray:
    """Inverse of to_stored (up to its rounding): stored values to [0, 1] float32 images."""
    modality = stored_to_modality(stored, norm)
    x = np.stack([norm.mapping(i).forward(f) for i, f in enumerate(modality)])
    if norm.invert:
        x = 1.0 - x
    return x.astype(np.float32)
