"""Per-study reports, built from the derived instances alone (their private tags are the truth)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

import dicom_cae
from dicom_cae import display, io, metrics, private_tags
from dicom_cae.derive import NOT_FOR_DIAGNOSIS
from dicom_cae.errors import DicomInputError

LOGGER = logging.getLogger(__name__)

REPORT_JSON = "report.json"
SUMMARY_METRICS = (
    "display_psnr", "display_ssim", "display_pixel_accuracy", "display_blockiness", "hu_mae", "hu_bias",
    "psnr", "ssim", "pixel_accuracy", "compression_ratio", "bpp", "mse",
)
HIGHER_BETTER = {"psnr", "ssim", "pixel_accuracy", "display_psnr", "display_ssim", "display_pixel_accuracy"}
WITH_JPEG = {"psnr", "ssim", "pixel_accuracy", "mse", "display_psnr", "display_ssim", "display_pixel_accuracy",
             "display_blockiness", "hu_mae", "hu_bias"}
USE = NOT_FOR_DIAGNOSIS


def _display(tags: private_tags.PrivateBlock, frame: int, prefix: str = "") -> list[dict[str, Any]]:
    """Per window, the display measures of one frame (``prefix`` "JPEGOnly" for plain JPEG)."""
    names = tags.DisplayWindowName or []
    n = len(names)
    if not n or getattr(tags, f"{prefix}DisplayPSNR") is None:  # instances written before display metrics
        return []
    if len(tags.DisplayWindowCenter or []) != n or len(getattr(tags, f"{prefix}DisplayPSNR")) < (frame + 1) * n:
        LOGGER.warning("display metrics of an instance do not match its windows: left out of the report")
        return []
    out = []
    blocky, original = getattr(tags, f"{prefix}DisplayBlockiness"), tags.OriginalDisplayBlockiness
    for k, name in enumerate(names):
        i = frame * n + k
        out.append({
            "window": name, "center": tags.DisplayWindowCenter[k], "width": tags.DisplayWindowWidth[k],
            "psnr": getattr(tags, f"{prefix}DisplayPSNR")[i], "ssim": getattr(tags, f"{prefix}DisplaySSIM")[i],
            "pixel_accuracy": getattr(tags, f"{prefix}DisplayPixelAccuracy")[i],
            # As a multiple of the original's blockiness in that window (None before blocking was measured).
            "blockiness": blocky[i] / max(original[i], 1e-9) if blocky and original and len(blocky) > i else None,
        })
    return out


def _worst_window(per_window: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest of each measure over the windows (None without display metrics)."""
    if not per_window:
        return {"display_psnr": None, "display_ssim": None, "display_pixel_accuracy": None, "display_blockiness": None,
                "worst_window": None}
    worst = min(per_window, key=lambda w: w["psnr"])
    blocky = [w["blockiness"] for w in per_window if w["blockiness"] is not None]
    return {
        "display_psnr": worst["psnr"],
        "display_ssim": min(w["ssim"] for w in per_window),
        "display_pixel_accuracy": min(w["pixel_accuracy"] for w in per_window),
        "display_blockiness": max(blocky) if blocky else None,  # the most blocking window's
        "worst_window": worst["window"],
    }


def _hu(tags: private_tags.PrivateBlock, frame: int, prefix: str = "") -> dict[str, Any]:
    mae, bias = getattr(tags, f"{prefix}HUMeanAbsoluteError"), getattr(tags, f"{prefix}HUBias")
    return {"hu_mae": mae[frame] if mae else None, "hu_bias": bias[frame] if bias else None}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def study_files(study_dir: str | os.PathLike[str], files: list[Path] | None = None) -> list[Path]:
    """The derived instances of a study: ``files`` (from the store's index) or, without them,
    every DICOM file under ``study_dir``."""
    return sorted(Path(p) for p in files) if files is not None else sorted(Path(study_dir).rglob("*.dcm"))


