"""The one module that owns dicom-cae's private block: its layout, writing and reading.

The block has its own private creator, ``PRIVATE_CREATOR``, in group ``PRIVATE_GROUP``;
pydicom reserves a free block (xx10-xxFF) in that group. Values that describe frames
hold one value per frame, in frame order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_cae import image, mapping

if TYPE_CHECKING:
    from dicom_cae.display import Window
    from dicom_cae.guard import FrameMetrics

PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "DICOM_CAE 1.0"


@dataclass(frozen=True)
class PrivateElement:
    offset: int  # element offset in the block (the low byte of the element number)
    keyword: str
    vr: str
    per_frame: bool
    units: str
    meaning: str
    optional: bool = False
    vm: str = ""  # the count of a list that is not one value per frame (documentation)


ELEMENTS: tuple[PrivateElement, ...] = (
    PrivateElement(0x01, "ModelName", "LO", False, "", "Name of the reconstruction model (e.g. blockres, seed)"),
    PrivateElement(0x02, "WeightsSHA256", "LO", False, "", "SHA-256 of the model weights file, 64 hex digits"),
    PrivateElement(0x03, "SoftwareVersion", "LO", False, "", "dicom-cae version that wrote the instance"),
    PrivateElement(0x04, "JPEGQuality", "IS", False, "", "JPEG quality (1-100): the scale of the quantization table (IJG scaling; see JPEGEncoder)"),
    PrivateElement(0x05, "JPEGBytes", "UL", True, "bytes", "Size of the JPEG (ISO 10918-1) stream of the frame"),
    PrivateElement(0x06, "CompressionRatio", "FD", True, "ratio", "JPEG bytes / bytes of the 256x256 frame at 8 bits (compressed/original)"),
    PrivateElement(0x07, "BitsPerPixel", "FD", True, "bit/pixel", "8 x JPEG bytes / 65536"),
    PrivateElement(0x08, "MSE", "FD", True, "(normalized units)^2", "Mean squared error of the stored frame against the normalized original"),
    PrivateElement(0x09, "PSNR", "FD", True, "dB", "Peak signal-to-noise ratio, data range 1, of the stored frame"),
    PrivateElement(0x0A, "SSIM", "FD", True, "", "Structural similarity (Wang 2004, 11x11 Gaussian window, sigma 1.5) of the stored frame"),
    PrivateElement(0x0B, "PixelAccuracy", "FD", True, "fraction", "Share of pixels whose absolute error is within the tolerance (0071,xx0C)"),
    PrivateElement(0x0C, "PixelAccuracyTolerance", "FD", False, "normalized units", "Tolerance used for pixel accuracy, as a fraction of the frame's range"),
    PrivateElement(0x0D, "MeanIntensityOriginal", "FD", True, "normalized units", "Mean of the normalized original 256x256 frame"),
    PrivateElement(0x0E, "MeanIntensityReconstructed", "FD", True, "normalized units", "Mean of the stored frame, normalized the same way"),
    PrivateElement(0x10, "JPEGOnlyPSNR", "FD", True, "dB", "PSNR of the plain JPEG decode (no model), same bytes"),
    PrivateElement(0x11, "JPEGOnlySSIM", "FD", True, "", "SSIM of the plain JPEG decode"),
    PrivateElement(0x12, "JPEGOnlyPixelAccuracy", "FD", True, "fraction", "Pixel accuracy of the plain JPEG decode"),
    PrivateElement(0x13, "JPEGOnlyMSE", "FD", True, "(normalized units)^2", "MSE of the plain JPEG decode"),
    PrivateElement(0x14, "NormalizationLow", "FD", True, "modality units", "Modality value mapped to 0 (to 1 for MONOCHROME1)"),
    PrivateElement(0x15, "NormalizationHigh", "FD", True, "modality units", "Modality value mapped to 1 (to 0 for MONOCHROME1)"),
    PrivateElement(0x16, "AbsErrorPercentiles", "FD", True, "modality units (HU for CT)", "Absolute error of the stored frame against the original: 50th, 95th, 99th percentile and maximum (4 values per frame)"),
    PrivateElement(0x17, "ErrorHistogram", "UL", True, "pixels", f"Signed error (stored - original, normalized units): counts below {-0.2}, then 40 bins of 0.01 from -0.2 to 0.2, then above 0.2 (42 values per frame)"),
    PrivateElement(0x18, "JPEGStreams", "OB", False, "", "The JPEG (ISO 10918-1) streams of the frames, concatenated; JPEGBytes gives their lengths"),
    PrivateElement(0x19, "TargetPSNR", "FD", False, "dB", "Fidelity target: the JPEG quality is the lowest whose stored reconstruction reaches this PSNR (absent when a quality was given)", True),
    PrivateElement(0x1A, "TargetSSIM", "FD", False, "", "Fidelity target for SSIM, as TargetPSNR (absent when not asked for)", True),
    PrivateElement(0x1B, "Warnings", "UT", False, "", "What was wrong with the source and what was done about it (a stand-in UID, an invalid spacing left out...), one per line (absent when nothing was)", True),
    PrivateElement(0x20, "ValueMapping", "LO", False, "", "Name of the value mapping from modality values to the [0, 1] image that JPEG coded: minmax (the seed's) or window (see docs/private-tags.md)", True),
    PrivateElement(0x21, "MappingKnotCount", "UL", True, "", "Number of knots of each frame's mapping", True),
    PrivateElement(0x22, "MappingKnots", "FD", True, "modality units, then [0, 1]", "Each frame's mapping, piecewise linear: its knots' modality values x1..xn, then their [0, 1] values y1..yn (MONOCHROME1: 1 - y is stored)", True, "2 x knots per frame"),
    PrivateElement(0x23, "DisplayWindowName", "UT", False, "", "The display windows the metrics below were measured in, one name per line: the source's (its explanation or C/W), 'soft tissue C40/W400' for CT, or 'p1-p99' (1st-99th percentile range) when the source names none", True),
    PrivateElement(0x24, "DisplayWindowCenter", "FD", True, "modality units", "Centre of each display window", True, "1 per window"),
    PrivateElement(0x25, "DisplayWindowWidth", "FD", True, "modality units", "Width of each display window", True, "1 per window"),
    PrivateElement(0x26, "DisplayWindowOrigin", "UT", False, "", "Where each window came from, one per line: source, soft-tissue or percentile", True),
    PrivateElement(0x27, "DisplayPSNR", "FD", True, "dB", "PSNR of the stored frame against the original, both shown through each window ([0, 1], data range 1): frame-major, windows within", True, "frames x windows"),
    PrivateElement(0x28, "DisplaySSIM", "FD", True, "", "SSIM through each window, as DisplayPSNR", True, "frames x windows"),
    PrivateElement(0x29, "DisplayPixelAccuracy", "FD", True, "fraction", "Pixel accuracy through each window (tolerance as (0071,xx0C), of the window's output range)", True, "frames x windows"),
    PrivateElement(0x2A, "JPEGOnlyDisplayPSNR", "FD", True, "dB", "DisplayPSNR of the plain JPEG decode", True, "frames x windows"),
    PrivateElement(0x2B, "JPEGOnlyDisplaySSIM", "FD", True, "", "DisplaySSIM of the plain JPEG decode", True, "frames x windows"),
    PrivateElement(0x2C, "JPEGOnlyDisplayPixelAccuracy", "FD", True, "fraction", "DisplayPixelAccuracy of the plain JPEG decode", True, "frames x windows"),
    PrivateElement(0x2D, "HUErrorRange", "FD", True, "HU", "CT only: the original's values over which the HU errors are taken (soft tissue)", True, "2"),
    PrivateElement(0x2E, "HUMeanAbsoluteError", "FD", True, "HU", "CT only: mean absolute error of the stored frame over the pixels in HUErrorRange", True),
    PrivateElement(0x2F, "HUBias", "FD", True, "HU", "CT only: mean signed error (stored - original) over the same pixels", True),
    PrivateElement(0x30, "JPEGOnlyHUMeanAbsoluteError", "FD", True, "HU", "CT only: HUMeanAbsoluteError of the plain JPEG decode", True),
    PrivateElement(0x31, "JPEGOnlyHUBias", "FD", True, "HU", "CT only: HUBias of the plain JPEG decode", True),
    PrivateElement(0x32, "CodingSize", "IS", False, "pixels", "Side of the square image the JPEG streams code: 256, or 224, 192, 160 or 128 (decoded and upsampled bicubic to 256x256, then restored by weights trained for that coding where they exist: see ModelWeight); the compression ratio stays against the 8-bit 256x256 image", True),
    PrivateElement(0x33, "TargetRatio", "FD", False, "ratio", "Byte budget asked for (compressed/original, per frame): the coding size and quality are the ones that fit it and store the best image (absent when not asked for)", True),
    PrivateElement(0x34, "ModelWeight", "FD", True, "", "What each frame stores: JPEG decode + w x (model reconstruction - JPEG decode), the reconstruction filtered as EdgeFilter says when present. 1: the model's reconstruction; 0: the JPEG decode (above the model's validated qualities, at a coding size it does not serve, or where every weight tried was below plain JPEG); of 1, 0.9, 0.75, 0.5, 0.25, in the order their images score in the worst display window's PSNR, the first whose image is not below the JPEG decode in the seed's or the worst display window's PSNR or SSIM, nor above it in the most blocking window's blockiness", True),
    PrivateElement(0x35, "DisplayBlockiness", "FD", True, "ratio", "Blockiness of the stored frame shown through each window: mean absolute step across the coding's 8x8 block edges / mean absolute step elsewhere (about 1 without blocks; compare OriginalDisplayBlockiness)", True, "frames x windows"),
    PrivateElement(0x36, "JPEGOnlyDisplayBlockiness", "FD", True, "ratio", "DisplayBlockiness of the plain JPEG decode", True, "frames x windows"),
    PrivateElement(0x37, "OriginalDisplayBlockiness", "FD", True, "ratio", "DisplayBlockiness of the original, the same way", True, "frames x windows"),
    PrivateElement(0x38, "DisplayPSNRB", "FD", True, "dB", "PSNR-B (Yim and Bovik 2011: PSNR with the blocking effect factor added to the MSE) of the stored frame shown through each window", True, "frames x windows"),
    PrivateElement(0x39, "JPEGOnlyDisplayPSNRB", "FD", True, "dB", "DisplayPSNRB of the plain JPEG decode", True, "frames x windows"),
    PrivateElement(0x3A, "JPEGEncoder", "LO", False, "", "The JPEG encoder: trellis (mozjpeg trellis quantization, flat table scaled by the quality, rewritten as baseline) or pillow (libjpeg, Annex K table)", True),
    PrivateElement(0x3B, "EdgeFilter", "LO", False, "", "The filter applied to the model's reconstruction before ModelWeight blends it: 'ramp S' takes the part e of each step across the coding's block edges that the steps beside it do not explain, as e x (1 - |e| / limit) where it goes the step's way (limit: S x the quantizer step, the step capped at 40, / 255), and spreads it linearly over the two blocks' halves (absent when the model's output is not filtered)", True),
    PrivateElement(0x3C, "ModelPrecision", "LO", False, "", "The arithmetic the model's convolutions ran in: float32, or bfloat16 (float32 weights; chosen on CPUs with bfloat16 units, DICOM_CAE_PRECISION) whose pixels differ from float32's by about 0.0003 rms", True),
)
@dataclass(frozen=True)
class PrivateBlock:
    """The block's values, typed: one field per element of ELEMENTS (same names, same order;
    per-frame values as tuples, in frame order). ``to_dataset`` writes it, ``from_dataset``
    reads it back; the element offsets live in ELEMENTS alone."""

    ModelName: str
    WeightsSHA256: str
    SoftwareVersion: str
    JPEGQuality: int
    JPEGBytes: tuple[int, ...]
    CompressionRatio: tuple[float, ...]
    BitsPerPixel: tuple[float, ...]
    MSE: tuple[float, ...]
    PSNR: tuple[float, ...]
    SSIM: tuple[float, ...]
    PixelAccuracy: tuple[float, ...]
    PixelAccuracyTolerance: float
    MeanIntensityOriginal: tuple[float, ...]
    MeanIntensityReconstructed: tuple[float, ...]
    JPEGOnlyPSNR: tuple[float, ...]
    JPEGOnlySSIM: tuple[float, ...]
    JPEGOnlyPixelAccuracy: tuple[float, ...]
    JPEGOnlyMSE: tuple[float, ...]
    NormalizationLow: tuple[float, ...]
    NormalizationHigh: tuple[float, ...]
    AbsErrorPercentiles: tuple[float, ...]
    ErrorHistogram: tuple[int, ...]
    JPEGStreams: bytes
    TargetPSNR: float | None = None
    TargetSSIM: float | None = None
    Warnings: tuple[str, ...] | None = None
    ValueMapping: str | None = None
    MappingKnotCount: tuple[int, ...] | None = None
    MappingKnots: tuple[float, ...] | None = None
    DisplayWindowName: tuple[str, ...] | None = None
    DisplayWindowCenter: tuple[float, ...] | None = None
    DisplayWindowWidth: tuple[float, ...] | None = None
    DisplayWindowOrigin: tuple[str, ...] | None = None
    DisplayPSNR: tuple[float, ...] | None = None
    DisplaySSIM: tuple[float, ...] | None = None
    DisplayPixelAccuracy: tuple[float, ...] | None = None
    JPEGOnlyDisplayPSNR: tuple[float, ...] | None = None
    JPEGOnlyDisplaySSIM: tuple[float, ...] | None = None
    JPEGOnlyDisplayPixelAccuracy: tuple[float, ...] | None = None
    HUErrorRange: tuple[float, ...] | None = None
    HUMeanAbsoluteError: tuple[float, ...] | None = None
    HUBias: tuple[float, ...] | None = None
    JPEGOnlyHUMeanAbsoluteError: tuple[float, ...] | None = None
    JPEGOnlyHUBias: tuple[float, ...] | None = None
    CodingSize: int | None = None
    TargetRatio: float | None = None
    ModelWeight: tuple[float, ...] | None = None
    DisplayBlockiness: tuple[float, ...] | None = None
    JPEGOnlyDisplayBlockiness: tuple[float, ...] | None = None
    OriginalDisplayBlockiness: tuple[float, ...] | None = None
    DisplayPSNRB: tuple[float, ...] | None = None
    JPEGOnlyDisplayPSNRB: tuple[float, ...] | None = None
    JPEGEncoder: str | None = None
    EdgeFilter: str | None = None
    ModelPrecision: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # lists given for per-frame values are kept as tuples
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

    @classmethod
    def of_frames(cls, *, model_name: str, weights_sha256: str, software: str, encoder: str, quality: int,
                  frames: tuple[FrameMetrics, ...], weights: list[float], norm: image.Normalization,
                  windows: list[Window], reference: np.ndarray, stored: np.ndarray, streams: tuple[bytes, ...],
                  coding_size: int, is_ct: bool, target_psnr: float | None = None, target_ssim: float | None = None,
                  target_ratio: float | None = None, warnings: tuple[str, ...] = (),
                  edge_filter: str | None = None, precision: str | None = None) -> PrivateBlock:
        """The block of a derived instance: its frames' metrics (guard.FrameMetrics, stored
        and plain JPEG), the model's weight in each, how values were mapped, and the error
        statistics of ``stored`` against ``reference`` (both modality units, all frames)."""
        from dicom_cae import display, metrics
        from dicom_cae.guard import error_histogram

        seed_stored = image.seed_unit(stored, norm)
        seed_reference = image.seed_unit(reference, norm, clip=True)
        percentiles, histograms, edges = [], [], np.asarray(ERROR_BIN_EDGES)
        for i in range(len(frames)):
            err = np.abs(stored[i] - reference[i])
            percentiles += [float(v) for v in np.percentile(err, [50, 95, 99])] + [float(err.max())]
            histograms += [int(v) for v in error_histogram(seed_stored[i] - seed_reference[i], edges)]

        def shown(which: str, attr: str) -> list[float]:  # frames x windows, frame-major
            return [getattr(q, attr) if attr in ("blockiness", "psnr_b") else getattr(q.quality, attr)
                    for f in frames for q in getattr(f, which)]

        def hu(which: str, attr: str) -> list[float] | None:
            return [getattr(getattr(f, which), attr) for f in frames] if is_ct else None

        return cls(
            ModelName=model_name, WeightsSHA256=weights_sha256, SoftwareVersion=software, JPEGQuality=quality,
            JPEGBytes=[f.jpeg_bytes for f in frames],
            CompressionRatio=[metrics.compression_ratio(f.jpeg_bytes) for f in frames],
            BitsPerPixel=[metrics.bits_per_pixel(f.jpeg_bytes) for f in frames],
            MSE=[f.model.mse for f in frames], PSNR=[f.model.psnr for f in frames], SSIM=[f.model.ssim for f in frames],
            PixelAccuracy=[f.model.pixel_accuracy for f in frames], PixelAccuracyTolerance=metrics.PIXEL_TOLERANCE,
            MeanIntensityOriginal=[f.model.mean_reference for f in frames],
            MeanIntensityReconstructed=[f.model.mean_test for f in frames],
            JPEGOnlyPSNR=[f.jpeg.psnr for f in frames], JPEGOnlySSIM=[f.jpeg.ssim for f in frames],
            JPEGOnlyPixelAccuracy=[f.jpeg.pixel_accuracy for f in frames], JPEGOnlyMSE=[f.jpeg.mse for f in frames],
            NormalizationLow=list(norm.lo), NormalizationHigh=list(norm.hi), ValueMapping=norm.mapping_name,
            MappingKnotCount=[len(norm.mapping(i).x) for i in range(len(frames))],
            MappingKnots=[v for i in range(len(frames)) for v in mapping.knots(norm.mapping(i))],
            DisplayWindowName=[w.name for w in windows], DisplayWindowCenter=[w.center for w in windows],
            DisplayWindowWidth=[w.width for w in windows], DisplayWindowOrigin=[w.origin for w in windows],
            DisplayPSNR=shown("display_model", "psnr"), DisplaySSIM=shown("display_model", "ssim"),
            DisplayPixelAccuracy=shown("display_model", "pixel_accuracy"),
            JPEGOnlyDisplayPSNR=shown("display_jpeg", "psnr"), JPEGOnlyDisplaySSIM=shown("display_jpeg", "ssim"),
            JPEGOnlyDisplayPixelAccuracy=shown("display_jpeg", "pixel_accuracy"),
            HUErrorRange=list(display.HU_SOFT_TISSUE) if is_ct else None,
            HUMeanAbsoluteError=hu("hu_model", "mae"), HUBias=hu("hu_model", "bias"),
            JPEGOnlyHUMeanAbsoluteError=hu("hu_jpeg", "mae"), JPEGOnlyHUBias=hu("hu_jpeg", "bias"),
            AbsErrorPercentiles=percentiles, ErrorHistogram=histograms, JPEGStreams=b"".join(streams),
            TargetPSNR=target_psnr, TargetSSIM=target_ssim, Warnings=list(warnings) or None, CodingSize=coding_size,
            TargetRatio=target_ratio, ModelWeight=weights,
            DisplayBlockiness=shown("display_model", "blockiness"),
            JPEGOnlyDisplayBlockiness=shown("display_jpeg", "blockiness"),
            OriginalDisplayBlockiness=[b for f in frames for b in f.original_blockiness],
            DisplayPSNRB=shown("display_model", "psnr_b"), JPEGOnlyDisplayPSNRB=shown("display_jpeg", "psnr_b"),
            JPEGEncoder=encoder, EdgeFilter=edge_filter, ModelPrecision=precision,
        )

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PrivateBlock | None:
        """The block of ``ds`` (None when it has none)."""
        values = read(ds)
        if values is None:
            return None
        # An instance of an older version may lack elements that are required now: None.
        return cls(**{f.name: values.get(f.name) for f in fields(cls)})

    def to_dataset(self, ds: Dataset) -> None:
        write(ds, self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> PrivateBlock:
        return replace(self, **changes)

    def per_window(self, keyword: str, frame: int) -> tuple[float, ...]:
        """A frames x windows value (DisplayPSNR...) of one frame: one value per window."""
        values, n = getattr(self, keyword) or (), len(self.DisplayWindowName or ())
        return tuple(values[frame * n : (frame + 1) * n])


def is_ours(ds: Dataset) -> bool:
    """Whether ``ds`` is an instance dicom-cae derived (it carries our private block): never
    derived again, wherever it turns up (an output folder inside the input, a PACS that sends
    the derived series back)."""
    try:
        ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return False
    return True


ERROR_BIN_EDGES = tuple(round(-0.2 + 0.01 * i, 2) for i in range(41))
BY_KEYWORD = {e.keyword: e for e in ELEMENTS}


def write(ds: Dataset, values: dict[str, Any]) -> None:
    """Write ``values`` (keyword -> value or per-frame list) into the block of ``ds``.

    Raises KeyError for an unknown keyword, ValueError for a missing one.
    """
    missing = {e.keyword for e in ELEMENTS if not e.optional} - set(values)
    if missing:
        raise ValueError(f"private block values missing: {', '.join(sorted(missing))}")
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    for kw, value in values.items():
        el = BY_KEYWORD[kw]
        if value is None and el.optional:
            continue
        if el.vr == "IS":
            value = str(int(value))
        elif el.vr == "OB":
            value = bytes(value)
        elif el.vr == "LO":
            value = str(value)[:64]
        elif el.vr == "UT":
            value = "\n".join(value) if isinstance(value, (list, tuple)) else str(value)
        elif el.per_frame:
            value = [float(v) if el.vr == "FD" else int(v) for v in value]
        elif el.vr == "FD":
            value = float(value)
        block.add_new(el.offset, el.vr, value)


def read(ds: Dataset) -> dict[str, Any] | None:
    """The block's values by keyword (per-frame values as lists), or None if ``ds`` has no block."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    out: dict[str, Any] = {}
    for el in ELEMENTS:
        try:
            value = block[el.offset].value
        except KeyError:
            continue
        if el.vr == "IS":
            value = int(value)
        elif el.vr == "OB":
            value = bytes(value)
        elif el.per_frame:
            value = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
            value = [float(v) for v in value] if el.vr == "FD" else [int(v) for v in value]
        elif el.vr == "FD":
            value = float(value)
        elif el.vr == "UT":
            value = [line for line in str(value).split("\n") if line]  # as written: joined by "\n" only
        else:
            value = str(value)
        out[el.keyword] = value
    return out


