"""The store's index: each derived instance with the right UIDs, source and path."""

from __future__ import annotations

import pydicom

from dicom_cae.store import Store


def test_the_index_names_each_derived_instance_by_its_own_uids_and_its_source(converted_samples):
    out, _ = converted_samples
    entries = Store(out).entries()
    derived = {p.relative_to(out).as_posix(): p for p in out.rglob("*.dcm")
               if pydicom.dcmread(p, stop_before_pixels=True).Modality != "DOC"}
    assert sorted(e.path for e in entries) == sorted(derived)
    for e in entries:
        ds = pydicom.dcmread(derived[e.path], stop_before_pixels=True)
        assert (e.sop_instance_uid, e.series_instance_uid, e.study_instance_uid) == (
            ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)
        src = pydicom.dcmread(e.source, stop_before_pixels=True)  # the file it came from
        assert e.source_sop_instance_uid == src.SOPInstanceUID == ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    study = entries[0].study_instance_uid
    assert {e.path for e in Store(out).entries(study)} == {e.path for e in entries if e.study_instance_uid == study}
