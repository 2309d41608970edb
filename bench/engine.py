"""The runner on its engines, against DCMTK dcmcjpeg and bare model inference, in one run.

    python bench/engine.py [--data DIR] [--files 96] [--quality Q] [--no-dask]
    python bench/engine.py --mixed [--studies 30] [--per-study 7]

``--mixed``: the held-out style check: >= 25 studies of mixed CT, MR, CR and DX (the files of
../shared/data's series, a new Study Instance UID every ``--per-study`` files, round robin over
the series), converted with the defaults, reports included, against DCMTK ``dcmcjpeg`` on the
same files in the same run; prints the ratio (goal >= 0.5).

On the same real CT files (512x512), each measurement in fresh processes:
- DCMTK ``dcmcjpeg`` over every file, one process per file (as a site would script it);
- ``dicom-cae convert`` of one large study, and of the same images as many small studies (a
  new Study Instance UID every 3 files), in this process's engine (threads), 1 and 2 local
  worker processes (``--workers``), and a 2-worker Dask cluster on 127.0.0.1 (``--dask``);
- bare model inference at batch 16 on the same images (already JPEG-compressed, warm model).

convert's rate is the files it converted over its own wall time from the first file read to
the last report written (the command's printed seconds: model loading and Python start-up are
not in it; dcmcjpeg's process start is in its time, as it is in real use). Also printed: the
whole command's wall time. Peak memory: the largest resident set of any process of a
conversion (the command or one of its worker processes; not measured for Dask workers, which
are not its processes), for half the files and for all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ct" / "pancreas-ct-cb-001"
ENV = {**os.environ, "TCP_NODELAY": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
DEFAULT_QUALITY = 26  # dicom_cae.pipeline.DEFAULT_QUALITY (not imported: TensorFlow stays out of this process)


def _files(data: Path, n: int) -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from dicom_cae import io

    return io.walk(data)[:n]


def small_studies(files: list[Path], folder: Path, per_study: int = 3) -> None:
    """The same images as studies of ``per_study`` files each (new Study UIDs, same pixels)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        k = i // per_study
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench study", str(k)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench series", str(k)])
        ds.StudyID = str(k)
        ds.save_as(folder / f"{i:04d}.dcm")


def one_study(files: list[Path], folder: Path) -> None:
    """The files as they are, but uncompressed (dcmcjpeg cannot read a JPEG 2000 source)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.save_as(folder / f"{i:04d}.dcm")


def mixed_studies(root: Path, folder: Path, studies: int, per_study: int) -> dict[str, int]:
    """``studies`` studies of ``per_study`` files (fewer where a series has fewer) taken round
    robin from every series under ``root`` (ct/, mr/, cr/, dx/), uncompressed; returns the
    studies per modality."""
    import pydicom
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(ROOT))
    from dicom_cae import io

    series = [io.walk(d) for kind in ("ct", "mr", "cr", "dx") for d in sorted((root / kind).glob("*")) if d.is_dir()]
    series = [s for s in series if s]
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, int] = {}
    k = 0
    while k < studies and any(series):
        for files in series:
            if k >= studies or not files:
                continue
            chunk, files[:] = files[:per_study], files[per_study:]
            for i, f in enumerate(chunk):
                ds = pydicom.dcmread(f)
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    ds.decompress()
                ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench mixed study", str(k)])
                ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench mixed series", str(k)])
                ds.save_as(folder / f"{k:03d}-{i:02d}.dcm")
            made[str(ds.Modality)] = made.get(str(ds.Modality), 0) + 1
            k += 1
    return made


def mixed(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "mixed"
        made = mixed_studies(args.data_root, src, args.studies, args.per_study)
        n = len(list(src.glob("*.dcm")))
        print(f"data: {n} files in {sum(made.values())} studies ({', '.join(f'{v} {k}' for k, v in sorted(made.items()))}); "
              f"defaults; {os.cpu_count()} CPU(s)")
        ref = dcmcjpeg(src, tmp / "dcmcjpeg")
        run = convert(src, tmp / "out", None)
        reports = len(list((tmp / "out").glob("*/report.json")))
    print(f"DCMTK dcmcjpeg, one process per file: {ref:.1f} files/s")
    print(f"dicom-cae convert, defaults (--workers auto), {reports} study reports included: {run['files_per_s']:.1f} files/s "
          f"({run['seconds']:.1f} s; command wall {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB)")
    print(f"ratio convert / dcmcjpeg: {run['files_per_s'] / ref:.2f} (goal >= 0.5)")
    return 0


def dcmcjpeg(folder: Path, out: Path) -> float:
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        sys.exit("dcmcjpeg is missing (apt-get install dcmtk)")
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.dcm"))
    t0 = time.perf_counter()
    for f in files:
        subprocess.run([tool, str(f), str(out / f.name)], check=True, env=ENV, capture_output=True)
    return len(files) / (time.perf_counter() - t0)


def convert(src: Path, out: Path, quality: int | None, *extra: str) -> dict:
    """One `dicom-cae convert` in a fresh process: files/s by its own clock, wall s, peak RSS."""
    # A launcher whose only descendants are this conversion's processes: their largest peak RSS.
    launcher = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-m", "dicom_cae", "convert", str(src), str(out),
                           *(["--quality", str(quality)] if quality else []), "--no-progress", *extra],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"convert failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    m = re.search(r"converted (\d+) instance\(s\) \((\d+) image\(s\)\) in ([\d.]+) s", proc.stdout)
    n, seconds = int(m.group(1)), float(m.group(3))
    rss = int(re.search(r"PEAK_RSS_KB (\d+)", proc.stdout).group(1)) / 1024
    return {"files": n, "files_per_s": n / seconds, "seconds": seconds, "wall_s": wall,
            "peak_rss_mb": rss if "--dask" not in extra else None}  # Dask workers are not its processes


def infer(src: Path, quality: int) -> float:
    """Bare model inference at batch 16 on these images, warm, in a fresh process."""
    code = f"""
