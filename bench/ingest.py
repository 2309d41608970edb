"""C-STORE ingest of the node against DCMTK storescp, and the node's processing rate.

    python bench/ingest.py [--data DIR] [--batch-size 16]

In one run, on the same 512x512 CT files, one association each (DCMTK storescu as sender,
TCP_NODELAY=1 for the DCMTK peers):
- images/s acknowledged by DCMTK storescp, and by our node, and their ratio (target >= 0.4);
- processing rate of the node: images from the first acknowledgement to the last derived
  instance written, per second, and the drain time after the last acknowledgement;
- bare model inference images/s on the same images (bench/pipeline.py's measurement), and the
  ratio of the processing rate to it (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ct" / "lung-dx-a0001-series2"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def send(files: list[Path], port: int, aec: str) -> float:
    """Seconds that DCMTK storescu takes to send ``files`` on one association."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/storescu", "-aec", aec, "-aet", "BENCH", "127.0.0.1", str(port), *map(str, files)],
                          env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"storescu failed: {proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if not shutil.which("storescp") or not Path("/usr/bin/storescu").exists():
        sys.exit("needs DCMTK (apt-get install dcmtk)")
    files = sorted(f for f in args.data.rglob("*") if f.is_file())
    n = len(files)
    print(f"data: {args.data} ({n} files); one association per send; best of {args.repeat}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # DCMTK storescp, the reference receiver.
        port = free_port()
        (tmp / "storescp").mkdir()
        scp = subprocess.Popen(["/usr/bin/storescp", "+xa", "-od", str(tmp / "storescp"), str(port)], env=ENV)
        try:
            wait_port(port)
            dcmtk_rate = max(n / send(files, port, "STORESCP") for _ in range(args.repeat))
        finally:
            scp.terminate()
            scp.wait()

        # Our node, with its HTTP endpoint to read the counters.
        port, http = free_port(), free_port()
        data_dir = tmp / "node"
        node = subprocess.Popen(
            [sys.executable, "-m", "dicom_cae", "serve", "--port", str(port), "--http-port", str(http),
             "--data-dir", str(data_dir), "--study-quiet", "3600"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
            wait_port(http)

            def processed() -> int:
                import urllib.request

                return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http}/health").read())["processed"]

            send(files[:2], port, "DICOM_CAE")  # warm-up: the model's first batch traces its graph
            while processed() < 2:
                time.sleep(0.05)
            best_ack, best_proc, drain = 0.0, 0.0, 0.0
            for i in range(args.repeat):
                before = processed()
                t0 = time.perf_counter()
                elapsed = send(files, port, "DICOM_CAE")
                t_acked = time.perf_counter()
                while processed() < before + n:
                    time.sleep(0.01)
                t_done = time.perf_counter()
                best_ack = max(best_ack, n / elapsed)
                if n / (t_done - t0) > best_proc:
                    best_proc, drain = n / (t_done - t0), t_done - t_acked
        finally:
            node.terminate()
            node.wait()

    infer = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--child", "infer", "--data", str(args.data),
         "--batch-size", str(args.batch_size), "--quality", "10", "--repeat", "2"],
        capture_output=True, text=True, cwd=ROOT,
    )
    if infer.returncode != 0:
        sys.exit(infer.stderr[-2000:])
    infer_rate = json.loads(infer.stdout.strip().splitlines()[-1])["images_per_s"]

    print(f"acknowledged by DCMTK storescp : {dcmtk_rate:7.1f} images/s")
    print(f"acknowledged by dicom-cae node : {best_ack:7.1f} images/s")
    print(f"ratio node/storescp            : {best_ack / dcmtk_rate:7.2f}  (target >= 0.4)")
    print(f"node processing (first ack to last derived written): {best_proc:7.1f} images/s; "
          f"drain after the last ack {drain:.2f} s")
    print(f"bare model inference (same images, batch {args.batch_size}): {infer_rate:7.1f} images/s")
    print(f"ratio processing/inference     : {best_proc / infer_rate:7.2f}  (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
