"""What of a reconstruction is stored, and how a frame measures.

``measure_frame`` is the one measurement of a frame against its original: the seed's
metrics on the min/max image, what a viewer sees in each display window (with blocking), and
the error in HU for CT. The pipeline stores with it and ``evaluate`` scores with it.

``choose_stored`` is the never-below-JPEG guard: the encoder has the original, so it can
choose, per frame, how much of the model's correction to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dicom_cae import codec, display, image, metrics

#: How the guard chooses what is stored: part of the derived UIDs' key (pipeline.key), as
#: another choice stores other pixels. "view-ranked": the weights of metrics.MODEL_WEIGHTS in
#: the order a viewer sees their images best (ranked_weights), a partial correction's block
#: edges smoothed at JPEG's share of the filter's strength.
GUARD_ID = "guard:view-ranked(" + ",".join(f"{w:g}" for w in metrics.MODEL_WEIGHTS[:-1]) + ");blend-edges:(1-w)"

#: PSNR of identical images is infinite; averages over images cap it here.
PSNR_CAP = 100.0


@dataclass(frozen=True)
class FrameQuality:
    """One frame against its original: seed's metrics, per display window, HU (CT only)."""

    seed: metrics.Quality
    shown: tuple[display.WindowQuality, ...] = ()
    hu: display.HUError | None = None

    def scores(self) -> dict[str, float]:
        """The metrics.GUARDED figures: seed's PSNR and SSIM, the worst window's, the most
        blocking window's blockiness."""
        out = {"psnr": self.seed.psnr, "ssim": self.seed.ssim,
               "display_psnr": min((q.quality.psnr for q in self.shown), default=self.seed.psnr),
               "display_ssim": min((q.quality.ssim for q in self.shown), default=self.seed.ssim)}
        if self.shown:
            out["display_blockiness"] = max(q.blockiness for q in self.shown)
        return out

    def summary(self, original_blockiness: tuple[float, ...] | list[float]) -> dict[str, float]:
        """For tables of many images (evaluate): PSNRs capped at PSNR_CAP, the worst window's
        figures, blockiness as a multiple of the original's in the most blocking window."""
        shown = self.shown
        return {
            "psnr": min(self.seed.psnr, PSNR_CAP), "ssim": self.seed.ssim, "pixel_accuracy": self.seed.pixel_accuracy,
            "mse": self.seed.mse,
            "display_psnr": min(PSNR_CAP, *(q.quality.psnr for q in shown)),
            "display_ssim": min(q.quality.ssim for q in shown),
            "display_pixel_accuracy": min(q.quality.pixel_accuracy for q in shown),
            "display_blockiness": max(q.blockiness / max(o, 1e-9) for q, o in zip(shown, original_blockiness)),
            "display_psnr_b": min(PSNR_CAP, *(q.psnr_b for q in shown)),
            "hu_mae": self.hu.mae if self.hu is not None else float("nan"),
        }


def measure_frame(reference: np.ndarray, test: np.ndarray, norm: image.Normalization, shown: display.Shown, *,
                  is_ct: bool, seed_reference: metrics.Reference | None = None) -> FrameQuality:
    """``test`` against ``reference`` (one frame each, modality units, 256x256; ``norm`` that
    frame's normalization, ``shown`` the reference in its display windows). ``seed_reference``:
    the seed's min/max reference with its SSIM statistics, when measured more than once."""
    if seed_reference is None:
        seed_reference = metrics.Reference(image.seed_unit(reference[None], norm, clip=True)[0])
    seed = metrics.measure(seed_reference, image.seed_unit(np.asarray(test)[None], norm)[0])
    return FrameQuality(seed, tuple(shown.measure(test)), display.hu_error(reference, test) if is_ct else None)


@dataclass(frozen=True)
class FrameMetrics:
    """The stored frame's quality and plain JPEG's at the same bytes."""

    jpeg_bytes: int
    stored: FrameQuality
    plain: FrameQuality
    original_blockiness: tuple[float, ...] = ()  # the original's, per display window

    # The names the private block and the reports read.
    model = property(lambda self: self.stored.seed)
    jpeg = property(lambda self: self.plain.seed)
    display_model = property(lambda self: self.stored.shown)
    display_jpeg = property(lambda self: self.plain.shown)
    hu_model = property(lambda self: self.stored.hu)
    hu_jpeg = property(lambda self: self.plain.hu)

    def scores(self, which: str) -> dict[str, float]:
        """The metrics.GUARDED figures of the stored frame (``model``) or of plain JPEG (``jpeg``)."""
        return (self.stored if which == "model" else self.plain).scores()


def stored_candidates(jpeg: np.ndarray, reconstruction: np.ndarray, weight: float, *,
                      edge_quality: int | None = None, coding_size: int = codec.SIZE) -> Iterator[np.ndarray]:
    """The images the guard may store of one frame ([0, 1]) at the model's ``weight``, in the
    order they are preferred: at 1 the reconstruction; below, JPEG decode + weight x
    (reconstruction - JPEG decode), first with its block edges smoothed again when
    ``edge_quality`` (the JPEG quality) says the reconstruction's were, then as it is. Lazy.

    The JPEG decode's share, 1 - weight, brings back that share of its block steps, and the
    filter smooths them at that share of its strength (codec.smooth_block_edges, whose limit
    scales with the strength). At full strength it took for block steps what the image's own
    steps across the block edges are (noise, fine structure): on the validation CT at quality 22
    the worst window lost 0.2-0.3 dB against the same blend as it is (docs/metrics.md)."""
    if weight == 1:
        yield reconstruction
        return
    blend = jpeg + weight * (reconstruction - jpeg)
    if edge_quality is not None:
        yield codec.smooth_block_edges(blend[None], edge_quality, coding_size,
                                       strength=(1.0 - weight) * codec.edge_strength(coding_size))[0]
    yield blend


