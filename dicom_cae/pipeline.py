"""The JPEG + CAE pipeline for one or many instances: prepare, reconstruct in batches, derive.

``prepare`` and ``finish`` need no TensorFlow; only ``Pipeline.reconstruct`` runs the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
from pydicom.dataset import Dataset

import dicom_cae
from dicom_cae import codec, derive, display, identity, image, metrics, private_tags
from dicom_cae import mapping as value_mapping

if TYPE_CHECKING:
    from dicom_cae.model import Reconstructor

LOGGER = logging.getLogger(__name__)

DEFAULT_QUALITY = 30  # trellis encoder, window mapping: CT at 0.44-0.46 bpp, ~31 dB in its worst window, the model on ~all frames
DEFAULT_BATCH_SIZE = 16


TARGET_METRICS = ("display", "seed")


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


@dataclass(frozen=True)
class Prepared:
    """One source instance, normalized and JPEG-compressed, waiting for the model."""

    source: str
    dataset: Dataset
    reference: np.ndarray  # float32 (frames, 256, 256), the original mapped to [0, 1]
    norm: image.Normalization
    jpeg: np.ndarray  # float32 (frames, 256, 256), the JPEG decode
    jpeg_streams: tuple[bytes, ...]
    quality: int
    target: Target | None = None
    warnings: tuple[str, ...] = ()  # what was wrong with the source (stand-in UIDs...)
    modality: np.ndarray | None = None  # float32 (frames, 256, 256), the original in modality units
    windows: tuple[display.Window, ...] = ()
    coding_size: int = codec.SIZE  # the JPEG codes a 256x256 or a 128x128 image (decoded back to 256)
    ratio_target: RatioTarget | None = None

    @property
    def jpeg_bytes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.jpeg_streams)

    @property
    def frames(self) -> int:
        return int(self.reference.shape[0])


@dataclass(frozen=True)
class FrameMetrics:
    """The seed's metrics (min/max space) and what a viewer sees (per window, HU for CT), of
    the stored frame and of plain JPEG at the same bytes."""

    jpeg_bytes: int
    model: metrics.Quality
    jpeg: metrics.Quality
    display_model: tuple[display.WindowQuality, ...] = ()
    display_jpeg: tuple[display.WindowQuality, ...] = ()
    hu_model: display.HUError | None = None
    hu_jpeg: display.HUError | None = None
    original_blockiness: tuple[float, ...] = ()  # the original's, per display window

    def scores(self, which: str) -> dict[str, float]:
        """The metrics.GUARDED figures of the stored frame (``model``) or of plain JPEG (``jpeg``)."""
        seed = self.model if which == "model" else self.jpeg
        shown = self.display_model if which == "model" else self.display_jpeg
        out = {"psnr": seed.psnr, "ssim": seed.ssim,
               "display_psnr": min((q.quality.psnr for q in shown), default=seed.psnr),
               "display_ssim": min((q.quality.ssim for q in shown), default=seed.ssim)}
        if shown:
            out["display_blockiness"] = max(q.blockiness for q in shown)
        return out


@dataclass(frozen=True)
class Derived:
    """A derived instance and the metrics of the pixels it stores."""

    source: str
    dataset: Dataset
    frames: tuple[FrameMetrics, ...]


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
    return _compress(ds, source, image.prepare(ds, source, mapping=mapping), quality, warnings=warnings)


def _identify(ds: Dataset, source: str) -> tuple[str, ...]:
    ident = identity.identify(ds, source)
    identity.apply(ds, ident)
    for warning in ident.warnings:
        LOGGER.warning("%s: %s", identity.printable(source, 200), warning)
    return ident.warnings


def _compress(ds: Dataset, source: str, img: image.Prepared, quality: int,
              target: Target | None = None, warnings: tuple[str, ...] = (), *, coding_size: int = codec.SIZE,
              ratio_target: RatioTarget | None = None) -> Prepared:
    streams = tuple(codec.encode_at(frame, quality, coding_size) for frame in img.unit)
    jpeg = np.stack([codec.decode_to(s) for s in streams])
    return Prepared(source, header(ds), img.unit, img.norm, jpeg, streams, quality, target, warnings,
                    img.modality, img.windows, coding_size, ratio_target)


def store(reference_modality: np.ndarray, jpeg: np.ndarray, reconstruction: np.ndarray, norm: image.Normalization,
          windows: list[display.Window], *, is_ct: bool, jpeg_bytes: tuple[int, ...] = (),
          coding_size: int = codec.SIZE) -> tuple[np.ndarray, tuple[FrameMetrics, ...], list[float]]:
    """What to store of each frame, its stored values and metrics, and the model's weight in it.

    The encoder has the original, so it can choose: JPEG decode + w x (reconstruction - JPEG
    decode) with the first weight w of metrics.MODEL_WEIGHTS (1 first) whose image is not below
    the plain JPEG decode in the seed's PSNR and SSIM, the worst display window's, and in the
    most blocking window's blockiness (metrics.not_below); w = 0 stores the JPEG decode (as does a reconstruction equal to it,
    whose JPEG-only metrics are then those of the stored image: one measurement, not two).
    """
    jpeg_modality = image.unit_to_modality(jpeg, norm)
    seed_reference = image.seed_unit(reference_modality, norm, clip=True)
    seed_jpeg = image.seed_unit(jpeg_modality, norm)
    reconstruction = np.array(reconstruction, np.float32, copy=True)

    def measured(i: int, unit: np.ndarray, known: FrameMetrics | None, seed_ref: metrics.Reference,
                 shown: display.Shown, is_jpeg: bool = False) -> tuple[np.ndarray, FrameMetrics]:
        """Frame i stored from ``unit`` ([0, 1]): its stored values and their metrics; plain
        JPEG's from ``known``, else measured (``unit`` itself when ``unit`` is the JPEG decode:
        what is stored then is plain JPEG's image at the source's bit depth)."""
        one = image.one_frame(norm, i)
        stored = image.to_stored(unit[None], one)
        # The metrics describe the stored pixels, read back in modality units.
        stored_modality = image.stored_to_modality(stored, one)[0]
        model = metrics.measure(seed_ref, image.seed_unit(stored_modality[None], one)[0])
        display_model = tuple(shown.measure(stored_modality))
        hu_model = display.hu_error(reference_modality[i], stored_modality) if is_ct else None
        if known is None and is_jpeg:
            known = FrameMetrics(0, model, model, display_jpeg=display_model, hu_jpeg=hu_model,
                                 original_blockiness=tuple(shown.original_blockiness))
        return stored[0], FrameMetrics(
            jpeg_bytes=jpeg_bytes[i] if jpeg_bytes else 0,
            model=model,
            jpeg=known.jpeg if known else metrics.measure(seed_ref, seed_jpeg[i]),
            display_model=display_model,
            display_jpeg=known.display_jpeg if known else tuple(shown.measure(jpeg_modality[i])),
            hu_model=hu_model,
            hu_jpeg=(known.hu_jpeg if known else display.hu_error(reference_modality[i], jpeg_modality[i])) if is_ct else None,
            original_blockiness=tuple(shown.original_blockiness),
        )

    stored_frames, frame_list, weights = [], [], []
    for i in range(len(jpeg)):
        seed_ref = metrics.Reference(seed_reference[i])
        shown = display.Shown(reference_modality[i], windows, invert=norm.invert, coding_size=coding_size)
        if np.array_equal(reconstruction[i], jpeg[i]):  # passed through: measured once, as JPEG
            weight, (stored_i, fm) = 0.0, measured(i, jpeg[i], None, seed_ref, shown, is_jpeg=True)
        else:
            full = measured(i, reconstruction[i], None, seed_ref, shown)

            def at(w: float, i: int = i, full: tuple[np.ndarray, FrameMetrics] = full) -> tuple[np.ndarray, FrameMetrics]:
                return full if w == 1 else measured(i, jpeg[i] + w * (reconstruction[i] - jpeg[i]), full[1], seed_ref, shown)

            weight, found = metrics.first_not_below(at, lambda m: m[1].scores("model"), full[1].scores("jpeg"))
            # None: the JPEG decode itself, measured once as what is stored and as plain JPEG.
            stored_i, fm = found if found is not None else measured(i, jpeg[i], None, seed_ref, shown, is_jpeg=True)
        stored_frames.append(stored_i)
        frame_list.append(fm)
        weights.append(weight)
    return np.stack(stored_frames), tuple(frame_list), weights


def error_histogram(err: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts below edges[0], in each bin as numpy.histogram makes them ([e_k, e_k+1), the last
    closed), and above edges[-1]: one pass without sorting the pixels."""
    k = np.searchsorted(edges, err.ravel(), side="right")  # 0: below; len(edges): at or above the last edge
    k[err.ravel() == edges[-1]] = len(edges) - 1  # the last bin is closed on the right
    return np.bincount(k, minlength=len(edges) + 1)


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def header(ds: Dataset) -> Dataset:
    """``ds`` without its pixel data (what a prepared instance keeps of its source: the pixels
    are in its arrays), ``ds`` itself left whole."""
    if not _PIXEL_TAGS & set(ds._dict):
        return ds
    import copy

    out = copy.copy(ds)
    out._dict = {tag: el for tag, el in ds._dict.items() if tag not in _PIXEL_TAGS}
    for cached in ("_pixel_array", "_pixel_id"):
        if hasattr(out, cached):
            setattr(out, cached, None if cached == "_pixel_array" else {})
    return out


