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
from dicom_cae import codec, derive, identity, image, metrics, private_tags

if TYPE_CHECKING:
    from dicom_cae.model import Reconstructor

LOGGER = logging.getLogger(__name__)

DEFAULT_QUALITY = 10
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Target:
    """A fidelity target: the lowest JPEG quality whose stored reconstruction reaches it."""

    psnr: float | None = None
    ssim: float | None = None

    def __post_init__(self) -> None:
        if self.psnr is None and self.ssim is None:
            raise ValueError("a fidelity target needs a PSNR or an SSIM")
        if self.ssim is not None and not 0 < self.ssim <= 1:
            raise ValueError(f"target SSIM must be in (0, 1], got {self.ssim}")

    def met(self, reference: np.ndarray, test: np.ndarray) -> bool:
        return (self.psnr is None or metrics.psnr(reference, test) >= self.psnr) and (
            self.ssim is None or metrics.ssim(reference, test) >= self.ssim
        )

    @property
    def key(self) -> str:
        return f"psnr>={self.psnr}:ssim>={self.ssim}"


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
    target: Target | None = None
    warnings: tuple[str, ...] = ()  # what was wrong with the source (stand-in UIDs...)

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

    A Study or Series Instance UID that the source lacks is replaced by a stand-in in ``ds``
    (see identity.identify); the warning travels with the result.

    Raises:
        NotAnImageError, DicomInputError: as image.normalize and identity.identify.
        ValueError: quality outside 1..100.
    """
    codec.check_quality(quality)
    warnings = _identify(ds, source)
    reference, norm = image.normalize(ds, source)
    return _compress(ds, source, reference, norm, quality, warnings=warnings)


def _identify(ds: Dataset, source: str) -> tuple[str, ...]:
    ident = identity.identify(ds, source)
    identity.apply(ds, ident)
    for warning in ident.warnings:
        LOGGER.warning("%s: %s", identity.printable(source, 200), warning)
    return ident.warnings


def _compress(ds: Dataset, source: str, reference: np.ndarray, norm: image.Normalization, quality: int,
              target: Target | None = None, warnings: tuple[str, ...] = ()) -> Prepared:
    jpeg = np.empty_like(reference)
    streams = []
    for i, frame in enumerate(reference):
        streams.append(codec.jpeg_encode(frame, quality))
        jpeg[i] = codec.jpeg_decode(streams[-1])
    return Prepared(source, ds, reference, norm, jpeg, tuple(streams), quality, target, warnings)


def finish(
    prep: Prepared,
    reconstruction: np.ndarray,
    *,
    model_name: str,
    weights_sha256: str,
    max_quality: int = 100,
    uid_key: str | None = None,
) -> Derived:
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
        "TargetPSNR": prep.target.psnr if prep.target else None,
        "TargetSSIM": prep.target.ssim if prep.target else None,
        "Warnings": list(prep.warnings) or None,
    }
    resampled = (
        f"; resampled from {prep.norm.src_rows}x{prep.norm.src_cols} to 256x256" if prep.norm.resampled else ""
    )
    aim = ""
    if prep.target:
        aims = [f"PSNR >= {prep.target.psnr} dB" if prep.target.psnr is not None else "",
                f"SSIM >= {prep.target.ssim}" if prep.target.ssim is not None else ""]
        aim = f" (lowest quality reaching {' and '.join(a for a in aims if a)})"
    how = (
        f"reconstructed by convolutional autoencoder {model_name} (weights sha256 {weights_sha256[:12]})"
        if prep.quality <= max_quality
        else f"JPEG decode kept: above quality {max_quality} {model_name} does not improve on it"
    )
    derivation = (
        f"JPEG (ISO 10918-1) quality {prep.quality}{aim}, {original_bytes / total_bytes:.1f}:1 of the 8-bit "
        f"256x256 image, {how}{resampled}"
    )
    ds = derive.derive(
        prep.dataset,
        stored,
        prep.norm,
        uids=derive.derived_uids(prep.dataset, key=uid_key or key(model_name, weights_sha256, prep.target or prep.quality)),
        private=private,
        derivation=derivation,
        compression_ratio=original_bytes / total_bytes,
    )
    return Derived(prep.source, ds, frames)


def key(model_name: str, weights_sha256: str, setting: int | Target) -> str:
    """What, besides the source, decides the output (and so its deterministic UIDs): the model
    and the JPEG quality, or the fidelity target that chose it."""
    return f"{model_name}:{weights_sha256}:" + (setting.key if isinstance(setting, Target) else f"q{setting}")


class Pipeline:
    """Batched reconstruction of prepared instances with one model."""

    def __init__(self, reconstructor: Reconstructor, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.reconstructor = reconstructor
        self.batch_size = batch_size

    def key(self, setting: int | Target) -> str:
        r = self.reconstructor
        weights = r.identity if isinstance(setting, Target) else r.for_quality(setting).sha256
        return key(r.name, weights, setting)

    def prepare_for_target(self, ds: Dataset, source: str, target: Target) -> Prepared:
        """Like prepare, at the lowest JPEG quality (1-95) whose stored reconstruction reaches
        ``target`` in every frame (95 when none does; the tags then show what was reached).

        Raises: as prepare.
        """
        warnings = _identify(ds, source)
        reference, norm = image.normalize(ds, source)
        lo, hi = 1, 95
        while lo < hi:  # the metrics rise with the quality, closely enough for a bisection
            mid = (lo + hi) // 2
            if self._meets(reference, norm, mid, target):
                hi = mid
            else:
                lo = mid + 1
        if lo == 95 and not self._meets(reference, norm, 95, target):
            LOGGER.warning("%s: fidelity target not reached even at quality 95", source)
        return _compress(ds, source, reference, norm, lo, target, warnings)

    def _meets(self, reference: np.ndarray, norm: image.Normalization, quality: int, target: Target) -> bool:
        jpeg = np.stack([codec.jpeg_roundtrip(f, quality)[0] for f in reference])
        recon = self.reconstructor(jpeg, quality, batch_size=self.batch_size)
        stored = image.from_stored(image.to_stored(recon, norm), norm)
        return all(target.met(r, t) for r, t in zip(reference, stored))

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
        return [self.finish(p, r) for p, r in zip(preps, recon)]

    def finish(self, prep: Prepared, reconstruction: np.ndarray) -> Derived:
        r = self.reconstructor.for_quality(prep.quality)
        # A targeted output depends on the whole set of weights, not only the band that served it.
        return finish(
            prep, reconstruction, model_name=r.name, weights_sha256=r.sha256, max_quality=r.max_quality,
            uid_key=self.key(prep.target or prep.quality),
        )
