"""Charts and image panels drawn with Pillow, for the study reports.

A report's charts are few and plain (points, lines, bars, a few labels); drawn here they cost
milliseconds where matplotlib's layout engine costs a fraction of a second each, and a node
writes a report for every study. Each chart is drawn at twice its size and reduced, so lines
and text are smooth. ``evaluate``'s rate-distortion plots stay with matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

S = 2  # drawn at S x the size, then reduced
BLUE, ORANGE, RED, GREY, BLACK = (31, 119, 180), (255, 127, 14), (214, 39, 40), (150, 150, 160), (29, 36, 48)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own FreeType font (no system font needed) at ``size`` pixels."""
    return ImageFont.load_default(size=size)


@dataclass
class Series:
    """One thing drawn in a chart: ``kind`` is points, line, bars (``width`` wide) or hline (at y[0])."""

    x: np.ndarray
    y: np.ndarray
    kind: str = "points"
    color: tuple[int, int, int] = BLUE
    label: str = ""
    dashed: bool = False
    width: float = 0.0
    note: str = ""  # hline: a label at its right end


@dataclass
class Chart:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    logy: bool = False
    integer_x: bool = False


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2, 2.5 or 5 x 10^k apart) from lo to hi."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float, step: float) -> str:
    mantissa = step / 10 ** math.floor(math.log10(step))
    digits = max(0, -math.floor(math.log10(step)) + (1 if abs(mantissa - 2.5) < 1e-6 else 0))
    return f"{v:.{min(digits, 6)}f}"


def _limits(values: list[np.ndarray], pad: float = 0.05) -> tuple[float, float]:
    v = np.concatenate([np.asarray(a, float).ravel() for a in values]) if values else np.zeros(1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


def _dashed(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], color, width: int, dash: float) -> None:
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(length / dash))
        for k in range(0, n, 2):
            a, b = k / n, min(1.0, (k + 1) / n)
            d.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=color, width=width)


