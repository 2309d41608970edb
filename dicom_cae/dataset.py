"""Folders of DICOM files as arrays of normalized images, for training and evaluation."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from dicom_cae import image, io
from dicom_cae.errors import DicomInputError

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """Normalized 256x256 images with the patient and series each came from."""

    images: np.ndarray  # float32 (n, 256, 256) in [0, 1]
    patients: tuple[str, ...]
    series: tuple[str, ...]
    modalities: tuple[str, ...]
    errors: tuple[DicomInputError, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load(roots: list[str | os.PathLike[str]]) -> ImageSet:
    """Every grayscale image frame under ``roots``; files that fail are collected in ``errors``."""
    frames: list[np.ndarray] = []
    patients: list[str] = []
    series: list[str] = []
    modalities: list[str] = []
    errors: list[DicomInputError] = []
    for root in roots:
        for path in io.walk(root):
            try:
                ds = io.read(path)
                unit, _ = image.normalize(ds, str(path))
            except DicomInputError as exc:
                errors.append(exc)
                LOGGER.warning("skipped %s", exc)
                continue
            for f in unit:
                frames.append(f)
                patients.append(str(ds.get("PatientID", "")))
                series.append(str(ds.get("SeriesInstanceUID", "")))
                modalities.append(str(ds.get("Modality", "")))
    images = np.stack(frames) if frames else np.zeros((0, image.SIZE, image.SIZE), np.float32)
    return ImageSet(images, tuple(patients), tuple(series), tuple(modalities), tuple(errors))


def check_disjoint(train: ImageSet, val: ImageSet) -> None:
    """Raise ValueError if a patient or a series is in both sets (no patient-level split)."""
    shared_patients = set(train.patients) & set(val.patients) - {""}
    shared_series = set(train.series) & set(val.series) - {""}
    if shared_patients or shared_series:
        raise ValueError(
            f"training and validation data share {len(shared_patients)} patient(s) and "
            f"{len(shared_series)} series: the split must be at patient level"
        )
