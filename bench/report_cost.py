"""CPU seconds of one study's report (report.json, report.html, the Encapsulated PDF), per study
of a converted folder, written again in this process.

    python bench/report_cost.py OUT [--sources SRC]

OUT: a folder ``dicom-cae convert`` wrote. Prints per study its images and CPU seconds, then
the mean and the worst against the goal (<= 0.2 s a study).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dicom_cae import report
    from dicom_cae.store import Store

    store = Store(args.out)
    studies = sorted(p.parent for p in args.out.glob("*/report.json"))
    if not studies:
        sys.exit(f"no study report in {args.out}")
    report.write(studies[0], files=[Path(f) for f in store.study_files(studies[0].name)] or None)  # warm: imports, fonts
    costs = []
    for folder in studies:
        files = [Path(f) for f in store.study_files(folder.name)] or None
        t0 = time.process_time()
        report.write(folder, files=files)
        costs.append(time.process_time() - t0)
        print(f"{folder.name[:40]:40s} {len(files or []):4d} images {costs[-1]:.3f} s CPU")
    print(f"\n{len(costs)} studies: mean {sum(costs) / len(costs):.3f} s CPU, worst {max(costs):.3f} s (goal <= 0.2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
