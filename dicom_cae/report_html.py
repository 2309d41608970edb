"""Readable per-study reports: a self-contained HTML page and a PDF, with plots.

Everything comes from the derived instances (their private tags and pixels); the original
images are shown too when their files are at hand (``sources``).
"""

from __future__ import annotations

import base64
import html
import io as _io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

import dicom_cae  # noqa: E402
from dicom_cae import codec, display, image, io, private_tags  # noqa: E402
from dicom_cae.errors import DicomInputError  # noqa: E402
from dicom_cae.derive import NOT_FOR_DIAGNOSIS  # noqa: E402

LOGGER = logging.getLogger(__name__)

WORST = 4
# What a viewer shows first, then the seed's figures on the min/max image.
METRICS = (
    ("display_psnr", "PSNR in the worst display window (dB)"), ("display_ssim", "SSIM, worst display window"),
    ("display_pixel_accuracy", "Pixel accuracy, worst display window"),
    ("display_blockiness", "Blockiness, most blocking window (x original)"),
    ("hu_mae", "Mean absolute error, soft tissue (HU)"), ("hu_bias", "Mean error (bias), soft tissue (HU)"),
    ("psnr", "PSNR, min/max image (seed's, dB)"), ("ssim", "SSIM, min/max image (seed's)"),
    ("pixel_accuracy", "Pixel accuracy, min/max image (seed's)"),
)


@dataclass(frozen=True)
class Panel:
    """One worst image: the arrays shown side by side (None where not available)."""

    label: str
    original: np.ndarray | None
    jpeg: np.ndarray
    reconstruction: np.ndarray


DPI = 100


def rasterize(figs: dict[str, plt.Figure]) -> dict[str, np.ndarray]:
    """Each figure drawn once, as RGB pixels at DPI: the HTML and the PDF show the same pixels
    (drawing a figure is most of a report's cost; it is done once per figure, then closed)."""
    out = {}
    for key, fig in figs.items():
        fig.set_dpi(DPI)
        fig.canvas.draw()
        out[key] = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
    return out


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def worst_panels(study_files: list[Path], rows: list[dict[str, Any]], sources: dict[str, Path] | None, n: int = WORST) -> list[Panel]:
    """The ``n`` frames shown worst in their worst display window (lowest PSNR there; the
    seed's PSNR for instances without display metrics), read back from the derived files (and
    their sources) and shown through that window, as a viewer shows them."""
    key = lambda r: r["display_psnr"] if r.get("display_psnr") is not None else r["psnr"]  # noqa: E731
    worst = sorted((r for r in rows if key(r) is not None), key=key)[:n]
    files = {path.stem: path for path in study_files}
    panels = []
    for r in worst:
        path = files.get(r["sop_instance_uid"])
        if path is None:
            continue
        ds = io.read(path)
        tags = private_tags.PrivateBlock.from_dataset(ds)
        frame = r["frame"] - 1
        norm = private_tags.normalization(ds, tags)
        stored = ds.pixel_array.reshape(-1, image.SIZE, image.SIZE)
        recon = image.stored_to_modality(stored, norm)[frame]
        offset = sum(tags.JPEGBytes[:frame])
        jpeg_unit = codec.decode_to(tags.JPEGStreams[offset : offset + tags.JPEGBytes[frame]])
        jpeg = norm.mapping(frame).inverse(1.0 - jpeg_unit if norm.invert else jpeg_unit)
        original = None
        src = (sources or {}).get(r["source_sop_instance_uid"])
        if src is not None:
            try:
                original = image.prepare(io.read(src), str(src)).modality[frame]
            except DicomInputError as exc:
                LOGGER.warning("report: original not shown: %s", exc)
        window = next((w for w in r["display"] if w["window"] == r.get("worst_window")), None)
        if window is not None:
            shown = display.Window(window["window"], window["center"], window["width"], "source")
            name = f"window {window['window']}"
        else:  # older instances: the frame's own range
            shown = display.Window("min/max", (norm.lo[frame] + norm.hi[frame]) / 2, norm.hi[frame] - norm.lo[frame] + 1, "source")
            name = "min/max"

        def view(values: np.ndarray | None) -> np.ndarray | None:
            if values is None:
                return None
            v = shown.apply(values)
            return 1.0 - v if norm.invert else v

        label = f"#{r['instance_number']}" + (f" frame {r['frame']}" if r["frame"] > 1 else "")
        psnr = f"{key(r):.2f} dB (JPEG {r['jpeg_only'].get('display_psnr') or r['jpeg_only']['psnr']:.2f})"
        panels.append(Panel(f"{label}  {name}\nPSNR {psnr}", view(original), view(jpeg), view(recon)))
    return panels


