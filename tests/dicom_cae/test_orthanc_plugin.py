"""dicom-cae inside Orthanc (its Python plugin): a real Orthanc started by `dicom-cae orthanc`,
studies sent by DCMTK storescu, the derived series found by findscu, retrieved by movescu to a
DCMTK storescp, listed by QIDO-RS and fetched by WADO-RS (the DICOMweb plugin)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_cae import cli, private_tags
from tests.conftest import SAMPLES, dcmtk, free_port, missing, need_tool, peer_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
CT_STUDY = ["ct_phantom_1.dcm", "ct_phantom_2.dcm", "ct_phantom_3.dcm", "sr_not_an_image.dcm"]
MR_STUDY = ["mr_nonsquare.dcm"]


pytestmark = pytest.mark.slow  # real peers and processes: the full suite, not the fast tier


def _bad_ct(folder: Path) -> Path:
    """A CT instance of the sample CT study that storescu sends but whose pixels cannot be
    decoded (it claims twice the rows its Pixel Data holds)."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["orthanc plugin test", "bad"])
    ds.InstanceNumber = 99
    ds.Rows = 2 * ds.Rows
    path = folder / "bad_rows.dcm"
    ds.save_as(path)
    return path


def _plugin_present() -> None:
    need_tool("Orthanc")
    if not any(Path(d).glob("libOrthancPython.so*") for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")):
        missing("Orthanc's Python plugin is missing (apt-get install orthanc-python)")


class Orthanc:
    def __init__(self, data: Path) -> None:
        self.data, self.http, self.dicom = data, free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.data.parent / f"{self.data.name}-orthanc.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_cae", "orthanc", "--data-dir", str(self.data), "--http-port", str(self.http),
             "--dicom-port", str(self.dicom), "--stable-age", "2"],
            env=peer_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.get("/dicom-cae/health") is not None, timeout=120, what="Orthanc with the plugin")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def get(self, path: str, raw: bool = False):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
                return r.read() if raw else json.loads(r.read())
        except OSError:
            return None

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def send(self, files: list[Path]) -> None:
        subprocess.run([dcmtk("storescu"), "-nh", "-aec", "DICOM_CAE", "127.0.0.1", str(self.dicom), *map(str, files)],
                       env=peer_env(), check=False, capture_output=True, timeout=120)

    def series(self, study_uid: str) -> dict[str, dict]:
        """Series of the study in Orthanc, by Series Instance UID: modality, description, instance count.
        Every Orthanc study of that Study Instance UID (Orthanc keeps one per patient: the poison
        corpus puts two patients under one UID, and the report goes to one of them)."""
        ids = json.loads(self.request("POST", "/tools/lookup", study_uid.encode()))
        out = {}
        for s in (s for study in ids if study["Type"] == "Study" for s in self.get(f"/studies/{study['ID']}/series") or []):
            tags = s["MainDicomTags"]
            out[tags["SeriesInstanceUID"]] = {"modality": tags.get("Modality"), "instances": len(s["Instances"]),
                                              "description": tags.get("SeriesDescription", ""), "id": s["ID"]}
        return out


@contextlib.contextmanager
def running(data: Path):
    o = Orthanc(data)
    o.start()
    try:
        yield o
    finally:
        o.stop()