def image_rows(study_dir: str | os.PathLike[str], files: list[Path] | None = None) -> list[dict[str, Any]]:
    """One row per derived frame under ``study_dir`` (or in ``files``), from the private tags
    (pixels not read)."""
    rows = []
    for path in study_files(study_dir, files):
        try:
            ds = io.read(path, pixels=False)
            tags = private_tags.PrivateBlock.from_dataset(ds)
        except DicomInputError as exc:
            LOGGER.warning("report skips %s", exc)
            continue
        except Exception as exc:  # a damaged private block must not stop the study's report
            LOGGER.warning("report skips %s: unreadable private block (%s)", path, type(exc).__name__)
            continue
        if tags is None:
            continue
        src = ds.SourceImageSequence[0].ReferencedSOPInstanceUID if "SourceImageSequence" in ds else ""
        for i, nbytes in enumerate(tags.JPEGBytes):
            display_model, display_jpeg = _display(tags, i), _display(tags, i, "JPEGOnly")
            rows.append(
                {
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "sop_class_uid": str(ds.SOPClassUID),
                    "series_instance_uid": str(ds.SeriesInstanceUID),
                    "source_sop_instance_uid": str(src),
                    "instance_number": int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
                    "frame": i + 1,
                    "modality": str(ds.get("Modality", "")),
                    "model": tags.ModelName,
                    "weights_sha256": tags.WeightsSHA256,
                    "jpeg_quality": tags.JPEGQuality,
                    "jpeg_bytes": nbytes,
                    "compression_ratio": tags.CompressionRatio[i],
                    "bpp": tags.BitsPerPixel[i],
                    "mse": tags.MSE[i],
                    "psnr": tags.PSNR[i],
                    "ssim": tags.SSIM[i],
                    "pixel_accuracy": tags.PixelAccuracy[i],
                    "mean_original": tags.MeanIntensityOriginal[i],
                    "mean_reconstructed": tags.MeanIntensityReconstructed[i],
                    "value_mapping": tags.ValueMapping or "minmax",
                    "model_weight": tags.ModelWeight[i] if tags.ModelWeight else None,
                    "edge_filter": tags.EdgeFilter,
                    "precision": tags.ModelPrecision,
                    "coding_size": tags.CodingSize or 256,
                    "display": display_model,
                    **_worst_window(display_model),
                    **_hu(tags, i),
                    "jpeg_only": {
                        "mse": tags.JPEGOnlyMSE[i],
                        "psnr": tags.JPEGOnlyPSNR[i],
                        "ssim": tags.JPEGOnlySSIM[i],
                        "pixel_accuracy": tags.JPEGOnlyPixelAccuracy[i],
                        "display": display_jpeg,
                        **{k: v for k, v in _worst_window(display_jpeg).items() if k != "worst_window"},
                        **_hu(tags, i, "JPEGOnly"),
                    },
                    "pixel_accuracy_tolerance": tags.PixelAccuracyTolerance,
                    "warnings": list(tags.Warnings or []),
                    # Absent from instances written before these elements existed.
                    "abs_error_percentiles": (tags.AbsErrorPercentiles if tags.AbsErrorPercentiles is not None else [math.nan] * 4 * (i + 1))[4 * i : 4 * i + 4],
                    "error_histogram": (tags.ErrorHistogram if tags.ErrorHistogram is not None else [0] * 42 * (i + 1))[42 * i : 42 * i + 42],
                }
            )
    rows.sort(key=lambda r: (r["series_instance_uid"], r["instance_number"] or 0, r["sop_instance_uid"], r["frame"]))
    return rows


def _stats(values: list[float], worst: str) -> dict[str, float | None]:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "worst": None}
    pick = {"min": a.min, "max": a.max, "absmax": lambda: a[np.argmax(np.abs(a))]}[worst]
    return {
        "mean": _finite(float(a.mean())),
        "median": _finite(float(np.median(a))),
        "worst": _finite(float(pick())),
    }


