"""A derived image beside its source, both shown through the source's narrowest window, zoomed:
what a reader sees of blocking, which PSNR and HU errors (means) do not show.

    python bench/window_picture.py SOURCE.dcm OUT.png [convert options, e.g. --quality 10]

Converts SOURCE with ``dicom-cae convert`` (the options given), then draws the central part
of the 256x256 grid (the original resampled as the pipeline does, and the derived instance),
both through the source's narrowest window, zoomed 3x with nearest-neighbour pixels, with
the stored frame's blockiness and the JPEG decode's (x the original's) from its tags.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
ZOOM, CROP = 3, 128  # the central 128x128 pixels of the 256 grid, 3x


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, out, options = Path(argv[0]), Path(argv[1]), argv[2:]
    sys.path.insert(0, str(ROOT))
    from dicom_cae import display, image, io, private_tags

    with tempfile.TemporaryDirectory() as tmp:
        src_dir = Path(tmp) / "in"
        src_dir.mkdir()
        (src_dir / source.name).write_bytes(source.read_bytes())
        subprocess.run([sys.executable, "-m", "dicom_cae", "convert", "--no-progress", str(src_dir), f"{tmp}/out", *options],
                       check=True, capture_output=True, cwd=ROOT)
        derived = next(p for p in Path(tmp, "out").rglob("*.dcm") if io.read(p, pixels=False).Modality != "DOC")
        ds = io.read(derived)
        tags = private_tags.PrivateBlock.from_dataset(ds)
        stored = image.stored_to_modality(ds.pixel_array[None].astype(np.float64), private_tags.normalization(ds, tags))[0]
    src = io.read(source)
    prepared = image.prepare(src, str(source), mapping=tags.ValueMapping or "minmax")
    window = min(prepared.windows, key=lambda w: w.width)
    k = [w.name for w in prepared.windows].index(window.name)
    n = len(prepared.windows)
    lo = (256 - CROP) // 2
    panels = []
    for label, values in ((f"original (256 grid), {window.name}", prepared.modality[0]),
                          (f"derived: {' '.join(options) or 'defaults'} (q{tags.JPEGQuality}, model weight "
                           f"{tags.ModelWeight[0]:g}), blockiness {tags.DisplayBlockiness[k] / tags.OriginalDisplayBlockiness[k]:.2f}"
                           f" (JPEG {tags.JPEGOnlyDisplayBlockiness[k] / tags.OriginalDisplayBlockiness[k]:.2f})", stored)):
        shown = display.Shown(prepared.modality[0], [window])._show(window, values)[lo : lo + CROP, lo : lo + CROP]
        img = Image.fromarray(np.rint(shown * 255).astype(np.uint8)).resize((CROP * ZOOM, CROP * ZOOM), Image.Resampling.NEAREST)
        canvas = Image.new("L", (img.width, img.height + 18), 255)
        canvas.paste(img, (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), label, fill=0)
        panels.append(canvas)
    sheet = Image.new("L", (sum(p.width for p in panels) + 10, panels[0].height), 255)
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width + 10, 0))
    sheet.save(out)
    print(f"{out}: window {window.name}, bpp {tags.BitsPerPixel[0]:.3f}, worst-window PSNR "
          f"{min(tags.DisplayPSNR[:n]):.2f} dB (JPEG {min(tags.JPEGOnlyDisplayPSNR[:n]):.2f}), "
          f"HU MAE {tags.HUMeanAbsoluteError[0] if tags.HUMeanAbsoluteError else float('nan'):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
