"""Throughput of `convert` end to end against bare model inference, and peak memory.

    python bench/pipeline.py [--data DIR] [--batch-size 16] [--model NAME]

Prints, measured in this one run on the same images and batch size:
- bare inference images/s (the model on already-prepared JPEG images, after a warm-up),
- convert images/s (read, normalize, JPEG, model, metrics, derive, write; warm model),
- their ratio (target >= 0.8 on a 2-core CPU at batch size 16),
- peak resident memory of a conversion of half the files and of all of them, each in a
  fresh process (target: no growth with the number of files).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mr" / "trio-mprage"


def _files(data: Path, limit: int | None) -> list[Path]:
    from dicom_cae import io

    files = io.walk(data)
    return files[:limit] if limit else files


def child(args: argparse.Namespace) -> None:
    """Run in a fresh process: one measurement, printed as JSON."""
    import numpy as np

    from dicom_cae import io, pipeline
    from dicom_cae.convert import convert
    from dicom_cae.model import load

    recon = load(args.model)
    pipe = pipeline.Pipeline(recon, batch_size=args.batch_size)
    files = _files(Path(args.data), args.limit)
    # Warm-up: trace the graph once at this batch size.
    recon(np.zeros((args.batch_size, 256, 256), np.float32), args.quality, batch_size=args.batch_size)
    if args.child == "infer":
        preps = [pipe.prepare(io.read(f), str(f), quality=args.quality) for f in files]
        jpeg = np.concatenate([p.jpeg for p in preps])
        best = 0.0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            recon(jpeg, args.quality, batch_size=args.batch_size)
            best = max(best, len(jpeg) / (time.perf_counter() - t0))
        result = {"images_per_s": best, "images": int(len(jpeg))}
    else:
        best = 0.0
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as out:
                with tempfile.TemporaryDirectory() as src:
                    for f in files:  # a folder of just these files
                        (Path(src) / f.name).symlink_to(f.resolve())
                    s = convert(src, out, pipe, quality=args.quality, progress=False)
            best = max(best, s.frames / s.seconds)
        result = {"images_per_s": best, "images": s.frames}
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run(args: argparse.Namespace, kind: str, limit: int | None, repeat: int) -> dict:
    cmd = [
        sys.executable, __file__, "--child", kind, "--data", str(args.data), "--batch-size",
        str(args.batch_size), "--quality", str(args.quality), "--repeat", str(repeat),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if limit:
        cmd += ["--limit", str(limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else ROOT / "sample_dicom")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quality", type=int, default=10)
    p.add_argument("--model")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--child", choices=["infer", "convert"], help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    sys.path.insert(0, str(ROOT))
    n = len(_files(args.data, None))
    print(f"data: {args.data} ({n} files); batch size {args.batch_size}; JPEG quality {args.quality}")
    infer = _run(args, "infer", None, args.repeat)
    conv = _run(args, "convert", None, args.repeat)
    # Memory: one conversion per fresh process (repeats in one process would add up).
    half = _run(args, "convert", max(1, n // 4), 1)
    full = _run(args, "convert", None, 1)
    print(f"bare model inference : {infer['images_per_s']:7.1f} images/s ({infer['images']} images)")
    print(f"convert end to end   : {conv['images_per_s']:7.1f} images/s ({conv['images']} images)")
    print(f"ratio convert/infer  : {conv['images_per_s'] / infer['images_per_s']:7.2f}  (target >= 0.8)")
    print(f"peak RSS, convert of {half['images']:4d} images: {half['max_rss_mb']:7.0f} MB")
    print(f"peak RSS, convert of {full['images']:4d} images: {full['max_rss_mb']:7.0f} MB"
          f"  (ratio {full['max_rss_mb'] / half['max_rss_mb']:.2f}; 1.0 = no growth with the number of files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