def _worst_kind(metric: str) -> str:
    return "min" if metric in HIGHER_BETTER else ("absmax" if metric == "hu_bias" else "max")


def build(study_dir: str | os.PathLike[str], files: list[Path] | None = None) -> dict[str, Any]:
    """The report of one study folder (``<out>/<StudyInstanceUID>``) as a JSON-ready dict."""
    study_dir = Path(study_dir)
    rows = image_rows(study_dir, files)
    fit = metrics.regression([r["mean_original"] for r in rows], [r["mean_reconstructed"] for r in rows])
    diffs = np.asarray([r["mean_reconstructed"] - r["mean_original"] for r in rows], np.float64)
    bias = float(diffs.mean()) if len(diffs) else math.nan
    sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan
    summary = {
        m: {
            "model": _stats([r[m] for r in rows], _worst_kind(m)),
            **({"jpeg_only": _stats([r["jpeg_only"][m] for r in rows], _worst_kind(m))} if m in WITH_JPEG else {}),
        }
        for m in SUMMARY_METRICS
    }
    pcts = np.asarray([r.pop("abs_error_percentiles") for r in rows], np.float64).reshape(-1, 4)
    hist = np.asarray([r.pop("error_histogram") for r in rows], np.int64).reshape(-1, 42).sum(axis=0)
    modalities = sorted({r["modality"] for r in rows})
    error = {
        "unit": "HU" if modalities == ["CT"] else "modality units",
        "percentiles": {
            key: _finite(float(agg(pcts[:, col]))) if len(pcts) else None
            for col, (key, agg) in enumerate((("p50", np.mean), ("p95", np.mean), ("p99", np.mean), ("max", np.max)))
        },
        "histogram_edges": list(private_tags.ERROR_BIN_EDGES),
        "histogram": [int(v) for v in hist] if len(rows) else [0] * 42,
    }
    for r in rows:
        for k in ("psnr", "ssim", "pixel_accuracy", "mse", "compression_ratio", "bpp", "mean_original", "mean_reconstructed",
                  "display_psnr", "display_ssim", "display_pixel_accuracy", "display_blockiness", "hu_mae", "hu_bias"):
            r[k] = _finite(r[k]) if r[k] is not None else None
        r["display"] = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in w.items()} for w in r["display"]]
        r["jpeg_only"] = {k: (_finite(v) if isinstance(v, float) else v) for k, v in r["jpeg_only"].items()}
        r["jpeg_only"]["display"] = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in w.items()}
                                     for w in r["jpeg_only"]["display"]]
    return {
        "study_instance_uid": study_dir.name,
        "software": f"dicom-cae {dicom_cae.__version__}",
        "images": len(rows),
        "series": sorted({r["series_instance_uid"] for r in rows}),
        "modalities": modalities,
        "models": sorted({f"{r['model']} ({r['weights_sha256'][:12]})"
                          + (f", convolutions in {r['precision']}" if r.get("precision") else "")
                          + (f", block edges smoothed ({r['edge_filter']})" if r.get("edge_filter") else "") for r in rows}),
        "jpeg_qualities": sorted({r["jpeg_quality"] for r in rows}),
        "warnings": sorted({w for r in rows for w in r["warnings"]}),
        "use": USE,
        "value_mappings": sorted({r["value_mapping"] for r in rows}),
        "display_windows": sorted({w["window"] for r in rows for w in r["display"]}),
        "hu_error_range": list(display.HU_SOFT_TISSUE) if any(r["hu_mae"] is not None for r in rows) else None,
        "pixel_accuracy_tolerance": rows[0]["pixel_accuracy_tolerance"] if rows else metrics.PIXEL_TOLERANCE,
        "regression": {
            "x": "mean intensity of the normalized original image",
            "y": "mean intensity of the stored reconstructed image (same normalization)",
            "slope": _finite(fit.slope),
            "intercept": _finite(fit.intercept),
            "r2": _finite(fit.r2),
            "n": fit.n,
        },
        "bland_altman": {
            "bias": _finite(bias),
            "sd": _finite(sd),
            "lower": _finite(bias - 1.96 * sd),
            "upper": _finite(bias + 1.96 * sd),
        },
        "summary": summary,
        "error": error,
        "per_image": rows,
    }


