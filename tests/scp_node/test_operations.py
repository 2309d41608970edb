"""Operating the node (issue 10, item 7): one node per data folder, clear bind errors, temp files
of interrupted writes cleaned, the called AE title checked on request, TLS failures counted,
/health that says degraded, SIGTERM with reports due, no forged log lines."""

from __future__ import annotations

import json
import time
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.conftest import ROOT, SAMPLES, dcmtk, peer_env, wait_until
from tests.scp_node.test_forward import free_port
from tests.scp_node.test_node import running_node


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicom_cae", "serve", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_a_second_node_on_the_same_data_folder_is_refused(tmp_path, pipe):
    from scp_node.node import Node, NodeError

    with running_node(tmp_path, pipe) as node:
        with pytest.raises(NodeError, match=f"another dicom-cae node \\(pid {os.getpid()}\\) is using the data folder"):
            Node(node.cfg, pipe)
        proc = serve("--port", "0", "--data-dir", str(node.cfg.data_dir))
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"dicom-cae serve: error: another dicom-cae node (pid {os.getpid()}) is using the data folder {node.cfg.data_dir}"
        ]
    # Once the first has stopped, the folder is free again.
    with running_node(tmp_path, pipe):
        pass


@pytest.mark.slow
def test_a_port_in_use_or_an_address_not_of_this_host_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve("--port", str(port), "--data-dir", str(tmp_path / "a"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"dicom-cae serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    proc = serve("--port", "0", "--bind", "192.0.2.7", "--data-dir", str(tmp_path / "b"))  # TEST-NET-1: not ours
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "dicom-cae serve: error: cannot listen on 192.0.2.7:0: Cannot assign requested address"


def test_temporary_files_of_interrupted_writes_are_removed_at_start(tmp_path, pipe):
    data = tmp_path / "node"
    leftovers = [data / "output" / "1.2.3" / "4.5.6" / ".7.8.9.dcm.1234-abcdef.tmp", data / "failed" / "x" / ".y.dcm.99-0.tmp"]
    for f in leftovers:
        f.parent.mkdir(parents=True)
        f.write_bytes(b"half a file")
    keep = data / "output" / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    keep.write_bytes(b"a finished file")
    with running_node(tmp_path, pipe):
        assert not any(f.exists() for f in leftovers)
        assert keep.exists()


def test_the_called_ae_title_is_checked_when_asked(tmp_path, pipe):
    def echo(node, called):
        return subprocess.run([dcmtk("echoscu"), "-aec", called, "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, env=peer_env()).returncode

    with running_node(tmp_path, pipe) as node:
        assert echo(node, "ANYTHING") == 0  # off by default, as Orthanc's DicomCheckCalledAet
    with running_node(tmp_path, pipe, require_called_aet=True) as node:
        assert echo(node, "ANYTHING") != 0
        assert echo(node, node.cfg.ae_title) == 0
        assert node.counters.snapshot()["rejected"] == 1


def test_failed_tls_handshakes_are_logged_and_counted(tmp_path, pipe, caplog):
    import ssl

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=node",
                    "-keyout", str(tmp_path / "node.key"), "-out", str(tmp_path / "node.pem")],
                   check=True, capture_output=True)
    tls = {"cert": str(tmp_path / "node.pem"), "key": str(tmp_path / "node.key")}
    with running_node(tmp_path, pipe, tls=tls) as node:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as plain:  # DICOM, not TLS
            plain.sendall(b"\x01\x00\x00\x00\x00\x10" + bytes(16))
            try:
                plain.recv(100)
            except OSError:
                pass
        untrusting = ssl.create_default_context()  # does not trust the node's self-signed certificate
        with socket.create_connection(("127.0.0.1", node.port)) as raw:
            with pytest.raises(ssl.SSLError):
                untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
        wait_until(lambda: node.counters.snapshot()["tls_failures"] == 2, what="two failed handshakes counted")
    assert sum("TLS handshake failed" in r.getMessage() for r in caplog.records) == 2


def _health(port):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())


def test_health_is_degraded_while_forwarding_fails(tmp_path, pipe):
    dead = free_port()  # nothing listens there
    forward = {"ae_title": "PACS", "host": "127.0.0.1", "port": dead, "retry_initial_s": 0.2, "retry_max_s": 0.5}
    with running_node(tmp_path, pipe, http_port=0, forward=forward) as node:
        port = node._http.server_address[1]
        assert _health(port)["status"] == "ok"
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")).Status == 0
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["forward_errors"] >= 2, what="forwarding to fail twice")
        health = _health(port)
        assert health["status"] == "degraded" and health["problems"] == ["forwarding"]
        fwd = health["forwarding"]
        assert fwd["outbox_depth"] == 2  # the derived image and the report document
        assert fwd["failing"] == 2 and fwd["oldest_waiting_s"] >= 0
        assert "association with the destination failed" in fwd["last_error"]


