"""Choosing the coding of an image: a JPEG quality given, the lowest quality (and coding size)
that reaches a fidelity target, or the coding size and quality that fit a byte budget.

The searches need what would be stored for a candidate coding; the caller gives it as a
function (the model and the guard live elsewhere), so nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dicom_cae import codec, display, image, metrics

LOGGER = logging.getLogger(__name__)

TARGET_METRICS = ("display", "seed")

#: (JPEG decodes [0, 1] (n, 256, 256), quality, coding size) -> the frames as they would be
#: stored (for_fidelity: modality units; for_ratio: the mapped [0, 1] space).
Stored = Callable[[np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True)
class Target:
    """A fidelity target: the lowest JPEG quality whose stored reconstruction reaches it, in the
    worst of the display windows (``display``) or on the seed's min/max image (``seed``)."""

    psnr: float | None = None
    ssim: float | None = None
    metric: str = "seed"

    def __post_init__(self) -> None:
        if self.psnr is None and self.ssim is None:
            raise ValueError("a fidelity target needs a PSNR or an SSIM")
        if self.ssim is not None and not 0 < self.ssim <= 1:
            raise ValueError(f"target SSIM must be in (0, 1], got {self.ssim}")
        if self.metric not in TARGET_METRICS:
            raise ValueError(f"a target's metric is one of {', '.join(TARGET_METRICS)}, got {self.metric!r}")

    def met(self, reference: np.ndarray, test: np.ndarray) -> bool:
        """On two images already in the space the target is measured in."""
        return (self.psnr is None or metrics.psnr(reference, test) >= self.psnr) and (
            self.ssim is None or metrics.ssim(reference, test) >= self.ssim
        )

    def met_in(self, reference: np.ndarray, test: np.ndarray, norm: image.Normalization, frame: int,
               windows: list[display.Window]) -> bool:
        """``test`` against ``reference`` (one frame, modality units) in this target's space."""
        if self.metric == "seed":
            r = image.seed_unit(reference[None], image.one_frame(norm, frame), clip=True)[0]
            return self.met(r, image.seed_unit(test[None], image.one_frame(norm, frame))[0])
        for w in windows:  # each window as shown; SSIM only when the target asks for it
            r, t = w.apply(reference), w.apply(test)
            if norm.invert:
                r, t = 1.0 - r, 1.0 - t
            if not self.met(r.astype(np.float32), t.astype(np.float32)):  # as display.measure scores it
                return False
        return True

    @property
    def key(self) -> str:
        return f"psnr>={self.psnr}:ssim>={self.ssim}" + ("" if self.metric == "seed" else f":{self.metric}")

    @property
    def describe(self) -> str:
        """For people: what is aimed at, and where it is measured."""
        aims = [f"PSNR >= {self.psnr:g} dB" if self.psnr is not None else "",
                f"SSIM >= {self.ssim:g}" if self.ssim is not None else ""]
        where = "in the worst display window" if self.metric == "display" else "on the min/max image (seed's)"
        return f"fidelity target {' and '.join(a for a in aims if a)} {where}"


@dataclass(frozen=True)
class RatioTarget:
    """A byte budget: per image, the coding size (codec.CODING_SIZES) and the JPEG quality that
    spend at most ``ratio`` x 65,536 bytes per frame (the seed's compression ratio) and store the
    best image (PSNR of the stored frame in the mapped [0, 1] space)."""

    ratio: float

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"a target compression ratio is in (0, 1] (JPEG bytes / 65,536), got {self.ratio}")

    @property
    def budget(self) -> int:
        """Bytes per frame."""
        return int(self.ratio * image.SIZE * image.SIZE)

    @property
    def key(self) -> str:
        return f"ratio<={self.ratio}"

    @property
    def describe(self) -> str:
        return f"compression ratio target <= {self.ratio:g} ({self.budget} bytes a frame)"


#: What a conversion is asked for: a JPEG quality, a fidelity target or a byte budget.
Setting = int | Target | RatioTarget


def decodes(frames: np.ndarray, quality: int, size: int) -> np.ndarray:
    """The JPEG decodes of ``frames`` ([0, 1]) coded at ``size`` and ``quality``, at 256x256."""
    return np.stack([codec.decode_to(codec.encode_at(f, quality, size)) for f in frames])


def choose_coding(frames: np.ndarray, budget: int, stored: Stored) -> tuple[int | None, int]:
    """The coding size and JPEG quality for ``frames`` ([0, 1], (n, 256, 256)) within ``budget``
    bytes per frame: for each of codec.CODING_SIZES the highest quality that fits (bytes grow
    with the quality: a bisection), then the size whose stored frames (``stored(jpeg decodes,
    quality, size)``, [0, 1]) have the highest mean PSNR against ``frames``. (None, 1) when
    nothing fits.
    """
    n = frames.shape[0]
    best: tuple[float, int | None, int] = (-np.inf, None, 1)
    for size in codec.CODING_SIZES:
        def fits(q: int) -> bool:
            return sum(len(codec.encode_at(f, q, size)) for f in frames) <= budget * n

        if not fits(1):
            continue
        lo, hi = 1, 100
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        score = float(np.mean([metrics.psnr(r, t) for r, t in zip(frames, stored(decodes(frames, lo, size), lo, size))]))
        if score > best[0]:
            best = (score, size, lo)
    return best[1], best[2]


def for_ratio(img: image.Prepared, target: RatioTarget, stored_unit: Stored, source: str) -> tuple[int, int]:
    """(coding size, quality) for ``target``'s byte budget (choose_coding; ``stored_unit`` gives
    the stored frames in the mapped [0, 1] space); when nothing fits, the smallest size at
    quality 1 and a warning."""
    size, quality = choose_coding(img.unit, target.budget, stored_unit)
    if size is None:
        LOGGER.warning("%s: not even %dx%d at quality 1 fits compression ratio %s", source,
                       codec.CODING_SIZES[-1], codec.CODING_SIZES[-1], target.ratio)
        return codec.CODING_SIZES[-1], 1
    return size, quality


def for_fidelity(img: image.Prepared, target: Target, stored: Stored, source: str) -> tuple[int, int]:
    """(coding size, quality 1-95) that reach ``target`` in every frame with the fewest bytes:
    per size the lowest quality whose stored frames reach it (a bisection: the metrics rise
    with the quality, closely enough), then the size that spends least. When no size reaches
    it, 256 at quality 95 (the tags then show what was reached)."""
    def meets(quality: int, size: int) -> bool:
        out = stored(decodes(img.unit, quality, size), quality, size)
        return all(target.met_in(img.modality[i], out[i], img.norm, i, list(img.windows)) for i in range(len(out)))

    best: tuple[int, int, int] | None = None  # bytes, size, quality
    for size in codec.CODING_SIZES:
        if not meets(95, size):
            continue
        lo, hi = 1, 95
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if meets(mid, size) else (mid + 1, hi)
        spent = sum(len(codec.encode_at(f, lo, size)) for f in img.unit)
        if best is None or spent < best[0]:
            best = (spent, size, lo)
    if best is None:
        LOGGER.warning("%s: fidelity target not reached even at quality 95", source)
        return codec.SIZE, 95
    return best[1], best[2]
