"""Who an instance is (dicom_cae.identity): UIDs checked once, stand-ins for a missing study
or series, names safe for files and log lines."""

from __future__ import annotations

from hashlib import sha1

import pytest
from pydicom.dataset import Dataset

from dicom_cae import identity
from dicom_cae.errors import DicomInputError

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ds(**values) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    ds.PatientID, ds.StudyDate, ds.SeriesNumber, ds.Modality = "P1", "20240101", "7", "CT"
    for k, v in values.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("value, ok", [
    ("1.2.840.10008.1.2", True), ("1." + "2" * 62, True), ("1." + "2" * 63, False), ("", False), (None, False),
    ("1..2", False), ("1.2.", False), (".1.2", False), ("1.2a", False), ("1.2\n3", False), ("01.002", True),
])
def test_a_uid_is_digits_and_dots_at_most_64_characters(value, ok):
    assert identity.is_uid(value) is ok


def test_printable_escapes_control_characters_and_cuts_at_the_limit():
    assert identity.printable("1.2\n3\r4") == "1.2\\n3\\r4"
    assert identity.printable("x" * 80) == "x" * 80
    assert identity.printable("x" * 81) == "x" * 77 + "..."
    assert identity.printable("abcdef", limit=5) == "ab..."


def test_safe_name_keeps_a_uid_and_hashes_anything_else():
    assert identity.safe_name(" 1.2.3 ") == "1.2.3"
    evil = identity.safe_name("../../evil")
    assert evil == "x" + sha1(b"../../evil").hexdigest()[:24] and "/" not in evil
    assert identity.safe_name(None) == "x" + sha1(b"").hexdigest()[:24]


def test_an_instance_with_its_uids_is_named_by_them_without_warning():
    ident = identity.identify(_ds(), "f")
    assert (ident.sop_class, ident.sop_instance, ident.study, ident.series, ident.warnings) == (
        CT, "1.2.3.4", "1.2.3", "1.2.3.1", ())
    assert ident.study_key == sha1(b"1.2.3").hexdigest()[:16]
    ds = _ds()
    identity.apply(ds, ident)  # nothing made up: nothing written
    assert ds.StudyInstanceUID == "1.2.3"


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID"])
def test_an_instance_that_cannot_be_named_is_refused_naming_the_attribute(keyword):
    with pytest.raises(DicomInputError, match=f"{keyword} is missing or empty") as missing:
        identity.identify(_ds(**{keyword: None}), "f.dcm")
    assert missing.value.source == "f.dcm"
    with pytest.raises(DicomInputError, match=f"{keyword} .* is not a valid UID"):
        identity.identify(_ds(**{keyword: "1.2.x"}), "f.dcm")


def test_a_missing_study_gets_a_stable_stand_in_from_what_the_file_says():
    a = identity.identify(_ds(StudyInstanceUID=None), "f")
    again = identity.identify(_ds(StudyInstanceUID=None), "g")
    other_patient = identity.identify(_ds(StudyInstanceUID=None, PatientID="P2"), "f")
    assert a.study == again.study != other_patient.study
    assert a.study.startswith(identity.UID_PREFIX) and identity.is_uid(a.study)
    assert a.series == "1.2.3.1"  # the series UID it has is kept
    assert len(a.warnings) == 1 and a.warnings[0].startswith("Study Instance UID missing in the source: stand-in " + a.study)
    bad = identity.identify(_ds(StudyInstanceUID="not.a.uid"), "f")
    assert bad.warnings[0].startswith("Study Instance UID not a valid UID")
    ds = _ds(StudyInstanceUID=None)
    identity.apply(ds, a)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (a.study, a.series)


def test_a_missing_series_gets_a_stand_in_that_depends_on_its_study():
    one = identity.identify(_ds(SeriesInstanceUID=None), "f")
    other_study = identity.identify(_ds(SeriesInstanceUID=None, StudyInstanceUID="1.2.4"), "f")
    other_number = identity.identify(_ds(SeriesInstanceUID=None, SeriesNumber="8"), "f")
    assert len({one.series, other_study.series, other_number.series}) == 3
    assert one.warnings == (one.warnings[0],) and one.warnings[0].startswith("Series Instance UID missing in the source")
    both = identity.identify(_ds(SeriesInstanceUID=None, StudyInstanceUID=None), "f")
    assert len(both.warnings) == 2


@pytest.mark.parametrize("keyword", ["PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"])
def test_each_thing_the_file_says_of_its_study_moves_the_study_stand_in(keyword):
    base = identity.identify(_ds(StudyInstanceUID=None), "f")
    moved = identity.identify(_ds(StudyInstanceUID=None, **{keyword: "42"}), "f")
    assert moved.study != base.study


@pytest.mark.parametrize("keyword", ["SeriesNumber", "Modality", "SeriesDescription", "SeriesDate", "SeriesTime"])
def test_each_thing_the_file_says_of_its_series_moves_the_series_stand_in(keyword):
    base = identity.identify(_ds(SeriesInstanceUID=None), "f")
    moved = identity.identify(_ds(SeriesInstanceUID=None, **{keyword: "42"}), "f")
    assert moved.series != base.series


def test_stand_ins_stay_the_same_from_one_version_to_the_next():
    """The derived UIDs of a source without a Study or Series UID come from these stand-ins: a
    new version that made others would convert every such file again, and a PACS would hold
    both copies."""
    both = identity.identify(_ds(StudyInstanceUID=None, SeriesInstanceUID=None), "f")
    assert (both.study, both.series) == ("1.2.826.0.1.3680043.8.498.52704526968130373849849473005305657411",
                                         "1.2.826.0.1.3680043.8.498.11375453999608067426642677129358395698")
    assert "Series Number, Modality, Series Description, Series Date and Time" in both.warnings[1]
    assert "Patient ID, Study Date, Study Time, Accession Number and Study ID" in both.warnings[0]
    bad_series = identity.identify(_ds(SeriesInstanceUID="9..9"), "f")
    assert bad_series.warnings[0].startswith("Series Instance UID not a valid UID")


def test_an_identity_is_a_fixed_value():
    import dataclasses

    ident = identity.Identity(CT, "1.2", "1.3", "1.4")
    assert ident.warnings == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.study = "1.5"
