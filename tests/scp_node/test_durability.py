"""Nothing acknowledged is lost: SIGKILL mid-send, restart, every acknowledged instance once."""

from __future__ import annotations

import pytest

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


pytestmark = pytest.mark.slow  # real peers and processes: the full suite, not the fast tier


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


def test_the_order_of_durable_steps_seen_by_strace(tmp_path):
    """What the kernel sees, in order: the spooled instance is written, fsync'd, renamed into
    incoming/ and the folder fsync'd before the C-STORE response goes out; the derived
    instance is fsync'd, renamed and its folder fsync'd before the spool copy leaves the spool.
    strace stops the node only at the calls it records (--seccomp-bpf): stopping it at every
    call made the node so slow that once it had not ended 60 s after SIGTERM."""
    import re
    import time

    from tests.conftest import SAMPLES, need_tool

    strace = need_tool("strace")
    data = tmp_path / "node"
    trace = tmp_path / "trace"
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [strace, "-f", "--seccomp-bpf", "-y", "-qq", "-s", "8", "-o", str(trace), "-e",
             "trace=write,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,sendto,sendmsg",
             sys.executable, "-m", "dicom_cae", "serve", "--port", "0", "--data-dir", str(data)],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True,
        )
        try:
            line = wait_until(lambda: next((x for x in log.read_text().splitlines() if "listening on" in x), None),
                              timeout=120, what="the node to listen")
            port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1].rstrip(";"))
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_CAE")
            assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")).Status == 0
            assoc.release()
            wait_until(lambda: list((data / "output").rglob("*.dcm")) and not list((data / "spool" / "incoming").glob("*")),
                       timeout=60, what="the instance processed")
            # Then one that is kept as received (not an image), then one that fails (its pixels
            # cannot be decoded), each alone: their copies are as durable as the spool's.
            for ds, folder in ((pydicom.dcmread(SAMPLES / "sr_not_an_image.dcm"), "kept"), (_undecodable(), "failed")):
                ae = AE(ae_title="MODALITY")
                ae.add_requested_context(ds.SOPClassUID)
                assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_CAE")
                assert assoc.send_c_store(ds).Status == 0
                assoc.release()
                wait_until(lambda folder=folder: list((data / folder).rglob("*.dcm"))
                           and not list((data / "spool" / "incoming").glob("*")), timeout=60, what=f"the copy in {folder}/")
            time.sleep(0.5)
        finally:
            # SIGTERM the node only: strace then ends with it and writes out its whole trace.
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for pid in children or [str(proc.pid)]:
                os.kill(int(pid), signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError("the node did not end within 60 s of SIGTERM; its log ends:\n"
                                     + "\n".join(log.read_text().splitlines()[-30:])) from None
    # "PID  call(...)": strace pads the PID, so split on the first run of spaces.
    calls = [x.split(None, 1)[1] for x in trace.read_text().splitlines() if " " in x and "resumed>" not in x]
    name = next(p.name for p in (data / "output").rglob("*.dcm"))

    def first(pattern: str, after: int = -1) -> int:
        for i, call in enumerate(calls):
            if i > after and re.search(pattern, call):
                return i
        raise AssertionError(f"no {pattern!r} after call {after} in the trace")

    written = first(r"^write\(\d+</[^>]*/spool/tmp/[^>]+\.dcm>")
    synced = first(r"^fsync\(\d+</[^>]*/spool/tmp/[^>]+\.dcm>", written)
    renamed = first(r'^rename(at2?)?\(.*/spool/tmp/.*/spool/incoming/', synced)
    folder = first(r"^fsync\(\d+</[^>]*/spool/incoming>\)", renamed)
    response = first(r'^(sendto|sendmsg)\(\d+<(TCP|socket)[^>]*>, "\\4', -1)
    assert written < synced < renamed < folder < response
    out_synced = first(rf"^fsync\(\d+</[^>]*\.{re.escape(name)}\.[^>]*\.tmp>", folder)
    out_renamed = first(rf"^rename(at2?)?\(.*\.{re.escape(name)}\..*\.tmp.*/{re.escape(name)}\"", out_synced)
    out_folder = first(r"^fsync\(\d+</[^>]*/output/[^>]*>\)", out_renamed)
    # The spool copy leaves (renamed into originals/ for the study's report) only after that.
    unlinked = first(r"^(unlink(at)?\(.*/spool/incoming/|rename(at2?)?\(.*/spool/incoming/.*/originals/)", out_folder)
    assert out_synced < out_renamed < out_folder < unlinked
    # kept/ and failed/: the copy fsync'd, renamed, its folder fsync'd, and only then the spool
    # copy removed.
    after = unlinked
    for folder in ("kept", "failed"):
        synced = first(rf"^fsync\(\d+</[^>]*/{folder}/[^>]*\.tmp>", after)
        renamed = first(rf"^rename(at2?)?\(.*/{folder}/[^\"]*\.tmp\".*/{folder}/[^\"]*\.dcm\"", synced)
        folder_synced = first(rf"^fsync\(\d+</[^>]*/{folder}/[^/>]*>\)", renamed)
        removed = first(r"^unlink(at)?\(.*/spool/incoming/", folder_synced)
        assert not any(re.search(r"^unlink(at)?\(.*/spool/incoming/", c) for c in calls[after + 1 : synced]), folder
        after = removed


def _undecodable() -> pydicom.Dataset:
    """A CT instance whose Pixel Data holds half the rows it claims: received, then failed."""
    from pydicom.uid import generate_uid

    from tests.conftest import SAMPLES

    ds = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = 2 * ds.Rows
    return ds
