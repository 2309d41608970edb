"""The JPEG + CAE pipeline for one or many instances: prepare, reconstruct in batches, finish.

The jobs live in their own modules: the coding's choice (targets), the guard and the frame
metrics (guard), the private block (private_tags.PrivateBlock) and the derived instance
(derive). Here they are put together. ``prepare`` and ``finish`` need no TensorFlow; only
``Pipeline.reconstruct`` runs the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

import dicom_cae
from dicom_cae import codec, derive, display, guard, identity, image, io, private_tags, targets
from dicom_cae import mapping as value_mapping
from dicom_cae.targets import RatioTarget, Setting, Target

if TYPE_CHECKING:
    from dicom_cae.model import Reconstructor

LOGGER = logging.getLogger(__name__)

#: Trellis encoder, window mapping: the flat table's step 31; CT at ~0.41 bpp, no more than the
#: defaults before the trellis encoder (Pillow at quality 30: 0.425), ~30 dB in its worst window.
DEFAULT_QUALITY = 26
DEFAULT_BATCH_SIZE = 16  # images per model call


@dataclass(frozen=True)
class Prepared:
    """One source instance, normalized and JPEG-compressed, waiting for the model."""

    source: str
    dataset: Dataset  # the source without its pixels (they are in the arrays)
    reference: np.ndarray  # float32 (frames, 256, 256), the original mapped to [0, 1]
    norm: image.Normalization
    jpeg: np.ndarray  # float32 (frames, 256, 256), the JPEG decode
    jpeg_streams: tuple[bytes, ...]
    quality: int
    target: Target | None = None
    warnings: tuple[str, ...] = ()  # what was wrong with the source (stand-in UIDs...)
    modality: np.ndarray | None = None  # float32 (frames, 256, 256), the original in modality units
    windows: tuple[display.Window, ...] = ()
    coding_size: int = codec.SIZE  # the side of the image the JPEG codes (decoded back to 256)
    ratio_target: RatioTarget | None = None

    @property
    def jpeg_bytes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.jpeg_streams)

    @property
    def frames(self) -> int:
        return int(self.reference.shape[0])

    @property
    def setting(self) -> Setting:
        return self.target or self.ratio_target or self.quality


@dataclass(frozen=True)
class Derived:
    """A derived instance and the metrics of the pixels it stores."""

    source: str
    dataset: Dataset
    frames: tuple[guard.FrameMetrics, ...]


def prepare(ds: Dataset, source: str, *, quality: int, mapping: str = value_mapping.DEFAULT) -> Prepared:
    """Map every frame of ``ds`` to [0, 1] with the value mapping ``mapping`` and JPEG-compress
    it at ``quality``.

    A Study or Series Instance UID that the source lacks is replaced by a stand-in in ``ds``
    (see identity.identify); the warning travels with the result.

    Raises:
        NotAnImageError, DicomInputError: as image.normalize and identity.identify.
        ValueError: quality outside 1..100.
    """
    codec.check_quality(quality)
    warnings = _identify(ds, source)
    return compress(ds, source, image.prepare(ds, source, mapping=mapping), quality, warnings=warnings)


def _identify(ds: Dataset, source: str) -> tuple[str, ...]:
    ident = identity.identify(ds, source)
    identity.apply(ds, ident)
    for warning in ident.warnings:
        LOGGER.warning("%s: %s", identity.printable(source, 200), warning)
    return ident.warnings


def compress(ds: Dataset, source: str, img: image.Prepared, quality: int, target: Target | None = None,
             warnings: tuple[str, ...] = (), *, coding_size: int = codec.SIZE,
             ratio_target: RatioTarget | None = None) -> Prepared:
    """``img`` (``ds``'s frames prepared) coded at ``coding_size`` and ``quality``."""
    streams = tuple(codec.encode_at(frame, quality, coding_size) for frame in img.unit)
    jpeg = np.stack([codec.decode_to(s) for s in streams])
    return Prepared(source, io.without_pixels(ds), img.unit, img.norm, jpeg, streams, quality, target, warnings,
                    img.modality, img.windows, coding_size, ratio_target)


def finish(prep: Prepared, reconstruction: np.ndarray, *, model_name: str, weights_sha256: str, max_quality: int = 100,
           uid_key: str | None = None, coding_served: bool = True, edge_filter: bool = False, flips: int = 1,
           precision: str = "float32") -> Derived:
    """Map the reconstruction back to stored values (as guard.choose_stored chooses: never
    below the plain JPEG decode; the private block's ModelWeight says how), measure, build the
    instance. ``edge_filter``: the reconstruction's block edges were smoothed (codec.smooth_block_edges);
    ``flips``: it is the mean of the model's outputs over that many flips of its input;
    ``precision``: what the model computed in."""
    reference = prep.modality if prep.modality is not None else image.unit_to_modality(prep.reference, prep.norm)
    is_ct = str(prep.dataset.get("Modality", "")).upper() == "CT"
    windows = list(prep.windows)
    stored, frames, weights = guard.choose_stored(
        reference, prep.jpeg, reconstruction, prep.norm, windows, is_ct=is_ct, jpeg_bytes=prep.jpeg_bytes,
        coding_size=prep.coding_size, edge_quality=prep.quality if edge_filter and coding_served else None)
    # The filter is named where what is stored holds some of the filtered reconstruction.
    filtered = codec.edge_filter_name(prep.coding_size) if edge_filter and coding_served and any(weights) else None
    target = prep.target
    private = private_tags.PrivateBlock.of_frames(
        model_name=model_name, weights_sha256=weights_sha256, software=f"dicom-cae {dicom_cae.__version__}",
        encoder=codec.DEFAULT_ENCODER, quality=prep.quality, frames=frames, weights=weights, norm=prep.norm,
        windows=windows, reference=reference, stored=image.stored_to_modality(stored, prep.norm),
        streams=prep.jpeg_streams, coding_size=prep.coding_size, is_ct=is_ct,
        target_psnr=target.psnr if target else None, target_ssim=target.ssim if target else None,
        target_ratio=prep.ratio_target.ratio if prep.ratio_target else None, warnings=prep.warnings,
        edge_filter=filtered, precision=precision if coding_served else None)
    ratio = prep.frames * image.SIZE * image.SIZE / sum(prep.jpeg_bytes)
    if prep.ratio_target:
        aim = f"coding size and quality chosen for compression ratio <= {prep.ratio_target.ratio}"
    elif target:
        aims = [f"PSNR >= {target.psnr} dB" if target.psnr is not None else "",
                f"SSIM >= {target.ssim}" if target.ssim is not None else ""]
        aim = f"coding size and lowest quality reaching {' and '.join(a for a in aims if a)} with the fewest bytes"
    else:
        aim = ""
    derivation = derive.describe(
        quality=prep.quality, coding_size=prep.coding_size, mapping_name=prep.norm.mapping_name, model_name=model_name,
        weights_sha256=weights_sha256, weights=weights, compression_ratio=ratio, served=coding_served,
        max_quality=max_quality, target=aim, edge_filter=filtered, flips=flips, precision=precision,
        resampled_from=(prep.norm.src_rows, prep.norm.src_cols) if prep.norm.resampled else None)
    uids = derive.derived_uids(prep.dataset, key=uid_key or key(model_name, weights_sha256, prep.setting))
    ds = derive.derive(prep.dataset, stored, prep.norm, uids=uids, private=private, derivation=derivation,
                       compression_ratio=ratio)
    return Derived(prep.source, ds, frames)


def key(model_name: str, weights_sha256: str, setting: Setting, mapping: str = value_mapping.MINMAX,
        decoder: str | None = None) -> str:
    """What, besides the source, decides the output (and so its deterministic UIDs): the model,
    the JPEG quality or the fidelity target that chose it, the value mapping (the seed's
    minmax adds nothing), what is done around the model (Reconstructor.decoder: its precision,
    its flips and the filter after it; none adds nothing) and how the guard chooses what of
    the model's correction is stored (guard.GUARD_ID; since it ranks the weights by what a
    viewer sees, the seed's outputs too have other UIDs than before)."""
    text = f"{model_name}:{weights_sha256}:" + (f"q{setting}" if isinstance(setting, int) else setting.key)
    text = text if mapping == value_mapping.MINMAX else f"{text}:{mapping}"
    return ":".join(part for part in (text, decoder, guard.GUARD_ID) if part)


class Pipeline:
    """Batched reconstruction of prepared instances with one model and one value mapping."""

    def __init__(self, reconstructor: Reconstructor, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 mapping: str = value_mapping.DEFAULT) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.reconstructor = reconstructor
        self.batch_size = batch_size
        self.mapping = value_mapping.check(mapping)

    def key(self, setting: Setting) -> str:
        r = self.reconstructor
        weights = r.for_quality(setting, self.mapping).sha256 if isinstance(setting, int) else r.identity
        return key(r.name, weights, setting, self.mapping, r.decoder)

    def _recon(self, jpeg: np.ndarray, quality: int | np.ndarray, size: int) -> np.ndarray:
        return self.reconstructor(jpeg, quality, batch_size=self.batch_size, mapping=self.mapping, coding_size=size)

    def prepare_setting(self, ds: Dataset, source: str, setting: Setting) -> Prepared:
        """``ds`` prepared for a quality, a fidelity target or a byte budget."""
        if isinstance(setting, RatioTarget):
            return self.prepare_for_ratio(ds, source, setting)
        if isinstance(setting, Target):
            return self.prepare_for_target(ds, source, setting)
        return self.prepare(ds, source, quality=setting)

    def prepare(self, ds: Dataset, source: str, *, quality: int) -> Prepared:
        """prepare() with this pipeline's value mapping."""
        return prepare(ds, source, quality=quality, mapping=self.mapping)

    def prepare_for_ratio(self, ds: Dataset, source: str, target: RatioTarget) -> Prepared:
        """Like prepare, at the coding size and quality that fit ``target``'s byte budget and
        store the best image (targets.for_ratio). Raises: as prepare."""
        warnings = _identify(ds, source)
        img = image.prepare(ds, source, mapping=self.mapping)

        def stored_unit(jpeg: np.ndarray, quality: int, size: int) -> np.ndarray:
            return image.from_stored(image.to_stored(self._recon(jpeg, quality, size), img.norm), img.norm)

        size, quality = targets.for_ratio(img, target, stored_unit, source)
        return compress(ds, source, img, quality, None, warnings, coding_size=size, ratio_target=target)

    def prepare_for_target(self, ds: Dataset, source: str, target: Target) -> Prepared:
        """Like prepare, at the coding size and quality that reach ``target`` in every frame
        with the fewest bytes (targets.for_fidelity, on what the guard stores). Raises: as prepare."""
        warnings = _identify(ds, source)
        img = image.prepare(ds, source, mapping=self.mapping)
        is_ct = str(ds.get("Modality", "")).upper() == "CT"

        def stored(jpeg: np.ndarray, quality: int, size: int) -> np.ndarray:
            served = self.reconstructor.for_coding(quality, self.mapping, size)
            filtered = served is not None and served.edge_filter is not None
            out, _, _ = guard.choose_stored(img.modality, jpeg, self._recon(jpeg, quality, size), img.norm,
                                            list(img.windows), is_ct=is_ct, coding_size=size,
                                            edge_quality=quality if filtered else None)
            return image.stored_to_modality(out, img.norm)

        size, quality = targets.for_fidelity(img, target, stored, source)
        return compress(ds, source, img, quality, target, warnings, coding_size=size)

    def reconstruct(self, preps: list[Prepared]) -> list[np.ndarray]:
        """Run the model over the frames of all ``preps`` at once; one array per instance."""
        if not preps:
            return []
        jpeg = np.concatenate([p.jpeg for p in preps])
        quality = np.concatenate([np.full(p.frames, p.quality, np.float32) for p in preps])
        size = np.concatenate([np.full(p.frames, p.coding_size) for p in preps])
        out = jpeg.copy()
        for s in np.unique(size):  # each coding size to the weights for it (passed through where none serve)
            idx = np.flatnonzero(size == s)
            out[idx] = self._recon(jpeg[idx], quality[idx], int(s))
        return np.split(out, np.cumsum([p.frames for p in preps])[:-1])

    def run(self, preps: list[Prepared]) -> list[Derived]:
        """Reconstruct and finish every prepared instance."""
        return [self.finish(p, r) for p, r in zip(preps, self.reconstruct(preps))]

    def finish(self, prep: Prepared, reconstruction: np.ndarray) -> Derived:
        """finish() as this pipeline's model describes it: the weights that served the coding
        (a targeted output's UIDs depend on the whole set of weights, not only those)."""
        r = self.reconstructor.for_coding(prep.quality, self.mapping, prep.coding_size)
        uid_key = self.key(prep.setting)
        if r is None:  # a smaller coding no weights serve: the decode passed through
            return finish(prep, reconstruction, model_name=self.reconstructor.name, max_quality=self.reconstructor.max_quality,
                          weights_sha256=self.reconstructor.sha256, coding_served=False, uid_key=uid_key)
        return finish(prep, reconstruction, model_name=r.name, weights_sha256=r.sha256, max_quality=r.max_quality,
                      uid_key=uid_key, edge_filter=r.edge_filter is not None, flips=r.flips, precision=r.precision)
