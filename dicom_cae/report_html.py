"""Readable per-study reports: a self-contained HTML page and a PDF, with charts.

Everything comes from the derived instances (their private tags and pixels); the original
images are shown too when their files are at hand (``sources``). The charts and image panels
are drawn once (dicom_cae.charts, Pillow) and the same pixels go into the HTML and the PDF
(dicom_cae.pdf): a report costs a few hundredths of a second, not seconds.
"""

from __future__ import annotations

import base64
import html
import io as _io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import dicom_cae
from dicom_cae import charts, codec, display, image, io, pdf, private_tags
from dicom_cae.derive import NOT_FOR_DIAGNOSIS
from dicom_cae.errors import DicomInputError

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


def png(pixels: np.ndarray) -> bytes:
    """A picture as PNG bytes (fast compression): the HTML shows them and the PDF takes their
    compressed data as it is (pdf.png_data)."""
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def agreement_lines(ba: dict[str, Any]) -> list[tuple[float, bool, str]]:
    """The Bland-Altman chart's lines (value, dashed, label) from the report's ``bland_altman``:
    the bias, and its limits of agreement where the report has them (a standard deviation: two
    images or more)."""
    if ba["bias"] is None:
        return []
    lines = [(ba["bias"], False, f"bias {ba['bias']:+.5f}")]
    if ba["sd"] is not None:
        lines += [(ba["upper"], True, f"+1.96 SD {ba['upper']:+.5f}"), (ba["lower"], True, f"-1.96 SD {ba['lower']:+.5f}")]
    return lines


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


def panel_columns(panels: list[Panel]) -> list[str]:
    """What the worst images' panel shows, column by column: the original first when a source
    file was at hand (convert, the node, the plugin: each keeps it for the report)."""
    if any(p.original is not None for p in panels):
        return ["original", "JPEG", "reconstruction", "|error| x4"]
    return ["JPEG", "reconstruction", "correction (recon. - JPEG) x4"]


def figures(report: dict[str, Any], panels: list[Panel]) -> dict[str, np.ndarray]:
    """The report's pictures as RGB arrays: the regression and Bland-Altman charts, the error
    histogram and PSNR per image, and the worst images (when there are any)."""
    rows = report["per_image"]
    x = np.array([r["mean_original"] for r in rows], float)
    y = np.array([r["mean_reconstructed"] for r in rows], float)
    reg = report["regression"]
    figs: dict[str, np.ndarray] = {}
    S, line = charts.Series, np.array([0.0, 1.0])
    lim = np.array([min(x.min(), y.min()), max(x.max(), y.max())]) if len(x) else line
    fit = []
    if reg["slope"] is not None:
        xs = np.array([x.min(), x.max()])
        fit = [S(xs, reg["slope"] * xs + reg["intercept"], "line", charts.RED,
                 f"fit: y = {reg['slope']:.4f} x + {reg['intercept']:.4f}, R^2 = {reg['r2']:.4f}")]  # the font has no superscript
    regression = charts.Chart("Regression of mean intensity", "mean intensity, original (normalized)",
                              "mean intensity, reconstructed",
                              [S(x, y, label="image"), *fit, S(lim, lim, "line", charts.BLACK, "identity", dashed=True)])
    mean, diff = (x + y) / 2, y - x
    agreement = [S(mean, diff), S(mean, np.zeros(1), "hline", charts.BLACK, dashed=True)]
    for v, dashed, text in agreement_lines(report["bland_altman"]):
        agreement.append(S(mean, np.array([v, v]), "hline", charts.RED, dashed=dashed, note=text))
    bland = charts.Chart("Bland-Altman of mean intensity", "mean of original and reconstructed",
                         "reconstructed - original", agreement)
    figs["regression"] = charts.side_by_side([charts.draw(regression, (550, 420)), charts.draw(bland, (550, 420))])

    hist = np.array(report["error"]["histogram"], float)
    edges = np.array(private_tags.ERROR_BIN_EDGES)
    centers = (edges[:-1] + edges[1:]) / 2
    errors = charts.Chart(f"Per-pixel error ({hist[0] + hist[-1]:.0f} pixels beyond \u00b10.2)",
                          "error, reconstructed - original (normalized units)", "pixels",
                          [S(centers, hist[1:-1], "bars", width=0.0095)], logy=True)
    order = np.array([r["instance_number"] or i for i, r in enumerate(rows)], float)
    shown = all(r.get("display_psnr") is not None for r in rows)
    key = "display_psnr" if shown else "psnr"
    per_image = charts.Chart("PSNR per image" + (", worst display window" if shown else ""), "instance number", "PSNR (dB)",
                             [S(order, np.array([r[key] for r in rows], float), "line", charts.BLUE, "JPEG + CAE"),
                              S(order, np.array([r["jpeg_only"][key] for r in rows], float), "line", charts.ORANGE,
                                "plain JPEG, same bytes", dashed=True)], integer_x=True)
    figs["error"] = charts.side_by_side([charts.draw(errors, (550, 380)), charts.draw(per_image, (550, 380))])

    if panels:
        cols = panel_columns(panels)
        with_original = cols[0] == "original"
        grid = []
        for p in panels:
            if with_original and p.original is not None:
                shown_ = [p.original, p.jpeg, p.reconstruction, np.clip(np.abs(p.reconstruction - p.original) * 4, 0, 1)]
            elif with_original:
                shown_ = [None, p.jpeg, p.reconstruction, None]
            else:
                shown_ = [p.jpeg, p.reconstruction, np.clip(0.5 + (p.reconstruction - p.jpeg) * 4, 0, 1)]
            grid.append((p.label, shown_))
        figs["worst"] = charts.grid(grid, cols, [c.startswith("|error|") for c in cols])
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


