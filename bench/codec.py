"""What the codec stores, read back from the derived instances: is the model used, what does it
add over plain JPEG where a reader looks, and does the stored image show blocks.

    python bench/codec.py [DATA ...] [--setting default --setting ratio=0.0093 ...] [--model NAME]

For each setting, ``dicom-cae convert`` (the same path as the node) writes DATA into a temporary
folder; then, from the private tags of every derived frame (what the instance itself says):
- the share of frames where the model contributes (ModelWeight > 0), per modality;
- the stored frame against plain JPEG at the same bytes in the worst display window (dB);
- blockiness in the source's narrowest window, as a multiple of the original's there (the
  original is about 1), stored and plain JPEG; and the mean bits per pixel.
Then the encoder alone: milliseconds per 256x256 frame of the trellis encoder and of Pillow's, on
the same mapped images (one thread, warm), and their byte counts at quality 30.

Default DATA: the validation patients of the shipped model card (../shared/data).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "ct" / "lung-dx-a0002-b40f", SHARED / "ct" / "pancreas-ct-cb-001",
                SHARED / "ct" / "nema-wg04", SHARED / "mr" / "decubitus-t1", SHARED / "dx"]


def setting_args(setting: str) -> list[str]:
    """``default``, ``q=N``, ``ratio=R`` or ``psnr=DB`` as convert's options."""
    if setting == "default":
        return []
    key, _, value = setting.partition("=")
    return {"q": ["--quality", value], "ratio": ["--target-ratio", value], "psnr": ["--target-psnr", value]}[key]


def frames_of(out: Path) -> list[dict[str, float | str]]:
    import pydicom

    sys.path.insert(0, str(ROOT))
    from dicom_cae import private_tags

    rows = []
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        tags = private_tags.PrivateBlock.from_dataset(ds)
        if tags is None or not tags.DisplayBlockiness:
            continue
        widths = tags.DisplayWindowWidth
        narrow = int(np.argmin(widths))
        n = len(widths)
        for i, weight in enumerate(tags.ModelWeight):
            k = slice(i * n, (i + 1) * n)
            rows.append({
                "modality": str(ds.Modality), "weight": weight, "bpp": tags.BitsPerPixel[i],
                "gain_worst_window": min(min(tags.DisplayPSNR[k]), 100.0) - min(min(tags.JPEGOnlyDisplayPSNR[k]), 100.0),
                "blockiness": tags.DisplayBlockiness[i * n + narrow] / tags.OriginalDisplayBlockiness[i * n + narrow],
                "blockiness_jpeg": tags.JPEGOnlyDisplayBlockiness[i * n + narrow] / tags.OriginalDisplayBlockiness[i * n + narrow],
                "coding_size": tags.CodingSize or 256, "quality": tags.JPEGQuality,
            })
    return rows


def encoder_times(data: list[Path], n: int = 40) -> None:
    sys.path.insert(0, str(ROOT))
    from dicom_cae import codec, dataset

    images = dataset.load([str(d) for d in data], mapping="window").images
    images = images[:: max(1, len(images) // n)][:n]
    for name in codec.ENCODERS:
        codec.jpeg_encode(images[0], 30, encoder=name)  # warm
        t0 = time.perf_counter()
        sizes = [len(codec.jpeg_encode(img, 30, encoder=name)) for img in images]
        ms = (time.perf_counter() - t0) / len(images) * 1000
        print(f"encoder {name:8s}: {ms:5.2f} ms per 256x256 frame, {np.mean(sizes):7.0f} bytes at quality 30 ({len(images)} frames)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="*", type=Path, default=DEFAULT_DATA)
    p.add_argument("--setting", action="append", help="default, q=N, ratio=R, psnr=DB (repeatable; default: default and ratio=0.0093)")
    p.add_argument("--model", help="model name (default: the default model)")
    args = p.parse_args(argv)
    data = [d for d in args.data if d.exists()]
    if not data:
        print("no data (../shared/data absent?)", file=sys.stderr)
        return 2
    encoder_times(data)
    for setting in args.setting or ["default", "ratio=0.0093"]:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in"  # convert takes one folder: the data's files linked into one
            for i, d in enumerate(data):
                for f in ([d] if d.is_file() else sorted(p for p in d.rglob("*") if p.is_file())):
                    link = src / f"{i}-{d.name}" / f.relative_to(d if d.is_dir() else d.parent)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(f.resolve())
            cmd = [sys.executable, "-m", "dicom_cae", "convert", str(src), f"{tmp}/out", "--no-progress", *setting_args(setting)]
            if args.model:
                cmd += ["--model", args.model]
            t0 = time.time()
            subprocess.run(cmd, check=False, capture_output=True, cwd=ROOT)
            rows = frames_of(Path(tmp) / "out")
        print(f"\n== {setting}: {len(rows)} frames, convert {time.time() - t0:.0f} s")
        by = defaultdict(list)
        for r in rows:
            by[r["modality"]].append(r)
        by["all"] = rows
        print("modality  frames  model used  gain worst window (dB)  blockiness stored / JPEG (x original, narrowest window)  bpp")
        for m, rs in by.items():
            a = {k: np.asarray([r[k] for r in rs], float) for k in ("weight", "gain_worst_window", "blockiness", "blockiness_jpeg", "bpp")}
            print(f"{m:8s}  {len(rs):6d}  {100 * np.mean(a['weight'] > 0):8.1f} %  {np.mean(a['gain_worst_window']):+19.2f}"
                  f"     {np.mean(a['blockiness']):6.2f} / {np.mean(a['blockiness_jpeg']):5.2f} (worst frame {np.max(a['blockiness']):.2f})"
                  f"                         {np.mean(a['bpp']):.3f}")
        sizes = defaultdict(list)
        for r in rows:
            sizes[int(r["coding_size"])].append(r)
        print("coded at: " + "; ".join(
            f"{s} {100 * len(rs) / len(rows):.0f} % (blockiness {np.mean([r['blockiness'] for r in rs]):.2f}, "
            f"JPEG {np.mean([r['blockiness_jpeg'] for r in rs]):.2f}, model weight {np.mean([r['weight'] for r in rs]):.2f})"
            for s, rs in sorted(sizes.items(), reverse=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
