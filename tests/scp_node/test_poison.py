"""No single instance stops the node: a corpus of bad and unusual datasets, each sent by C-STORE
over a real association, each with its expected status and outcome, then a normal instance that
must be processed and reported, and a C-ECHO (issue 10, items 1-6 and 9)."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_cae import private_tags
from dicom_cae.pipeline import DEFAULT_QUALITY
from dicom_cae.weights import DEFAULT_MODEL
from tests.conftest import SAMPLES, dciodvfy_errors, wait_until
from tests.scp_node.test_node import running_node

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
POISON_STUDY = generate_uid()


def ct() -> Dataset:
    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    ds.StudyInstanceUID = POISON_STUDY
    ds.SOPInstanceUID = generate_uid()
    return ds


def with_(**changes) -> Callable[[], Dataset]:
    """A CT of the poison study with attributes changed (None deletes, "" empties)."""

    def make() -> Dataset:
        ds = ct()
        for kw, value in changes.items():
            if value is None:
                del ds[kw]
            else:
                ds.add_new(pydicom.datadict.tag_for_keyword(kw), pydicom.datadict.dictionary_VR(kw), value)
        return ds

    return make


def garbage(keyword: str) -> Callable[[], Dataset]:
    """A CT whose ``keyword`` (a DS) holds bytes that are not a number (sent in Implicit VR)."""

    def make() -> Dataset:
        ds = ct()
        setattr(ds, keyword, GARBAGE_MARK)  # replaced by GARBAGE in the file's bytes
        return ds

    return make


GARBAGE_MARK, GARBAGE = "9.87654E+21", b"abc-not-num"  # same length; a UID never holds an 'E'


def sr_without_sop_instance() -> Dataset:
    ds = pydicom.dcmread(SAMPLES / "sr_not_an_image.dcm")
    del ds.SOPInstanceUID
    return ds


def rgb() -> Dataset:
    ds = ct()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()
    return ds


def modality_lut_sequence() -> Dataset:
    ds = ct()
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = np.arange(4, dtype="<u2").tobytes()
    ds.ModalityLUTSequence = Sequence([item])
    return ds


def truncated() -> Dataset:
    ds = ct()
    ds.PixelData = ds.PixelData[:1000]
    return ds


def no_pixels() -> Dataset:
    ds = ct()
    del ds.PixelData
    return ds


def giant_header() -> Dataset:
    ds = ct()
    ds.Rows = ds.Columns = 60000
    ds.NumberOfFrames = "1000"
    return ds


def bad_reference() -> Dataset:
    ds = ct()
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "../../evil"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.FrameOfReferenceUID = "1.2.3/4"
    return ds


def mr_anisotropic_zero_spacing() -> Dataset:
    ds = pydicom.dcmread(SAMPLES / "mr_nonsquare.dcm")  # 192 x 160
    ds.StudyInstanceUID = POISON_STUDY
    ds.SOPInstanceUID = generate_uid()
    ds.PixelSpacing = ["0", "0"]
    del ds.SeriesDescription
    return ds


@dataclass
class Case:
    name: str
    make: Callable[[], Dataset]
    status: int
    outcome: str  # processed | failed | kept | refused
    meta_class: str | None = None  # what the request (file meta) says, when not the dataset's
    meta_instance: str | None = None
    syntax: str = ExplicitVRLittleEndian
    check: Callable[[Path], None] | None = None


def _no_invalid_uid(path: Path) -> None:
    ds = pydicom.dcmread(path)
    assert "FrameOfReferenceUID" not in ds and "ReferencedSOPInstanceUID" not in ds.ReferencedImageSequence[0]
    assert not [e for e in dciodvfy_errors(path) if "UI" in e and "invalid" in e.lower()]
    warnings = private_tags.read(ds)["Warnings"]
    assert any("FrameOfReferenceUID" in w for w in warnings)


def _garbage_left_out(path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "SliceThickness" not in ds
    assert "SliceThickness in the source cannot be decoded: left out" in private_tags.read(ds)["Warnings"]


def _stand_in_series(path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert any("Series Instance UID missing" in w for w in private_tags.read(ds)["Warnings"])


def _stand_in_study(path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.StudyInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
    assert any("Study Instance UID missing" in w for w in private_tags.read(ds)["Warnings"])


def _aspect_instead_of_zero_spacing(path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PixelSpacing" not in ds
    assert [int(v) for v in ds.PixelAspectRatio] == [6, 5]  # 192 rows, 160 columns onto 256 x 256
    assert ds.SeriesDescription == f"CAE {DEFAULT_MODEL} q{DEFAULT_QUALITY} reconstruction"
    assert any("PixelSpacing" in w for w in private_tags.read(ds)["Warnings"])


CASES = [
    Case("normal CT", ct, 0x0000, "processed"),
    Case("implicit VR", ct, 0x0000, "processed", syntax=ImplicitVRLittleEndian),
    Case("SamplesPerPixel empty", with_(SamplesPerPixel=""), 0x0000, "failed"),
    Case("BitsAllocated empty", with_(BitsAllocated=""), 0x0000, "failed"),
    Case("BitsStored empty", with_(BitsStored=""), 0x0000, "failed"),
    Case("Rows empty", with_(Rows=""), 0x0000, "failed"),
    Case("PixelRepresentation 2", with_(PixelRepresentation=2), 0x0000, "failed"),
    Case("BitsStored above BitsAllocated", with_(BitsStored=20), 0x0000, "failed"),
    Case("NumberOfFrames 0", with_(NumberOfFrames="0"), 0x0000, "failed"),
    Case("Rows 4", with_(Rows=4), 0x0000, "failed"),
    Case("RescaleSlope NaN", with_(RescaleSlope="NaN"), 0x0000, "failed"),
    Case("RescaleIntercept inf", with_(RescaleIntercept="inf"), 0x0000, "failed"),
    Case("RescaleSlope 0", with_(RescaleSlope="0"), 0x0000, "failed"),
    Case("RescaleSlope not a number", garbage("RescaleSlope"), 0x0000, "failed", syntax=ImplicitVRLittleEndian),
    Case("SliceThickness not a number", garbage("SliceThickness"), 0x0000, "processed", syntax=ImplicitVRLittleEndian,
         check=_garbage_left_out),
    Case("truncated Pixel Data", truncated, 0x0000, "failed"),
    Case("header promising 3.6 TB", giant_header, 0x0000, "failed"),
    Case("no Pixel Data", no_pixels, 0x0000, "kept"),
    Case("RGB", rgb, 0x0000, "kept"),
    Case("BitsAllocated 32", with_(BitsAllocated=32, BitsStored=32, HighBit=31), 0x0000, "kept"),
    Case("no PhotometricInterpretation", with_(PhotometricInterpretation=None), 0x0000, "kept"),
    Case("Modality LUT Sequence", modality_lut_sequence, 0x0000, "kept"),
    Case("SR without SOP Instance UID", sr_without_sop_instance, 0xC210, "refused", meta_class=SR,
         meta_instance="1.2.3.99"),
    Case("CT without SOP Class UID", with_(SOPClassUID=None), 0xC210, "refused", meta_class=CT),
    Case("SOP Instance UID ../../evil", with_(SOPInstanceUID="../../evil"), 0xC210, "refused"),
    Case("SOP Instance UID with a newline", with_(SOPInstanceUID="1.2.3\nFORGED log line"), 0xC210, "refused"),
    Case("SOP Instance UID empty", with_(SOPInstanceUID=""), 0xC210, "refused", meta_instance="1.2.3.4"),
    Case("SOP Class differs from the request", ct, 0xA900, "refused", meta_class=MR),
    Case("SOP Instance differs from the request", ct, 0xA900, "refused", meta_instance="1.2.3.4.5"),
    Case("no Series Instance UID", with_(SeriesInstanceUID=None), 0x0000, "processed", check=_stand_in_series),
    Case("Series Instance UID a/b", with_(SeriesInstanceUID="a/b"), 0x0000, "processed"),
    Case("no Study Instance UID", with_(StudyInstanceUID=None), 0x0000, "processed", check=_stand_in_study),
    Case("invalid UIDs inside", bad_reference, 0x0000, "processed", check=_no_invalid_uid),
    Case("Pixel Spacing 0\\0, non-square, no description", mr_anisotropic_zero_spacing, 0x0000, "processed",
         check=_aspect_instead_of_zero_spacing),
    Case("deflated", ct, 0x0000, "processed", syntax=DeflatedExplicitVRLittleEndian),
]


def _write(case: Case, folder: Path) -> tuple[Path, Dataset]:
    ds = case.make()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = case.meta_class or str(ds.get("SOPClassUID"))
    ds.file_meta.MediaStorageSOPInstanceUID = case.meta_instance or str(ds.get("SOPInstanceUID"))
    ds.file_meta.TransferSyntaxUID = case.syntax
    path = folder / f"{len(list(folder.iterdir())):02d}.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)  # the file meta as given, even where it contradicts the dataset
    if GARBAGE_MARK in (getattr(ds.get("RescaleSlope"), "original_string", ""), getattr(ds.get("SliceThickness"), "original_string", "")):
        path.write_bytes(path.read_bytes().replace(GARBAGE_MARK.encode(), GARBAGE, 1))
    return path, ds


def _associate(node, syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)):
    ae = AE(ae_title="MODALITY")
    for uid in (CT, MR, SR):
        for syntax in syntaxes:  # one context each: a file is sent in its own syntax, unconverted
            ae.add_requested_context(uid, syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
    assert assoc.is_established
    return assoc


def test_a_corpus_of_bad_datasets_stops_nothing(tmp_path, pipe, raw_sending, caplog):
    caplog.set_level(logging.INFO, logger="scp_node")
    caplog.set_level(logging.INFO, logger="dicom_cae")
    folder = tmp_path / "corpus"
    folder.mkdir()
    written = [(case, *_write(case, folder)) for case in CASES]
    assert len(written) >= 30
    with running_node(tmp_path, pipe, study_quiet_s=0.5) as node:
        assoc = _associate(node)
        statuses = {case.name: assoc.send_c_store(path).Status for case, path, _ in written}
        assert statuses == {case.name: case.status for case in CASES}
        # After all of it, a normal instance of another study is processed and reported ...
        normal = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
        normal.StudyInstanceUID, normal.SOPInstanceUID = generate_uid(), generate_uid()
        normal_path = folder / "normal.dcm"
        normal.save_as(normal_path, enforce_file_format=True)
        assert assoc.send_c_store(normal_path).Status == 0x0000
        # ... and the node still answers C-ECHO.
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        report = node.cfg.output_dir / normal.StudyInstanceUID / "report.json"
        wait_until(report.exists, timeout=120, what="the normal study's report")
        wait_until(lambda: not node.spool.pending(), what="an empty spool")

        by_sop = {row[0]: row for row in node.state.instances()}
        refused = 0
        for case, path, ds in written:
            sop = str(ds.get("SOPInstanceUID", ""))
            if case.outcome == "refused":
                refused += 1
                assert sop not in by_sop, case.name
                continue
            assert by_sop[sop][2] == case.outcome, (case.name, by_sop[sop][3])
            if case.check:
                out = Path(node.state.output_of(sop))
                case.check(out)
        counts = node.counters.snapshot()
        assert counts["refused"] == refused
        assert counts["failed"] == sum(c.outcome == "failed" for c in CASES)
        assert counts["kept"] == sum(c.outcome == "kept" for c in CASES)
        assert counts["processed"] == sum(c.outcome == "processed" for c in CASES) + 1
        # Every failed instance says why, in words, beside its copy.
        reasons = {row[0]: row[3] for row in node.state.instances("failed")}
        assert all(reasons.values()) and not any("Traceback" in r for r in reasons.values())
        sop_of = {case.name: str(ds.get("SOPInstanceUID")) for case, _, ds in written}
        assert reasons[sop_of["SamplesPerPixel empty"]] == "SamplesPerPixel is present but empty"
        assert "RescaleSlope 'NaN' is not a finite, non-zero number" in reasons[sop_of["RescaleSlope NaN"]]
        # The poison study's report was written too: no NaN stopped it.
        poison = json.loads((node.cfg.output_dir / POISON_STUDY / "report.json").read_text())
        assert poison["images"] >= 3 and poison["regression"]["r2"] is not None
        assert node.health()["status"] == "ok"
    # A received string never forges a log line: every record of the run (ours and pynetdicom's,
    # with their exception text) through the node's own formatter; a line that does not start
    # with a record's timestamp is a record's continuation ("  | ").
    from scp_node.cli import OneLineFormatter

    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("scp_node", "dicom_cae"))]
    assert any("FORGED" in m for m in ours) and not any("FORGED" in m and "\n" in m for m in ours)
    formatter = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    lines = "\n".join(formatter.format(r) for r in caplog.records).split("\n")
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
    assert len(caplog.records) > 53 and all(stamp.match(line) or line.startswith("  | ") for line in lines)
    assert not any(line.startswith("FORGED") or "\r" in line for line in lines)


def test_a_deflated_dataset_that_inflates_past_the_limit_is_refused(tmp_path, pipe, raw_sending):
    ds = ct()
    ds.PixelData = bytes(8 << 20)  # 8 MiB of zeros: a few kB once deflated
    ds.Rows, ds.Columns = 2048, 2048
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 100_000
    with running_node(tmp_path, pipe, max_instance_bytes=4 << 20) as node:
        assoc = _associate(node)
        assert assoc.send_c_store(path).Status == 0xA700
        assoc.release()
        assert not node.spool.pending() and node.counters.snapshot()["refused"] == 1


def test_an_oversized_dataset_is_refused_while_it_arrives(tmp_path, pipe):
    ds = ct()
    ds.Rows, ds.Columns = 4096, 4096
    ds.PixelData = np.random.default_rng(0).integers(0, 4000, (4096, 4096), dtype=np.uint16).tobytes()  # 32 MiB
    received = []
    with running_node(tmp_path, pipe, max_instance_bytes=1 << 20, max_pdu=16384) as node:
        from pynetdicom import evt

        assoc = AE(ae_title="MODALITY")
        assoc.add_requested_context(CT, ExplicitVRLittleEndian)
        a = assoc.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title,
                            evt_handlers=[(evt.EVT_PDU_SENT, lambda e: received.append(1))])
        assert a.is_established
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        status = a.send_c_store(ds)
        assert not status  # no status: the node aborted the association
        wait_until(lambda: a.is_aborted, timeout=10, what="the A-ABORT")
        # It stopped well before the whole 32 MiB had been sent in 16 kB PDUs (about 2,050 of them).
        assert len(received) < 1024
        assert node.counters.snapshot()["refused"] == 1 and not node.spool.pending()
        # ... and still receives.
        small = _associate(node)
        assert small.send_c_echo().Status == 0x0000
        small.release()


def test_the_same_file_four_times_in_one_association_is_processed_once(tmp_path, pipe):
    from tests.scp_node.test_node import storescu

    with running_node(tmp_path, pipe) as node:
        f = str(SAMPLES / "ct_phantom_1.dcm")
        proc = storescu(node, f, f, f, f)
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: not node.spool.pending() and node.worker.idle.is_set(), what="an empty spool")
        counts = node.counters.snapshot()
        assert (counts["received"], counts["processed"], counts["resent"], counts["failed"]) == (4, 1, 3, 0)
        assert not list(node.cfg.failed_dir.rglob("*.dcm"))
        # Resent after it was processed: still once.
        proc = storescu(node, f)
        wait_until(lambda: node.counters.snapshot()["resent"] == 4, what="the fifth copy recognised")
        assert node.counters.snapshot()["processed"] == 1


def test_another_image_under_a_used_sop_instance_uid_is_set_aside(tmp_path, pipe):
    first = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    second = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
    second.SOPInstanceUID = first.SOPInstanceUID
    with running_node(tmp_path, pipe) as node:
        assoc = _associate(node)
        assert assoc.send_c_store(first).Status == 0x0000
        wait_until(lambda: node.counters.snapshot()["processed"] == 1, what="the first processed")
        written = {p: p.read_bytes() for p in node.cfg.output_dir.rglob("*.dcm")}
        assert assoc.send_c_store(second).Status == 0x0000
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["conflicts"] == 1, what="the conflict seen")
        assert {p: p.read_bytes() for p in node.cfg.output_dir.rglob("*.dcm") if p in written} == written
        aside = list(node.cfg.conflicts_dir.rglob("*.dcm"))
        assert len(aside) == 1
        assert np.array_equal(pydicom.dcmread(aside[0]).pixel_array, second.pixel_array)
        # A third image under the same UID is set aside beside the second, not over it.
        third = pydicom.dcmread(SAMPLES / "ct_phantom_3.dcm")
        third.SOPInstanceUID = first.SOPInstanceUID
        assoc = _associate(node)
        assert assoc.send_c_store(third).Status == 0x0000
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["conflicts"] == 2, what="the second conflict seen")
        kept = sorted((pydicom.dcmread(p).pixel_array.tobytes() for p in node.cfg.conflicts_dir.rglob("*.dcm")))
        assert kept == sorted([second.pixel_array.tobytes(), third.pixel_array.tobytes()])
        assert {p: p.read_bytes() for p in node.cfg.output_dir.rglob("*.dcm") if p in written} == written


@pytest.mark.parametrize("keyword,value", [
    ("Rows", 511), ("Columns", 511), ("NumberOfFrames", "2"), ("SamplesPerPixel", 3), ("BitsAllocated", 8),
    ("BitsStored", 11), ("HighBit", 10), ("PixelRepresentation", None), ("PhotometricInterpretation", "MONOCHROME1"),
    ("RescaleSlope", "2"), ("RescaleIntercept", "-1000"),
])
def test_what_gives_the_pixels_their_meaning_tells_a_conflict_from_a_resend(tmp_path, keyword, value):
    """Issue 19 (what makes two instances the same): the same SOP Instance UID with the same
    Pixel Data bytes is a resend only when every attribute that gives those bytes their meaning
    is the same too; a corrected patient name or a new private element is still a resend."""
    from scp_node.worker import _content_digest

    ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    path = tmp_path / "x.dcm"
    base = _content_digest(ds, path)
    other = copy.deepcopy(ds)
    setattr(other, keyword, 1 - int(ds.PixelRepresentation) if value is None else value)  # (None: the other one)
    assert _content_digest(other, path) != base, keyword
    same = copy.deepcopy(ds)
    same.PatientName = "Corrected^Name"
    same.private_block(0x0041, "SOMEONE", create=True).add_new(0x01, "LO", "x")
    assert _content_digest(same, path) == base
    changed = copy.deepcopy(ds)
    changed.PixelData = bytes(len(ds.PixelData) - 2) + b"\x01\x00"
    assert _content_digest(changed, path) != base


def test_a_study_is_reported_while_another_waits_in_the_spool(tmp_path, pipe):
    """Completeness is per study (as Orthanc's StableAge): instances of study B waiting in the
    queue do not hold back the report of study A."""
    from dicom_cae.convert import convert
    from scp_node.config import load
    from scp_node.node import Node

    cfg = load(None, port=0, data_dir=str(tmp_path / "node"), study_quiet_s=0.0)
    node = Node(cfg, pipe)  # not started: nothing takes the spool
    try:
        convert(SAMPLES / "ct_phantom_1.dcm", cfg.output_dir, pipe, progress=False)
        study_a = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm").StudyInstanceUID
        (cfg.output_dir / study_a / "report.json").unlink()
        node.state.record("1.2.3.1", study_a, "processed")
        node.spool.put((SAMPLES / "ct_phantom_2.dcm").read_bytes(), "0123456789abcdef")  # study B, waiting
        time.sleep(0.01)
        assert node.complete_due_studies() == [study_a]
        assert (cfg.output_dir / study_a / "report.json").exists()
    finally:
        node.stop()


def test_a_corrected_rescale_under_the_same_uid_is_not_taken_for_a_resend(tmp_path, pipe):
    """Regression: the resend check hashed the min/max-mapped image, the same for any linear
    change of the values, so a corrected Rescale Intercept was dropped as "identical"."""
    first = pydicom.dcmread(SAMPLES / "mr_nonsquare.dcm")
    for kw in ("WindowCenter", "WindowWidth"):  # no window: the mapping follows the values' range
        if kw in first:
            del first[kw]
    pixels = np.zeros((256, 256), np.uint16)
    pixels[:192, :160] = first.pixel_array  # on the 256 grid: nothing resampled
    first.Rows, first.Columns, first.PixelData = 256, 256, pixels.tobytes()
    first.RescaleSlope, first.RescaleIntercept = "1", "0"
    second = copy.deepcopy(first)
    second.RescaleSlope = "2"  # every value doubled: the same image once mapped by its range
    with running_node(tmp_path, pipe) as node:
        assoc = _associate(node)
        assert assoc.send_c_store(first).Status == 0x0000
        wait_until(lambda: node.counters.snapshot()["processed"] == 1, what="the first processed")
        assert assoc.send_c_store(second).Status == 0x0000
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["conflicts"] == 1, what="the second seen as another image")
        assert node.counters.snapshot()["resent"] == 0


def test_a_c_store_without_an_instance_uid_is_answered_and_the_association_goes_on(tmp_path, pipe, raw_sending):
    """Issue 16 item 5: a C-STORE request whose Affected SOP Instance UID is empty got no answer
    (pynetdicom drops such a request) and the sender waited until its own timeout. It is now
    answered Cannot understand (C210) at once, nothing is spooled, and the next C-STORE on the
    same association is stored."""
    from pynetdicom.sop_class import CTImageStorage

    with running_node(tmp_path, pipe) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.dimse_timeout = 30  # the answer must come from the node, not from this timeout
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        assert assoc.is_established
        try:
            blank = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
            blank.SOPInstanceUID = ""
            status = assoc.send_c_store(blank)
            assert status is not None and status.Status == 0xC210
            assert assoc.is_established
            status = assoc.send_c_store(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm"))
            assert status.Status == 0x0000
        finally:
            assoc.release()
        wait_until(lambda: node.counters.snapshot()["received"] == 1, what="the good instance received")
        assert node.counters.snapshot()["refused"] == 1


def _deflated_zeros(n: int) -> bytes:
    """``n`` zero bytes deflated (raw deflate, as the Deflated transfer syntax), built in 1 MiB
    steps so that the test itself never holds them."""
    import zlib

    c, out, chunk = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), [], bytes(1 << 20)
    for _ in range(n >> 20):
        out.append(c.compress(chunk))
    out.append(c.compress(bytes(n & ((1 << 20) - 1))))
    return b"".join(out) + c.flush()


def test_checking_a_deflate_bomb_holds_little_memory():
    """Issue 19 (bounded inflation): the size check of a deflated dataset inflates it in steps
    and stops past the limit: 256 MiB of zeros (about 250 kB deflated) checked against a 4 MiB
    limit allocates a few MiB at most (traced), not the inflated dataset; the limit is exact."""
    import tracemalloc

    from scp_node.server import inflated_size_within

    bomb = _deflated_zeros(256 << 20)
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        assert not inflated_size_within(bomb, 4 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    small = _deflated_zeros(3_000_000)
    assert inflated_size_within(small, 3_000_000) and not inflated_size_within(small, 2_999_999)
