"""What a viewer shows: the VOI windows of a source, and fidelity measured through them.

A figure in min/max space can hide 40 HU in a brain window; these measures map the original and
the stored reconstruction (both in modality units: HU for CT) through each window the source
carries, as a viewer would, and compare what comes out. No TensorFlow here.

Windows, in order of preference:
- every Window Center / Width pair the source carries (linear, as PS3.3 C.11.2.1.2 defines it;
  LINEAR_EXACT and SIGMOID are treated as LINEAR), and every VOI LUT of its VOI LUT Sequence;
- for CT, also the soft-tissue window C40/W400 when the source names none as narrow;
- when the source names no window at all, its 1st-99th percentile range (``p1-p99``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_cae import codec, metrics
from dicom_cae.identity import printable

SOFT_TISSUE = (40.0, 400.0)  # CT window centre and width, HU
#: Soft tissue for the CT error figures, HU (fat is about -100, contrast-enhanced organs below 200).
HU_SOFT_TISSUE = (-100.0, 200.0)


@dataclass(frozen=True)
class Window:
    """One display mapping from modality values to [0, 1]: a linear window (``center``,
    ``width``) or a VOI LUT (``lut``, its first mapped value and output bits)."""

    name: str
    center: float
    width: float
    origin: str  # "source", "soft-tissue" or "percentile"
    lut: tuple[int, ...] | None = None
    lut_first: float = 0.0
    lut_bits: int = 16

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (modality units) as shown, in [0, 1] (float64)."""
        x = np.asarray(values, np.float64)
        if self.lut is not None:
            table = np.asarray(self.lut, np.float64) / float((1 << self.lut_bits) - 1)
            index = np.clip(np.rint(x - self.lut_first), 0, len(table) - 1).astype(np.int64)
            return table[index]
        # PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5, clipped.
        w = max(self.width, 1.0 + 1e-6)
        return np.clip((x - (self.center - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)

    @property
    def span(self) -> tuple[float, float]:
        """The modality values the window spreads over [0, 1]."""
        if self.lut is not None:
            return self.lut_first, self.lut_first + len(self.lut) - 1
        return self.center - self.width / 2, self.center + self.width / 2


def _values(ds: Dataset, keyword: str) -> list:
    """An attribute's values as a list ([] when absent, empty or undecodable)."""
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError):
        return []
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _numbers(ds: Dataset, keyword: str) -> list[float]:
    try:
        return [float(v) for v in _values(ds, keyword)]
    except (TypeError, ValueError):
        return []


def source_windows(ds: Dataset) -> list[Window]:
    """The windows ``ds`` itself carries (Window Center/Width pairs, VOI LUT Sequence items)."""
    out: list[Window] = []
    centers, widths = _numbers(ds, "WindowCenter"), _numbers(ds, "WindowWidth")
    explanations = [str(v).strip() for v in _values(ds, "WindowCenterWidthExplanation")]
    for i, (c, w) in enumerate(zip(centers, widths)):
        if math.isfinite(c) and math.isfinite(w) and w >= 1:
            label = explanations[i] if i < len(explanations) and explanations[i] else f"C{c:g}/W{w:g}"
            label = printable(label, 64)  # a received string: one line, bounded
            out.append(Window(label, c, w, "source"))
    for i, item in enumerate(ds.get("VOILUTSequence") or []):
        try:
            n, first, bits = (int(v) for v in item.LUTDescriptor)
            data = item.LUTData
            table = tuple(int(v) for v in (np.frombuffer(data, "<u2") if isinstance(data, bytes) else data))
        except (AttributeError, TypeError, ValueError):
            continue
        table = table[: n or 65536]
        if len(table) >= 2:
            lo, hi = first, first + len(table) - 1
            out.append(Window(printable(item.get("LUTExplanation") or f"VOI LUT {i + 1}", 64), (lo + hi) / 2, hi - lo + 1,
                              "source", lut=table, lut_first=float(first), lut_bits=bits))
    return out


def windows(ds: Dataset, modality_values: np.ndarray) -> list[Window]:
    """The windows to measure an image in: the source's, plus the CT soft-tissue window when
    none is as narrow, or the 1st-99th percentile range when the source names none."""
    out = source_windows(ds)
    if str(ds.get("Modality", "")).upper() == "CT" and not any(w.width <= SOFT_TISSUE[1] for w in out):
        out.append(Window(f"soft tissue C{SOFT_TISSUE[0]:g}/W{SOFT_TISSUE[1]:g}", *SOFT_TISSUE, "soft-tissue"))
    if not out:
        lo, hi = (float(v) for v in np.percentile(modality_values, [1, 99]))
        if hi <= lo:
            lo, hi = float(np.min(modality_values)), float(np.max(modality_values)) + 1.0
        out.append(Window("p1-p99", (lo + hi) / 2, max(hi - lo, 1.0 + 1e-3), "percentile"))
    return out


@dataclass(frozen=True)
class WindowQuality:
    window: Window
    quality: metrics.Quality
    blockiness: float = 1.0  # metrics.blockiness of the image as shown (the original's is ~1)
    psnr_b: float = float("nan")  # metrics.psnr_b as shown


@dataclass(frozen=True)
class HUError:
    """Errors in modality units over the pixels of the reference inside ``range``."""

    range: tuple[float, float]
    pixels: int
    mae: float  # mean absolute error
    bias: float  # mean signed error (reconstruction - original)


class Shown:
    """A reference image as shown through each window, kept to measure several test images;
    blocking is measured on the block grid of a ``coding_size`` coding (codec.block_edges)."""

    def __init__(self, reference: np.ndarray, wins: list[Window], *, invert: bool = False,
                 coding_size: int = codec.SIZE) -> None:
        self.wins, self.invert = list(wins), invert
        self.references = [metrics.Reference(self._show(w, reference)) for w in self.wins]
        self.edges = codec.block_edges(coding_size)
        self.block = 8.0 * codec.SIZE / coding_size
        #: The original's blockiness in each window (about 1: the scale a test image's is read on).
        self.original_blockiness = [metrics.blockiness(r.image, self.edges) for r in self.references]

    def _show(self, w: Window, values: np.ndarray) -> np.ndarray:
        shown = w.apply(values)
        return (1.0 - shown if self.invert else shown).astype(np.float32)

    def worst_psnr(self, test: np.ndarray) -> float:
        """The PSNR of ``test`` (modality units) in its worst window, as measure scores it (PSNR
        alone: a quick look at a candidate before it is measured in full). inf with no window."""
        return min((metrics.psnr(r.image, self._show(w, test)) for w, r in zip(self.wins, self.references)),
                   default=float("inf"))

    def measure(self, test: np.ndarray) -> list[WindowQuality]:
        out = []
        for w, r in zip(self.wins, self.references):
            shown = self._show(w, test)
            s = metrics.steps(shown, self.edges)  # once, for both blocking measures
            out.append(WindowQuality(w, metrics.measure(r, shown), metrics.blockiness(s),
                                     metrics.psnr_b(r.image, shown, self.edges, self.block, test_steps=s)))
        return out


def measure(reference: np.ndarray, test: np.ndarray, wins: list[Window], *, invert: bool = False,
            coding_size: int = codec.SIZE) -> list[WindowQuality]:
    """PSNR, SSIM, pixel accuracy, blockiness and PSNR-B of ``test`` against ``reference``
    (both modality units) as shown through each window (inverted for MONOCHROME1, as a viewer
    shows it)."""
    return Shown(reference, wins, invert=invert, coding_size=coding_size).measure(test)


def hu_error(reference: np.ndarray, test: np.ndarray, value_range: tuple[float, float] = HU_SOFT_TISSUE) -> HUError:
    """Mean absolute error and bias over the reference pixels within ``value_range``."""
    ref = np.asarray(reference, np.float64)
    mask = (ref >= value_range[0]) & (ref <= value_range[1])
    n = int(mask.sum())
    if n == 0:
        return HUError(value_range, 0, math.nan, math.nan)
    diff = np.asarray(test, np.float64)[mask] - ref[mask]
    return HUError(value_range, n, float(np.abs(diff).mean()), float(diff.mean()))
