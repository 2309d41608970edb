"""Image quality metrics on normalized [0, 1] 256x256 images: small pure functions.

Definitions (ARCHITECTURE.md): PSNR with data range 1; SSIM as Wang et al. 2004 (11x11
Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean over the valid area); pixel accuracy =
share of pixels whose absolute error is within ``PIXEL_TOLERANCE``; compression ratio =
JPEG bytes / bytes of the 256x256 image at 8 bits (compressed/original, the seed's
convention); bits per pixel = 8 * JPEG bytes / pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from scipy.ndimage import gaussian_filter

T = TypeVar("T")

#: Absolute error, in units of the normalized [0, 1] range, within which a pixel counts as accurate.
PIXEL_TOLERANCE = 0.1
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    d = np.asarray(reference, np.float64) - np.asarray(test, np.float64)
    return float(np.mean(d * d))


def psnr(reference: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    m = mse(reference, test)
    return math.inf if m == 0 else 10.0 * math.log10(data_range * data_range / m)


class Reference:
    """An SSIM reference image with its local statistics computed once, for measuring several
    test images against it (the model's, plain JPEG's, a blend's): same result as ``ssim``."""

    def __init__(self, reference: np.ndarray) -> None:
        x = np.asarray(reference, np.float64)
        if x.ndim != 2:
            raise ValueError(f"ssim needs a 2-D image, got shape {x.shape}")
        self.image = x
        self._x = x.astype(np.float32)
        self.mean = _blur(self._x)
        self.var = _blur(self._x * self._x) - self.mean * self.mean


def _blur(a: np.ndarray) -> np.ndarray:
    # The local statistics in float32: a third faster than float64 and, on our images, within
    # 1e-6 of it in the mean SSIM (the 4 decimals reported do not move).
    return gaussian_filter(a, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect", output=np.float32)


def ssim(reference: np.ndarray | Reference, test: np.ndarray, *, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D images (Wang et al. 2004, Gaussian window)."""
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    x = ref._x
    y = np.asarray(test, np.float32)
    if x.shape != y.shape or y.ndim != 2:
        raise ValueError(f"ssim needs two 2-D images of one shape, got {x.shape} and {y.shape}")
    mx, my = ref.mean, _blur(y)
    # Population (not sample) covariance, as in the paper.
    vx = ref.var
    vy = _blur(y * y) - my * my
    cxy = _blur(x * y) - mx * my
    c1 = np.float32((SSIM_K1 * data_range) ** 2)
    c2 = np.float32((SSIM_K2 * data_range) ** 2)
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


def pixel_accuracy(reference: np.ndarray, test: np.ndarray, *, tolerance: float = PIXEL_TOLERANCE) -> float:
    d = np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64))
    return float(np.mean(d <= tolerance))


def compression_ratio(jpeg_bytes: int, pixels: int = 256 * 256) -> float:
    """Compressed over original bytes, the original being ``pixels`` bytes at 8 bits."""
    return jpeg_bytes / pixels


def bits_per_pixel(jpeg_bytes: int, pixels: int = 256 * 256) -> float:
    return 8.0 * jpeg_bytes / pixels


@dataclass(frozen=True)
class Quality:
    """The quality of one reconstructed image against its reference."""

    mse: float
    psnr: float
    ssim: float
    pixel_accuracy: float
    mean_reference: float
    mean_test: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(reference: np.ndarray | Reference, test: np.ndarray) -> Quality:
    """All per-image metrics of ``test`` against ``reference`` (2-D, [0, 1]; a Reference to
    reuse its SSIM statistics)."""
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    return Quality(
        mse=mse(ref.image, test),
        psnr=psnr(ref.image, test),
        ssim=ssim(ref, test),
        pixel_accuracy=pixel_accuracy(ref.image, test),
        mean_reference=float(np.mean(ref.image)),
        mean_test=float(np.mean(test)),
    )


@dataclass(frozen=True)
class Steps:
    """The absolute steps between neighbouring pixels (horizontal and vertical together),
    summed across the block edges of a coding (codec.block_edges) and elsewhere: their count,
    sum and sum of squares."""

    n_across: int
    n_within: int
    sum_across: float
    sum_within: float
    sq_across: float
    sq_within: float


def steps(image: np.ndarray, edges: np.ndarray) -> Steps:
    """The steps of ``image`` across the block edges ``edges`` and elsewhere, in one pass."""
    x = np.asarray(image, np.float64)
    h, v = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
    at_h, at_v = edges[edges <= x.shape[1] - 1] - 1, edges[edges <= x.shape[0] - 1] - 1
    ah, av = h[:, at_h], v[at_v, :]
    sum_a, sq_a = float(ah.sum() + av.sum()), float(np.einsum("ij,ij->", ah, ah) + np.einsum("ij,ij->", av, av))
    n_a = ah.size + av.size
    return Steps(n_a, h.size + v.size - n_a, sum_a, float(h.sum() + v.sum()) - sum_a, sq_a,
                 float(np.einsum("ij,ij->", h, h) + np.einsum("ij,ij->", v, v)) - sq_a)


def blockiness(image: np.ndarray | Steps, edges: np.ndarray | None = None) -> float:
    """Mean absolute step across the coding's block edges over the mean absolute step
    elsewhere: about 1 for an image without blocks, above 1 where JPEG's 8x8 grid shows. A
    flat image (no step anywhere) gives 1. Take it in a display window: blocks hide in a wide
    one. ``image`` may be its Steps already."""
    s = image if isinstance(image, Steps) else steps(image, edges)
    a, w = s.sum_across / max(s.n_across, 1), s.sum_within / max(s.n_within, 1)
    if w == 0.0:
        return 1.0 if a == 0.0 else math.inf
    return a / w


def psnr_b(reference: np.ndarray, test: np.ndarray, edges: np.ndarray, block: float = 8.0, *,
           test_steps: Steps | None = None) -> float:
    """PSNR-B (Yim & Bovik 2011, IEEE TIP 20(1)): PSNR with the mean squared error increased
    by the blocking effect factor BEF = eta x (D_B - D_B^c) when positive, where D_B and D_B^c
    are the mean squared steps of ``test`` across and away from the block edges and
    eta = log2(block) / log2(image side). Data range 1; inf when both are nil. ``test_steps``:
    the steps of ``test``, when known."""
    s = test_steps or steps(test, edges)
    d_b, d_c = s.sq_across / max(s.n_across, 1), s.sq_within / max(s.n_within, 1)
    eta = math.log2(block) / math.log2(min(np.shape(test)))
    mse_b = mse(reference, test) + (eta * (d_b - d_c) if d_b > d_c else 0.0)
    return math.inf if mse_b == 0 else 10.0 * math.log10(1.0 / mse_b)


#: What "never below plain JPEG" compares, per image: the seed's PSNR and SSIM and the worst
#: display window's PSNR and SSIM (keys as evaluation rows name them).
GUARDED = ("psnr", "ssim", "display_psnr", "display_ssim", "display_blockiness")
#: Of GUARDED, those where lower is better: the most blocking of the display windows.
LOWER_IS_BETTER = frozenset({"display_blockiness"})


#: The weights w of the model in what is stored, JPEG decode + w x (model - JPEG decode). The
#: guard tries them in the order a viewer sees their images best (guard.ranked_weights; this
#: order breaks ties) and stores the first whose image is not below plain JPEG (not_below). The
#: model tends to smooth texture that SSIM rewards, and at the higher qualities it corrects a
#: little more than the error it sees (on the validation CT and MR the worst window peaks at
#: about 0.75 of its correction from quality 15 up); a part of its correction often keeps or
#: raises its PSNR gain without that loss. 0 stores the JPEG decode.
MODEL_WEIGHTS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.0)


def not_below(test: dict[str, float], jpeg: dict[str, float]) -> bool:
    """Whether ``test`` is at least as good as ``jpeg`` in every GUARDED metric it has (lower
    blockiness, higher everything else)."""
    return all(test[k] <= jpeg[k] if k in LOWER_IS_BETTER else test[k] >= jpeg[k]
               for k in GUARDED if k in test and k in jpeg)


def first_not_below(measure: Callable[[float], Iterable[T]], scores: Callable[[T], dict[str, float]],
                    jpeg: dict[str, float], *, order: Sequence[float] | None = None) -> tuple[float, T | None]:
    """The first weight of ``order`` (by default MODEL_WEIGHTS as listed, 0 excluded; the guard
    passes guard.ranked_weights) with an image not below plain JPEG's ``jpeg`` scores, and that
    image's measurement; (0.0, None) when none is: the JPEG decode is stored. ``measure(w)``:
    the measurements of the images that weight may store, in the order they are preferred
    (guard.stored_candidates; taken lazily: the first not below is kept). One search for the
    pipeline and for ``evaluate``."""
    if order is not None and 0 in order:
        raise ValueError("weight 0 is the JPEG decode itself, stored when no weight passes; it is not tried")
    for w in MODEL_WEIGHTS[:-1] if order is None else order:
        for measured in measure(w):
            if not_below(scores(measured), jpeg):
                return w, measured
    return 0.0, None


@dataclass(frozen=True)
class Regression:
    """Least-squares fit of y = slope * x + intercept, with R^2."""

    slope: float
    intercept: float
    r2: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def regression(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> Regression:
    """Least squares of ``y`` on ``x`` over the pairs where both are finite. With fewer than 2
    such points or constant x: NaN slope/intercept (never an exception)."""
    xa = np.asarray(x, np.float64)
    ya = np.asarray(y, np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = int(xa.size)
    if n < 2 or float(np.ptp(xa)) == 0.0:
        return Regression(math.nan, math.nan, math.nan, n)
    slope, intercept = np.polyfit(xa, ya, 1)
    pred = slope * xa + intercept
    ss_res = float(np.sum((ya - pred) ** 2))
    ss_tot = float(np.sum((ya - ya.mean()) ** 2))
    # Constant y: the fit is perfect when the residuals are rounding noise only.
    exact = ss_res <= 1e-12 * max(float(np.sum(ya**2)), 1e-300)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if exact else 0.0)
    return Regression(float(slope), float(intercept), float(r2), n)
