"""The node with real peers on 127.0.0.1: DCMTK storescu/echoscu as modalities, pynetdicom SCUs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import urllib.request

import pydicom
import pytest
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from dicom_cae import private_tags
from scp_node.config import ConfigError, load
from scp_node.node import Node
from tests.conftest import SAMPLES, dciodvfy_errors, dcmtk, derived_images, peer_env, shared, wait_until


@contextlib.contextmanager
def running_node(tmp_path, pipe, **settings):
    settings = {"port": 0, "data_dir": str(tmp_path / "node"), "study_quiet_s": 1.0, "batch_wait_s": 0.2, **settings}
    node = Node(load(None, **settings), pipe)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _processed(node):
    return node.counters.snapshot()["processed"]


def _derived(node):
    return derived_images(node.cfg.output_dir)


def storescu(node, *args, aet="MODALITY"):
    """DCMTK storescu: options (starting with - or +) first, then peer and port, then files."""
    opts = [a for a in args if a[:1] in "-+"]
    files = [a for a in args if a[:1] not in "-+"]
    return subprocess.run(
        [dcmtk("storescu"), "-aec", node.cfg.ae_title, "-aet", aet, *opts, "127.0.0.1", str(node.port), *files],
        capture_output=True, text=True, env=peer_env(), timeout=120,
    )


@pytest.mark.slow
def test_storescu_sends_a_ct_series_every_instance_is_processed(tmp_path, pipe):
    src = shared("ct", "lung-dx-a0002-b40f")
    with running_node(tmp_path, pipe, http_port=0) as node:
        echo = subprocess.run([dcmtk("echoscu"), "-aec", node.cfg.ae_title, "127.0.0.1", str(node.port)],
                              capture_output=True, env=peer_env())
        assert echo.returncode == 0
        proc = storescu(node, "+sd", str(src))
        assert proc.returncode == 0, proc.stderr
        assert node.counters.snapshot()["received"] == 30
        wait_until(lambda: _processed(node) == 30, what="30 processed")
        derived = _derived(node)
        assert len(derived) == 30
        report = wait_until(lambda: next(node.cfg.output_dir.glob("*/report.json"), None), what="the study report")
        data = json.loads(report.read_text())
        assert data["images"] == 30 and data["regression"]["r2"] > 0.9
        sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in src.glob("*.dcm")}
        for f in derived[:4]:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            assert private_tags.read(ds)["PSNR"][0] > 20
            source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
            assert not set(dciodvfy_errors(f)) - set(dciodvfy_errors(source))
        port = node._http.server_address[1]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "dicom_cae_processed_total 30" in metrics and "dicom_cae_queue_depth 0" in metrics
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
        assert health["status"] == "ok" and health["received"] == 30


def test_the_node_report_shows_the_original_beside_the_derived_image(tmp_path, pipe):
    """Issue 16 item 15: the node's reports showed JPEG | reconstruction | correction only, though
    the node has the original in hand when it processes. It keeps it until the study's report."""
    with running_node(tmp_path, pipe) as node:
        proc = storescu(node, *[str(SAMPLES / f"ct_phantom_{i}.dcm") for i in (1, 2, 3)])
        assert proc.returncode == 0, proc.stderr
        page = wait_until(lambda: next(node.cfg.output_dir.glob("*/report.html"), None), what="the study report")
        assert "Columns: original | JPEG | reconstruction | |error| x4." in page.read_text()
        wait_until(lambda: not any(node.cfg.originals_dir.rglob("*.dcm")), what="the originals gone once shown")


def test_a_study_in_a_compressed_transfer_syntax(tmp_path, pipe):
    folder = tmp_path / "rle"
    folder.mkdir()
    for name in ("ct_phantom_1.dcm", "ct_phantom_2.dcm", "ct_phantom_3.dcm"):
        ds = pydicom.dcmread(SAMPLES / name)
        ds.compress(RLELossless)
        ds.save_as(folder / name, enforce_file_format=True)
    with running_node(tmp_path, pipe) as node:
        proc = storescu(node, "-xr", "+sd", str(folder))  # propose RLE Lossless
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: _processed(node) == 3, what="3 processed")
        received = _derived(node)
        assert len(received) == 3
        assert all(pydicom.dcmread(f).pixel_array.shape == (256, 256) for f in received)