def finish(
    prep: Prepared,
    reconstruction: np.ndarray,
    *,
    model_name: str,
    weights_sha256: str,
    max_quality: int = 100,
    uid_key: str | None = None,
    coding_served: bool = True,
) -> Derived:
    """Map the reconstruction back to stored values (as ``store`` chooses: never below the
    plain JPEG decode; the private block's ModelWeight says how), measure, build the instance."""
    reference_modality = prep.modality if prep.modality is not None else image.unit_to_modality(prep.reference, prep.norm)
    is_ct = str(prep.dataset.get("Modality", "")).upper() == "CT"
    windows = list(prep.windows)
    stored, frames, weights = store(reference_modality, prep.jpeg, reconstruction, prep.norm, windows,
                                    is_ct=is_ct, jpeg_bytes=prep.jpeg_bytes, coding_size=prep.coding_size)
    stored_modality = image.stored_to_modality(stored, prep.norm)
    seed_stored = image.seed_unit(stored_modality, prep.norm)
    seed_reference = image.seed_unit(reference_modality, prep.norm, clip=True)
    percentiles, histograms = [], []
    edges = np.asarray(private_tags.ERROR_BIN_EDGES)
    for i in range(prep.frames):
        abs_modality = np.abs(stored_modality[i] - reference_modality[i])
        percentiles += [float(v) for v in np.percentile(abs_modality, [50, 95, 99])] + [float(abs_modality.max())]
        err = seed_stored[i] - seed_reference[i]
        histograms += [int(v) for v in error_histogram(err, edges)]
    total_bytes = sum(prep.jpeg_bytes)
    original_bytes = prep.frames * image.SIZE * image.SIZE
    private = private_tags.PrivateBlock(
        ModelName=model_name,
        WeightsSHA256=weights_sha256,
        SoftwareVersion=f"dicom-cae {dicom_cae.__version__}",
        JPEGQuality=prep.quality,
        JPEGBytes=[f.jpeg_bytes for f in frames],
        CompressionRatio=[metrics.compression_ratio(f.jpeg_bytes) for f in frames],
        BitsPerPixel=[metrics.bits_per_pixel(f.jpeg_bytes) for f in frames],
        MSE=[f.model.mse for f in frames],
        PSNR=[f.model.psnr for f in frames],
        SSIM=[f.model.ssim for f in frames],
        PixelAccuracy=[f.model.pixel_accuracy for f in frames],
        PixelAccuracyTolerance=metrics.PIXEL_TOLERANCE,
        MeanIntensityOriginal=[f.model.mean_reference for f in frames],
        MeanIntensityReconstructed=[f.model.mean_test for f in frames],
        JPEGOnlyPSNR=[f.jpeg.psnr for f in frames],
        JPEGOnlySSIM=[f.jpeg.ssim for f in frames],
        JPEGOnlyPixelAccuracy=[f.jpeg.pixel_accuracy for f in frames],
        JPEGOnlyMSE=[f.jpeg.mse for f in frames],
        NormalizationLow=list(prep.norm.lo),
        NormalizationHigh=list(prep.norm.hi),
        ValueMapping=prep.norm.mapping_name,
        MappingKnotCount=[len(prep.norm.mapping(i).x) for i in range(prep.frames)],
        MappingKnots=[v for i in range(prep.frames) for v in value_mapping.knots(prep.norm.mapping(i))],
        DisplayWindowName=[w.name for w in windows],
        DisplayWindowCenter=[w.center for w in windows],
        DisplayWindowWidth=[w.width for w in windows],
        DisplayWindowOrigin=[w.origin for w in windows],
        DisplayPSNR=[q.quality.psnr for f in frames for q in f.display_model],
        DisplaySSIM=[q.quality.ssim for f in frames for q in f.display_model],
        DisplayPixelAccuracy=[q.quality.pixel_accuracy for f in frames for q in f.display_model],
        JPEGOnlyDisplayPSNR=[q.quality.psnr for f in frames for q in f.display_jpeg],
        JPEGOnlyDisplaySSIM=[q.quality.ssim for f in frames for q in f.display_jpeg],
        JPEGOnlyDisplayPixelAccuracy=[q.quality.pixel_accuracy for f in frames for q in f.display_jpeg],
        HUErrorRange=list(display.HU_SOFT_TISSUE) if is_ct else None,
        HUMeanAbsoluteError=[f.hu_model.mae for f in frames] if is_ct else None,
        HUBias=[f.hu_model.bias for f in frames] if is_ct else None,
        JPEGOnlyHUMeanAbsoluteError=[f.hu_jpeg.mae for f in frames] if is_ct else None,
        JPEGOnlyHUBias=[f.hu_jpeg.bias for f in frames] if is_ct else None,
        AbsErrorPercentiles=percentiles,
        ErrorHistogram=histograms,
        JPEGStreams=b"".join(prep.jpeg_streams),
        TargetPSNR=prep.target.psnr if prep.target else None,
        TargetSSIM=prep.target.ssim if prep.target else None,
        Warnings=list(prep.warnings) or None,
        CodingSize=prep.coding_size,
        TargetRatio=prep.ratio_target.ratio if prep.ratio_target else None,
        ModelWeight=weights,
        DisplayBlockiness=[q.blockiness for f in frames for q in f.display_model],
        JPEGOnlyDisplayBlockiness=[q.blockiness for f in frames for q in f.display_jpeg],
        OriginalDisplayBlockiness=[b for f in frames for b in f.original_blockiness],
        DisplayPSNRB=[q.psnr_b for f in frames for q in f.display_model],
        JPEGOnlyDisplayPSNRB=[q.psnr_b for f in frames for q in f.display_jpeg],
        JPEGEncoder=codec.DEFAULT_ENCODER,
    )
    resampled = (
        f"; resampled from {prep.norm.src_rows}x{prep.norm.src_cols} to 256x256" if prep.norm.resampled else ""
    )
    aim = ""
    if prep.target:
        aims = [f"PSNR >= {prep.target.psnr} dB" if prep.target.psnr is not None else "",
                f"SSIM >= {prep.target.ssim}" if prep.target.ssim is not None else ""]
        aim = f" (coding size and lowest quality reaching {' and '.join(a for a in aims if a)} with the fewest bytes)"
    if not coding_served:
        how = f"JPEG decode kept: {model_name} has no weights for a {prep.coding_size}x{prep.coding_size} coding"
    elif prep.quality > max_quality:
        how = f"JPEG decode kept: above quality {max_quality} {model_name} does not improve on it"
    elif not any(weights):
        how = (f"JPEG decode kept: the reconstruction by {model_name} was below it in PSNR or SSIM "
               "(min/max image or display window)")
    else:
        how = f"reconstructed by convolutional autoencoder {model_name} (weights sha256 {weights_sha256[:12]})"
        if any(w < 1 for w in weights):
            shown = ", ".join(f"{w:g}" for w in weights) if prep.frames <= 4 else f"{min(weights):g}-{max(weights):g}"
            how += f", stored as JPEG decode + {shown} x its correction (not below plain JPEG)"
    mapped = {
        value_mapping.MINMAX: "values mapped linearly from each frame's minimum and maximum",
        value_mapping.WINDOW: "values mapped window-aware (half of the 8-bit codes to the display windows)",
    }[prep.norm.mapping_name]
    if prep.ratio_target:
        aim = f" (coding size and quality chosen for compression ratio <= {prep.ratio_target.ratio})"
    coded = "" if prep.coding_size == codec.SIZE else (
        f" of the image reduced to {prep.coding_size}x{prep.coding_size} (bicubic back to 256x256)")
    derivation = (
        f"JPEG (ISO 10918-1) quality {prep.quality}{coded}{aim}, {original_bytes / total_bytes:.1f}:1 of the 8-bit "
        f"256x256 image, {mapped}, {how}{resampled}. {derive.NOT_FOR_DIAGNOSIS}"
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


def key(model_name: str, weights_sha256: str, setting: int | Target | RatioTarget,
        mapping: str = value_mapping.MINMAX) -> str:
    """What, besides the source, decides the output (and so its deterministic UIDs): the model,
    the JPEG quality or the fidelity target that chose it, and the value mapping (the seed's
    minmax adds nothing, so that its outputs keep the UIDs they always had)."""
    text = f"{model_name}:{weights_sha256}:" + (f"q{setting}" if isinstance(setting, int) else setting.key)
    return text if mapping == value_mapping.MINMAX else f"{text}:{mapping}"


def choose_coding(
    frames: np.ndarray, budget: int, stored: Callable[[np.ndarray, int, int], np.ndarray]
) -> tuple[int | None, int]:
    """The coding size and JPEG quality for ``frames`` ([0, 1], (n, 256, 256)) within ``budget``
    bytes per frame: for each of codec.CODING_SIZES the highest quality that fits (bytes grow
    with the quality: a bisection), then the size whose stored frames (``stored(jpeg decodes,
    quality, size)``) have the highest mean PSNR against ``frames``. (None, 1) when nothing fits.
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
        jpeg = np.stack([codec.decode_to(codec.encode_at(f, lo, size)) for f in frames])
        score = float(np.mean([metrics.psnr(r, t) for r, t in zip(frames, stored(jpeg, lo, size))]))
        if score > best[0]:
            best = (score, size, lo)
    return best[1], best[2]


class Pipeline:
    """Batched reconstruction of prepared instances with one model and one value mapping."""

    def __init__(self, reconstructor: Reconstructor, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 mapping: str = value_mapping.DEFAULT) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.reconstructor = reconstructor
        self.batch_size = batch_size
        self.mapping = value_mapping.check(mapping)

    def key(self, setting: int | Target | RatioTarget) -> str:
        r = self.reconstructor
        weights = r.for_quality(setting, self.mapping).sha256 if isinstance(setting, int) else r.identity
        return key(r.name, weights, setting, self.mapping)

    def prepare_for_ratio(self, ds: Dataset, source: str, target: RatioTarget) -> Prepared:
        """Like prepare, at the coding size and quality that fit ``target``'s byte budget and
        store the best image: for each size the highest quality within the budget (a
        bisection), then the size whose stored frames are closest to the original (PSNR in the
        mapped space). When nothing fits, the smallest size at quality 1 and a warning.

        Raises: as prepare.
        """
        warnings = _identify(ds, source)
        img = image.prepare(ds, source, mapping=self.mapping)

        def stored(jpeg: np.ndarray, quality: int, size: int) -> np.ndarray:
            recon = self.reconstructor(jpeg, quality, batch_size=self.batch_size, mapping=self.mapping, coding_size=size)
            return image.from_stored(image.to_stored(recon, img.norm), img.norm)

        size, quality = choose_coding(img.unit, target.budget, stored)
        if size is None:
            LOGGER.warning("%s: not even %dx%d at quality 1 fits compression ratio %s", source,
                           codec.CODING_SIZES[-1], codec.CODING_SIZES[-1], target.ratio)
            size, quality = codec.CODING_SIZES[-1], 1
        return _compress(ds, source, img, quality, None, warnings, coding_size=size, ratio_target=target)

    def prepare(self, ds: Dataset, source: str, *, quality: int) -> Prepared:
        """prepare() with this pipeline's value mapping."""
        return prepare(ds, source, quality=quality, mapping=self.mapping)

    def prepare_for_target(self, ds: Dataset, source: str, target: Target) -> Prepared:
        """Like prepare, at the coding size (codec.CODING_SIZES) and JPEG quality (1-95) that
        reach ``target`` in every frame with the fewest bytes: per size the lowest quality whose
        stored reconstruction reaches it (a bisection), then the size that spends least. When
        no size reaches it, 256 at quality 95 (the tags then show what was reached).

        Raises: as prepare.
        """
        warnings = _identify(ds, source)
        img = image.prepare(ds, source, mapping=self.mapping)
        is_ct = str(ds.get("Modality", "")).upper() == "CT"
        best: tuple[int, int, int] | None = None  # bytes, size, quality
        for size in codec.CODING_SIZES:
            if not self._meets(img, 95, target, is_ct, size):
                continue
            lo, hi = 1, 95
            while lo < hi:  # the metrics rise with the quality, closely enough for a bisection
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self._meets(img, mid, target, is_ct, size) else (mid + 1, hi)
            spent = sum(len(codec.encode_at(f, lo, size)) for f in img.unit)
            if best is None or spent < best[0]:
                best = (spent, size, lo)
        if best is None:
            LOGGER.warning("%s: fidelity target not reached even at quality 95", source)
            best = (0, codec.SIZE, 95)
        return _compress(ds, source, img, best[2], target, warnings, coding_size=best[1])

    def _meets(self, img: image.Prepared, quality: int, target: Target, is_ct: bool, size: int = codec.SIZE) -> bool:
        """Whether the stored reconstruction of a ``size`` coding at ``quality`` reaches
        ``target`` in every frame."""
        jpeg = np.stack([codec.decode_to(codec.encode_at(f, quality, size)) for f in img.unit])
        recon = self.reconstructor(jpeg, quality, batch_size=self.batch_size, mapping=self.mapping, coding_size=size)
        stored, _, _ = store(img.modality, jpeg, recon, img.norm, list(img.windows), is_ct=is_ct, coding_size=size)
        stored = image.stored_to_modality(stored, img.norm)
        return all(target.met_in(img.modality[i], stored[i], img.norm, i, list(img.windows))
                   for i in range(len(stored)))

    def reconstruct(self, preps: list[Prepared]) -> list[np.ndarray]:
        """Run the model over the frames of all ``preps`` at once; one array per instance."""
        if not preps:
            return []
        jpeg = np.concatenate([p.jpeg for p in preps])
        quality = np.concatenate([np.full(p.frames, p.quality, np.float32) for p in preps])
        size = np.concatenate([np.full(p.frames, p.coding_size) for p in preps])
        out = jpeg.copy()
        for s in np.unique(size):  # 256x256 JPEG to its bands; a smaller coding to a band trained on it, if any
            idx = np.flatnonzero(size == s)
            out[idx] = self.reconstructor(jpeg[idx], quality[idx], batch_size=self.batch_size, mapping=self.mapping,
                                          coding_size=int(s))
        splits = np.cumsum([p.frames for p in preps])[:-1]
        return np.split(out, splits)

    def run(self, preps: list[Prepared]) -> list[Derived]:
        """Reconstruct and finish every prepared instance."""
        recon = self.reconstruct(preps)
        return [self.finish(p, r) for p, r in zip(preps, recon)]

    def finish(self, prep: Prepared, reconstruction: np.ndarray) -> Derived:
        r = self.reconstructor.for_coding(prep.quality, self.mapping, prep.coding_size)
        if r is None:  # a smaller coding no band serves: the decode passed through
            return finish(prep, reconstruction, model_name=self.reconstructor.name, weights_sha256=self.reconstructor.sha256,
                          max_quality=self.reconstructor.max_quality, coding_served=False,
                          uid_key=self.key(prep.target or prep.ratio_target or prep.quality))
        # A targeted output depends on the whole set of weights, not only the band that served it.
        return finish(
            prep, reconstruction, model_name=r.name, weights_sha256=r.sha256, max_quality=r.max_quality,
            uid_key=self.key(prep.target or prep.ratio_target or prep.quality),
        )
