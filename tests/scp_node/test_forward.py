"""Forwarding to Orthanc (the destination PACS), including while it is down."""

from __future__ import annotations

import pytest

import contextlib
import json
import subprocess
import urllib.request


from dicom_cae.pipeline import DEFAULT_QUALITY
from dicom_cae.weights import DEFAULT_MODEL
from scp_node.forward import backoff
from tests.conftest import SAMPLES, free_port, need_tool, peer_env, wait_until
from tests.scp_node.test_node import running_node, storescu


@contextlib.contextmanager
def orthanc(tmp_path, http_port: int, dicom_port: int, node_port: int):
    exe = need_tool("Orthanc")
    config = {
        "Name": "test-pacs", "StorageDirectory": str(tmp_path / "orthanc-db"), "IndexDirectory": str(tmp_path / "orthanc-db"),
        "Plugins": [], "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "DicomModalities": {"NODE": ["DICOM_CAE", "127.0.0.1", node_port]},
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([exe, str(path)], env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _get(http_port, "/system"), timeout=30, what="Orthanc to start")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(port: int, path: str):
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read())
    except OSError:
        return None


def _count(port: int) -> int:
    stats = _get(port, "/statistics")
    return stats["CountInstances"] if stats else -1


def test_backoff_doubles_and_is_capped():
    assert [backoff(a, 5, 60) for a in range(6)] == [5, 10, 20, 40, 60, 60]


@pytest.mark.slow
def test_derived_series_reach_orthanc_and_nothing_is_lost_while_it_is_down(tmp_path, pipe):
    http_port, dicom_port = free_port(), free_port()
    forward = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port, "retry_initial_s": 0.3, "retry_max_s": 1.0}
    with running_node(tmp_path, pipe, forward=forward) as node:
        with orthanc(tmp_path, http_port, dicom_port, node.port):
            proc = storescu(node, *(str(SAMPLES / f"ct_phantom_{i}.dcm") for i in (1, 2, 3)))
            assert proc.returncode == 0, proc.stderr
            # The derived series, and the study's report as an Encapsulated PDF in its own series.
            wait_until(lambda: _count(http_port) == 4, what="3 derived instances and the report in Orthanc")
            series = {s["MainDicomTags"]["Modality"]: s for s in _get(http_port, "/series?expand")}
            assert set(series) == {"CT", "DOC"}
            assert series["CT"]["MainDicomTags"]["SeriesDescription"].startswith(f"CAE {DEFAULT_MODEL} q{DEFAULT_QUALITY}")
            tags = _get(http_port, f"/instances/{series['CT']['Instances'][0]}/simplified-tags")
            assert tags["ImageType"].startswith("DERIVED\\SECONDARY") and tags["Rows"] == "256"
            assert _get(http_port, f"/instances/{series['DOC']['Instances'][0]}/simplified-tags")["MIMETypeOfEncapsulatedDocument"] == "application/pdf"
        # Orthanc is down now: the next study waits in the outbox.
        proc = storescu(node, "-xr", str(SAMPLES / "mr_nonsquare.dcm"), str(SAMPLES / "mr_rle.dcm"))
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: node.state.outbox_size() == 3 and node.counters.snapshot()["forward_errors"] >= 3,
                   what="2 instances and a report waiting in the outbox after failed attempts")
        with orthanc(tmp_path, http_port, dicom_port, node.port):
            wait_until(lambda: node.state.outbox_size() == 0, what="the outbox to drain")
            assert _count(http_port) == 7
        assert node.counters.snapshot()["forwarded"] == 7


@contextlib.contextmanager
def _destination(port: int, answers: dict):
    """A pynetdicom storage SCP on ``port`` answering every C-STORE with ``answers["status"]``;
    ``answers["seen"]`` gets (SOP Instance UID, time) of each C-STORE that reached it."""
    import time

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    def on_store(event):
        answers["seen"].append((str(event.request.AffectedSOPInstanceUID), time.time()))
        return answers["status"]

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield
    finally:
        scp.shutdown()


def test_a_refused_c_store_keeps_the_item_in_the_outbox_with_back_off_until_it_is_accepted(tmp_path, pipe):
    """Issue 19 (forwarding): a destination that takes the association but refuses the C-STORE
    (A700, out of resources) does not empty the outbox: each refusal counts, the next try waits
    the doubled back-off (1 s, then 2 s: seen in the outbox against the moment the refusal was
    answered), /health names the status; a warning status (B000) counts as stored."""
    import sqlite3
    import time

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    port = free_port()
    answers = {"status": 0xA700, "seen": []}
    forward = {"ae_title": "PACS", "host": "127.0.0.1", "port": port, "retry_initial_s": 1.0, "retry_max_s": 2.0}
    with _destination(port, answers), running_node(tmp_path, pipe, http_port=0, forward=forward) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")).Status == 0
        assoc.release()

        def refusals(uid: str) -> list[float]:
            return [t for u, t in answers["seen"] if u == uid]

        def outbox() -> dict[str, tuple[int, float]]:  # SOP Instance UID -> (attempts, next try)
            with sqlite3.connect(node.cfg.state_path) as db:
                rows = db.execute("SELECT path, attempts, next_try FROM outbox").fetchall()
            return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): (a, n) for p, a, n in rows}

        wait_until(lambda: len(outbox()) == 2 and all(a >= 2 for a, _ in outbox().values()), timeout=60,
                   what="the derived image and the report refused twice")
        for uid, (attempts, next_try) in outbox().items():
            seen = refusals(uid)
            assert len(seen) >= attempts >= 2, (uid, seen)
            answered = seen[attempts - 1]  # the refusal that set this next try
            # The delay, plus the moments between the answer and the outbox's update (never less).
            expected = backoff(attempts - 1, 1.0, 2.0)
            assert expected - 0.05 <= next_try - answered <= expected + 0.9, (attempts, next_try - answered)
        with sqlite3.connect(node.cfg.state_path) as db:
            queued = [q for (q,) in db.execute("SELECT queued_at FROM outbox")]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{node._http.server_address[1]}/health", timeout=5).read())
        now = time.time()
        assert health["status"] == "degraded" and "forwarding" in health["problems"]
        fwd = health["forwarding"]
        assert fwd["outbox_depth"] == 2 and fwd["failing"] == 2 and "0xa700" in fwd["last_error"]
        assert now - min(queued) - 0.5 <= fwd["oldest_waiting_s"] <= now - min(queued) + 0.1  # the oldest item's wait
        assert node.counters.snapshot()["forwarded"] == 0
        answers["status"] = 0xB000  # stored with a warning (coercion of data elements): forwarded
        wait_until(lambda: node.state.outbox_size() == 0, timeout=30, what="the outbox to drain")
        assert node.counters.snapshot()["forwarded"] == 2
