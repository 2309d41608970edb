"""Folders of DICOM files as arrays of normalized images, for training and evaluation."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from dicom_cae import display, image, io
from dicom_cae import mapping as value_mapping
from dicom_cae.errors import DicomInputError

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """How one image of a set maps back to modality values, and the windows it is shown in."""

    norm: image.Normalization  # of this frame alone
    windows: tuple[display.Window, ...]


@dataclass(frozen=True)
class ImageSet:
    """256x256 images mapped to [0, 1] (by ``mapping``), with the original in modality units,
    and the patient and series each came from."""

    images: np.ndarray  # float32 (n, 256, 256) in [0, 1]
    patients: tuple[str, ...]
    series: tuple[str, ...]
    modalities: tuple[str, ...]
    errors: tuple[DicomInputError, ...]
    modality: np.ndarray | None = None  # float32 (n, 256, 256), modality units (HU for CT)
    views: tuple[View, ...] = ()
    mapping: str = value_mapping.MINMAX

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load(roots: list[str | os.PathLike[str]], *, mapping: str = value_mapping.MINMAX) -> ImageSet:
    """Every grayscale image frame under ``roots``, mapped by ``mapping``; files that fail are
    collected in ``errors``."""
    frames: list[np.ndarray] = []
    originals: list[np.ndarray] = []
    views: list[View] = []
    patients: list[str] = []
    series: list[str] = []
    modalities: list[str] = []
    errors: list[DicomInputError] = []
    for root in roots:
        for path in io.walk(root):
            try:
                ds = io.read(path)
                prepared = image.prepare(ds, str(path), mapping=mapping)
            except DicomInputError as exc:
                errors.append(exc)
                LOGGER.warning("skipped %s", exc)
                continue
            for i, f in enumerate(prepared.unit):
                frames.append(f)
                originals.append(prepared.modality[i])
                views.append(View(image.one_frame(prepared.norm, i), prepared.windows))
                patients.append(str(ds.get("PatientID", "")))
                series.append(str(ds.get("SeriesInstanceUID", "")))
                modalities.append(str(ds.get("Modality", "")))
    empty = np.zeros((0, image.SIZE, image.SIZE), np.float32)
    return ImageSet(np.stack(frames) if frames else empty, tuple(patients), tuple(series), tuple(modalities),
                    tuple(errors), np.stack(originals) if originals else empty, tuple(views), mapping)


def check_disjoint(train: ImageSet, val: ImageSet) -> None:
    """Raise ValueError if a patient or a series is in both sets (no patient-level split)."""
    shared_patients = set(train.patients) & set(val.patients) - {""}
    shared_series = set(train.series) & set(val.series) - {""}
    if shared_patients or shared_series:
        raise ValueError(
            f"training and validation data share {len(shared_patients)} patient(s) and "
            f"{len(shared_series)} series: the split must be at patient level"
        )