@pytest.mark.slow
@pytest.mark.parametrize("setting", [{}, {"target_psnr": 30.0}], ids=["quality", "fidelity target"])
def test_health_is_degraded_while_processing_fails(tmp_path, pipe, setting):
    """Also when the model runs inside the fidelity search (regression: there a model failure
    sent every instance to failed/ at once)."""
    with running_node(tmp_path, pipe, http_port=0, **setting) as node:
        port = node._http.server_address[1]
        # A model that fails for every instance alike (not any instance's fault): the batch stays
        # spooled and /health says so.
        broken = node.worker.pipe.reconstructor

        def fail(*args, **kwargs):
            raise MemoryError("out of accelerator memory")

        node.worker.pipe.reconstructor = type("Broken", (), {"__call__": staticmethod(fail), "name": broken.name,
                                                             "identity": broken.identity,
                                                             "for_quality": broken.for_quality,
                                                             "for_coding": broken.for_coding,
                                                             "precision": broken.precision})()
        try:  # the pipeline is the session's: never leave it broken for the tests after this one
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
            assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")).Status == 0
            assoc.release()
            health = wait_until(lambda: (h := _health(port))["status"] == "degraded" and h, what="degraded")
            assert health["problems"] == ["processing"] and "out of accelerator memory" in health["processing"]["last_error"]
            assert health["queue_depth"] == 1 and health["oldest_queued_age_s"] >= 0
            assert node.counters.snapshot()["failed"] == 0  # nothing was blamed on the instance
        finally:
            node.worker.pipe.reconstructor = broken
        wait_until(lambda: node.counters.snapshot()["processed"] == 1, timeout=30, what="processed once the model works")
        assert _health(port)["status"] == "ok"


@pytest.mark.slow
def test_sigterm_while_reports_are_due_exits_cleanly(tmp_path):
    """Many small studies due at once, SIGTERM: the report in hand is finished, the exit is 0
    (not an abort), nothing is lost, and a newline in a received UID forged no log line."""
    data = tmp_path / "node"
    log_path = tmp_path / "node.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_cae", "serve", "--port", "0", "--data-dir", str(data), "--study-quiet", "1"],
        stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    line = wait_until(lambda: next((x for x in log_path.read_text().splitlines() if "listening on" in x), None),
                      what="the node to listen")
    port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1].rstrip(";"))
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_CAE")
        for _ in range(8):
            ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
            ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
            assert assoc.send_c_store(ds).Status == 0
        forged = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
        forged.SOPInstanceUID = "1.2.3\nFORGED level=ERROR"
        from pydicom import config

        config.settings.writing_validation_mode = config.IGNORE
        try:
            assert assoc.send_c_store(forged).Status == 0xC210
        finally:
            config.settings.writing_validation_mode = config.WARN
        assoc.release()
        wait_until(lambda: not list((data / "spool" / "incoming").glob("*.dcm")), timeout=120, what="an empty spool")
        wait_until(lambda: len(list((data / "output").glob("*/report.json"))) >= 1, timeout=120, what="reports begin")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        log_file.close()
    log = log_path.read_text()
    assert code == 0, log[-2000:]
    assert "terminate called" not in log
    assert len([p for p in (data / "output").rglob("*.dcm") if "1.2.826.0.1.3680043.8.498" in p.parent.name]) >= 8
    assert "FORGED" in log and not [x for x in log.splitlines() if x.startswith("FORGED")]