def render_html(report: dict[str, Any], figs: dict[str, np.ndarray], header: dict[str, str],
                columns: list[str] | None = None, pngs: dict[str, bytes] | None = None) -> str:
    """The page; ``columns``: what the worst images' panel shows (panel_columns), said in words;
    ``pngs``: the figures encoded already (png), by name."""
    pngs = pngs or {k: png(f) for k, f in figs.items()}
    meta = "".join(f"<tr><td>{html.escape(k)}</td><td class='mono'>{html.escape(v)}</td></tr>" for k, v in header.items())
    summary = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in _summary_rows(report))
    reg = report["regression"]
    ba = report["bland_altman"]
    fit = (f"Least squares: slope <b>{_fmt(reg['slope'])}</b>, intercept <b>{_fmt(reg['intercept'])}</b>, "
           f"R<sup>2</sup> <b>{_fmt(reg['r2'])}</b> over {reg['n']} image(s)." if reg["slope"] is not None
           else f"No least-squares line over {reg['n']} image(s) (it needs two images or more).")
    limits = (f"limits of agreement {_fmt(ba['lower'], 5)} to {_fmt(ba['upper'], 5)}" if ba["sd"] is not None
              else "no limits of agreement (they need two images or more)")
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
    imgs = {k: f"<img alt='{k}' src='data:image/png;base64,{base64.b64encode(pngs[k]).decode('ascii')}'>" for k in figs}
    worst = imgs.get("worst", "<p class='note'>No images.</p>")
    if "worst" in figs and columns:
        worst = f"<p class='note'>Columns: {html.escape(' | '.join(columns))}.</p>\n{worst}"
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
<p>{fit} A slope of 1 and an intercept of 0 mean the reconstruction keeps each image's mean intensity.
Bland-Altman: bias {_fmt(ba['bias'], 5)}, {limits} (normalized units).</p>
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


MARGIN = 42  # points


def _page(doc: pdf.Document, number: int) -> pdf.Page:
    """A new A4 page carrying the use restriction and its number at the foot."""
    page = doc.page()
    page.text(MARGIN, pdf.A4[1] - 20, f"{NOT_FOR_DIAGNOSIS}  Page {number}.", 7, color=(0.33, 0.33, 0.4))
    return page


def _table(page: pdf.Page, y: float, head: list[str], rows: list[list[str]], widths: list[float], size: float = 7.5,
           pad: float = 3.5) -> float:
    """A ruled table from ``y`` (top); columns ``widths`` points wide; returns the y below it."""
    step = size * 1.75
    total = sum(widths)
    page.fill(MARGIN, y, total, step)
    for r, cells in enumerate([head, *rows]):
        base = y + step * (r + 1) - step / 2 + size * 0.35
        x = MARGIN
        for c, (cell, w) in enumerate(zip(cells, widths)):
            text = cell
            while text and pdf.width(text, size, "bold" if r == 0 else "regular") > w - 2 * pad:
                text = text[:-1]
            page.text(x + pad, base, text, size, "bold" if r == 0 else "regular")
            x += w
        page.line(MARGIN, y + step * (r + 1), MARGIN + total, y + step * (r + 1), 0.4, 0.75)
    x = MARGIN
    for w in [0.0, *widths]:
        x += w
        page.line(x, y, x, y + step * (len(rows) + 1), 0.4, 0.75)
    page.line(MARGIN, y, MARGIN + total, y, 0.4, 0.75)
    return y + step * (len(rows) + 1)