def figures(report: dict[str, Any], panels: list[Panel]) -> dict[str, plt.Figure]:
    rows = report["per_image"]
    x = np.array([r["mean_original"] for r in rows], float)
    y = np.array([r["mean_reconstructed"] for r in rows], float)
    reg = report["regression"]
    figs: dict[str, plt.Figure] = {}

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.scatter(x, y, s=18, alpha=0.8, label="image")
    if reg["slope"] is not None:
        xs = np.linspace(x.min(), x.max(), 2)
        a1.plot(xs, reg["slope"] * xs + reg["intercept"], "r-", label=f"fit: y = {reg['slope']:.4f} x + {reg['intercept']:.4f}, R\u00b2 = {reg['r2']:.4f}")
    lim = [min(x.min(), y.min()), max(x.max(), y.max())] if len(x) else [0, 1]
    a1.plot(lim, lim, "k:", lw=0.8, label="identity")
    a1.set_xlabel("mean intensity, original (normalized)")
    a1.set_ylabel("mean intensity, reconstructed")
    a1.set_title("Regression of mean intensity")
    a1.legend(fontsize=8)
    mean, diff = (x + y) / 2, y - x
    a2.scatter(mean, diff, s=18, alpha=0.8)
    if len(diff):
        bias, sd = diff.mean(), diff.std(ddof=1) if len(diff) > 1 else 0.0
        for v, style, text in ((bias, "r-", f"bias {bias:+.5f}"), (bias + 1.96 * sd, "r--", f"+1.96 SD {bias + 1.96 * sd:+.5f}"), (bias - 1.96 * sd, "r--", f"-1.96 SD {bias - 1.96 * sd:+.5f}")):
            a2.axhline(v, color="r", ls=style[1:], lw=1)
            a2.annotate(text, (1.0, v), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
    a2.axhline(0, color="k", ls=":", lw=0.8)
    a2.set_xlabel("mean of original and reconstructed")
    a2.set_ylabel("reconstructed - original")
    a2.set_title("Bland-Altman of mean intensity")
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.13, top=0.92, wspace=0.25)  # fixed: no layout search
    figs["regression"] = fig

    fig, (h1, h2) = plt.subplots(1, 2, figsize=(11, 3.8))
    hist = np.array(report["error"]["histogram"], float)
    edges = np.array(private_tags.ERROR_BIN_EDGES)
    centers = (edges[:-1] + edges[1:]) / 2
    h1.bar(centers, hist[1:-1], width=0.0095, color="tab:blue")
    h1.set_yscale("log")
    h1.set_xlabel("error, reconstructed - original (normalized units)")
    h1.set_ylabel("pixels")
    h1.set_title(f"Per-pixel error ({hist[0] + hist[-1]:.0f} pixels beyond \u00b10.2)")
    order = [r["instance_number"] or i for i, r in enumerate(rows)]
    shown = all(r.get("display_psnr") is not None for r in rows)
    key = "display_psnr" if shown else "psnr"
    h2.plot(order, [r[key] for r in rows], "o-", ms=3, label="JPEG + CAE")
    h2.plot(order, [r["jpeg_only"][key] for r in rows], "s--", ms=3, label="plain JPEG, same bytes")
    h2.set_xlabel("instance number")
    h2.xaxis.get_major_locator().set_params(integer=True)
    h2.set_ylabel("PSNR (dB)")
    h2.set_title("PSNR per image" + (", worst display window" if shown else ""))
    h2.legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.14, top=0.91, wspace=0.22)
    figs["error"] = fig

    if panels:
        with_original = any(p.original is not None for p in panels)
        cols = ["original", "JPEG", "reconstruction", "|error| x4"] if with_original else ["JPEG", "reconstruction", "correction (recon. - JPEG) x4"]
        fig, axes = plt.subplots(len(panels), len(cols), figsize=(3.1 * len(cols), 3.2 * len(panels)), squeeze=False)
        for r, p in enumerate(panels):
            if with_original and p.original is not None:
                shown = [p.original, p.jpeg, p.reconstruction, np.clip(np.abs(p.reconstruction - p.original) * 4, 0, 1)]
            elif with_original:
                shown = [np.zeros_like(p.jpeg), p.jpeg, p.reconstruction, np.zeros_like(p.jpeg)]
            else:
                shown = [p.jpeg, p.reconstruction, np.clip(0.5 + (p.reconstruction - p.jpeg) * 4, 0, 1)]
            for c, (ax, img) in enumerate(zip(axes[r], shown)):
                ax.imshow(img, cmap="magma" if cols[c].startswith("|error|") else "gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(cols[c], fontsize=10)
            axes[r][0].set_ylabel(p.label, fontsize=8)
        fig.subplots_adjust(left=0.07, right=0.99, bottom=0.01, top=1 - 0.35 / (3.2 * len(panels)), wspace=0.04, hspace=0.12)
        figs["worst"] = fig
    return figs


def _summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out = []
    s = report["summary"]
    for key, name in METRICS:
        m, j = s[key]["model"], s[key].get("jpeg_only", {})
        if m["mean"] is None:  # no HU figures outside CT, no display figures in older instances
            continue
        digits = 2 if key.startswith("hu_") or key.endswith("psnr") else 4
        out.append((name, *(f"{_fmt(m[k], digits)} ({_fmt(j.get(k), digits)})" for k in ("mean", "median", "worst"))))
    for key, name in (("compression_ratio", "Compression ratio (compressed/original)"), ("bpp", "Bits per pixel")):
        m = s[key]["model"]
        out.append((name, _fmt(m["mean"]), _fmt(m["median"]), _fmt(m["worst"])))
    return out


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #1d2430; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; font-size: 0.88em; } td, th { border: 1px solid #ccd; padding: 3px 8px; text-align: right; }
th { background: #eef1f6; } td:first-child, th:first-child, td.mono { text-align: left; }
.meta td { text-align: left; } .meta td:first-child { font-weight: 600; background: #f6f7fa; }
.mono { font-family: ui-monospace, monospace; font-size: 0.85em; } img { max-width: 100%; }
.note { color: #556; font-size: 0.88em; } .scroll td:nth-child(2) { text-align: left; } .scroll { max-height: 480px; overflow-y: auto; display: inline-block; max-width: 100%; }
.scroll .mono { word-break: break-all; min-width: 9em; } .scroll td, .scroll th { padding: 3px 5px; }
"""

# The page checks itself: every image decoded, no script error (tests read these attributes).
SELF_CHECK = """
<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-errors', String(window.__errors.length));
  // Anything wider than the window (a horizontal scrollbar): the page, or a table's scroll box.
  var wide = document.documentElement.scrollWidth > window.innerWidth ||
    Array.prototype.some.call(document.querySelectorAll('.scroll'), function (e) { return e.scrollWidth > e.clientWidth + 1; });
  document.body.setAttribute('data-too-wide', String(wide));
});
</script>
"""


def render_html(report: dict[str, Any], figs: dict[str, np.ndarray], header: dict[str, str]) -> str:
    meta = "".join(f"<tr><td>{html.escape(k)}</td><td class='mono'>{html.escape(v)}</td></tr>" for k, v in header.items())
    summary = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in _summary_rows(report))
    reg = report["regression"]
    ba = report["bland_altman"]
    err = report["error"]
    unit = err["unit"]
    pct = "".join(
        f"<tr><td>{name}</td><td>{_fmt(err['percentiles'][k], 2)}</td></tr>"
        for k, name in (("p50", "median |error|"), ("p95", "95th percentile"), ("p99", "99th percentile"), ("max", "maximum"))
    )
    per_image = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            _fmt(r["instance_number"]), f"<span class='mono'>{html.escape(r['sop_instance_uid'])}</span>", r["frame"],
            html.escape(str(r.get("worst_window") or "")), _fmt(r.get("display_psnr"), 2),
            _fmt(r["jpeg_only"].get("display_psnr"), 2), _fmt(r.get("hu_mae"), 1), _fmt(r.get("hu_bias"), 1),
            _fmt(r["psnr"], 2), _fmt(r["jpeg_only"]["psnr"], 2), _fmt(r["ssim"]), _fmt(r["jpeg_only"]["ssim"]),
            _fmt(r["pixel_accuracy"]), _fmt(r["compression_ratio"]), _fmt(r["bpp"], 3),
        )) + "</tr>"
        for r in report["per_image"]
    )
    hu_range = report.get("hu_error_range")
    hu_note = (f" HU errors over the original's pixels from {hu_range[0]:g} to {hu_range[1]:g} HU (soft tissue)."
               if hu_range else "")
    imgs = {k: f"<img alt='{k}' src='data:image/png;base64,{_png(f)}'>" for k, f in figs.items()}
    worst = imgs.get("worst", "<p class='note'>No images.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dicom-cae report {html.escape(report['study_instance_uid'])}</title>
<style>{CSS}</style>{SELF_CHECK}</head><body>
<h1>JPEG + autoencoder reconstruction: study report</h1>
<p><b>{html.escape(report.get('use', ''))}</b></p>
<table class="meta">{meta}</table>
<h2>Summary</h2>
<p class="note">Over {report['images']} image(s). Each cell: JPEG + CAE (plain JPEG at the same bytes). First what a viewer
shows: both images through each display window the source names (or the CT soft-tissue window, or the 1st-99th percentile
range), the worst window counted.{hu_note} Then the seed's figures, on each image mapped by its own minimum and maximum to
0..1. Worst = lowest, for errors the largest. Pixel accuracy: share of pixels within {report['pixel_accuracy_tolerance']} of the range.</p>
<table><tr><th>metric</th><th>mean</th><th>median</th><th>worst</th></tr>{summary}</table>
<h2>Mean intensity: original against reconstructed</h2>
<p>Least squares: slope <b>{_fmt(reg['slope'])}</b>, intercept <b>{_fmt(reg['intercept'])}</b>, R<sup>2</sup> <b>{_fmt(reg['r2'])}</b>
over {reg['n']} image(s). A slope of 1 and an intercept of 0 mean the reconstruction keeps each image's mean intensity.
Bland-Altman: bias {_fmt(ba['bias'], 5)}, limits of agreement {_fmt(ba['lower'], 5)} to {_fmt(ba['upper'], 5)} (normalized units).</p>
{imgs['regression']}
<h2>Per-pixel error</h2>
<p class="note">What a mean cannot show. Percentiles of the absolute error per image ({html.escape(unit)}), averaged over the images; maximum over all.</p>
<table><tr><th>absolute error</th><th>{html.escape(unit)}</th></tr>{pct}</table>
{imgs['error']}
<h2>The {min(WORST, report['images'])} worst images (lowest PSNR in their worst display window), shown in that window</h2>
{worst}
<h2>Every image</h2>
<div class="scroll"><table><tr><th>instance</th><th>SOP Instance UID</th><th>frame</th><th>worst window</th><th>PSNR there</th>
<th>JPEG</th><th>HU MAE</th><th>HU bias</th><th>PSNR min/max</th><th>JPEG</th><th>SSIM min/max</th><th>JPEG</th>
<th>pixel acc.</th><th>ratio</th><th>bpp</th></tr>{per_image}</table></div>
<p class="note">Written by dicom-cae {dicom_cae.__version__}. Metrics compare the stored 256x256 reconstruction with the
original resampled to 256x256 before any 8-bit quantization; see docs/private-tags.md.</p>
</body></html>
"""


A4 = (8.27, 11.69)  # inches: every page of the PDF is A4 portrait


def _a4(pdf: PdfPages, number: int) -> plt.Figure:
    """A new A4 page carrying the use restriction and its number at the foot."""
    page = plt.figure(figsize=A4)
    page.text(0.06, 0.025, f"{NOT_FOR_DIAGNOSIS}  Page {number}.", fontsize=7, color="#556")
    return page


def render_pdf(report: dict[str, Any], figs: dict[str, np.ndarray], header: dict[str, str]) -> bytes:
    buf = _io.BytesIO()
    with PdfPages(buf, metadata={"Title": f"dicom-cae report {report['study_instance_uid']}", "Creator": f"dicom-cae {dicom_cae.__version__}"}) as pdf:
        page = _a4(pdf, 1)
        page.text(0.06, 0.96, "JPEG + autoencoder reconstruction: study report", fontsize=15, weight="bold")
        yy = 0.93
        for k, v in header.items():
            page.text(0.06, yy, f"{k}:", fontsize=8, weight="bold")
            page.text(0.30, yy, v, fontsize=7, family="monospace", wrap=True)
            yy -= 0.018
        rows = _summary_rows(report)
        table = page.add_axes([0.06, yy - 0.05 - 0.03 * len(rows), 0.88, 0.03 * (len(rows) + 1)])
        table.axis("off")
        # The metric's name gets half the width: the names are long, and a cut name is no name.
        tbl = table.table(cellText=[list(r) for r in rows], colLabels=["metric: JPEG + CAE (plain JPEG)", "mean", "median", "worst"],
                          loc="center", cellLoc="left", colWidths=[0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])
        tbl.auto_set_font_size(False)
        tbl.set_fontsize(7.5)
        tbl.scale(1, 1.4)
        reg = report["regression"]
        page.text(0.06, yy - 0.10 - 0.03 * len(rows), f"Regression of mean intensity: slope {_fmt(reg['slope'])}, intercept {_fmt(reg['intercept'])}, R\u00b2 {_fmt(reg['r2'])}, n = {reg['n']}", fontsize=9)
        pdf.savefig(page)
        plt.close(page)
        number = 2
        for key in ("regression", "error", "worst"):
            if key in figs:  # the HTML's pixels, fitted to an A4 page
                page = _a4(pdf, number)
                ax = page.add_axes([0.04, 0.06, 0.92, 0.90])
                ax.imshow(figs[key], interpolation="lanczos")
                ax.set_anchor("N")
                ax.axis("off")
                pdf.savefig(page, dpi=150)
                plt.close(page)
                number += 1
        _pdf_per_image(pdf, report, number)
    return buf.getvalue()


PDF_ROWS = 48


def _pdf_per_image(pdf: PdfPages, report: dict[str, Any], number: int) -> None:
    """Every image, as pages of a table."""
    head = ["instance", "frame", "worst window", "PSNR there (JPEG)", "HU MAE (JPEG)", "HU bias", "PSNR min/max (JPEG)", "bpp"]
    rows = [
        [_fmt(r["instance_number"]), str(r["frame"]), str(r.get("worst_window") or ""),
         f"{_fmt(r.get('display_psnr'), 2)} ({_fmt(r['jpeg_only'].get('display_psnr'), 2)})",
         f"{_fmt(r.get('hu_mae'), 1)} ({_fmt(r['jpeg_only'].get('hu_mae'), 1)})", _fmt(r.get("hu_bias"), 1),
         f"{_fmt(r['psnr'], 2)} ({_fmt(r['jpeg_only']['psnr'], 2)})", _fmt(r["bpp"], 3)]
        for r in report["per_image"]
    ]
    for start in range(0, len(rows), PDF_ROWS):
        chunk = rows[start : start + PDF_ROWS]
        page = _a4(pdf, number)
        number += 1
        page.text(0.06, 0.96, f"Every image ({start + 1}-{start + len(chunk)} of {len(rows)}): JPEG + CAE (plain JPEG)",
                  fontsize=11, weight="bold")
        ax = page.add_axes([0.04, 0.93 - 0.0185 * (len(chunk) + 1), 0.92, 0.0185 * (len(chunk) + 1)])
        ax.axis("off")
        tbl = ax.table(cellText=chunk, colLabels=head, loc="upper center", cellLoc="left")
        tbl.auto_set_font_size(False)
        tbl.set_fontsize(6.5)
        pdf.savefig(page)
        plt.close(page)