def draw(chart: Chart, size: tuple[int, int]) -> Image.Image:
    """``chart`` as an RGB image of ``size`` pixels."""
    w, h = size[0] * S, size[1] * S
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    small, text = font(11 * S), font(12 * S)
    left, right, top, bottom = 64 * S, 12 * S, 28 * S, 46 * S
    plots = [s for s in chart.series if s.kind != "hline"]
    ys = [s.y for s in chart.series]
    if chart.logy:
        ys = [np.log10(np.maximum(np.asarray(y, float), 0.8)) for y in ys]
    xlo, xhi = _limits([np.concatenate([s.x - s.width / 2, s.x + s.width / 2]) if s.kind == "bars" else s.x for s in plots])
    ylo, yhi = _limits(ys + ([np.zeros(1)] if any(s.kind == "bars" for s in plots) and not chart.logy else []))
    if chart.logy:
        ylo = min(ylo, 0.0)
    X = lambda v: left + (np.asarray(v, float) - xlo) / (xhi - xlo) * (w - left - right)  # noqa: E731
    Y = lambda v: h - bottom - (np.asarray(v, float) - ylo) / (yhi - ylo) * (h - top - bottom)  # noqa: E731
    # grid, ticks and their labels
    xt = [t for t in ticks(xlo, xhi) if not chart.integer_x or float(t).is_integer()]
    yt = list(range(math.floor(ylo), math.ceil(yhi) + 1)) if chart.logy else ticks(ylo, yhi)
    for t in xt:
        x = float(X(t))
        d.line([(x, top), (x, h - bottom)], fill=(235, 237, 242), width=S)
        lab = _label(t, xt[1] - xt[0] if len(xt) > 1 else 1.0)
        d.text((x, h - bottom + 4 * S), lab, fill=BLACK, font=small, anchor="mt")
    for t in yt:
        if not ylo <= t <= yhi:
            continue
        y = float(Y(t))
        d.line([(left, y), (w - right, y)], fill=(235, 237, 242), width=S)
        lab = f"1e{int(t)}" if chart.logy else _label(t, yt[1] - yt[0] if len(yt) > 1 else 1.0)
        d.text((left - 5 * S, y), lab, fill=BLACK, font=small, anchor="rm")
    d.rectangle([left, top, w - right, h - bottom], outline=(120, 124, 135), width=S)
    for s, y in zip(chart.series, ys):
        if s.kind == "bars":
            half = s.width / 2
            for xv, yv in zip(s.x, y):
                if yv > ylo:
                    d.rectangle([float(X(xv - half)), float(Y(yv)), float(X(xv + half)), float(Y(ylo))], fill=s.color)
        elif s.kind == "points":
            r = 3 * S
            for xv, yv in zip(X(s.x), Y(y)):
                d.ellipse([xv - r, yv - r, xv + r, yv + r], fill=s.color)
        elif s.kind == "line":
            pts = list(zip(X(s.x).tolist(), Y(y).tolist()))
            if s.dashed:
                _dashed(d, pts, s.color, S, 5 * S)
            else:
                d.line(pts, fill=s.color, width=S + 1, joint="curve")
            for xv, yv in pts if len(pts) < 60 and s.label else ():
                d.ellipse([xv - 2 * S, yv - 2 * S, xv + 2 * S, yv + 2 * S], fill=s.color)
        elif s.kind == "hline":
            yv = float(Y(y[0]))
            if top <= yv <= h - bottom:
                pts = [(left, yv), (w - right, yv)]
                if s.dashed:
                    _dashed(d, pts, s.color, S, 5 * S)
                else:
                    d.line(pts, fill=s.color, width=S)
                if s.note:
                    d.text((w - right - 4 * S, yv - 2 * S), s.note, fill=s.color, font=small, anchor="rb")
    # legend, title, axis labels
    labelled = [s for s in chart.series if s.label]
    if labelled:
        ly = top + 6 * S
        for s in labelled:
            d.rectangle([left + 8 * S, ly + 3 * S, left + 20 * S, ly + 9 * S], fill=s.color)
            d.text((left + 25 * S, ly), s.label, fill=BLACK, font=small)
            ly += 15 * S
    d.text((w / 2, 6 * S), chart.title, fill=BLACK, font=font(13 * S), anchor="mt")
    d.text(((left + w - right) / 2, h - 6 * S), chart.xlabel, fill=BLACK, font=text, anchor="mb")
    label = Image.new("RGB", (int(d.textlength(chart.ylabel, font=text)) + 4, 16 * S), "white")
    ImageDraw.Draw(label).text((2, 0), chart.ylabel, fill=BLACK, font=text)
    label = label.rotate(90, expand=True)
    img.paste(label, (4 * S, int((top + h - bottom) / 2 - label.height / 2)))
    return img.reduce(S)


def side_by_side(images: list[Image.Image]) -> np.ndarray:
    """Images in a row, as one RGB array."""
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width
    return np.asarray(out)


# Matplotlib's magma colormap, sampled at nine points (linear in between).
_MAGMA = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122), (229, 80, 100),
                   (251, 135, 97), (254, 194, 135), (252, 253, 191)], float)
MAGMA = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 9), _MAGMA[:, c]) for c in range(3)], 1).astype(np.uint8)


def grid(rows: list[tuple[str, list[np.ndarray | None]]], columns: list[str], colormaps: list[bool], cell: int = 256
         ) -> np.ndarray:
    """Images ([0, 1], 2-D) in a grid: one row per (label, images), titled ``columns``; a column
    whose ``colormaps`` entry is True is shown in magma, the others in grey. None: left blank."""
    label_w, head = 150, 22
    out = Image.new("RGB", (label_w + cell * len(columns) + 4 * (len(columns) - 1), head + (cell + 6) * len(rows)), "white")
    d = ImageDraw.Draw(out)
    for c, title in enumerate(columns):
        d.text((label_w + c * (cell + 4) + cell / 2, 4), title, fill=BLACK, font=font(13), anchor="mt")
    for r, (label, images) in enumerate(rows):
        y = head + r * (cell + 6)
        d.multiline_text((4, y + 4), label, fill=BLACK, font=font(11), spacing=3)
        for c, img in enumerate(images):
            if img is None:
                continue
            codes = (np.clip(np.asarray(img, float), 0, 1) * 255 + 0.5).astype(np.uint8)
            pixels = MAGMA[codes] if colormaps[c] else np.repeat(codes[..., None], 3, axis=2)
            tile = Image.fromarray(pixels)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.BILINEAR)
            out.paste(tile, (label_w + c * (cell + 4), y))
    return np.asarray(out)
