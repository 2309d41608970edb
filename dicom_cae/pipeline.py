"""The JPEG + CAE pipeline for one or many instances: prepare, reconstruct in batches, derive.

``prepare`` and ``finish`` need no TensorFlow; only ``Pipeline.reconstruct`` runs the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

import dicom_cae
from dicom_cae import codec, derive, image, metrics, private_tags

if TYPE_CHECKING:
    from dicom_cae.model import Reconstructor

LOGGER = logging.getLogger(__name__)

DEFAULT_QUALITY = 10
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Prepared:
    """One source instance, normalized and JPEG-compressed, waiting for the model."""

    source: str
    dataset: Dataset
    reference: np.ndarray  # float32 (frames, 256, 256), the normalized original
    norm: image.Normalization
    jpeg: np.ndarray  # float32 (frames, 256, 256), the JPEG decode
    jpeg_streams: tuple[bytes, ...]
    quality: int

    @property
    def jpeg_bytes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.jpeg_streams)

    @property
    def frames(self) -> int:
        return int(self.reference.shape[0])


@dataclass(frozen=True)
class FrameMetrics:
    jpeg_bytes: int
    model: metrics.Quality
    jpeg: metrics.Quality


@dataclass(frozen=True)
class Derived:
    """A derived instance and the metrics of the pixels it stores."""

    source: str
    dataset: Dataset
    frames: tuple[FrameMetrics, ...]


def prepare(ds: Dataset, source: str, *, quality: int) -> Prepared:
    """Normalize every frame of ``ds`` and JPEG-compress it at ``quality``.

    Raises:
        NotAnImageError, DicomInputError: as image.normalize.
        ValueError: quality outside 1..100.
    """
    quality = codec.check_quality(quality)
    reference, norm = image.normalize(ds, source)
    jpeg = np.empty_like(reference)
    streams = []
    for i, frame in enumerate(reference):
        streams.append(codec.jpeg_encode(frame, quality))
        jpeg[i] = codec.jpeg_decode(streams[-1])
    return Prepared(source, ds, reference, norm, jpeg, tuple(streams), quality)


def finish(prep: Prepared, reconstruction: np.ndarray, *, model_name: str, weights_sha256: str) -> Derived:
    """Map the reconstruction back to stored values, measure what is stored, build the instance."""
    stored = image.to_stored(reconstruction, prep.norm)
    # The metrics describe the stored pixels, read back through the same normalization.
    stored_unit = image.from_stored(stored, prep.norm)
    frames = tuple(
        FrameMetrics(
            jpeg_bytes=prep.jpeg_bytes[i],
            model=metrics.measure(prep.reference[i], stored_unit[i]),
            jpeg=metrics.measure(prep.reference[i], prep.jpeg[i]),
        )
        for i in range(prep.frames)
    )
    errors = stored_unit - prep.reference
    span = np.asarray(prep.norm.hi) - np.asarray(prep.norm.lo)
    percentiles, histograms = [], []
    edges = np.asarray(private_tags.ERROR_BIN_EDGES)
    for i, err in enumerate(errors):
        abs_modality = np.abs(err.astype(np.float64)) * (span[i] if span[i] > 0 else 1.0)
        percentiles += [float(v) for v in np.percentile(abs_modality, [50, 95, 99])] + [float(abs_modality.max())]
        inner, _ = np.histogram(err, bins=edges)
        histograms += [int((err < edges[0]).sum()), *map(int, inner), int((err > edges[-1]).sum())]
    total_bytes = sum(prep.jpeg_bytes)
    original_bytes = prep.frames * image.SIZE * image.SIZE
    private: dict[str, Any] = {
        "ModelName": model_name,
        "WeightsSHA256": weights_sha256,
        "SoftwareVersion": f"dicom-cae {dicom_cae.__version__}",
        "JPEGQuality": prep.quality,
        "JPEGBytes": [f.jpeg_bytes for f in frames],
        "CompressionRatio": [metrics.compression_ratio(f.jpeg_bytes) for f in frames],
        "BitsPerPixel": [metrics.bits_per_pixel(f.jpeg_bytes) for f in frames],
        "MSE": [f.model.mse for f in frames],
        "PSNR": [f.model.psnr for f in frames],
        "SSIM": [f.model.ssim for f in frames],
        "PixelAccuracy": [f.model.pixel_accuracy for f in frames],
        "PixelAccuracyTolerance": metrics.PIXEL_TOLERANCE,
        "MeanIntensityOriginal": [f.model.mean_reference for f in frames],
        "MeanIntensityReconstructed": [f.model.mean_test for f in frames],
        "JPEGOnlyPSNR": [f.jpeg.psnr for f in frames],
        "JPEGOnlySSIM": [f.jpeg.ssim for f in frames],
        "JPEGOnlyPixelAccuracy": [f.jpeg.pixel_accuracy for f in frames],
        "JPEGOnlyMSE": [f.jpeg.mse for f in frames],
        "NormalizationLow": list(prep.norm.lo),
        "NormalizationHigh": list(prep.norm.hi),
        "AbsErrorPercentiles": percentiles,
        "ErrorHistogram": histograms,
        "JPEGStreams": b"".join(prep.jpeg_streams),
    }
    resampled = (
        f"; resampled from {prep.norm.src_rows}x{prep.norm.src_cols} to 256x256" if prep.norm.resampled else ""
    )
    derivation = (
        f"JPEG (ISO 10918-1) quality {prep.quality}, {original_bytes / total_bytes:.1f}:1 of the 8-bit "
        f"256x256 image, reconstructed by convolutional autoencoder {model_name} "
        f"(weights sha256 {weights_sha256[:12]}){resampled}"
    )
    ds = derive.derive(
        prep.dataset,
        stored,
        prep.norm,
        uids=derive.derived_uids(prep.dataset, key=key(model_name, weights_sha256, prep.quality)),
        private=private,
        derivation=derivation,
        compression_ratio=original_bytes / total_bytes,
    )
    return Derived(prep.source, ds, frames)


def key(model_name: str, weights_sha256: str, quality: int) -> str:
    """What, besides the source, decides the output (and so its deterministic UIDs)."""
    return f"{model_name}:{weights_sha256}:q{quality}"


class Pipeline:
    """Batched reconstruction of prepared instances with one model."""

    def __init__(self, reconstructor: Reconstructor, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.reconstructor = reconstructor
        self.batch_size = batch_size

    def key(self, quality: int) -> str:
        return key(self.reconstructor.name, self.reconstructor.sha256, quality)

    def reconstruct(self, preps: list[Prepared]) -> list[np.ndarray]:
        """Run the model over the frames of all ``preps`` at once; one array per instance."""
        if not preps:
            return []
        jpeg = np.concatenate([p.jpeg for p in preps])
        quality = np.concatenate([np.full(p.frames, p.quality, np.float32) for p in preps])
        out = self.reconstructor(jpeg, quality, batch_size=self.batch_size)
        splits = np.cumsum([p.frames for p in preps])[:-1]
        return np.split(out, splits)

    def run(self, preps: list[Prepared]) -> list[Derived]:
        """Reconstruct and finish every prepared instance."""
        recon = self.reconstruct(preps)
        name, sha = self.reconstructor.name, self.reconstructor.sha256
        return [finish(p, r, model_name=name, weights_sha256=sha) for p, r in zip(preps, recon)]