def test_non_images_are_kept_and_corrupt_data_is_reported(tmp_path, pipe):
    ct = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    broken = ct.copy()
    broken.SOPInstanceUID = pydicom.uid.generate_uid()
    broken.PixelData = ct.PixelData[:1000]  # far shorter than Rows x Columns x 2
    with running_node(tmp_path, pipe) as node:
        proc = storescu(node, str(SAMPLES / "sr_not_an_image.dcm"))
        assert proc.returncode == 0, proc.stderr
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.is_established
        assert assoc.send_c_store(broken).Status == 0x0000  # stored durably; processing fails later
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["failed"] == 1 and node.counters.snapshot()["kept"] == 1,
                   what="one kept and one failed")
        kept = node.state.instances("kept")
        assert kept[0][3] == "no Pixel Data: not an image object (Basic Text SR Storage)"
        assert list(node.cfg.kept_dir.rglob("*.dcm"))
        failed = node.state.instances("failed")
        assert failed[0][0] == broken.SOPInstanceUID and "cannot decode Pixel Data" in failed[0][3]
        assert not _derived(node)


def test_unknown_calling_ae_title_and_host_are_rejected(tmp_path, pipe):
    with running_node(tmp_path, pipe, allowed_aets=["MODALITY"]) as node:
        ok = subprocess.run([dcmtk("echoscu"), "-aet", "MODALITY", "-aec", node.cfg.ae_title, "127.0.0.1", str(node.port)],
                            capture_output=True, text=True, env=peer_env())
        assert ok.returncode == 0
        bad = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", node.cfg.ae_title, "127.0.0.1", str(node.port)],
                             capture_output=True, text=True, env=peer_env())
        assert bad.returncode != 0
        assert "Association Rejected" in bad.stdout + bad.stderr
        assert node.counters.snapshot()["rejected"] == 1
    with running_node(tmp_path, pipe, allowed_hosts=["10.1.2.3"], data_dir=str(tmp_path / "n2")) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.is_rejected
        assert node.counters.snapshot()["rejected"] == 1


@pytest.mark.slow
def test_four_associations_at_once(tmp_path, pipe):
    src = sorted(shared("mr", "trio-mprage").glob("*.dcm"))[:40]
    with running_node(tmp_path, pipe) as node:
        results = [None] * 4

        def send(i):
            results[i] = storescu(node, *map(str, src[i::4]), aet=f"MOD{i}")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        wait_until(lambda: _processed(node) == 40, what="40 processed")
        assert len(_derived(node)) == 40


def test_tls_association_with_a_certificate_made_here(tmp_path, pipe):
    import ssl

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.pem"))
    for who in ("node", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(tmp_path / f"{who}.key"), "-out", str(tmp_path / f"{who}.csr"))
        openssl("x509", "-req", "-in", str(tmp_path / f"{who}.csr"), "-CA", str(tmp_path / "ca.pem"), "-CAkey",
                str(tmp_path / "ca.key"), "-CAcreateserial", "-days", "1", "-copy_extensions", "copy",
                "-out", str(tmp_path / f"{who}.pem"))
    tls = {"cert": str(tmp_path / "node.pem"), "key": str(tmp_path / "node.key"), "ca": str(tmp_path / "ca.pem"),
           "require_client_cert": True}
    with running_node(tmp_path, pipe, tls=tls) as node:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "ca.pem"))
        ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title, tls_args=(ctx, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(SAMPLES / "mr_nonsquare.dcm")).Status == 0x0000
        assoc.release()
        wait_until(lambda: _processed(node) == 1, what="1 processed")
        # Without a client certificate the handshake fails: no association.
        bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "ca.pem"))
        ae2 = AE(ae_title="MODALITY")
        ae2.add_requested_context(MRImageStorage)
        assoc2 = ae2.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title, tls_args=(bare, "127.0.0.1"))
        assert not assoc2.is_established


