"""A small PDF writer for the study reports: A4 pages of text (the PDF's own Helvetica and
Courier, so the text stays text: searchable, selectable, read back by pdftotext), lines and
RGB images. PDF 1.4, ISO 32000-1's basic objects only; no font is embedded (the standard 14
fonts need none). It replaces a plotting library's PDF backend, which spent most of a
report's time laying out text it does not need to lay out.
"""

from __future__ import annotations

import zlib

import numpy as np

A4 = (595.28, 841.89)  # points
FONTS = {"regular": "Helvetica", "bold": "Helvetica-Bold", "mono": "Courier"}

# Helvetica's advance widths (AFM, 1/1000 em) for the printable ASCII characters 32..126.
_HELVETICA = [278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278] + [556] * 10 + [
    278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556,
    278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334,
    260, 334, 584]


def width(text: str, size: float, style: str = "regular") -> float:
    """The width of ``text`` in points (Courier: 0.6 em a character; bold as regular x 1.06)."""
    if style == "mono":
        return 0.6 * size * len(text)
    w = sum(_HELVETICA[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in text) * size / 1000
    return w * 1.06 if style == "bold" else w


def fit(text: str, size: float, room: float, style: str = "regular") -> list[str]:
    """``text`` broken into lines no wider than ``room`` points (at spaces; a long word at any character)."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if width(candidate, size, style) <= room:
            line = candidate
            continue
        if line:
            lines.append(line)
        while width(word, size, style) > room:  # a UID, a path: cut where it must be
            n = max(1, int(len(word) * room / width(word, size, style)))
            lines.append(word[:n])
            word = word[n:]
        line = word
    return lines + ([line] if line else [])


def _escape(text: str) -> bytes:
    raw = text.encode("cp1252", errors="replace")  # WinAnsiEncoding
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


class Page:
    """One A4 page; coordinates in points from the top left."""

    def __init__(self, doc: Document) -> None:
        self.doc, self.ops, self.images = doc, [], []

    def text(self, x: float, y: float, text: str, size: float = 9, style: str = "regular",
             color: tuple[float, float, float] = (0, 0, 0), align: str = "left") -> None:
        """``text`` with its baseline at ``y``; ``align`` left or right (of ``x``)."""
        if align == "right":
            x -= width(text, size, style)
        font = {"regular": "F1", "bold": "F2", "mono": "F3"}[style]
        r, g, b = color
        self.ops.append(b"BT %.3f %.3f %.3f rg /%s %.2f Tf %.2f %.2f Td (%s) Tj ET"
                        % (r, g, b, font.encode(), size, x, A4[1] - y, _escape(text)))

    def line(self, x0: float, y0: float, x1: float, y1: float, w: float = 0.5, gray: float = 0.7) -> None:
        self.ops.append(b"%.3f G %.2f w %.2f %.2f m %.2f %.2f l S" % (gray, w, x0, A4[1] - y0, x1, A4[1] - y1))

    def fill(self, x: float, y: float, w: float, h: float, gray: float = 0.94) -> None:
        self.ops.append(b"%.3f g %.2f %.2f %.2f %.2f re f" % (gray, x, A4[1] - y - h, w, h))

    def image(self, pixels: np.ndarray, x: float, y: float, w: float, png: bytes | None = None) -> float:
        """An RGB image (uint8, rows x cols x 3) ``w`` points wide at (x, y); returns its height.
        ``png``: the same pixels as a PNG already encoded, whose compressed data is used as it is."""
        name = self.doc.add_image(pixels, png)
        self.images.append(name)
        h = w * pixels.shape[0] / pixels.shape[1]
        self.ops.append(b"q %.2f 0 0 %.2f %.2f %.2f cm /%s Do Q" % (w, h, x, A4[1] - y - h, name.encode()))
        return h


class Document:
    """Pages, then ``bytes()``."""

    def __init__(self, title: str = "", creator: str = "") -> None:
        self.title, self.creator = title, creator
        self.pages: list[Page] = []
        self._images: list[np.ndarray] = []

    def page(self) -> Page:
        p = Page(self)
        self.pages.append(p)
        return p

    def add_image(self, pixels: np.ndarray, png: bytes | None = None) -> str:
        self._images.append((np.ascontiguousarray(pixels, np.uint8), png))
        return f"Im{len(self._images)}"

    def __bytes__(self) -> bytes:
        objects: list[bytes] = []  # object n is objects[n - 1]

        def add(body: bytes) -> int:
            objects.append(body)
            return len(objects)

        def stream(head: bytes, data: bytes) -> bytes:
            return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (head, len(data), data)

        catalog, pages = add(b""), add(b"")
        fonts = {f"F{i + 1}": add(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % base.encode())
                 for i, base in enumerate(FONTS.values())}
        images = {}
        for i, (px, png) in enumerate(self._images):
            rows, cols = px.shape[:2]
            head = (b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                    b"/BitsPerComponent 8 /Filter /FlateDecode" % (cols, rows))
            idat = png_data(png, px.shape) if png else None
            images[f"Im{i + 1}"] = add(stream(head, zlib.compress(px.tobytes(), 3)) if idat is None else stream(
                head + b" /DecodeParms << /Predictor 15 /Colors 3 /BitsPerComponent 8 /Columns %d >>" % cols, idat))
        font_dict = b" ".join(b"/%s %d 0 R" % (k.encode(), v) for k, v in fonts.items())
        kids = []
        for p in self.pages:
            content = add(stream(b"/Filter /FlateDecode", zlib.compress(b"\n".join(p.ops), 6)))
            xobjects = b" ".join(b"/%s %d 0 R" % (n.encode(), images[n]) for n in p.images)
            kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] /Contents %d 0 R "
                            b"/Resources << /Font << %s >> /XObject << %s >> >> >>"
                            % (pages, A4[0], A4[1], content, font_dict, xobjects)))
        objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages
        objects[pages - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
        info = add(b"<< /Title (%s) /Creator (%s) /Producer (dicom-cae) >>" % (_escape(self.title), _escape(self.creator)))
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for n, body in enumerate(objects, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, info, xref)
        return bytes(out)


def png_data(png: bytes, shape: tuple[int, ...]) -> bytes | None:
    """The compressed image data of a PNG (its IDAT chunks joined) when it holds an RGB image
    of ``shape``, 8 bits, not interlaced: a PDF reads it as Flate with the PNG predictors
    (PDF 1.4, 7.4.4.4) and nothing is compressed twice. None for any other PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i, parts, header = 8, [], None
    while i + 8 <= len(png):
        length, kind = int.from_bytes(png[i : i + 4], "big"), png[i + 4 : i + 8]
        data = png[i + 8 : i + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            parts.append(data)
        i += 12 + length
    if header is None or len(header) != 13 or not parts:
        return None
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    if (height, width, 3) != tuple(shape) or depth != 8 or colour != 2 or interlace != 0:
        return None
    return b"".join(parts)
