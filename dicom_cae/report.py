"""Per-study reports, built from the derived instances alone (their private tags are the truth)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

import dicom_cae
from dicom_cae import io, metrics, private_tags
from dicom_cae.errors import DicomInputError

LOGGER = logging.getLogger(__name__)

REPORT_JSON = "report.json"
SUMMARY_METRICS = ("psnr", "ssim", "pixel_accuracy", "compression_ratio", "bpp", "mse")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def image_rows(study_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per derived frame under ``study_dir``, from the private tags (pixels not read)."""
    rows = []
    for path in sorted(Path(study_dir).rglob("*.dcm")):
        try:
            ds = io.read(path, pixels=False)
        except DicomInputError as exc:
            LOGGER.warning("report skips %s", exc)
            continue
        tags = private_tags.read(ds)
        if tags is None:
            continue
        src = ds.SourceImageSequence[0].ReferencedSOPInstanceUID if "SourceImageSequence" in ds else ""
        for i, nbytes in enumerate(tags["JPEGBytes"]):
            rows.append(
                {
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "series_instance_uid": str(ds.SeriesInstanceUID),
                    "source_sop_instance_uid": str(src),
                    "instance_number": int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
                    "frame": i + 1,
                    "modality": str(ds.get("Modality", "")),
                    "model": tags["ModelName"],
                    "weights_sha256": tags["WeightsSHA256"],
                    "jpeg_quality": tags["JPEGQuality"],
                    "jpeg_bytes": nbytes,
                    "compression_ratio": tags["CompressionRatio"][i],
                    "bpp": tags["BitsPerPixel"][i],
                    "mse": tags["MSE"][i],
                    "psnr": tags["PSNR"][i],
                    "ssim": tags["SSIM"][i],
                    "pixel_accuracy": tags["PixelAccuracy"][i],
                    "mean_original": tags["MeanIntensityOriginal"][i],
                    "mean_reconstructed": tags["MeanIntensityReconstructed"][i],
                    "jpeg_only": {
                        "mse": tags["JPEGOnlyMSE"][i],
                        "psnr": tags["JPEGOnlyPSNR"][i],
                        "ssim": tags["JPEGOnlySSIM"][i],
                        "pixel_accuracy": tags["JPEGOnlyPixelAccuracy"][i],
                    },
                    "pixel_accuracy_tolerance": tags["PixelAccuracyTolerance"],
                }
            )
    rows.sort(key=lambda r: (r["series_instance_uid"], r["instance_number"] or 0, r["sop_instance_uid"], r["frame"]))
    return rows


def _stats(values: list[float], worst: str) -> dict[str, float | None]:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "worst": None}
    return {
        "mean": _finite(float(a.mean())),
        "median": _finite(float(np.median(a))),
        "worst": _finite(float(a.min() if worst == "min" else a.max())),
    }


def build(study_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The report of one study folder (``<out>/<StudyInstanceUID>``) as a JSON-ready dict."""
    study_dir = Path(study_dir)
    rows = image_rows(study_dir)
    fit = metrics.regression([r["mean_original"] for r in rows], [r["mean_reconstructed"] for r in rows])
    higher_better = {"psnr", "ssim", "pixel_accuracy"}
    summary = {
        m: {
            "model": _stats([r[m] for r in rows], "min" if m in higher_better else "max"),
            **(
                {"jpeg_only": _stats([r["jpeg_only"][m] for r in rows], "min" if m in higher_better else "max")}
                if m in ("psnr", "ssim", "pixel_accuracy", "mse")
                else {}
            ),
        }
        for m in SUMMARY_METRICS
    }
    for r in rows:
        for k in ("psnr", "ssim", "pixel_accuracy", "mse", "compression_ratio", "bpp", "mean_original", "mean_reconstructed"):
            r[k] = _finite(r[k])
        r["jpeg_only"] = {k: _finite(v) for k, v in r["jpeg_only"].items()}
    return {
        "study_instance_uid": study_dir.name,
        "software": f"dicom-cae {dicom_cae.__version__}",
        "images": len(rows),
        "series": sorted({r["series_instance_uid"] for r in rows}),
        "modalities": sorted({r["modality"] for r in rows}),
        "models": sorted({f"{r['model']} ({r['weights_sha256'][:12]})" for r in rows}),
        "jpeg_qualities": sorted({r["jpeg_quality"] for r in rows}),
        "pixel_accuracy_tolerance": rows[0]["pixel_accuracy_tolerance"] if rows else metrics.PIXEL_TOLERANCE,
        "regression": {
            "x": "mean intensity of the normalized original image",
            "y": "mean intensity of the stored reconstructed image (same normalization)",
            "slope": _finite(fit.slope),
            "intercept": _finite(fit.intercept),
            "r2": _finite(fit.r2),
            "n": fit.n,
        },
        "summary": summary,
        "per_image": rows,
    }


def write(study_dir: str | os.PathLike[str]) -> Path:
    """Build the study's report and write ``report.json`` into ``study_dir``; returns its path."""
    report = build(study_dir)
    path = Path(study_dir) / REPORT_JSON
    io.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", path)
    return path