def test_the_readme_send_command_works_where_pynetdicom_shadows_storescu(tmp_path, pipe):
    """Regression: inside a venv, pynetdicom's own storescu comes first on the PATH and the
    README's command failed with "invalid int value: '+r'"."""
    import re
    import shutil
    from pathlib import Path

    dcmtk("storescu")
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^TCP_NODELAY=1 (\S*storescu) .*sample_dicom$", readme, re.M).group(0)
    shadow = Path(sys.executable).parent / "storescu"  # where pip puts pynetdicom's
    venv_bin = tmp_path / "venv-bin"
    venv_bin.mkdir()
    if shadow.exists():
        shutil.copy(shadow, venv_bin / "storescu")
    else:
        (venv_bin / "storescu").write_text(f"#!/bin/sh\nexec {sys.executable} -m pynetdicom storescu \"$@\"\n")
    (venv_bin / "storescu").chmod(0o755)
    with running_node(tmp_path, pipe) as node:
        proc = subprocess.run(["bash", "-c", command.replace(" 11112 ", f" {node.port} ")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"})
        assert "invalid int value" not in proc.stderr
        # The six images and the SR; the truncated CT, README and script are storescu's own E: lines.
        wait_until(lambda: node.counters.snapshot()["received"] == 7, what="7 received", timeout=30)


def test_the_readme_names_every_package_that_ci_installs():
    import re

    ci = (ROOT / ".ci" / "run").read_text()
    packages = set(re.search(r"install -y -qq --no-install-recommends ([^>]+)>", ci).group(1).split())
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"`apt-get install ([a-z0-9 -]+)`", readme.replace("\n", " "))
    assert packages == set(max(lines, key=len).split())  # the test prerequisites: the longest list


def test_a_spool_that_cannot_be_written_answers_out_of_resources(tmp_path, pipe):
    """0xA700 (Out of Resources), not 0xC000, when the instance cannot be made durable."""
    with running_node(tmp_path, pipe) as node:
        tmp = node.spool.tmp
        tmp.rmdir()
        tmp.write_text("not a folder")  # every write into spool/tmp now fails with an OSError
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")).Status == 0xA700
        assoc.release()
        assert node.counters.snapshot()["received"] == 0
        tmp.unlink()
        tmp.mkdir()


def test_stale_spool_temp_files_are_dropped_at_start(tmp_path, pipe):
    """A partial write of a killed node was never acknowledged: it must not be processed."""
    stale = tmp_path / "node" / "spool" / "tmp" / "00000000000000000001-0123456789abcdef-dead.dcm"
    stale.parent.mkdir(parents=True)
    stale.write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes()[:5000])
    with running_node(tmp_path, pipe) as node:
        assert not stale.exists()
        assert not node.spool.pending()


def test_a_study_is_not_marked_reported_when_an_instance_arrived_during_its_report(tmp_path, pipe):
    from scp_node.config import load
    from scp_node.node import Node

    cfg = load(None, port=0, data_dir=str(tmp_path / "node"), study_quiet_s=0.0)
    node = Node(cfg, pipe)
    try:
        study = "1.2.3.4"
        node.state.record("1.2.3.4.1", study, "processed")
        seen = time.time()
        time.sleep(0.01)
        node.state.record("1.2.3.4.2", study, "processed")  # arrives while the report is written
        node.state.study_reported(study, seen)
        assert study in node.state.due_studies(0.0)
        node.state.study_reported(study, time.time())
        assert study not in node.state.due_studies(0.0)
    finally:
        node.stop()


def _ct_study(folder, n):
    folder.mkdir(exist_ok=True)
    study = generate_uid()
    files = []
    for i in range(n):
        ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"{i}.dcm")
        files.append(str(folder / f"{i}.dcm"))
    return study, files


