"""`dicom-cae evaluate`: rate-distortion curves, Bjontegaard deltas and tables, written to a folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


from dicom_cae import evaluation

#: The rates (bits per pixel) over which the targets compare codecs.
TARGET_BPP = (0.07, 0.5)


def _f(v: float, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def bd_table(c: dict[str, dict[str, list[float]]], model_codec: str, metric: str = "psnr") -> dict[str, dict[str, float]]:
    """Bjontegaard deltas of the model's curve against JPEG's and JPEG 2000's, on ``metric``
    (the seed's ``psnr`` or ``display_psnr``, the worst display window's); with the old
    encoder's rows, also what the encoder alone gained."""
    out = {}
    pairs = [(model_codec, "JPEG"), (model_codec, "JPEG 2000")]
    if evaluation.PILLOW_CODEC in c:  # the encoder's gain apart from the model's
        pairs += [(model_codec, evaluation.PILLOW_CODEC), ("JPEG", evaluation.PILLOW_CODEC), ("JPEG", "JPEG 2000"),
                  (evaluation.PILLOW_CODEC, "JPEG 2000")]
    for test, ref in pairs:
        a, b = c[ref], c[test]
        out[f"{test} vs {ref}"] = {
            "bd_psnr_db": evaluation.bd_psnr(a["bpp"], a[metric], b["bpp"], b[metric]),
            "bd_rate_percent": evaluation.bd_rate(a["bpp"], a[metric], b["bpp"], b[metric]),
            "bd_psnr_db_0.07_0.5bpp": evaluation.bd_psnr(a["bpp"], a[metric], b["bpp"], b[metric], bpp_range=TARGET_BPP),
            "bd_rate_percent_0.07_0.5bpp": evaluation.bd_rate(a["bpp"], a[metric], b["bpp"], b[metric], bpp_range=TARGET_BPP),
        }
    return out


