"""The private block on its own (issue 19: mutation score of private_tags.py): every element
written and read back through a file, where the block lands, what is refused, the frames x
windows layout, the normalization it carries and its documentation table. No TensorFlow."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_cae import private_tags
from dicom_cae.private_tags import ELEMENTS, PRIVATE_CREATOR, PRIVATE_GROUP, PrivateBlock

FRAMES, WINDOWS = 2, 3


def _value(e: private_tags.PrivateElement, i: int):
    """A distinct value of the element's kind (i: its index, so no two elements agree)."""
    if e.vr == "IS":
        return 30 + i
    if e.vr == "OB":
        return bytes(range(i, i + 10))  # (an odd length gets DICOM's pad byte: JPEGBytes gives the streams' lengths)
    if e.vr == "LO":
        return f"text {i}"
    if e.vr == "UT":
        return [f"line {i}", f"line {i} again"]
    count = FRAMES * WINDOWS if "x windows" in e.vm else 2 * FRAMES if e.vm.startswith("2 x") else 4 * FRAMES if "4 values" in e.meaning else 42 * FRAMES if "42 values" in e.meaning else FRAMES
    if not e.per_frame:
        return 0.25 + i
    return [(k + 1) * 10 + i for k in range(count)] if e.vr == "UL" else [0.5 * k + i for k in range(count)]


def _all_values() -> dict:
    return {e.keyword: _value(e, i) for i, e in enumerate(ELEMENTS)}


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def _through_a_file(ds: Dataset, tmp_path) -> Dataset:
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    return pydicom.dcmread(tmp_path / "x.dcm")