@pytest.mark.slow
def test_a_full_output_volume_keeps_instances_spooled_until_space_is_freed(tmp_path, pipe, small_volume):
    """Issue 16 item 1: with output/ on a small full volume, three acknowledged CT instances went
    to failed/ ("No space left on device") for ever. Now a full disk is the machine's problem,
    not the instances': they stay in the spool, /health says degraded (disk, processing), and
    once space is freed every one is derived and the study reported."""
    from tests.scp_node.test_node import storescu

    point, fill, free = small_volume
    data = tmp_path / "node"
    data.mkdir()
    (data / "output").symlink_to(point, target_is_directory=True)
    study, files = _ct_study(tmp_path / "src", 3)
    with running_node(tmp_path, pipe, data_dir=str(data), http_port=0) as node:
        fill()
        proc = storescu(node, *files)
        assert proc.returncode == 0, proc.stderr  # acknowledged: the spool is on another volume
        wait_until(lambda: node.worker.last_error is not None, what="processing to fail on the full disk")
        health = _health(node._http.server_address[1])
        assert health["status"] == "degraded" and {"disk", "processing"} <= set(health["problems"])
        assert "output" in health["disk"] and "No space left" in health["processing"]["last_error"]
        assert len(node.spool.pending()) == 3 and not list(node.cfg.failed_dir.rglob("*"))
        free()
        wait_until(lambda: node.counters.snapshot()["processed"] == 3, timeout=120, what="all three derived")
        wait_until(lambda: (point / study / "report.json").exists(), timeout=60, what="the study reported")
        health = _health(node._http.server_address[1])
        assert health["status"] == "ok", health


def test_a_full_data_volume_answers_out_of_resources_and_leaves_no_temp_file(tmp_path, pipe, small_volume):
    """Issue 16 item 2: everything on one volume that fills up while the node runs. New instances
    are answered A700 (out of resources), the spool's temporary file of a refused write goes at
    once (not at the next start), /health says degraded (disk) from a check that needs no
    space, and after space is freed the same study is received and processed."""
    point, fill, free = small_volume
    study, files = _ct_study(tmp_path / "src", 2)
    with running_node(tmp_path, pipe, data_dir=str(point / "node"), http_port=0) as node:
        fill()
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(pydicom.dcmread(files[0]))
        finally:
            assoc.release()
        assert status.Status == 0xA700
        assert not list((node.spool.tmp).iterdir()) and not node.spool.pending()
        health = _health(node._http.server_address[1])
        assert health["status"] == "degraded" and "disk" in health["problems"]
        free()
        from tests.scp_node.test_node import storescu

        assert storescu(node, *files).returncode == 0
        wait_until(lambda: node.counters.snapshot()["processed"] == 2, timeout=120, what="both derived")


@pytest.mark.slow
def test_a_study_report_that_meets_a_full_disk_is_written_once_space_is_freed(tmp_path, pipe, small_volume):
    """Issue 16 item 1, the report: a report that failed on ENOSPC cleared the study's flag and
    was never tried again unless more of the study arrived. Now it stays due (tried again with
    back-off), /health names the reports, and it is written once space is freed."""
    from tests.scp_node.test_node import storescu

    point, fill, free = small_volume
    data = tmp_path / "node"
    data.mkdir()
    (data / "output").symlink_to(point, target_is_directory=True)
    study, files = _ct_study(tmp_path / "src", 2)
    with running_node(tmp_path, pipe, data_dir=str(data), http_port=0, study_quiet_s=6.0) as node:
        assert storescu(node, *files).returncode == 0
        wait_until(lambda: node.counters.snapshot()["processed"] == 2, what="both derived")
        fill()
        wait_until(lambda: "reports" in _health(node._http.server_address[1])["problems"], timeout=60,
                   what="the report's failure on /health")
        assert not (point / study / "report.json").exists()
        assert study in {s for s, _, dirty, _ in node.state.studies() if dirty}
        free()
        wait_until(lambda: (point / study / "report.json").exists(), timeout=90, what="the report written after all")


def test_each_study_is_due_after_its_own_quiet_time(tmp_path):
    """Issue 19 (study completeness timed per study): a study is due once *its* last instance is
    study_quiet_s old, whatever other studies receive; reported, it is due again only when more
    of it arrives (then after its quiet time again)."""
    import time

    from scp_node.state import State

    state = State(tmp_path / "state.sqlite")
    state.record("1.1", "study.A", "processed")
    time.sleep(1.3)
    state.record("2.1", "study.B", "processed")
    assert state.due_studies(1.0) == ["study.A"]  # B arrived just now; A has been quiet 1.3 s
    assert sorted(state.due_studies(0.0)) == ["study.A", "study.B"]
    state.study_reported("study.A", time.time())
    assert state.due_studies(0.0) == ["study.B"]  # reported: not due again ...
    state.record("1.2", "study.A", "processed")  # ... until more of it arrives
    assert sorted(state.due_studies(0.0)) == ["study.A", "study.B"]