def test_settings_are_checked_with_the_setting_named(tmp_path):
    with pytest.raises(ConfigError, match="ae_title: an AE title is 1-16"):
        load(None, ae_title="A_TITLE_MUCH_TOO_LONG")
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('port = 4000\nquality = 20\n[forward]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n')
    cfg = load(cfg_file, quality=30)
    assert (cfg.port, cfg.quality, cfg.forward.ae_title) == (4000, 30, "PACS")
    cfg_file.write_text("colour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) colour"):
        load(cfg_file)
    with pytest.raises(ConfigError, match="tls.require_client_cert needs tls.ca"):
        load(None, tls={"cert": str(SAMPLES / "README.md"), "key": str(SAMPLES / "README.md"), "require_client_cert": True})


@pytest.mark.parametrize("text, named", [
    ('quality = "ten"\n', "quality must be a whole number, got 'ten'"),
    ('port = "11199"\n', "port must be a whole number, got '11199'"),
    ('study_quiet_s = "x"\n', "study_quiet_s must be a number, got 'x'"),
    ('[forward]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = "4242"\n', "forward.port must be a whole number, got '4242'"),
    ('allowed_aets = "CT01"\n', "allowed_aets must be a list of strings"),
    ("quality = 10.5\n", "quality must be a whole number, got 10.5"),
])
def test_a_setting_of_the_wrong_type_is_named_and_refused_without_a_traceback(tmp_path, text, named):
    """Issue 16 items 7-9: wrong value types in a real TOML file stop `serve` with exit 2 and
    one line naming the setting; a string for the access list is never read letter by letter;
    a fractional quality is refused before any instance can fail on it."""
    import subprocess
    import sys

    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "dicom_cae", "serve", "--config", str(cfg_file)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match=named.replace("(", "\\(").replace(".", "\\.")):
        load(cfg_file)


def test_an_access_list_of_titles_is_read_as_titles(tmp_path):
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('allowed_aets = ["CT01", "MR02"]\nstudy_quiet_s = 5\n')
    cfg = load(cfg_file)
    assert cfg.allowed_aets == ("CT01", "MR02") and cfg.study_quiet_s == 5.0