REPORT_HTML = "report.html"




def document_series(study: str) -> str:
    """The Series Instance UID of a study's report document (``study``: its folder's name)."""
    from dicom_cae import derive

    return generate_uid(derive.UID_PREFIX, entropy_srcs=["report series", study])


def write(
    study_dir: str | os.PathLike[str],
    *,
    sources: dict[str, Path] | None = None,
    identifiers: bool = False,
    document: bool = True,
    files: list[Path] | None = None,
) -> Path:
    """Write the study's report.json, report.html and (with ``document``) its DICOM form, an
    Encapsulated PDF in a series of its own in the study folder; returns report.json's path.

    ``sources`` maps source SOP Instance UIDs to their files, to show the originals beside the
    reconstructions; ``identifiers`` puts the patient's name and ID in the HTML and PDF;
    ``files``: the study's derived instances (the store's index), else every file in the folder.
    """
    study_dir = Path(study_dir)
    report = build(study_dir, files)
    path = study_dir / REPORT_JSON
    io.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", path)
    if not report["per_image"]:
        return path

    from dicom_cae import derive, report_html

    uids = {r["sop_instance_uid"] for r in report["per_image"]}
    template = io.read(next(p for p in study_files(study_dir, files) if p.stem in uids), pixels=False)
    now = dt.datetime.now()
    header = {
        "Study Instance UID": report["study_instance_uid"],
        "Derived series": ", ".join(report["series"]),
        "Modality": ", ".join(report["modalities"]),
        "Images": str(report["images"]),
        "Model": ", ".join(report["models"]),
        "JPEG quality": ", ".join(map(str, report["jpeg_qualities"])),
        "Value mapping": ", ".join(report["value_mappings"]),
        "Display windows": ", ".join(report["display_windows"]) or "none",
        "Use": report["use"],
        "Report written": now.strftime("%Y-%m-%d %H:%M"),
        "Software": report["software"],
    }
    if report["warnings"]:
        header["Warnings"] = "; ".join(report["warnings"])
    if identifiers:
        header = {"Patient": str(template.get("PatientName", "")), "Patient ID": str(template.get("PatientID", "")), **header}
    # The pictures are drawn once, for the HTML and the PDF alike.
    panels = report_html.worst_panels(study_files(study_dir, files), report["per_image"], sources)
    figs = report_html.figures(report, panels)
    pngs = {k: report_html.png(f) for k, f in figs.items()}  # encoded once: the PDF reuses the data
    io.write_text(report_html.render_html(report, figs, header, report_html.panel_columns(panels) if panels else None,
                                          pngs), study_dir / REPORT_HTML)
    if document:
        pdf = report_html.render_pdf(report, figs, header, pngs)
        refs = sorted({(r["sop_class_uid"], r["sop_instance_uid"]) for r in report["per_image"]})
        series_uid = document_series(report["study_instance_uid"])
        instance_uid = generate_uid(derive.UID_PREFIX, entropy_srcs=["report", report["study_instance_uid"], *(u for _, u in refs)])
        doc = derive.report_document(
            template, pdf, refs, series_uid=series_uid, instance_uid=instance_uid,
            title="JPEG + CAE quality report", identifies_patient=identifiers, now=now,
        )
        folder = study_dir / series_uid
        for old in folder.glob("*.dcm"):  # an earlier version, about fewer instances
            if old.stem != instance_uid:
                old.unlink()
        io.write(doc, folder / f"{instance_uid}.dcm")
    return path
