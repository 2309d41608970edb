"""The block-edge filter after the deblock model, measured: the model alone and the model with
its block edges smoothed at several strengths, against plain JPEG at the same bytes, on
validation slices (patients the model was not trained on), by default for the 256 and the 128
coding.

    python bench/edge_filter.py [--data ../shared/data] [--strengths 0.5,1] [--qualities 5,10,20,30,50] [--sizes 256,128]

Per coding size and quality, for each variant: the seed's PSNR gain over plain JPEG (all
images), the worst display window's gain (CT; MR/DX), and the blockiness of the most blocking
window as a multiple of the original's (lower is better; the original is 1). What is stored
is then chosen by the never-below-JPEG guard; this bench shows the filter itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Validation slices: the deblock model's card holds these patients out of training.
FOLDERS = (("ct/lung-dx-a0002-b40f", 6), ("ct/lung-dx-a0002-b70f", 6), ("ct/pancreas-ct-cb-001", 10),
           ("ct/nema-wg04", 2), ("mr/decubitus-t1/hfs", 6), ("mr/decubitus-t1/hfp", 6), ("dx", 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--strengths", default="0.5,1")
    ap.add_argument("--qualities", default="5,10,20,30,50")
    ap.add_argument("--sizes", default="256,128", help="coding sizes (256, 224, 192, 160, 128)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dicom_cae import codec, display, guard, image, io
    from dicom_cae.model import load

    files = []
    for folder, n in FOLDERS:
        found = sorted(p for p in Path(args.data, folder).rglob("*") if p.is_file() and p.suffix not in (".md", ".txt", ".json"))
        files += found[:: max(len(found) // n, 1)][:n]
    if not files:
        print(f"no validation slices under {args.data}", file=sys.stderr)
        return 2
    model = load()
    images = [(image.prepare(ds := io.read(p), str(p), mapping="window"), ds.Modality == "CT") for p in files]
    strengths = [float(s) for s in args.strengths.split(",")]
    print(f"{len(images)} slices ({sum(ct for _, ct in images)} CT); per variant: seed PSNR gain / worst-window gain CT / "
          "MR+DX, dB over plain JPEG; blockiness x the original's (plain JPEG's first)")
    for size in (int(v) for v in args.sizes.split(",")):
        for q in (int(v) for v in args.qualities.split(",")):
            rows: dict[str, list[tuple[float, float, float, bool]]] = {}
            for img, is_ct in images:
                one, ref = image.one_frame(img.norm, 0), img.modality[0]
                jpeg = codec.decode_to(codec.encode_at(img.unit[0], q, size))
                raw = model(jpeg[None], q, coding_size=size, mapping="window", filter_edges=False)[0]
                shown = display.Shown(ref, list(img.windows), invert=one.invert, coding_size=size)
                variants = {"jpeg": jpeg, "model": raw, **{f"model+ramp {s:g}": codec.smooth_block_edges(
                    raw[None], q, size, strength=s)[0] for s in strengths}}
                for name, unit in variants.items():
                    stored = image.stored_to_modality(image.to_stored(unit[None], one), one)[0]
                    m = guard.measure_frame(ref, stored, one, shown, is_ct=is_ct).summary(shown.original_blockiness)
                    rows.setdefault(name, []).append((m["psnr"], m["display_psnr"], m["display_blockiness"], is_ct))
            base = np.array(rows["jpeg"])
            ct = base[:, 3] == 1
            cells = [f"jpeg blockiness {base[:, 2].mean():.2f}"]
            for name, values in list(rows.items())[1:]:
                v = np.array(values)
                cells.append(f"{name} {np.mean(v[:, 0] - base[:, 0]):+.2f} / {np.mean(v[ct, 1] - base[ct, 1]):+.2f} / "
                             f"{np.mean(v[~ct, 1] - base[~ct, 1]):+.2f}, {v[:, 2].mean():.2f}")
            print(f"coding {size} q{q:<3d} " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