def modality_tables(rows: list[dict[str, Any]], model_codec: str) -> dict[str, list[dict[str, float]]]:
    tables = {}
    for modality in sorted({r["modality"] for r in rows}):
        c = evaluation.curves(rows, modality)
        tables[modality] = [
            {
                "quality": int(q),
                "bpp": c["JPEG"]["bpp"][k],
                **{f"psnr {name}": c[name]["psnr"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
                **{f"ssim {name}": c[name]["ssim"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
                **{f"display_psnr {name}": c[name]["display_psnr"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
                **{f"display_ssim {name}": c[name]["display_ssim"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
                **{f"hu_mae {name}": c[name]["hu_mae"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
                **{f"display_blockiness {name}": c[name]["display_blockiness"][k] for name in ("JPEG", model_codec, "JPEG 2000")},
            }
            for k, q in enumerate(c["JPEG"]["quality"])
        ]
    return tables


def plot(c: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for name, res in c.items():
        for ax, key in zip(axes, ("display_psnr", "psnr", "ssim")):
            ax.plot(res["bpp"], res[key], "o-", ms=4, label=name)
    for ax, key in zip(axes, ("PSNR, worst display window (dB)", "PSNR, min/max image (seed's, dB)", "SSIM, min/max image")):
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel(key)
        ax.axvspan(*TARGET_BPP, color="0.92", zorder=0)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0].set_title(f"What a viewer shows: {title}")
    axes[1].set_title("The seed's metric (shaded: 0.07-0.5 bpp)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, Any], model_codec: str) -> str:
    lines = [f"Value mapping: {summary.get('value_mapping', 'minmax')}", "",
             "## Bjontegaard deltas", "", "| metric | comparison | BD-PSNR (dB) | BD-rate (%) | BD-PSNR 0.07-0.5 bpp | BD-rate 0.07-0.5 bpp |",
             "|---|---|---|---|---|---|"]
    for label, key in (("worst display window", "bjontegaard_display"), ("min/max (seed's)", "bjontegaard")):
        for name, d in summary[key].items():
            lines.append(f"| {label} | {name} | {_f(d['bd_psnr_db'])} | {_f(d['bd_rate_percent'], 1)} | "
                         f"{_f(d['bd_psnr_db_0.07_0.5bpp'])} | {_f(d['bd_rate_percent_0.07_0.5bpp'], 1)} |")
    st = summary["seed_table"]
    lines += ["", f"## The seed's operating point (JPEG quality {st['quality']}, compression ratio nearest 0.0093)", "",
              "| | PSNR (dB) | SSIM | pixel accuracy | compression ratio |", "|---|---|---|---|---|"]
    for name in ("published seed (5 epochs)", model_codec, "JPEG", "JPEG 2000"):
        d = st[name]
        lines.append(f"| {name} | {_f(d['psnr'])} | {_f(d['ssim'], 4)} | {_f(d['pixel_accuracy'], 4)} | {_f(d['compression_ratio'], 4)} |")
    names = ("JPEG", model_codec, "JPEG 2000")
    for modality, rows in summary["by_modality"].items():
        hu = modality == "CT"
        lines += ["", f"## {modality} ({summary['images_by_modality'][modality]} images): JPEG / {model_codec} / JPEG 2000 at the same bytes", "",
                  "| q | bpp | PSNR, worst display window | SSIM, worst display window | " + ("HU MAE, soft tissue | " if hu else "")
                  + "PSNR, min/max (seed's) | SSIM, min/max (seed's) | blockiness, most blocking window (x original) |",
                  "|---|---|---|---|" + ("---|" if hu else "") + "---|---|---|"]
        for r in rows:
            def trio(metric: str, digits: int) -> str:
                return " / ".join(_f(r[f"{metric} {n}"], digits) for n in names)

            lines.append(f"| {r['quality']} | {r['bpp']:.3f} | {trio('display_psnr', 2)} | {trio('display_ssim', 4)} | "
                         + (f"{trio('hu_mae', 1)} | " if hu else "") + f"{trio('psnr', 2)} | {trio('ssim', 4)} | "
                         f"{trio('display_blockiness', 2)} |")
    return "\n".join(lines) + "\n"


def adaptive_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Adaptive coding against JPEG 2000 at the same bytes: per budget, and Bjontegaard deltas."""
    c = evaluation.curves(rows)
    name = next(n for n in c if n != "JPEG 2000")
    a, j = c[name], c["JPEG 2000"]
    ratios = sorted({float(r["ratio_target"]) for r in rows})
    per = []
    for k, ratio in enumerate(ratios):
        sel = [r for r in rows if r["codec"] == name and r["quality"] == k]
        per.append({
            "ratio_target": ratio, "bpp": a["bpp"][k], "coded_smaller": sum(r["coding_size"] < 256 for r in sel) / max(len(sel), 1),
            **{f"{m} {n}": c[n][m][k] for n in (name, "JPEG 2000") for m in ("psnr", "ssim", "display_psnr", "display_ssim", "hu_mae")},
        })
    bd = {
        metric: {
            "bd_psnr_db": evaluation.bd_psnr(j["bpp"], j[metric], a["bpp"], a[metric]),
            "bd_psnr_db_0.07_0.5bpp": evaluation.bd_psnr(j["bpp"], j[metric], a["bpp"], a[metric], bpp_range=TARGET_BPP),
        }
        for metric in ("psnr", "display_psnr")
    }
    return {"codec": name, "by_ratio": per, "bjontegaard_vs_jpeg2000": bd, "curves": c}


def adaptive_markdown(s: dict[str, Any]) -> str:
    name = s["codec"]
    lines = ["", f"## {name} at byte budgets, against JPEG 2000 at the same bytes", "",
             "| target ratio | bpp | coded smaller than 256 | PSNR worst window | SSIM worst window | PSNR min/max (seed's) | SSIM min/max |",
             "|---|---|---|---|---|---|---|"]
    for r in s["by_ratio"]:
        lines.append(
            f"| {r['ratio_target']:.4f} | {r['bpp']:.3f} | {100 * r['coded_smaller']:.0f} % | "
            f"{_f(r[f'display_psnr {name}'])} / {_f(r['display_psnr JPEG 2000'])} | {_f(r[f'display_ssim {name}'], 4)} / {_f(r['display_ssim JPEG 2000'], 4)} | "
            f"{_f(r[f'psnr {name}'])} / {_f(r['psnr JPEG 2000'])} | {_f(r[f'ssim {name}'], 4)} / {_f(r['ssim JPEG 2000'], 4)} |")
    bd = s["bjontegaard_vs_jpeg2000"]
    lines += ["", f"BD-PSNR of {name} against JPEG 2000: min/max (seed's) {_f(bd['psnr']['bd_psnr_db'])} dB over all budgets, "
              f"{_f(bd['psnr']['bd_psnr_db_0.07_0.5bpp'])} dB over 0.07-0.5 bpp; worst display window "
              f"{_f(bd['display_psnr']['bd_psnr_db'])} dB, {_f(bd['display_psnr']['bd_psnr_db_0.07_0.5bpp'])} dB over 0.07-0.5 bpp."]
    return "\n".join(lines) + "\n"


def _clean(v: Any) -> Any:
    """NaN and infinities as null, so that the JSON is valid."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write(rows: list[dict[str, Any]], out: Path, *, model_codec: str, description: str,
          value_mapping: str = "minmax", ratio_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the CompressAI-shaped JSON per codec, rd.png, per_image.csv, summary.json and
    tables.md into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    c = evaluation.curves(rows)
    files = {"JPEG": "jpeg.json", model_codec: f"{model_codec.lower().replace('+', '-')}.json", "JPEG 2000": "jpeg2000.json"}
    descriptions = {
        "JPEG": f"Baseline JPEG (trellis-quantized, flat table, optimized Huffman tables), 8-bit 256x256 images, value mapping {value_mapping}",
        model_codec: description,
        "JPEG 2000": "JPEG 2000 (OpenJPEG through Pillow, raw codestream) at the byte budget of each JPEG point",
    }
    for name, fname in files.items():
        (out / fname).write_text(json.dumps(_clean(evaluation.compressai_json(name, descriptions[name], c[name])), indent=2, allow_nan=False) + "\n")
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {
        "images": len({r["image"] for r in rows}),
        "images_by_modality": {m: len({r["image"] for r in rows if r["modality"] == m}) for m in sorted({r["modality"] for r in rows})},
        "value_mapping": value_mapping,
        "bjontegaard": bd_table(c, model_codec),
        "bjontegaard_display": bd_table(c, model_codec, "display_psnr"),
        "seed_table": evaluation.seed_table(rows, model_codec),
        "by_modality": modality_tables(rows, model_codec),
        "curves": c,
    }
    text = markdown(summary, model_codec)
    if ratio_rows:
        summary["adaptive"] = adaptive_summary(ratio_rows)
        text += adaptive_markdown(summary["adaptive"])
        with open(out / "per_image_adaptive.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ratio_rows[0]))
            w.writeheader()
            w.writerows(ratio_rows)
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=1, allow_nan=False) + "\n")
    (out / "tables.md").write_text(text)
    plot(c, out / "rd.png", f"{summary['images']} images")
    return summary
