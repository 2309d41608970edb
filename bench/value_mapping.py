"""Value mappings compared at equal bytes, plain JPEG (no model): what each spends its codes on.

For every image of the given folders and each JPEG quality: bits per pixel, PSNR in the worst
of the source's display windows (dicom_cae.display), the seed's min/max PSNR and, for CT, the
mean absolute HU error over soft tissue. Then, per mapping, the display PSNR interpolated at a
few common bit rates, so that mappings are compared at equal bytes.

    python bench/value_mapping.py ../shared/data/ct/lung-dx-a0002-b40f ... [--every 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_cae import codec, dataset, evaluation, image, io, mapping, metrics  # noqa: E402

QUALITIES = (2, 5, 10, 20, 30, 50, 75)
RATES = (0.1, 0.2, 0.3, 0.5)


def variants(explore: bool) -> list[tuple[str, str, float, float]]:
    """(label, mapping name, FLOOR, WIDEN): the shipped mappings, or (``explore``) other shares."""
    shipped = [("minmax", "minmax", 0.0, 0.0), ("window", "window", mapping.FLOOR, mapping.WIDEN)]
    if not explore:
        return shipped
    return shipped + [(f"window floor={f} widen={w}", "window", f, w) for f in (0.5, 0.25) for w in (0.5, 0.25)]


def measure(files: list[Path], label: str, name: str, floor: float, widen: float) -> dict[int, dict[str, list[float]]]:
    mapping.FLOOR, mapping.WIDEN = floor, widen
    out: dict[int, dict[str, list[float]]] = {q: {"bpp": [], "display": [], "seed": [], "hu": [], "modality": []} for q in QUALITIES}
    for path in files:
        ds = io.read(path)
        try:
            img = image.prepare(ds, str(path), mapping=name)
        except Exception as exc:  # noqa: BLE001 (a bench: skip what does not load)
            print(f"skip {path}: {exc}", file=sys.stderr)
            continue
        is_ct = str(ds.get("Modality", "")).upper() == "CT"
        for q in QUALITIES:
            for i, frame in enumerate(img.unit):
                dec, nbytes = codec.jpeg_roundtrip(frame, q)
                view = dataset.View(image.one_frame(img.norm, i), img.windows)
                m = evaluation.measure_view(img.modality[i], dec, view, "CT" if is_ct else "")
                rec = out[q]
                rec["bpp"].append(metrics.bits_per_pixel(nbytes))
                rec["display"].append(m["display_psnr"])
                rec["seed"].append(m["psnr"])
                rec["hu"].append(m["hu_mae"])
                rec["modality"].append(str(ds.get("Modality", "")))
    return out


def at_rates(rows: dict[int, dict[str, list[float]]], key: str, sel: np.ndarray) -> list[float]:
    bpp = [float(np.mean(np.asarray(rows[q]["bpp"])[sel])) for q in QUALITIES]
    val = [float(np.nanmean(np.asarray(rows[q][key])[sel])) for q in QUALITIES]
    return [float(np.interp(r, bpp, val)) for r in RATES]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--every", type=int, default=1, help="take every N-th file of each folder")
    p.add_argument("--explore", action="store_true", help="also other shares of the codes (FLOOR, WIDEN)")
    args = p.parse_args(argv)
    files = [f for folder in args.folders for f in io.walk(folder)[:: args.every]]
    print(f"{len(files)} files; rates (bpp): {RATES}")
    for label, name, floor, widen in variants(args.explore):
        rows = measure(files, label, name, floor, widen)
        mods = np.asarray(rows[QUALITIES[0]]["modality"])
        for mod in sorted(set(mods)):
            sel = mods == mod
            for q in QUALITIES:
                r = rows[q]
                print(f"{label:32s} {mod:3s} q{q:<3d} bpp {np.mean(np.asarray(r['bpp'])[sel]):.3f}  worst-window PSNR "
                      f"{np.mean(np.asarray(r['display'])[sel]):6.2f}  seed PSNR {np.mean(np.asarray(r['seed'])[sel]):6.2f}"
                      + (f"  HU MAE {np.nanmean(np.asarray(r['hu'])[sel]):5.1f}" if mod == "CT" else ""))
            disp = at_rates(rows, "display", sel)
            seed = at_rates(rows, "seed", sel)
            hu = at_rates(rows, "hu", sel) if mod == "CT" else None
            print(f"{label:32s} {mod:3s} n={int(sel.sum()):3d}  worst-window PSNR {' '.join(f'{v:6.2f}' for v in disp)}"
                  f"  seed PSNR {' '.join(f'{v:6.2f}' for v in seed)}"
                  + (f"  HU MAE {' '.join(f'{v:6.1f}' for v in hu)}" if hu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