def normalization(ds: Dataset, tags: PrivateBlock | None = None) -> image.Normalization:
    """How a derived instance's stored values map to the normalized [0, 1] image its metrics
    were computed on (its pixels are on the 256x256 grid already).

    Raises KeyError when ``ds`` has no dicom-cae block.
    """
    tags = tags if tags is not None else PrivateBlock.from_dataset(ds)
    if tags is None:
        raise KeyError(f"no {PRIVATE_CREATOR} block")
    mappings: tuple[mapping.ValueMapping, ...] = ()
    if tags.MappingKnots is not None:  # absent from instances written before value mappings existed
        flat, counts, name = tags.MappingKnots, tags.MappingKnotCount, tags.ValueMapping
        starts = [2 * sum(counts[:i]) for i in range(len(counts))]
        mappings = tuple(mapping.from_knots(name, flat[a : a + 2 * n]) for a, n in zip(starts, counts))
    return image.Normalization(
        lo=tuple(tags.NormalizationLow), hi=tuple(tags.NormalizationHigh),
        invert=str(ds.PhotometricInterpretation) == "MONOCHROME1", src_rows=image.SIZE, src_cols=image.SIZE,
        slope=float(ds.get("RescaleSlope", 1) or 1), intercept=float(ds.get("RescaleIntercept", 0) or 0),
        bits_allocated=int(ds.BitsAllocated), bits_stored=int(ds.BitsStored),
        pixel_representation=int(ds.PixelRepresentation),
        mappings=mappings,
    )


def markdown_table() -> str:
    """The block's layout as a Markdown table (docs/private-tags.md embeds it)."""
    rows = [
        "| element | keyword | VR | VM | units | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for e in ELEMENTS:
        rows.append(
            f"| ({PRIVATE_GROUP:04X},xx{e.offset:02X}) | {e.keyword} | {e.vr} | "
            f"{e.vm or ('1-n (one per frame)' if e.per_frame else '1')}{' (optional)' if e.optional else ''} | {e.units} | {e.meaning} |"
        )
    return "\n".join(rows)
