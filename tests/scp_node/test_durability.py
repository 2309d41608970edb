"""Nothing acknowledged is lost: SIGKILL mid-send, restart, every acknowledged instance once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import ROOT, derived_images, shared, wait_until


def start_node(data_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_cae", "serve", "--port", "0", "--data-dir", str(data_dir), "--study-quiet", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    for line in proc.stdout:
        if "listening on" in line:
            port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1].rstrip(";"))
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, port
    raise AssertionError(f"node did not start (exit {proc.wait()})")


def derived_sources(data_dir: Path) -> list[str]:
    return [
        pydicom.dcmread(f, stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in derived_images(data_dir / "output")
    ]


def test_sigkill_during_a_60_instance_send_then_restart(tmp_path):
    files = sorted(shared("ct", "lung-dx-a0001-series2").glob("*.dcm"))[:60]
    datasets = [pydicom.dcmread(f) for f in files]
    data_dir = tmp_path / "node"
    proc, port = start_node(data_dir)
    acked: list[str] = []

    def send() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_CAE")
        for ds in datasets:
            if not assoc.is_established:
                return
            try:
                status = assoc.send_c_store(ds)
            except Exception:  # the peer died mid-send
                return
            if getattr(status, "Status", None) == 0x0000:
                acked.append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(acked) >= 25, timeout=120, interval=0.01, what="25 acknowledgements")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sender.join(timeout=60)
    assert 25 <= len(acked) < 60, "the kill should land mid-send"
    killed_with = set(acked)

    proc, port = start_node(data_dir)
    try:
        wait_until(lambda: set(derived_sources(data_dir)) >= killed_with, timeout=180,
                   what="every acknowledged instance processed after the restart")
        wait_until(lambda: not list((data_dir / "spool" / "incoming").glob("*.dcm")), what="an empty spool")
        sources = derived_sources(data_dir)
        assert len(sources) == len(set(sources)), "an instance was written twice"
        assert set(sources) <= {ds.SOPInstanceUID for ds in datasets}
        wait_until(lambda: list((data_dir / "output").glob("*/report.json")), what="the study report")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # graceful shutdown
