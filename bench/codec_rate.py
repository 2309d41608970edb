"""convert's images/s on one study with this checkout's codec and model against an earlier
revision's, in one run on the same files.

    python bench/codec_rate.py [--data DIR] [--files 64] [--baseline REV] [--repeat 2] [-- convert options]

The earlier revision is checked out in a temporary git worktree; each side runs ``python -m
dicom_cae convert`` on the same copy of the files (fresh output each time, this process's
engine), alternately, ``--repeat`` times; the rate is the one convert prints (files converted
over its own wall time, model loading excluded), best of the repeats. Prints both and their
ratio (the codec issue's bar: this checkout >= 0.8 x the baseline).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ct" / "pancreas-ct-cb-001"
#: The last revision before the trellis encoder and the deblock model.
DEFAULT_BASELINE = "15c9b01"


def rate(checkout: Path, src: Path, out: Path, options: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "dicom_cae", "convert", "--no-progress", str(src), str(out), *options],
                          capture_output=True, text=True, cwd=checkout,
                          env={**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2"})
    found = re.search(r"\(([\d.]+) images/s\)", proc.stdout)
    if not found:
        raise SystemExit(f"convert in {checkout} printed no rate:\n{proc.stdout}\n{proc.stderr}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--baseline", default=DEFAULT_BASELINE)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("options", nargs="*", help="convert options for both sides (after --)")
    args = p.parse_args(argv)
    files = sorted(f for f in args.data.rglob("*") if f.is_file())[: args.files]
    if not files:
        print(f"no files under {args.data}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = t / "in"
        src.mkdir()
        for f in files:
            shutil.copy(f, src / f.name)
        base = t / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rates: dict[str, list[float]] = {"baseline": [], "this": []}
            for _ in range(args.repeat):
                rates["baseline"].append(rate(base, src, t / "out-b", args.options))
                rates["this"].append(rate(ROOT, src, t / "out-t", args.options))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    b, n = max(rates["baseline"]), max(rates["this"])
    print(f"{len(files)} files of {args.data.name}, convert {' '.join(args.options) or '(defaults)'}")
    print(f"baseline {args.baseline}: {b:.1f} images/s {rates['baseline']}")
    print(f"this checkout:    {n:.1f} images/s {rates['this']}")
    print(f"ratio this / baseline: {n / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
