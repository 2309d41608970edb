"""dicom-cae inside Orthanc: what the plugin costs Orthanc's C-STORE ingest, and how fast it
processes, against Orthanc alone and against ``dicom-cae convert``, in one run.

    python bench/orthanc.py [--data DIR] [--files 128] [--workers 2]

- ingest: DCMTK storescu sends a study of ``--files`` images (new UIDs, same pixels) to an
  Orthanc without plugins, and to an Orthanc with the plugin while the plugin processes another
  study of the same size; ratio of the two rates (goal >= 0.8).
- processing: the plugin's rate on a study (from its queue taking the study to the report in
  Orthanc) against ``dicom-cae convert --workers N`` on the same files (its own clock, reports
  included); goal: within 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ct" / "pancreas-ct-cb-001"
ENV = {**os.environ, "TCP_NODELAY": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study(files: list[Path], folder: Path, tag: str) -> list[Path]:
    """The files as one new study (new Study, Series and SOP Instance UIDs), uncompressed."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(entropy_srcs=[tag, "study"]), generate_uid(entropy_srcs=[tag, "series"])
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        out.append(folder / f"{i:04d}.dcm")
        ds.save_as(out[-1])
    return out


def get(http: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def wait(what, timeout: float = 600, every: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = what()
        if v:
            return v
        time.sleep(every)
    sys.exit("timed out")


def send(dicom: int, files: list[Path]) -> float:
    """files/s of one storescu association."""
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/storescu", "-aec", "DICOM_CAE", "127.0.0.1", str(dicom), *map(str, files)], env=ENV,
                   check=True, capture_output=True)
    return len(files) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--files", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dicom_cae import io

    files = io.walk(args.data)[: args.files]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = study(files, tmp / "a", "bench orthanc a"), study(files, tmp / "b", "bench orthanc b")
        # Orthanc alone
        http, dicom = port(), port()
        cfg = {"Name": "alone", "StorageDirectory": str(tmp / "alone"), "IndexDirectory": str(tmp / "alone"),
               "HttpPort": http, "DicomPort": dicom, "DicomAet": "DICOM_CAE", "Plugins": [], "RemoteAccessAllowed": False}
        (tmp / "alone.json").write_text(json.dumps(cfg))
        proc = subprocess.Popen(["Orthanc", str(tmp / "alone.json")], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: get(http, "/system"))
            alone = send(dicom, b)
        finally:
            proc.terminate()
            proc.wait()
        # Orthanc with the plugin, ingesting study b while it processes study a
        http, dicom = port(), port()
        proc = subprocess.Popen([sys.executable, "-m", "dicom_cae", "orthanc", "--data-dir", str(tmp / "with"),
                                 "--http-port", str(http), "--dicom-port", str(dicom), "--stable-age", "2",
                                 "--workers", str(args.workers)], env=ENV, cwd=ROOT,
                                stdout=open(tmp / "with.log", "w"), stderr=subprocess.STDOUT)
        try:
            wait(lambda: get(http, "/dicom-cae/health"), timeout=120)
            send(dicom, a)
            wait(lambda: (get(http, "/dicom-cae/health") or {}).get("processing"))
            started = time.perf_counter()
            during = send(dicom, b)
            busy = (get(http, "/dicom-cae/health") or {}).get("processing") is not None
            wait(lambda: (get(http, "/dicom-cae/health") or {}).get("queue", {}).get("done") == 1, every=0.05)
            first = time.perf_counter() - started
            # the plugin alone on a study: b (queued behind a), from its start to its end
            wait(lambda: (get(http, "/dicom-cae/health") or {}).get("processing"), every=0.05)
            t0 = time.perf_counter()
            wait(lambda: (get(http, "/dicom-cae/health") or {}).get("queue", {}).get("done") == 2, every=0.05)
            plugin_rate = len(b) / (time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait()
        # convert on the same files
        r = subprocess.run([sys.executable, "-m", "dicom_cae", "convert", str(tmp / "b"), str(tmp / "out"), "--no-progress",
                            "--workers", str(args.workers)], env=ENV, cwd=ROOT, capture_output=True, text=True)
        import re

        m = re.search(r"converted (\d+) instance\(s\).* in ([\d.]+) s", r.stdout)
        convert_rate = int(m.group(1)) / float(m.group(2))
    print(f"data: {len(files)} files of {args.data.name} per study; plugin and convert with {args.workers} worker processes; "
          f"{os.cpu_count()} CPU(s)")
    print(f"C-STORE ingest, Orthanc alone: {alone:.1f} files/s; with the plugin processing another study: {during:.1f} files/s "
          f"(still processing when the send ended: {busy}; the first study took {first:.1f} s)")
    print(f"ingest ratio with / without the plugin: {during / alone:.2f} (goal >= 0.8)")
    print(f"processing: plugin {plugin_rate:.1f} files/s (queue to report in Orthanc), convert {convert_rate:.1f} files/s "
          f"(its own clock, reports included): ratio {plugin_rate / convert_rate:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
