"""Derived instances: a new series of reconstructed images, built from the source dataset.

Everything that identifies the new objects is passed in explicitly (highdicom's habit);
inputs are checked before anything is built.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from fractions import Fraction
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom.datadict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import format_number_as_ds

import dicom_cae
from dicom_cae import image, private_tags
from dicom_cae.identity import UID_PREFIX, is_uid

__all__ = ["UID_PREFIX", "DerivedUIDs", "derived_uids", "derive", "report_document"]
IMPLEMENTATION_VERSION_NAME = "DICOM_CAE_" + dicom_cae.__version__.replace(".", "")
SERIES_NUMBER_OFFSET = 7000
#: Said where a viewer or a PACS shows it: Derivation Description, Image Comments, the reports.
NOT_FOR_DIAGNOSIS = "Lossy reconstruction for research and workflow testing; not for primary diagnosis."

# Elements dropped from the copy: they describe the source pixels, not ours.
_DROP = (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "IconImageSequence",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "PixelAspectRatio", "RedPaletteColorLookupTableDescriptor", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "LossyImageCompression", "DerivationDescription",
    "DerivationCodeSequence", "SourceImageSequence", "PlanarConfiguration",
)
# Type 2 attributes of the Patient, General Study, General Series and General Image modules:
# present, even if empty, in every image IOD. Adding an empty one invents no data.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "InstanceNumber",
)
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
# Enhanced (multi-frame) IODs: Image Type value 2 is PRIMARY by definition, and the MR Pulse
# Sequence and Bulk Motion attributes are for ORIGINAL or MIXED images only.
_ENHANCED = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}
_ORIGINAL_ONLY = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho",
    "MultiPlanarExcitation", "PhaseContrast", "TimeOfFlightContrast", "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "SaturationRecovery",
    "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique", "BulkMotionSignalSource",
)


@dataclass(frozen=True)
class DerivedUIDs:
    series: str
    instance: str


def derived_uids(source: Dataset, *, key: str) -> DerivedUIDs:
    """Deterministic UIDs: the same source processed with the same ``key`` (model and
    compression setting) gets the same series and instance UIDs."""
    return DerivedUIDs(
        series=generate_uid(UID_PREFIX, entropy_srcs=["series", str(source.SeriesInstanceUID), key]),
        instance=generate_uid(UID_PREFIX, entropy_srcs=["instance", str(source.SOPInstanceUID), key]),
    )


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_empty_type2(ds: Dataset) -> None:
    """Add the Type 2 attributes of _TYPE2 that ``ds`` lacks, empty."""
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, None if kw == "InstanceNumber" else "")


def _mend_decimal_strings(ds: Dataset) -> None:
    """Rewrite DS values longer than 16 characters (an error in the source) in 16 or fewer."""
    for elem in ds.iterall():
        if elem.VR != "DS" or elem.value is None or elem.value == "":
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        if any(len(str(getattr(v, "original_string", v) or "")) > 16 for v in values):
            fixed = [format_number_as_ds(float(v)) for v in values]
            elem.value = fixed if elem.VM > 1 else fixed[0]


def derive(
    source: Dataset,
    stored: np.ndarray,
    norm: image.Normalization,
    *,
    uids: DerivedUIDs,
    private: private_tags.PrivateBlock,
    derivation: str,
    compression_ratio: float,
    now: dt.datetime | None = None,
) -> Dataset:
    """A new image instance holding ``stored`` (frames, 256, 256) in the source's pixel format.

    ``compression_ratio`` is original/compressed, as Lossy Image Compression Ratio defines it.
    ``private``: the values of the private block.

    Raises:
        ValueError: ``stored`` does not match the source's frame count or the normalization.
    """
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if stored.shape != (frames, image.SIZE, image.SIZE):
        raise ValueError(f"stored pixels have shape {stored.shape}, expected ({frames}, 256, 256)")
    if stored.dtype != norm.dtype:
        raise ValueError(f"stored pixels are {stored.dtype}, expected {norm.dtype}")
    now = now or dt.datetime.now()

    ds = Dataset()
    unreadable = []
    for tag in source.keys():
        try:
            elem = source[tag]
            if elem.tag.is_private or elem.keyword in _DROP or elem.tag.group in (0x0002,):
                continue
            if 0x6000 <= elem.tag.group <= 0x60FF or 0x5000 <= elem.tag.group <= 0x50FF:
                continue  # overlays and curves are drawn on the source grid
            # Only sequences can be changed in place below (functional groups); the other values
            # are replaced, never mutated, so sharing them with the source is safe and cheaper.
            ds.add(copy.deepcopy(elem) if elem.VR == "SQ" else DataElement(elem.tag, elem.VR, elem.value))
        except (TypeError, ValueError):  # a value pydicom cannot convert: not copied
            unreadable.append(pydicom.datadict.keyword_for_tag(tag) or str(tag))
    _mend_decimal_strings(ds)
    _add_empty_type2(ds)

    ds.SOPClassUID = source.SOPClassUID
    ds.SOPInstanceUID = uids.instance
    ds.SeriesInstanceUID = uids.series
    ds.SeriesNumber = (int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET) % 2**31
    what = f"CAE {private.ModelName} q{private.JPEGQuality}"
    source_description = str(source.get("SeriesDescription") or "").strip()
    ds.SeriesDescription = (f"{what} of {source_description}" if source_description else f"{what} reconstruction")[:64]
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ContentDate = ds.InstanceCreationDate
    ds.ContentTime = ds.InstanceCreationTime

    old_type = [str(v) for v in (source.get("ImageType") or [])]
    enhanced = str(source.SOPClassUID) in _ENHANCED
    if enhanced:
        ds.ImageType = ["DERIVED", *(old_type[1:] or ["PRIMARY"])]
        for kw in _ORIGINAL_ONLY:
            if kw in ds:
                del ds[kw]
    else:
        ds.ImageType = ["DERIVED", "SECONDARY", *old_type[2:]]
    ds.DerivationDescription = derivation[:1024]
    ds.ImageComments = f"dicom-cae: {NOT_FOR_DIAGNOSIS}"
    ds.DerivationCodeSequence = Sequence([_code("113040", "DCM", "Lossy Compression")])
    src_ref = Dataset()
    src_ref.ReferencedSOPClassUID = source.SOPClassUID
    src_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    src_ref.PurposeOfReferenceCodeSequence = Sequence([_code("121320", "DCM", "Uncompressed predecessor")])
    ds.SourceImageSequence = Sequence([src_ref])

    # Lossy history accumulates: earlier lossy steps keep their ratios and methods.
    was_lossy = str(source.get("LossyImageCompression", "00")) == "01"
    ratios = [str(v) for v in _as_list(source.get("LossyImageCompressionRatio"))] if was_lossy else []
    methods = [str(v) for v in _as_list(source.get("LossyImageCompressionMethod"))] if was_lossy else []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, _ds(compression_ratio)]
    ds.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]

    # Pixel module: our grid and the source's pixel format.
    ds.Rows = image.SIZE
    ds.Columns = image.SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = source.PhotometricInterpretation
    ds.BitsAllocated = norm.bits_allocated
    ds.BitsStored = norm.bits_stored
    ds.HighBit = norm.bits_stored - 1
    ds.PixelRepresentation = norm.pixel_representation
    row_scale = norm.src_rows / image.SIZE
    col_scale = norm.src_cols / image.SIZE
    warnings = list(private.Warnings or [])
    warnings += [f"{kw} in the source cannot be decoded: left out" for kw in unreadable]
    warnings += _regrid(ds, source, row_scale, col_scale)
    warnings += _drop_invalid_uids(ds)
    ds.PixelData = np.ascontiguousarray(stored).astype(norm.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if norm.bits_allocated > 8 else "OB"

    private.replace(Warnings=tuple(warnings) or None).to_dataset(ds)

    ds.file_meta = _file_meta(ds)
    return ds


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """File meta for writing ``ds`` in Explicit VR Little Endian (private VRs travel with it)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _as_list(value: Any) -> list[Any]:
    """An element's value as a list: [] when absent or empty, one item for VM 1."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _spacing(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    """A (row, column) spacing attribute of ``ds`` when it holds two finite positive numbers."""
    if keyword not in ds or ds[keyword].VM != 2:
        return None
    try:
        r, c = (float(v) for v in ds[keyword].value)
    except (TypeError, ValueError):
        return None
    return (r, c) if all(math.isfinite(v) and v > 0 for v in (r, c)) else None


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    if keyword not in ds or ds[keyword].VM != count:
        return None
    try:
        values = np.asarray([float(v) for v in ds[keyword].value], np.float64)
    except (TypeError, ValueError):
        return None
    return values if np.isfinite(values).all() else None


def first_pixel_shift(
    orientation: np.ndarray, spacing: tuple[float, float], row_scale: float, col_scale: float
) -> np.ndarray:
    """How far (mm, patient coordinates) the centre of the first pixel moves when a grid of
    pixels ``spacing`` (between rows, between columns) is resampled with pixel centres aligned
    (as Pillow does) to one ``row_scale`` x ``col_scale`` times coarser: half of the new pixel
    less half of the old, along the row and the column directions of Image Orientation."""
    along_row, along_column = orientation[:3], orientation[3:]
    return along_row * (col_scale - 1) / 2 * spacing[1] + along_column * (row_scale - 1) / 2 * spacing[0]


def _move(plane: Dataset, orientation: np.ndarray | None, spacing: tuple[float, float] | None,
          row_scale: float, col_scale: float) -> None:
    position = _floats(plane, "ImagePositionPatient", 3)
    if position is None or orientation is None or spacing is None:
        return
    moved = position + first_pixel_shift(orientation, spacing, row_scale, col_scale)
    plane.ImagePositionPatient = [_ds(v) for v in moved]


def _regrid(ds: Dataset, source: Dataset, row_scale: float, col_scale: float) -> list[str]:
    """Build the geometry of the 256x256 grid: spacing scaled, Image Position moved to the new
    first pixel's centre, non-square pixels described. Returns warnings for what the source
    got wrong (an invalid spacing is left out rather than carried through)."""
    warnings = []
    for kw in _SPACINGS:
        if kw not in ds:
            continue
        spacing = _spacing(ds, kw)
        if spacing is None:
            value = "\\".join(str(v) for v in (ds[kw].value if ds[kw].VM > 1 else [ds[kw].value]))
            warnings.append(f"{kw} {value!r} in the source is not a valid spacing: left out")
            del ds[kw]
            continue
        ds[kw].value = [_ds(spacing[0] * row_scale), _ds(spacing[1] * col_scale)]
        if kw == "PixelSpacing":
            _move(ds, _floats(ds, "ImageOrientationPatient", 6), spacing, row_scale, col_scale)
    _regrid_functional_groups(ds, row_scale, col_scale)
    if not any(kw in ds for kw in _SPACINGS):
        # Without a spacing, Pixel Aspect Ratio (Type 1C) says how non-square the pixels are.
        ratio = _floats(source, "PixelAspectRatio", 2)
        vertical, horizontal = (ratio if ratio is not None and (ratio > 0).all() else (1.0, 1.0))
        aspect = Fraction(vertical * row_scale / (horizontal * col_scale)).limit_denominator(1000)
        aspect = min(max(aspect, Fraction(1, 1000)), Fraction(1000, 1))  # never 0\1: IS values of 1 or more
        if aspect != 1:
            ds.PixelAspectRatio = [aspect.numerator, aspect.denominator]
    return warnings


def _regrid_functional_groups(ds: Dataset, row_scale: float, col_scale: float) -> None:
    """Enhanced (multi-frame) objects keep their geometry in the functional groups."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]

    def first(group: Dataset, keyword: str) -> Dataset | None:
        for g in (group, shared):
            items = g.get(keyword) or []
            if items:
                return items[0]
        return None

    groups = [shared, *(ds.get("PerFrameFunctionalGroupsSequence") or [])]
    spacing_of = {}
    for group in groups:
        measures = first(group, "PixelMeasuresSequence")
        spacing_of[id(group)] = _spacing(measures, "PixelSpacing") if measures is not None else None
    for group in groups:
        for measures in group.get("PixelMeasuresSequence") or []:
            spacing = _spacing(measures, "PixelSpacing")
            if spacing is not None:
                measures.PixelSpacing = [_ds(spacing[0] * row_scale), _ds(spacing[1] * col_scale)]
        orientation = first(group, "PlaneOrientationSequence")
        for plane in group.get("PlanePositionSequence") or []:
            _move(plane, _floats(orientation, "ImageOrientationPatient", 6) if orientation is not None else None,
                  spacing_of[id(group)], row_scale, col_scale)
        for ftype in group.get("MRImageFrameTypeSequence") or group.get("CTImageFrameTypeSequence") or []:
            if "FrameType" in ftype:
                ftype.FrameType = ["DERIVED", *[str(v) for v in ftype.FrameType][1:]]