def ranked_weights(jpeg: np.ndarray, reconstruction: np.ndarray, shown: display.Shown, norm: image.Normalization, *,
                   edge_quality: int | None = None, coding_size: int = codec.SIZE) -> tuple[float, ...]:
    """metrics.MODEL_WEIGHTS but 0, the weight whose image a viewer sees best first: by the PSNR
    of its preferred image (stored_candidates' first) in the worst display window of ``shown``
    (one frame; ``norm`` that frame's normalization), before the stored values are rounded.
    Ties, and a frame shown in no window, keep MODEL_WEIGHTS' order (more of the model first).
    The guard then stores the first of them not below plain JPEG (metrics.first_not_below)."""
    weights = metrics.MODEL_WEIGHTS[:-1]
    if not shown.wins:
        return weights
    seen = [shown.worst_psnr(image.unit_to_modality(next(stored_candidates(
        jpeg, reconstruction, w, edge_quality=edge_quality, coding_size=coding_size))[None], norm)[0]) for w in weights]
    seen = [-np.inf if np.isnan(s) else s for s in seen]  # an image no PSNR can score goes last
    return tuple(w for _, w in sorted(zip(seen, weights), key=lambda sw: -sw[0]))


def choose_stored(reference: np.ndarray, jpeg: np.ndarray, reconstruction: np.ndarray, norm: image.Normalization,
                  windows: list[display.Window], *, is_ct: bool, jpeg_bytes: tuple[int, ...] = (),
                  coding_size: int = codec.SIZE,
                  edge_quality: int | None = None) -> tuple[np.ndarray, tuple[FrameMetrics, ...], list[float]]:
    """What to store of each frame: its stored values, metrics, and the model's weight in it.

    Per frame: the first image of stored_candidates (JPEG decode + w x (reconstruction - JPEG
    decode), its block edges smoothed again where ``edge_quality`` is given: the reconstruction's
    were, at that JPEG quality) with the first weight w of metrics.MODEL_WEIGHTS, in the order a
    viewer sees them best (ranked_weights), that is not below the plain JPEG decode in the seed's
    PSNR and SSIM, the worst display window's, and the most blocking window's blockiness
    (metrics.not_below); w = 0 stores the JPEG decode
    (as does a reconstruction equal to it, whose plain-JPEG metrics are then those of the stored
    image: measured once). ``reference``: the original in modality units; ``jpeg``,
    ``reconstruction``: [0, 1].
    """
    jpeg_modality = image.unit_to_modality(jpeg, norm)
    seed_reference = image.seed_unit(reference, norm, clip=True)
    reconstruction = np.array(reconstruction, np.float32, copy=True)
    stored_frames, frame_list, weights = [], [], []
    for i in range(len(jpeg)):
        one = image.one_frame(norm, i)
        seed_ref = metrics.Reference(seed_reference[i])
        shown = display.Shown(reference[i], windows, invert=norm.invert, coding_size=coding_size)
        original = tuple(shown.original_blockiness)
        nbytes = jpeg_bytes[i] if jpeg_bytes else 0

        def measured(unit: np.ndarray, plain: FrameQuality | None) -> tuple[np.ndarray, FrameMetrics]:
            """Frame i stored from ``unit`` ([0, 1]): its stored values, measured as read back in
            modality units; plain JPEG's quality from ``plain`` or, when None, ``unit`` is the
            JPEG decode itself (plain JPEG's image at the source's bit depth)."""
            stored = image.to_stored(unit[None], one)
            quality = measure_frame(reference[i], image.stored_to_modality(stored, one)[0], one, shown, is_ct=is_ct,
                                    seed_reference=seed_ref)
            return stored[0], FrameMetrics(nbytes, quality, plain or quality, original)

        if np.array_equal(reconstruction[i], jpeg[i]):  # passed through: measured once, as JPEG
            weight, (stored_i, fm) = 0.0, measured(jpeg[i], None)
        else:
            plain = measure_frame(reference[i], jpeg_modality[i], one, shown, is_ct=is_ct, seed_reference=seed_ref)

            def at(w: float, i: int = i, plain: FrameQuality = plain) -> Iterator[tuple[np.ndarray, FrameMetrics]]:
                # measured only when tried (stored_candidates yields the reconstruction itself at 1)
                return (measured(u, plain) for u in stored_candidates(jpeg[i], reconstruction[i], w,
                                                                      edge_quality=edge_quality, coding_size=coding_size))

            order = ranked_weights(jpeg[i], reconstruction[i], shown, one, edge_quality=edge_quality,
                                   coding_size=coding_size)
            weight, found = metrics.first_not_below(at, lambda m: m[1].scores("model"), plain.scores(), order=order)
            stored_i, fm = found if found is not None else measured(jpeg[i], None)
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
