"""Who an instance is: its SOP Class, SOP Instance, Study and Series UIDs, checked once.

Both ``convert`` and the node name an instance through ``identify`` before anything else is
done with it. An instance without a well-formed SOP Class or SOP Instance UID cannot be named
and is refused (as DCMTK's and pynetdicom's storescp refuse it). Real files that lack a Study
or Series Instance UID (or carry a malformed one) are accepted, as DCMTK and most archives
accept them: they get a stable stand-in derived from what else the file says, and a warning
that travels with the derived instance into the report and errors.tsv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import sha1

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_cae.errors import DicomInputError

#: Root of every UID dicom-cae makes (pydicom's root, for UIDs derived from an entropy source).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
# Digits and dots, no empty component, at most 64 characters. Leading zeros in a component
# are tolerated: they are common in real files and harmless to copy.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: object) -> bool:
    """True when ``value`` is a UID that can be copied into what we write."""
    text = str(value if value is not None else "")
    return len(text) <= 64 and bool(_UID.match(text))


def printable(value: object, limit: int = 80) -> str:
    """``value`` as one log-safe line: control characters escaped, at most ``limit`` characters.

    Received strings (UIDs above all) are untrusted: a newline in one must not forge a line
    of the log.
    """
    text = str(value)
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def safe_name(uid: object) -> str:
    """A file or folder name for a UID from the input: the UID itself if it is well formed,
    else a hash of it (never a path separator, never '..')."""
    text = str(uid or "").strip()
    if is_uid(text):
        return text
    return "x" + sha1(text.encode("utf-8", "replace")).hexdigest()[:24]


@dataclass(frozen=True)
class Identity:
    """The UIDs an instance is known by, after stand-ins; ``warnings`` say what was made up."""

    sop_class: str
    sop_instance: str
    study: str
    series: str
    warnings: tuple[str, ...] = ()

    @property
    def study_key(self) -> str:
        """A short, file-name-safe key of the study (the spool names files with it)."""
        return sha1(self.study.encode("ascii")).hexdigest()[:16]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def identify(ds: Dataset, source: str) -> Identity:
    """Check the identifying UIDs of ``ds`` and make stand-ins for a missing study or series.

    Raises:
        DicomInputError: the SOP Class UID or the SOP Instance UID is missing, empty or not a
            well-formed UID; the reason names the attribute.
    """
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        try:
            value = _text(ds, keyword)
        except Exception as exc:  # a value pydicom cannot even decode
            raise DicomInputError(source, f"{keyword} cannot be read ({type(exc).__name__})") from exc
        if not value:
            raise DicomInputError(source, f"{keyword} is missing or empty: the instance cannot be named")
        if not is_uid(value):
            raise DicomInputError(source, f"{keyword} {printable(value, 70)!s} is not a valid UID")
    sop_class, sop = _text(ds, "SOPClassUID"), _text(ds, "SOPInstanceUID")
    warnings: list[str] = []

    study = _text(ds, "StudyInstanceUID")
    if not is_uid(study):
        basis = ("PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID")
        study = generate_uid(UID_PREFIX, entropy_srcs=["stand-in study", *(_text(ds, k) for k in basis)])
        what = "missing" if not _text(ds, "StudyInstanceUID") else "not a valid UID"
        warnings.append(
            f"Study Instance UID {what} in the source: stand-in {study} derived from Patient ID, Study Date, "
            "Study Time, Accession Number and Study ID"
        )
    series = _text(ds, "SeriesInstanceUID")
    if not is_uid(series):
        basis = ("SeriesNumber", "Modality", "SeriesDescription", "SeriesDate", "SeriesTime")
        series = generate_uid(UID_PREFIX, entropy_srcs=["stand-in series", study, *(_text(ds, k) for k in basis)])
        what = "missing" if not _text(ds, "SeriesInstanceUID") else "not a valid UID"
        warnings.append(
            f"Series Instance UID {what} in the source: stand-in {series} derived from the Study Instance UID, "
            "Series Number, Modality, Series Description, Series Date and Time"
        )
    return Identity(sop_class, sop, study, series, tuple(warnings))


def apply(ds: Dataset, identity: Identity) -> None:
    """Put the identity's Study and Series Instance UIDs (stand-ins included) into ``ds``."""
    if identity.warnings:
        ds.StudyInstanceUID = identity.study
        ds.SeriesInstanceUID = identity.series