def _drop_invalid_uids(ds: Dataset) -> list[str]:
    """Remove every UI element (at any depth) whose value is not a well-formed UID: a
    received string is never copied into what we write as if it were one."""
    dropped = []

    def walk(d: Dataset) -> None:
        for elem in list(d):
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
            elif elem.VR == "UI" and elem.value not in (None, ""):
                values = elem.value if elem.VM > 1 else [elem.value]
                if not all(is_uid(v) for v in values):
                    dropped.append(elem.keyword or str(elem.tag))
                    del d[elem.tag]

    walk(ds)
    return [f"{kw} in the source is not a valid UID: left out" for kw in sorted(set(dropped))]


# Patient and General Study attributes copied into a report document from the study's images.
_STUDY_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
)
REPORT_SERIES_NUMBER = 7999


def report_document(
    template: Dataset,
    pdf: bytes,
    references: list[tuple[str, str]],
    *,
    series_uid: str,
    instance_uid: str,
    title: str,
    identifies_patient: bool = False,
    now: dt.datetime | None = None,
) -> Dataset:
    """An Encapsulated PDF instance in a new series of ``template``'s study.

    ``references`` are the (SOP Class UID, SOP Instance UID) of the derived instances the
    report is about (Source Instance Sequence).

    Raises:
        ValueError: ``pdf`` is not a PDF, or there is nothing to reference.
    """
    if not pdf.startswith(b"%PDF"):
        raise ValueError("the report document is not a PDF")
    if not references:
        raise ValueError("a report must reference at least one instance")
    now = now or dt.datetime.now()
    ds = Dataset()
    for kw in _STUDY_KEYWORDS:
        if kw in template:
            ds.add(copy.deepcopy(template[kw]))
    _add_empty_type2(ds)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    ds.SOPInstanceUID = instance_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = REPORT_SERIES_NUMBER
    ds.SeriesDescription = "CAE quality report"
    ds.Manufacturer = "dicom-cae"
    ds.SoftwareVersions = dicom_cae.__version__
    ds.ConversionType = "WSD"  # workstation
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime  # a PACS lists the report's series by it
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES" if identifies_patient else "NO"
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = Sequence()  # Type 2: no code names this kind of report
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    refs = []
    for sop_class, sop_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        refs.append(item)
    ds.SourceInstanceSequence = Sequence(refs)
    data = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf)

    ds.file_meta = _file_meta(ds)
    return ds