def test_a_port_in_use_or_a_locked_data_folder_stops_serve_before_tensorflow_loads(tmp_path):
    """Issue 16 item 6: the lock and the bind are tried before the model (TensorFlow) is
    imported, so a second node, or a port in use, stops at once. Seen with `python -X
    importtime`: no tensorflow module is imported before the error."""
    import os
    import socket
    import subprocess
    import sys

    from scp_node.node import lock_data_dir

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    base = [sys.executable, "-X", "importtime", "-m", "dicom_cae", "serve"]
    env = {**os.environ, "DICOM_CAE_TF_LOGS": "1"}  # TensorFlow's import not silenced: importtime shows it
    try:
        proc = subprocess.run([*base, "--port", str(port), "--data-dir", str(tmp_path / "a")],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
        assert "tensorflow" not in proc.stderr
    finally:
        busy.close()
    fd = lock_data_dir(tmp_path / "b")
    try:
        proc = subprocess.run([*base, "--port", "0", "--data-dir", str(tmp_path / "b")],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and "is using the data folder" in proc.stderr
        assert "tensorflow" not in proc.stderr
    finally:
        os.close(fd)


def test_no_received_text_can_start_a_log_line_through_an_exception():
    """Issue 16 item 4: an exception whose text carries a newline and a fake timestamp (as
    pynetdicom's "invalid DIMSE message" traceback quoted an over-long UID) cannot forge a log
    line: every line after a record's first starts with "  | ", control characters escaped."""
    import logging

    from scp_node.cli import OneLineFormatter

    fake = "1.2.3\n2026-01-01 00:00:00,000 INFO scp_node.server: stored\rforged"
    try:
        raise ValueError(f"invalid UID {fake}")
    except ValueError:
        import sys

        record = logging.LogRecord("pynetdicom.dsutils", logging.ERROR, __file__, 1, "Received %s", (fake,), sys.exc_info())
    text = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    first, *rest = text.split("\n")
    assert rest and all(line.startswith("  | ") for line in rest)
    assert "\r" not in text and first.count("2026-01-01") == 1  # the fake timestamp escaped into the first line
    assert any("ValueError: invalid UID 1.2.3" in line for line in rest)


def _trickle(port, stop, sockets, *, silent=False):
    """A peer that connects and then sends an A-ASSOCIATE-RQ one byte a second (or nothing)."""
    import socket as _socket

    s = _socket.create_connection(("127.0.0.1", port))
    sockets.append(s)
    header = bytes([0x01, 0x00]) + (4000).to_bytes(4, "big") + bytes([0x00, 0x01, 0x00, 0x00]) + b"DICOM_CAE       "
    for i in range(len(header)):
        if stop.wait(1.0):
            return
        if not silent:
            try:
                s.send(header[i : i + 1])
            except OSError:
                return


@pytest.mark.slow
@pytest.mark.parametrize("silent", [False, True], ids=["one byte a second", "silent"])
def test_thirty_slow_senders_do_not_shut_out_a_modality(tmp_path, pipe, silent):
    """Issue 16 item 3: 30 connections that trickle an A-ASSOCIATE-RQ (or send nothing) held
    pynetdicom's association slots and every real sender was rejected. Now connections not yet
    associated are capped (the oldest waiting goes first) and timed out, and only associations
    count against max_associations: with 30 slow peers connected, DCMTK storescu stores a
    28-image study, and the slow peers are closed by the node."""
    import threading

    from pydicom.uid import generate_uid

    files = []
    for i in range(28):
        ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["slow", str(i)])
        path = tmp_path / f"ct{i:02d}.dcm"
        ds.save_as(path)
        files.append(str(path))
    stop, sockets = threading.Event(), []
    with running_node(tmp_path, pipe) as node:
        peers = [threading.Thread(target=_trickle, args=(node.port, stop, sockets), kwargs={"silent": silent}, daemon=True)
                 for _ in range(30)]
        for t in peers:
            t.start()
        try:
            wait_until(lambda: len(sockets) == 30, what="30 slow peers connected")
            proc = storescu(node, *files)
            assert proc.returncode == 0, proc.stderr
            wait_until(lambda: node.counters.snapshot()["received"] == 28, what="28 instances received")
            wait_until(lambda: node.counters.snapshot()["rejected"] >= 22, what="the slow peers closed by the node")
        finally:
            stop.set()
            for s in sockets:
                s.close()


@pytest.mark.slow
@pytest.mark.parametrize("settings,convert_args", [
    ({"quality": 20, "value_mapping": "minmax", "batch_size": 2}, ["--quality", "20", "--value-mapping", "minmax"]),
    ({"target_psnr": 32.0}, ["--target-psnr", "32"]),
], ids=["quality and mapping", "fidelity target"])
def test_settings_reach_the_worker_processes_intact(tmp_path, pipe, settings, convert_args):
    """Issue 19 (settings reaching worker processes): a node processing in 2 worker processes
    writes what `convert` writes in this process with the same settings: the same derived UIDs
    (they depend on every setting), the same quality and mapping in the tags, the same pixels."""
    import numpy as np

    from dicom_cae import cli

    files = [SAMPLES / f"ct_phantom_{i}.dcm" for i in (1, 2, 3)]
    src = tmp_path / "in"
    src.mkdir()
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    assert cli.main(["convert", "--no-progress", "--workers", "0", *convert_args, str(src), str(tmp_path / "convert")]) == 0
    expected = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in derived_images(tmp_path / "convert"))}
    assert len(expected) == 3
    with running_node(tmp_path, pipe, workers=2, **settings) as node:
        proc = storescu(node, *map(str, files))
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: _processed(node) == 3, timeout=240, what="3 processed by the worker processes")
        got = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in _derived(node))}
    assert set(got) == set(expected)
    for uid, ds in got.items():
        mine, theirs = private_tags.read(ds), private_tags.read(expected[uid])
        for key in ("JPEGQuality", "ValueMapping", "TargetPSNR", "CodingSize", "ModelName", "WeightsSHA256", "EdgeFilter"):
            assert mine.get(key) == theirs.get(key), key
        assert ds.SeriesInstanceUID == expected[uid].SeriesInstanceUID
        assert np.array_equal(ds.pixel_array, expected[uid].pixel_array)