def test_every_element_is_read_back_as_written_through_a_file(tmp_path):
    values = _all_values()
    ds = _dataset()
    private_tags.write(ds, values)
    back = private_tags.read(_through_a_file(ds, tmp_path))
    assert back == values
    types = {e.keyword: (int if e.vr == "IS" else bytes if e.vr == "OB" else str if e.vr == "LO" else list if e.vr == "UT" or e.per_frame else float)
             for e in ELEMENTS}
    assert all(isinstance(back[k], t) for k, t in types.items())
    assert all(isinstance(v, int) for e in ELEMENTS if e.vr == "UL" for v in back[e.keyword])
    block = PrivateBlock.from_dataset(_through_a_file(ds, tmp_path))
    assert block.as_dict() == {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # lists as tuples


def test_each_element_lands_at_its_offset_in_our_block_with_its_vr(tmp_path):
    ds = _dataset()
    other = ds.private_block(PRIVATE_GROUP, "SOMEONE ELSE", create=True)  # block 0x10 is taken
    other.add_new(0x01, "LO", "not ours")
    private_tags.write(ds, _all_values())
    ds = _through_a_file(ds, tmp_path)
    assert ds[PRIVATE_GROUP, 0x0011].value == PRIVATE_CREATOR
    for e in ELEMENTS:
        element = ds[PRIVATE_GROUP, 0x1100 | e.offset]
        assert element.VR == e.vr, e.keyword
    assert private_tags.is_ours(ds) and private_tags.read(ds)["ModelName"] == "text 0"
    assert ds[PRIVATE_GROUP, 0x1001].value == "not ours"


def test_missing_required_values_are_named_and_optional_ones_may_be_absent(tmp_path):
    values = _all_values()
    required = [e.keyword for e in ELEMENTS if not e.optional]
    optional = [e.keyword for e in ELEMENTS if e.optional]
    assert "ModelName" in required and "EdgeFilter" in optional and "ModelWeight" in optional
    with pytest.raises(ValueError, match="ModelName, PSNR"):
        private_tags.write(_dataset(), {k: v for k, v in values.items() if k not in ("ModelName", "PSNR")})
    with pytest.raises(KeyError):
        private_tags.write(_dataset(), {**values, "NoSuchElement": 1})
    ds = _dataset()
    private_tags.write(ds, {**{k: values[k] for k in required}, **{k: None for k in optional}})
    back = private_tags.read(_through_a_file(ds, tmp_path))
    assert set(back) == set(required)
    block = PrivateBlock.from_dataset(ds)
    assert block.EdgeFilter is None and block.ModelWeight is None and block.ModelName == "text 0"


def test_a_dataset_without_our_block_has_none(tmp_path):
    ds = _dataset()
    assert private_tags.read(ds) is None and PrivateBlock.from_dataset(ds) is None and not private_tags.is_ours(ds)
    ds.private_block(PRIVATE_GROUP, "SOMEONE ELSE", create=True).add_new(0x01, "LO", "x")
    assert private_tags.read(ds) is None and not private_tags.is_ours(ds)
    with pytest.raises(KeyError, match=PRIVATE_CREATOR):
        private_tags.normalization(ds)


def test_values_are_written_in_their_vrs_form(tmp_path):
    """LO cut to its 64 characters, UT lines joined by newlines (empty ones dropped on reading),
    IS from a float, one per-frame value read back as a list of one."""
    values = _all_values()
    ds = _dataset()
    private_tags.write(ds, {**values, "ModelName": "m" * 80, "Warnings": ["first", "", "second"], "JPEGQuality": 30.0,
                            "PSNR": [31.5], "JPEGBytes": [1234]})
    back = private_tags.read(_through_a_file(ds, tmp_path))
    assert back["ModelName"] == "m" * 64
    assert back["Warnings"] == ["first", "second"] and ds[PRIVATE_GROUP, 0x1000 | 0x1B].value == "first\n\nsecond"
    assert back["JPEGQuality"] == 30 and back["PSNR"] == [31.5] and back["JPEGBytes"] == [1234]
    private_tags.write(ds, {**values, "Warnings": "one warning"})
    assert private_tags.read(ds)["Warnings"] == ["one warning"]


def test_per_window_takes_one_frames_values_in_window_order():
    values = _all_values()
    values["DisplayWindowName"] = ["a", "b", "c"]
    values["DisplayPSNR"] = [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]
    ds = _dataset()
    private_tags.write(ds, values)
    block = PrivateBlock.from_dataset(ds)
    assert block.per_window("DisplayPSNR", 0) == (10.0, 11.0, 12.0)
    assert block.per_window("DisplayPSNR", 1) == (20.0, 21.0, 22.0)
    assert block.replace(DisplayPSNR=None).per_window("DisplayPSNR", 1) == ()


def test_the_normalization_comes_back_from_the_block_and_the_dataset():
    values = _all_values()
    values.update(NormalizationLow=[-1024.0, -1000.0], NormalizationHigh=[3071.0, 2000.0], ValueMapping="window",
                  MappingKnotCount=[2, 3], MappingKnots=[-1024.0, 3071.0, 0.0, 1.0, -1000.0, 0.0, 2000.0, 0.0, 0.6, 1.0])
    ds = _dataset()
    private_tags.write(ds, values)
    norm = private_tags.normalization(ds)
    assert norm.lo == (-1024.0, -1000.0) and norm.hi == (3071.0, 2000.0) and not norm.invert
    assert (norm.slope, norm.intercept, norm.bits_allocated, norm.bits_stored, norm.pixel_representation) == (1.0, -1024.0, 16, 12, 0)
    assert norm.mapping(0).x == (-1024.0, 3071.0) and norm.mapping(0).y == (0.0, 1.0)
    assert norm.mapping(1).x == (-1000.0, 0.0, 2000.0) and norm.mapping(1).y == (0.0, 0.6, 1.0)
    assert norm.mapping_name == "window"
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert private_tags.normalization(ds).invert
    del values["MappingKnots"], values["MappingKnotCount"]  # an instance from before value mappings
    old = _dataset()
    private_tags.write(old, values)
    assert private_tags.normalization(old).mappings == ()


def test_the_documentation_table_has_a_row_per_element():
    table = private_tags.markdown_table().splitlines()
    assert table[0] == "| element | keyword | VR | VM | units | meaning |" and len(table) == 2 + len(ELEMENTS)
    rows = dict(zip((e.keyword for e in ELEMENTS), table[2:]))
    assert rows["ModelName"].startswith(f"| ({PRIVATE_GROUP:04X},xx01) | ModelName | LO | 1 |")
    assert "| 1-n (one per frame) |" in rows["PSNR"] and "(optional)" not in rows["PSNR"]
    assert "| frames x windows (optional) |" in rows["DisplayPSNR"]
    assert "| 1 (optional) |" in rows["EdgeFilter"] and rows["EdgeFilter"].startswith(f"| ({PRIVATE_GROUP:04X},xx3B)")
    assert len({e.offset for e in ELEMENTS}) == len(ELEMENTS) and len(private_tags.ERROR_BIN_EDGES) == 41
    assert private_tags.ERROR_BIN_EDGES[0] == -0.2 and private_tags.ERROR_BIN_EDGES[-1] == 0.2