def _processes() -> list[tuple[int, int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out.append((int(d.name), ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _children_of(pid: int) -> list[int]:
    return [p for p, ppid, _ in _processes() if ppid == pid]


def _orphaned_workers() -> list[int]:
    return [p for p, ppid, cmd in _processes() if ppid == 1 and "multiprocessing.spawn" in cmd]


def _uid(name: str) -> str:
    return str(pydicom.dcmread(SAMPLES / name, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """An Orthanc with the plugin that received the CT and the MR sample studies and processed them."""
    _plugin_present()
    data = tmp_path_factory.mktemp("orthanc") / "data"
    data.parent.joinpath("extra").mkdir()
    with running(data) as o:
        o.send([SAMPLES / f for f in CT_STUDY + MR_STUDY] + [_bad_ct(data.parent / "extra")])
        for uid in (_uid(CT_STUDY[0]), _uid(MR_STUDY[0])):
            wait_until(lambda uid=uid: any(v["modality"] == "DOC" for v in o.series(uid).values()), timeout=240,
                       what="the derived series and the report in Orthanc")
        yield o


def test_derived_series_and_report_appear_in_orthanc_and_bad_input_is_recorded(processed):
    o = processed
    ct = o.series(_uid(CT_STUDY[0]))
    images = [v for v in ct.values() if v["modality"] == "CT"]
    assert len(images) == 2 and sorted(v["instances"] for v in images) == [3, 4]  # 4 sent (one that cannot be decoded), 3 derived
    assert [v["instances"] for v in ct.values() if v["modality"] == "DOC"] == [1]
    health = o.get("/dicom-cae/health")
    assert health["queue"]["done"] == 2 and health["queue"]["pending"] == 0
    failed = {f["reason"] for f in health["failed_instances"]}
    assert len(failed) == 1 and "Pixel Data" in next(iter(failed)), health
    assert all(f["cause"] == "input" for f in health["failed_instances"])
    assert o.get("/system") is not None and subprocess.run(
        [dcmtk("echoscu"), "-aec", "DICOM_CAE", "127.0.0.1", str(o.dicom)], env=peer_env(), capture_output=True).returncode == 0
    # The private block is named in Orthanc's dictionary.
    derived = next(v for v in images if v["instances"] == 3)
    inst = o.get(f"/series/{derived['id']}/instances")[0]["ID"]
    tags = o.get(f"/instances/{inst}/tags")
    assert any(v.get("Name") == "ModelWeight" for v in tags.values()), [v.get("Name") for v in tags.values()][:40]
    reports = [o.get(f"/dicom-cae/studies/{s}/report", raw=True) or b"" for s in o.get("/studies")]
    assert len([r for r in reports if b"study report" in r]) == 2


def test_find_move_qido_and_wado_retrieve_what_convert_writes(processed, tmp_path):
    o = processed
    study = _uid(CT_STUDY[0])
    derived = next(uid for uid, v in o.series(study).items() if v["modality"] == "CT" and v["instances"] == 3)
    port, got = free_port(), tmp_path / "moved"
    for aet, p in (("FINDSCU", 0), ("MOVESCU", 0), ("STORESCP", port)):  # DCMTK's AE titles, known to this PACS
        o.request("PUT", f"/modalities/{aet.lower()}", json.dumps({"AET": aet, "Host": "127.0.0.1", "Port": p or 104}).encode())
    # C-FIND at series level
    find = subprocess.run([dcmtk("findscu"), "-S", "-aec", "DICOM_CAE", "-k", "QueryRetrieveLevel=SERIES",
                           "-k", f"StudyInstanceUID={study}", "-k", "SeriesInstanceUID", "127.0.0.1", str(o.dicom)],
                          env=peer_env(), capture_output=True, text=True, timeout=60)
    assert derived in find.stdout + find.stderr
    # C-MOVE to a DCMTK storescp
    got.mkdir()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(got), str(port)], env=peer_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port), timeout=30, what="storescp to listen")  # (else the move's sub-operations fail)
        subprocess.run([dcmtk("movescu"), "-S", "-aec", "DICOM_CAE", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=SERIES",
                        "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={derived}", "127.0.0.1", str(o.dicom)],
                       env=peer_env(), capture_output=True, timeout=120)
        wait_until(lambda: len(list(got.iterdir())) == 3, timeout=60, what="the moved instances")
    finally:
        scp.terminate()
        scp.wait(timeout=30)
    # QIDO-RS lists it; WADO-RS returns what convert writes for the same files
    qido = o.get(f"/dicom-web/studies/{study}/series")
    assert derived in {s["0020000E"]["Value"][0] for s in qido}
    src = tmp_path / "src"
    src.mkdir()
    for f in CT_STUDY:
        shutil.copy(SAMPLES / f, src / f)
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--no-progress", "--workers", "0"]) == 0
    ours = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in (tmp_path / "out").rglob("*.dcm")
            if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"}
    parts = _wado(o, f"/dicom-web/studies/{study}/series/{derived}")
    assert len(parts) == 3
    for data in parts:
        theirs = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        mine = ours[theirs.SOPInstanceUID]
        assert np.array_equal(theirs.pixel_array, mine.pixel_array)
        a, b = private_tags.read(theirs), private_tags.read(mine)
        assert a == b


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wado(o: Orthanc, path: str) -> list[bytes]:
    """The application/dicom parts of a WADO-RS multipart/related answer (PS3.18 8.6.1.2)."""
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{o.http}{path}"), timeout=60) as r:
        kind, body = r.headers["Content-Type"], r.read()
    boundary = next(p.split("=", 1)[1].strip('"') for p in kind.split(";") if p.strip().startswith("boundary="))
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        if b"application/dicom" in head:
            parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


def test_a_study_sent_again_and_a_restart_derive_nothing_twice(processed):
    o = processed
    study = _uid(CT_STUDY[0])
    before = o.series(study)
    o.send([SAMPLES / f for f in CT_STUDY])
    wait_until(lambda: o.get("/dicom-cae/health")["queue"]["pending"] == 0 and o.get("/dicom-cae/health")["processing"] is None,
               timeout=120, what="the plugin idle")
    import time

    time.sleep(4)  # past StableAge: the study was stable again
    wait_until(lambda: o.get("/dicom-cae/health")["processing"] is None, timeout=120, what="the plugin idle")
    after = o.series(study)
    assert {k: v["instances"] for k, v in after.items()} == {k: v["instances"] for k, v in before.items()}


def test_orthanc_killed_while_a_study_is_processed_completes_it_after_a_restart(tmp_path):
    """SIGKILL once derived instances are being written; after a restart the study is completed
    from the durable queue: every image derived once, one report, nothing twice."""
    _plugin_present()
    from tests.conftest import shared

    series = shared("ct", "lung-dx-a0002-b40f")  # 30 slices: two batches of 16
    files = sorted(p for p in series.rglob("*") if p.is_file())
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    data = tmp_path / "data"
    o = Orthanc(data)
    o.start()
    try:
        o.send(files)
        derived = data / "dicom-cae" / "derived"
        wait_until(lambda: any(derived.rglob("*.dcm")), timeout=240, what="the first derived instances")
        orthanc_pid = o.proc.pid
        o.stop(signal.SIGKILL)
    finally:
        o.stop()
    assert len([p for p in derived.rglob("*.dcm")]) < len(files)  # killed halfway
    # Its worker processes leave with it (they would wait for work for ever, each with a model).
    wait_until(lambda: not _children_of(orthanc_pid) and not _orphaned_workers(), timeout=30, what="the workers to end")
    with running(data) as o:
        wait_until(lambda: any(v["modality"] == "DOC" for v in o.series(study).values()), timeout=300,
                   what="the study completed after the restart")
        counts = sorted((v["modality"], v["instances"]) for v in o.series(study).values())
        assert counts == [("CT", len(files)), ("CT", len(files)), ("DOC", 1)], counts
        # The plugin marks the study done after its last upload (the report): wait for that mark.
        wait_until(lambda: o.get("/dicom-cae/health")["queue"]["pending"] == 0, timeout=60, what="the study marked done")
        assert o.get("/dicom-cae/health")["queue"] == {"pending": 0, "problem": 0, "done": 1}


def test_a_study_reprocessed_with_another_quality_gets_another_derived_series(processed):
    """POST /dicom-cae/studies/{id}/reprocess with other settings: a second derived series (its
    UIDs depend on the settings) beside the first, which stays; a mistyped setting is refused."""
    o = processed
    uid = _uid(MR_STUDY[0])
    study = next(i["ID"] for i in json.loads(o.request("POST", "/tools/lookup", uid.encode())) if i["Type"] == "Study")
    before = o.series(uid)
    import urllib.error

    for body, word in ((b'{"quality": 0}', b"quality"), (b'{"qualty": 20}', b"unknown setting")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            o.request("POST", f"/dicom-cae/studies/{study}/reprocess", body)
        assert refused.value.code == 400 and word in refused.value.read()
    o.request("POST", f"/dicom-cae/studies/{study}/reprocess", b'{"quality": 20}')
    wait_until(lambda: len([v for v in o.series(uid).values() if v["modality"] == "MR"]) == 3, timeout=120,
               what="a second derived series")
    wait_until(lambda: o.get("/dicom-cae/health")["processing"] is None, timeout=120, what="the plugin idle")
    after = o.series(uid)
    assert set(before) < set(after)
    assert any("q20" in v["description"] for v in after.values())
    # One report in the report series: the current one, about both derived series (the earlier
    # one, about the first only, is gone from Orthanc as from the plugin's store).
    (doc,) = [v for v in after.values() if v["modality"] == "DOC"]
    assert doc["instances"] == 1
    (inst,) = o.get(f"/series/{doc['id']}/instances")
    report = pydicom.dcmread(BytesIO(o.get(f"/instances/{inst['ID']}/file", raw=True)))
    referenced = {r.ReferencedSOPInstanceUID for r in report.SourceInstanceSequence}
    derived = [v for v in after.values() if v["modality"] == "MR" and v["description"].startswith("CAE ")]
    assert len(derived) == 2 and len(referenced) == sum(v["instances"] for v in derived)


def test_a_study_of_poison_cases_derives_the_good_ones_and_records_the_bad(tmp_path, raw_sending):
    """Issue 18: the poison corpus of the node's tests (every case a node accepts) sent into
    Orthanc as one study, each file as its bytes are. Of what Orthanc stores, every good image
    is derived, every bad one recorded with its reason (failed_instances in /dicom-cae/health
    and the instance's DicomCaeError metadata), every dataset that is not an image we code named
    with its reason (not_images); Orthanc answers C-ECHO after it and derives a normal study."""
    _plugin_present()
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from tests.scp_node.test_poison import CASES, CT, MR, POISON_STUDY, SR, _write

    cases = [c for c in CASES if c.status == 0x0000]
    folder = tmp_path / "corpus"
    folder.mkdir()
    written = [(case, *_write(case, folder)) for case in cases]
    with running(tmp_path / "data") as o:
        ae = AE(ae_title="MODALITY")
        for uid in (CT, MR, SR):
            for syntax in {c.syntax for c in cases}:
                ae.add_requested_context(uid, syntax)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", o.dicom, ae_title="DICOM_CAE")
        assert assoc.is_established
        statuses = {case.name: assoc.send_c_store(path).Status for case, path, _ in written}
        assoc.release()
        stored = {}
        for case, _, ds in written:
            found = json.loads(o.request("POST", "/tools/lookup", str(ds.SOPInstanceUID).encode()))
            if statuses[case.name] == 0x0000 and found:
                stored[case.name] = next(i["ID"] for i in found if i["Type"] == "Instance")
        # (Orthanc refuses an instance without a Study or Series Instance UID: its hierarchy needs them.)
        processed = [c for c in cases if c.outcome == "processed" and c.name in stored]
        assert len(processed) >= 5 and len([c for c in cases if c.outcome == "failed" and c.name in stored]) >= 5, statuses
        study = next(i["ID"] for i in json.loads(o.request("POST", "/tools/lookup", POISON_STUDY.encode()))
                     if i["Type"] == "Study")

        def idle() -> bool:
            health = o.get("/dicom-cae/health")
            return health["queue"]["pending"] == 0 and health["processing"] is None and health["queue"]["done"] >= 1

        wait_until(lambda: any(v["modality"] == "DOC" for v in o.series(POISON_STUDY).values()), timeout=300,
                   what="the poison study's report")
        wait_until(idle, timeout=120, what="the plugin idle")
        health = o.get("/dicom-cae/health")
        # Every good image derived (the stand-in series UIDs put some into series of their own).
        derived = sum(v["instances"] for v in o.series(POISON_STUDY).values()
                      if v["description"].startswith("CAE ") and v["modality"] != "DOC")  # images, not the reports
        assert derived == len(processed), (derived, [c.name for c in processed], health)
        failed = {f["instance"]: f for f in health["failed_instances"]}
        not_images = {f["instance"]: f for f in health["not_images"]["recent"]}
        assert health["not_images"]["count"] == len([c for c in cases if c.outcome == "kept" and c.name in stored])
        for case in cases:
            if case.name not in stored:
                continue
            iid = stored[case.name]
            if case.outcome == "failed":
                assert failed[iid]["reason"] and failed[iid]["cause"] == "input", (case.name, health)
                assert failed[iid]["reason"] in o.get(f"/instances/{iid}/metadata/DicomCaeError", raw=True).decode()
            elif case.outcome == "kept":
                assert not_images[iid]["reason"], (case.name, health)
            else:
                assert iid not in failed and iid not in not_images, case.name
        assert health["queue"]["problem"] == 0 and study
        # Orthanc is still up: C-ECHO, and a normal study afterwards is derived.
        assert subprocess.run([dcmtk("echoscu"), "-aec", "DICOM_CAE", "127.0.0.1", str(o.dicom)], env=peer_env(),
                              capture_output=True).returncode == 0
        normal = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
        normal.StudyInstanceUID, normal.SOPInstanceUID = generate_uid(), generate_uid()
        normal.save_as(tmp_path / "normal.dcm", enforce_file_format=True)
        o.send([tmp_path / "normal.dcm"])
        wait_until(lambda: any(v["modality"] == "DOC" for v in o.series(normal.StudyInstanceUID).values()), timeout=240,
                   what="the normal study derived after the poison one")
