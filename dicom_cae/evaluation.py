"""Plain JPEG and JPEG + model on a set of images, summarized per JPEG quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dicom_cae import codec, metrics

# reconstruct(jpeg_images, quality) -> images
Reconstruct = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Summary:
    """Means over a set of images at one JPEG quality."""

    quality: int
    compression_ratio: float
    bpp: float
    mse: float
    psnr: float
    ssim: float
    pixel_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in self.__dict__.items()}


def jpeg_set(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG round trip of every image: decoded images and byte counts."""
    dec = np.empty_like(images)
    nbytes = np.empty(images.shape[0], np.int64)
    for i, img in enumerate(images):
        dec[i], nbytes[i] = codec.jpeg_roundtrip(img, quality)
    return dec, nbytes


def summarize(reference: np.ndarray, test: np.ndarray, nbytes: np.ndarray, quality: int) -> Summary:
    qs = [metrics.measure(r, t) for r, t in zip(reference, test)]
    # PSNR is averaged per image in dB, as the seed and CompressAI report it.
    return Summary(
        quality=quality,
        compression_ratio=float(np.mean([metrics.compression_ratio(int(b)) for b in nbytes])),
        bpp=float(np.mean([metrics.bits_per_pixel(int(b)) for b in nbytes])),
        mse=float(np.mean([q.mse for q in qs])),
        psnr=float(np.mean([q.psnr for q in qs])),
        ssim=float(np.mean([q.ssim for q in qs])),
        pixel_accuracy=float(np.mean([q.pixel_accuracy for q in qs])),
    )


def compare(
    images: np.ndarray, qualities: list[int], reconstruct: Reconstruct
) -> dict[int, dict[str, Summary]]:
    """For each quality: {'jpeg': Summary, 'model': Summary}.

    The model's float output is scored: the derived instances store it at the source's bit
    depth (12 or 16 bits), finer than any difference that shows in these means.
    """
    out: dict[int, dict[str, Summary]] = {}
    for q in qualities:
        dec, nbytes = jpeg_set(images, q)
        rec = reconstruct(dec, q)
        out[q] = {"jpeg": summarize(images, dec, nbytes, q), "model": summarize(images, rec, nbytes, q)}
    return out