def render_pdf(report: dict[str, Any], figs: dict[str, np.ndarray], header: dict[str, str],
               pngs: dict[str, bytes] | None = None) -> bytes:
    """The report as an A4 PDF: the header and summary, each picture on a page of its own (the
    HTML's pixels; ``pngs``: the HTML's PNGs of them, whose data the PDF reuses), then every
    image as pages of a table; each page with the use restriction."""
    doc = pdf.Document(f"dicom-cae report {report['study_instance_uid']}", f"dicom-cae {dicom_cae.__version__}")
    room = pdf.A4[0] - 2 * MARGIN
    page = _page(doc, 1)
    page.text(MARGIN, 50, "JPEG + autoencoder reconstruction: study report", 15, "bold")
    y = 74
    for k, v in header.items():
        page.text(MARGIN, y, f"{k}:", 8, "bold")
        for line in pdf.fit(v, 7, room - 150, "mono"):
            page.text(MARGIN + 150, y, line, 7, "mono")
            y += 10
        y += 2
    # The metric's name gets half the width: the names are long, and a cut name is no name.
    y = _table(page, y + 10, ["metric: JPEG + CAE (plain JPEG)", "mean", "median", "worst"],
               [list(r) for r in _summary_rows(report)], [room / 2] + [room / 6] * 3)
    reg = report["regression"]
    page.text(MARGIN, y + 22, f"Regression of mean intensity: slope {_fmt(reg['slope'])}, intercept {_fmt(reg['intercept'])}, "
                              f"R\u00b2 {_fmt(reg['r2'])}, n = {reg['n']}", 9)
    number = 2
    for key, title in (("regression", "Mean intensity: original against reconstructed"), ("error", "Per-pixel error"),
                       ("worst", f"The {min(WORST, report['images'])} worst images, shown in their worst display window")):
        if key in figs:
            page = _page(doc, number)
            page.text(MARGIN, 50, title, 11, "bold")
            px = figs[key]
            w = min(room, (pdf.A4[1] - 120) * px.shape[1] / px.shape[0])  # fits the page either way
            page.image(px, MARGIN, 64, w, (pngs or {}).get(key))
            number += 1
    _pdf_per_image(doc, report, number)
    return bytes(doc)


PDF_ROWS = 48


def _pdf_per_image(doc: pdf.Document, report: dict[str, Any], number: int) -> None:
    """Every image, as pages of a table."""
    head = ["instance", "frame", "worst window", "PSNR there (JPEG)", "HU MAE (JPEG)", "HU bias", "PSNR min/max (JPEG)", "bpp"]
    rows = [
        [_fmt(r["instance_number"]), str(r["frame"]), str(r.get("worst_window") or ""),
         f"{_fmt(r.get('display_psnr'), 2)} ({_fmt(r['jpeg_only'].get('display_psnr'), 2)})",
         f"{_fmt(r.get('hu_mae'), 1)} ({_fmt(r['jpeg_only'].get('hu_mae'), 1)})", _fmt(r.get("hu_bias"), 1),
         f"{_fmt(r['psnr'], 2)} ({_fmt(r['jpeg_only']['psnr'], 2)})", _fmt(r["bpp"], 3)]
        for r in report["per_image"]
    ]
    room = pdf.A4[0] - 2 * MARGIN
    widths = [w * room for w in (0.08, 0.06, 0.2, 0.15, 0.14, 0.09, 0.18, 0.1)]
    for start in range(0, len(rows), PDF_ROWS):
        chunk = rows[start : start + PDF_ROWS]
        page = _page(doc, number)
        number += 1
        page.text(MARGIN, 50, f"Every image ({start + 1}-{start + len(chunk)} of {len(rows)}): JPEG + CAE (plain JPEG)", 11, "bold")
        _table(page, 62, head, chunk, widths, 6.5)
