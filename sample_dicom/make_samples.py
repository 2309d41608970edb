"""Make the small sample files in this folder (deterministic; run from anywhere).

    python sample_dicom/make_samples.py [OUTDIR]

Everything is synthetic (phantoms drawn here), so the files can ship with the project.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    BasicTextSRStorage,
    generate_uid,
)

PREFIX = "1.2.826.0.1.3680043.8.498."
HERE = Path(__file__).resolve().parent


def uid(*parts: str) -> str:
    return generate_uid(PREFIX, entropy_srcs=["dicom-cae sample", *parts])


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def base(sop_class: str, sop_uid: str, study: str, series: str, modality: str, patient: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = uid(series, "for")
    ds.Modality = modality
    ds.PatientName = f"Phantom^{patient}"
    ds.PatientID = f"SAMPLE-{patient.upper()}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.SeriesDate = "20260101"
    ds.SeriesTime = "120000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Manufacturer = "dicom-cae sample generator"
    ds.PositionReferenceIndicator = ""
    return ds


def pixels(ds: Dataset, arr: np.ndarray, *, bits_stored: int, signed: bool, photometric: str = "MONOCHROME2") -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = arr.astype("<i2" if signed else "<u2").tobytes()


def ct_slices(out: Path) -> list[Path]:
    """Three signed 16-bit CT slices, 320x320, rescale intercept -1024, padding outside the FOV."""
    rng = np.random.default_rng(1)
    study, series = uid("ct study"), uid("ct series")
    n = 320
    paths = []
    for k in range(3):
        hu = np.full((n, n), -2000.0)  # padding outside the reconstruction circle
        fov = ellipse((n, n), n / 2, n / 2, n / 2 - 2, n / 2 - 2)
        hu[fov] = -1000.0  # air
        body = ellipse((n, n), 160, 160, 110, 140)
        hu[body] = 40.0  # soft tissue
        for side in (-1, 1):  # lungs, changing a little along z
            hu[ellipse((n, n), 150, 160 + side * 65, 70 - 4 * k, 45)] = -850.0
        hu[ellipse((n, n), 175, 160, 25, 22)] = 60.0  # heart
        hu[ellipse((n, n), 245, 160, 14, 14)] = 700.0  # spine
        hu[ellipse((n, n), 120 + 8 * k, 110, 6, 6)] = 20.0  # a nodule
        hu[body] += rng.normal(0, 15, size=int(body.sum()))
        stored = np.rint(hu + 1024).astype(np.int16)
        sop = uid("ct", str(k))
        ds = base(CTImageStorage, sop, study, series, "CT", "ct")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = "Phantom chest"
        ds.KVP = "120"
        ds.SliceThickness = "5"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = ["-160", "-160", str(-5.0 * k)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = str(-5.0 * k)
        ds.PixelSpacing = ["1.09375", "1.09375"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.AcquisitionNumber = 1
        pixels(ds, stored, bits_stored=16, signed=True)
        p = out / f"ct_phantom_{k + 1}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def mr_head(shape: tuple[int, int], rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    rows, cols = shape
    img = np.zeros(shape)
    head = ellipse(shape, rows / 2, cols / 2, rows * 0.42, cols * 0.36)
    img[head] = 900 * scale
    img[ellipse(shape, rows / 2, cols / 2, rows * 0.37, cols * 0.31)] = 600 * scale
    img[ellipse(shape, rows / 2, cols / 2 - cols * 0.08, rows * 0.12, cols * 0.04)] = 200 * scale
    img[ellipse(shape, rows / 2, cols / 2 + cols * 0.08, rows * 0.12, cols * 0.04)] = 200 * scale
    img += rng.normal(0, 20 * scale, size=shape) * (img > 0)
    return np.clip(img, 0, 4095)


def mr_base(k: int, sop: str, study: str, series: str) -> Dataset:
    ds = base(MRImageStorage, sop, study, series, "MR", "mr")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SeriesNumber = 3
    ds.InstanceNumber = k + 1
    ds.SeriesDescription = "Phantom head T1"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "10"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "3"
    ds.SliceThickness = "3"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = ["-96", "-120", str(3.0 * k)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["1.25", "1.0"]
    return ds


def mr_nonsquare(out: Path) -> list[Path]:
    """A non-square (192 rows x 160 columns) unsigned 12-bit MR slice, and the same series'
    next slice in RLE Lossless (a compressed transfer syntax)."""
    rng = np.random.default_rng(2)
    study, series = uid("mr study"), uid("mr series")
    paths = []
    for k, name in ((0, "mr_nonsquare.dcm"), (1, "mr_rle.dcm")):
        ds = mr_base(k, uid("mr", str(k)), study, series)
        pixels(ds, np.rint(mr_head((192, 160), rng)), bits_stored=12, signed=False)
        if k == 1:
            ds.compress(RLELossless)
        p = out / name
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def cr_monochrome1(out: Path) -> Path:
    """A MONOCHROME1 computed radiograph (bright = low values), 300x240, 10-bit."""
    rng = np.random.default_rng(3)
    shape = (300, 240)
    att = np.zeros(shape)
    att[ellipse(shape, 150, 120, 140, 105)] = 0.4  # chest wall
    for side in (-1, 1):
        att[ellipse(shape, 140, 120 + side * 50, 90, 38)] = 0.1  # lungs
    att[:, 112:128] += 0.5  # spine
    att += rng.normal(0, 0.01, shape)
    # More attenuation -> brighter on display -> lower stored value in MONOCHROME1.
    stored = np.clip(np.rint(1023 * (1 - np.clip(att, 0, 1))), 0, 1023)
    ds = base(ComputedRadiographyImageStorage, uid("cr", "0"), uid("cr study"), uid("cr series"), "CR", "cr")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = "Phantom chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = ["0.5", "0.5"]
    pixels(ds, stored, bits_stored=10, signed=False, photometric="MONOCHROME1")
    p = out / "cr_monochrome1.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p


def corrupt(out: Path, ct: Path) -> Path:
    """A CT slice (an instance of its own) cut short in the middle of its pixel data."""
    import io

    from pydicom import dcmread

    ds = dcmread(ct)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("ct", "corrupt")
    ds.InstanceNumber = 4
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    p = out / "corrupt_truncated.dcm"
    p.write_bytes(data[: len(data) // 2])
    return p


def sr(out: Path) -> Path:
    """A Basic Text SR: a valid DICOM object with no image."""
    ds = base(BasicTextSRStorage, uid("sr", "0"), uid("ct study"), uid("sr series"), "SR", "ct")
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue = "121071"
    name.CodingSchemeDesignator = "DCM"
    name.CodeMeaning = "Finding"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "Phantom: no finding."
    ds.ContentSequence = Sequence([item])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    p = out / "sr_not_an_image.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else HERE
    out.mkdir(parents=True, exist_ok=True)
    cts = ct_slices(out)
    made = [*cts, *mr_nonsquare(out), cr_monochrome1(out), corrupt(out, cts[0]), sr(out)]
    for p in made:
        print(f"{p.name}\t{p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