def describe(*, quality: int, coding_size: int, mapping_name: str, model_name: str, weights_sha256: str,
             weights: list[float], compression_ratio: float, served: bool, max_quality: int = 100,
             target: str = "", resampled_from: tuple[int, int] | None = None, edge_filter: str | None = None,
             flips: int = 1, precision: str = "float32") -> str:
    """The Derivation Description: how the image was coded, mapped and restored, in words, as
    the private block's ModelWeight says it frame by frame. ``target``: what chose the coding
    (a fidelity target or a byte budget, in words; empty for a quality given)."""
    from dicom_cae import codec, mapping

    if not served:
        how = f"JPEG decode kept: {model_name} has no weights for a {coding_size}x{coding_size} coding"
    elif quality > max_quality:
        how = f"JPEG decode kept: above quality {max_quality} {model_name} does not improve on it"
    elif not any(weights):
        how = (f"JPEG decode kept: the reconstruction by {model_name} was below it in PSNR or SSIM "
               "(min/max image or display window)")
    else:
        how = f"reconstructed by convolutional autoencoder {model_name} (weights sha256 {weights_sha256[:12]})"
        if precision != "float32":
            how += f", its convolutions computed in {precision}"
        if flips > 1:
            how += f", the mean of its outputs over {flips} flips of its input"
        if edge_filter:
            how += f", its block edges smoothed (filter {edge_filter}: the small steps the blocks leave spread over them)"
        if any(w < 1 for w in weights):
            shown = ", ".join(f"{w:g}" for w in weights) if len(weights) <= 4 else f"{min(weights):g}-{max(weights):g}"
            how += (f", stored as JPEG decode + {shown} x its correction (the weights tried in the order their "
                    "images score in the worst display window, the first not below plain JPEG)")
    mapped = {
        mapping.MINMAX: "values mapped linearly from each frame's minimum and maximum",
        mapping.WINDOW: "values mapped window-aware (half of the 8-bit codes to the display windows)",
    }[mapping_name]
    coded = "" if coding_size == codec.SIZE else (
        f" of the image reduced to {coding_size}x{coding_size} (bicubic back to 256x256)")
    aim = f" ({target})" if target else ""
    resampled = f"; resampled from {resampled_from[0]}x{resampled_from[1]} to 256x256" if resampled_from else ""
    return (f"JPEG (ISO 10918-1) quality {quality}{coded}{aim}, {compression_ratio:.1f}:1 of the 8-bit "
            f"256x256 image, {mapped}, {how}{resampled}. {NOT_FOR_DIAGNOSIS}")
