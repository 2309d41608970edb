"""Plain JPEG and JPEG + model on a set of images, summarized per JPEG quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dicom_cae import codec, dataset, display, guard, image, metrics

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


def jpeg_set(images: np.ndarray, quality: int, coding_size: int = codec.SIZE, *,
             encoder: str = codec.DEFAULT_ENCODER) -> tuple[np.ndarray, np.ndarray]:
    """JPEG round trip of every image (coded at ``coding_size`` by ``encoder``, decoded back
    to 256x256): decoded images and byte counts."""
    dec = np.empty_like(images)
    nbytes = np.empty(images.shape[0], np.int64)
    for i, img in enumerate(images):
        data = codec.encode_at(img, quality, coding_size, encoder=encoder)
        dec[i], nbytes[i] = codec.decode_to(data), len(data)
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
    images: np.ndarray, qualities: list[int], reconstruct: Reconstruct, *, coding_size: int = codec.SIZE
) -> dict[int, dict[str, Summary]]:
    """For each quality: {'jpeg': Summary, 'model': Summary}.

    The model's float output is scored: the derived instances store it at the source's bit
    depth (12 or 16 bits), finer than any difference that shows in these means.
    """
    out: dict[int, dict[str, Summary]] = {}
    for q in qualities:
        dec, nbytes = jpeg_set(images, q, coding_size)
        rec = reconstruct(dec, q)
        out[q] = {"jpeg": summarize(images, dec, nbytes, q), "model": summarize(images, rec, nbytes, q)}
    return out


# -- rate-distortion evaluation (dicom-cae evaluate) ------------------------------------------

DEFAULT_RD_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 75)
SEED_PUBLISHED = {"psnr": 25.11, "ssim": 0.8166, "pixel_accuracy": 0.9757, "compression_ratio": 0.0093}
RD_METRICS = ("bpp", "compression_ratio", "psnr", "ssim", "pixel_accuracy", "mse",
              "display_psnr", "display_ssim", "display_pixel_accuracy", "hu_mae", "display_blockiness", "display_psnr_b")


def measure_view(reference: np.ndarray, test_unit: np.ndarray, view: dataset.View, modality: str, *,
                 coding_size: int = codec.SIZE) -> dict[str, float]:
    """The seed's metrics (min/max image) and what a viewer sees (worst display window; HU
    over soft tissue for CT; blocking on a ``coding_size`` coding's grid) of ``test_unit``
    (mapped [0, 1]) against ``reference`` (modality units, 256x256): guard.measure_frame, as
    the pipeline measures what it stores, summarized for tables (guard.FrameQuality.summary)."""
    test = image.unit_to_modality(test_unit[None], view.norm)[0]
    shown = display.Shown(reference, list(view.windows), invert=view.norm.invert, coding_size=coding_size)
    quality = guard.measure_frame(reference, test, view.norm, shown, is_ct=modality == "CT")
    return quality.summary(shown.original_blockiness)


def guarded(reference: np.ndarray, jpeg_unit: np.ndarray, reconstruction: np.ndarray, view: dataset.View, modality: str,
            jpeg: dict[str, float], *, edge_quality: int | None = None, coding_size: int = codec.SIZE) -> dict[str, float]:
    """What the pipeline stores (pipeline.finish, guard.choose_stored), measured as measure_view
    does: of guard.stored_candidates (JPEG decode + w x (model - JPEG decode), its block edges
    smoothed again where ``edge_quality`` says the model's were), the first not below the JPEG
    decode's scores ``jpeg`` at the first of metrics.MODEL_WEIGHTS that has one, in the order a
    viewer sees them best (guard.ranked_weights). The result's ``model_weight`` says which weight."""
    def score(w: float):
        return (measure_view(reference, u, view, modality, coding_size=coding_size) for u in guard.stored_candidates(
            jpeg_unit, reconstruction, w, edge_quality=edge_quality, coding_size=coding_size))

    shown = display.Shown(reference, list(view.windows), invert=view.norm.invert, coding_size=coding_size)
    order = guard.ranked_weights(jpeg_unit, reconstruction, shown, view.norm, edge_quality=edge_quality,
                                 coding_size=coding_size)
    w, scores = metrics.first_not_below(score, lambda s: s, jpeg, order=order)
    return {**(scores if scores is not None else jpeg), "model_weight": w}


def reader_table(images: dataset.ImageSet, qualities: list[int], reconstruct: Reconstruct, *,
                 edge_filter: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """What a reader sees, per quality: means over ``images`` of the worst display window's PSNR
    and SSIM, the most blocking window's blockiness (x the original's) and the seed's PSNR, of
    plain JPEG and of what the pipeline stores (JPEG + model under the never-below-JPEG guard),
    with the share of images where the model is used (weight > 0). For model cards.
    ``edge_filter``: the model's output has its block edges smoothed (guard.stored_candidates)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    keys = ("bpp", "psnr", "display_psnr", "display_ssim", "display_blockiness")
    for q in qualities:
        dec, nbytes = jpeg_set(images.images, q)
        rec = reconstruct(dec, q)
        rows: dict[str, list[dict[str, float]]] = {"jpeg": [], "model": []}
        for i in range(len(images)):
            modality = images.modalities[i]
            jpeg = measure_view(images.modality[i], dec[i], images.views[i], modality)
            stored = guarded(images.modality[i], dec[i], rec[i], images.views[i], modality, jpeg,
                             edge_quality=q if edge_filter else None)
            bpp = metrics.bits_per_pixel(int(nbytes[i]))
            rows["jpeg"].append({**jpeg, "bpp": bpp})
            rows["model"].append({**stored, "bpp": bpp})
        out[str(q)] = {name: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in keys} for name, rs in rows.items()}
        out[str(q)]["model"]["model_used"] = round(float(np.mean([r["model_weight"] > 0 for r in rows["model"]])), 4)
    return out


#: Plain JPEG by the encoder the project used before trellis quantization (codec.PILLOW): the
#: encoder's gain, apart from the model's.
PILLOW_CODEC = "JPEG (Pillow)"


def rd_rows(images: dataset.ImageSet, qualities: list[int], reconstruct: Reconstruct, model_name: str, *,
            edge_filter: bool = False) -> list[dict[str, object]]:
    """One row per image, quality and codec: plain JPEG, JPEG + model, and JPEG 2000 given the
    bytes of that JPEG (at most), each coding the same mapped image."""
    rows: list[dict[str, object]] = []
    for q in qualities:
        dec, nbytes = jpeg_set(images.images, q)
        old, old_bytes = jpeg_set(images.images, q, encoder=codec.PILLOW)
        rec = reconstruct(dec, q)
        for i, img in enumerate(images.images):
            j2k = codec.j2k_encode(img, int(nbytes[i]))
            modality = images.modalities[i]
            jpeg_scores = measure_view(images.modality[i], dec[i], images.views[i], modality)
            model_scores = guarded(images.modality[i], dec[i], rec[i], images.views[i], modality, jpeg_scores,
                                   edge_quality=q if edge_filter else None)
            for name, size, scores in (
                ("JPEG", int(nbytes[i]), jpeg_scores),
                (PILLOW_CODEC, int(old_bytes[i]), measure_view(images.modality[i], old[i], images.views[i], modality)),
                (f"JPEG+{model_name}", int(nbytes[i]), model_scores),
                ("JPEG 2000", len(j2k), measure_view(images.modality[i], codec.j2k_decode(j2k), images.views[i], modality)),
            ):
                rows.append({
                    "image": i, "modality": modality, "quality": q, "codec": name, "bytes": size,
                    "bpp": metrics.bits_per_pixel(size), "compression_ratio": metrics.compression_ratio(size),
                    "model_weight": float("nan"), **scores,
                })
    return rows


#: Byte budgets (compression ratio, the seed's convention) of the adaptive-coding evaluation:
#: the seed's operating point, then up to 0.5 bpp.
DEFAULT_RATIOS = (0.0093, 0.0125, 0.0175, 0.025, 0.035, 0.045, 0.0625)


def ratio_rows(images: dataset.ImageSet, ratios: list[float], reconstruct: Callable[[np.ndarray, int, int], np.ndarray],
               model_name: str, *, edge_filter: bool = False) -> list[dict[str, object]]:
    """Adaptive coding at byte budgets: per image and budget, the coding size (codec.CODING_SIZES)
    and quality that fit and store the best image (targets.choose_coding; ``reconstruct(jpeg,
    quality, coding_size)``: the model for that coding, or the decode itself), beside JPEG 2000
    given the bytes that coding spent. The "quality" field holds the budget's index, so that
    these rows make curves like rd_rows."""
    from dicom_cae.targets import choose_coding

    rows: list[dict[str, object]] = []
    for k, ratio in enumerate(ratios):
        budget = int(ratio * image.SIZE * image.SIZE)
        for i, img in enumerate(images.images):
            size, quality = choose_coding(img[None], budget, reconstruct)
            size, quality = (size, quality) if size is not None else (codec.CODING_SIZES[-1], 1)
            data = codec.encode_at(img, quality, size)
            jpeg = codec.decode_to(data)
            scores = measure_view(images.modality[i], jpeg, images.views[i], images.modalities[i], coding_size=size)
            rec = reconstruct(jpeg[None], quality, size)[0]
            weight = 0.0
            if not np.array_equal(rec, jpeg):
                scores = guarded(images.modality[i], jpeg, rec, images.views[i], images.modalities[i], scores,
                                 edge_quality=quality if edge_filter else None, coding_size=size)
                weight = scores.pop("model_weight")
            j2k = codec.j2k_encode(img, len(data))
            modality = images.modalities[i]
            for name, nbytes, measured in (
                (f"JPEG+{model_name} adaptive", len(data), scores),
                ("JPEG 2000", len(j2k), measure_view(images.modality[i], codec.j2k_decode(j2k), images.views[i], modality)),
            ):
                rows.append({
                    "image": i, "modality": modality, "quality": k, "ratio_target": ratio, "codec": name,
                    "coding_size": size if name != "JPEG 2000" else codec.SIZE, "jpeg_quality": quality,
                    "bytes": nbytes, "bpp": metrics.bits_per_pixel(nbytes), "compression_ratio": metrics.compression_ratio(nbytes),
                    "model_weight": weight if name != "JPEG 2000" else float("nan"), **measured,
                })
    return rows


def curves(rows: list[dict[str, object]], modality: str | None = None) -> dict[str, dict[str, list[float]]]:
    """Per codec, per quality (in order): the mean of each metric over the images."""
    out: dict[str, dict[str, list[float]]] = {}
    for codec_name in dict.fromkeys(r["codec"] for r in rows):
        sel = [r for r in rows if r["codec"] == codec_name and (modality is None or r["modality"] == modality)]
        qs = sorted({int(r["quality"]) for r in sel})
        res: dict[str, list[float]] = {"quality": [float(q) for q in qs]}
        for m in RD_METRICS:
            values = [[float(r[m]) for r in sel if r["quality"] == q] for q in qs]
            res[m] = [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in values]
        out[str(codec_name)] = res
    return out


def compressai_json(name: str, description: str, results: dict[str, list[float]]) -> dict[str, object]:
    """CompressAI's result-file shape: name, description, results: metric -> list."""
    return {"name": name, "description": description, "results": results}


def _pchip(x: np.ndarray, y: np.ndarray):
    from scipy.interpolate import PchipInterpolator

    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    order = np.argsort(x)
    x, y = x[order], y[order]
    keep = np.concatenate([[True], np.diff(x) > 1e-12])  # duplicate rates (e.g. JPEG q1 = q2)
    return PchipInterpolator(x[keep], y[keep]), x[keep].min(), x[keep].max()


def bd_psnr(rate_a, psnr_a, rate_b, psnr_b, *, bpp_range: tuple[float, float] | None = None) -> float:
    """Bjontegaard delta PSNR of curve b over curve a (dB), with piecewise-cubic (PCHIP)
    interpolation of PSNR over log10(bpp), on the rates both cover (within ``bpp_range``)."""
    fa, lo_a, hi_a = _pchip(np.log10(rate_a), np.asarray(psnr_a, float))
    fb, lo_b, hi_b = _pchip(np.log10(rate_b), np.asarray(psnr_b, float))
    lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
    if bpp_range:
        lo, hi = max(lo, np.log10(bpp_range[0])), min(hi, np.log10(bpp_range[1]))
    if hi <= lo:
        return float("nan")
    grid = np.linspace(lo, hi, 400)
    return float(np.mean(fb(grid) - fa(grid)))


def bd_rate(rate_a, psnr_a, rate_b, psnr_b, *, bpp_range: tuple[float, float] | None = None) -> float:
    """Bjontegaard delta rate of curve b against curve a (percent; negative = fewer bits for the
    same PSNR), log10(bpp) interpolated over PSNR (PCHIP) on the PSNRs both reach."""
    ra, pa = np.asarray(rate_a, float), np.asarray(psnr_a, float)
    rb, pb = np.asarray(rate_b, float), np.asarray(psnr_b, float)
    if bpp_range:
        ka = (ra >= bpp_range[0] * 0.999) & (ra <= bpp_range[1] * 1.001)
        kb = (rb >= bpp_range[0] * 0.999) & (rb <= bpp_range[1] * 1.001)
        ra, pa, rb, pb = ra[ka], pa[ka], rb[kb], pb[kb]
    if len(ra) < 2 or len(rb) < 2:
        return float("nan")
    fa, lo_a, hi_a = _pchip(pa, np.log10(ra))
    fb, lo_b, hi_b = _pchip(pb, np.log10(rb))
    lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
    if hi <= lo:
        return float("nan")
    grid = np.linspace(lo, hi, 400)
    return float((10 ** np.mean(fb(grid) - fa(grid)) - 1) * 100)


def seed_table(rows: list[dict[str, object]], model_codec: str) -> dict[str, object]:
    """At the JPEG quality whose mean compression ratio is nearest the seed's 0.0093: the
    model's figures beside the seed's published ones, plain JPEG and JPEG 2000 (same bytes)."""
    c = curves(rows)
    jpeg = c["JPEG"]
    k = int(np.argmin([abs(r - SEED_PUBLISHED["compression_ratio"]) for r in jpeg["compression_ratio"]]))
    q = int(jpeg["quality"][k])
    table = {"quality": q, "published seed (5 epochs)": SEED_PUBLISHED}
    for name in (model_codec, "JPEG", "JPEG 2000"):
        table[name] = {m: c[name][m][k] for m in ("psnr", "ssim", "pixel_accuracy", "compression_ratio", "bpp")}
    return table