import time, numpy as np
from dicom_cae import io, pipeline
from dicom_cae.model import load
r = load(); pipe = pipeline.Pipeline(r, batch_size=16)
jpeg = np.concatenate([pipe.prepare(io.read(f), str(f), quality={quality}).jpeg for f in io.walk({str(src)!r})])
r(jpeg[:16], {quality}, batch_size=16)
best = 0.0
for _ in range(3):
    t0 = time.perf_counter(); r(jpeg, {quality}, batch_size=16); best = max(best, len(jpeg) / (time.perf_counter() - t0))
print(best)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"inference failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


class Cluster:
    """A Dask scheduler and ``n`` one-thread workers on 127.0.0.1."""

    def __init__(self, n: int, logs: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        dask = shutil.which("dask") or sys.exit("the dask command is missing (pip install 'dask[distributed]')")
        self.procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                       stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=ENV)]
        for i in range(n):
            self.procs.append(subprocess.Popen(
                [dask, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, env=ENV, cwd=logs))
        from distributed import Client

        with Client(self.address, timeout=60) as c:
            c.wait_for_workers(n, timeout=120)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            p.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--files", type=int, default=96)
    p.add_argument("--quality", type=int, default=None, help="JPEG quality (default: the library's)")
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--mixed", action="store_true", help="the many-studies, mixed-modality check against dcmcjpeg")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--studies", type=int, default=30)
    p.add_argument("--per-study", type=int, default=7)
    args = p.parse_args(argv)
    if args.mixed:
        return mixed(args)
    files = _files(args.data, args.files)
    print(f"data: {len(files)} files of {args.data.name}; JPEG quality {args.quality or 'default'}; {os.cpu_count()} CPU(s)")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, small, half = tmp / "one-study", tmp / "small-studies", tmp / "half"
        one_study(files, big)
        small_studies(files, small)
        one_study(files[: len(files) // 2], half)
        results["dcmcjpeg one study"] = dcmcjpeg(big, tmp / "dcmcjpeg-big")
        results["dcmcjpeg small studies"] = dcmcjpeg(small, tmp / "dcmcjpeg-small")
        infer_rate = infer(big, args.quality or DEFAULT_QUALITY)
        results["inference images/s"] = infer_rate
        runs: dict[str, dict] = {}
        engines = [("this process", ("--workers", "0")), ("1 worker process", ("--workers", "1")),
                   ("2 worker processes", ("--workers", "2"))]
        for label, extra in engines:
            runs[f"{label}, one study"] = convert(big, tmp / f"out-{len(runs)}", args.quality, *extra)
            runs[f"{label}, small studies"] = convert(small, tmp / f"out-{len(runs)}", args.quality, *extra)
        runs["2 worker processes, half the files"] = convert(half, tmp / f"out-{len(runs)}", args.quality, "--workers", "2")
        if not args.no_dask:
            logs = tmp / "dask"
            logs.mkdir()
            cluster = Cluster(2, logs)
            try:
                for label, src in (("one study", big), ("small studies", small)):
                    runs[f"Dask, 2 workers, {label}"] = convert(src, tmp / f"out-{len(runs)}", args.quality, "--dask", cluster.address)
            finally:
                cluster.close()
        results["convert"] = runs

    print(f"\nDCMTK dcmcjpeg, one process per file: {results['dcmcjpeg one study']:.1f} files/s (one study), "
          f"{results['dcmcjpeg small studies']:.1f} files/s (small studies)")
    print(f"bare model inference, batch 16: {infer_rate:.1f} images/s\n")
    print("| engine, input | files/s | vs dcmcjpeg | vs inference | command wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for label, r in runs.items():
        ref = results["dcmcjpeg small studies"] if "small" in label else results["dcmcjpeg one study"]
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "n/a"
        print(f"| {label} | {r['files_per_s']:.1f} | {r['files_per_s'] / ref:.2f} | {r['files_per_s'] / infer_rate:.2f} | "
              f"{r['wall_s']:.1f} | {rss} |")
    print()
    for label, _ in engines + ([("Dask, 2 workers", ())] if not args.no_dask else []):
        big_r, small_r = runs[f"{label}, one study"], runs[f"{label}, small studies"]
        print(f"{label}: small studies / one study = {small_r['files_per_s'] / big_r['files_per_s']:.2f} (target >= 0.7)")
    one, two = runs["1 worker process, one study"], runs["2 worker processes, one study"]
    print(f"scaling, 2 worker processes / 1: {two['files_per_s'] / one['files_per_s']:.2f}")
    h = runs["2 worker processes, half the files"]
    if h["peak_rss_mb"] and two["peak_rss_mb"]:
        print(f"peak RSS, 2 worker processes: {h['peak_rss_mb']:.0f} MB for {h['files']} files, "
              f"{two['peak_rss_mb']:.0f} MB for {two['files']} (ratio {two['peak_rss_mb'] / h['peak_rss_mb']:.2f})")
    print("\n" + json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
