"""The one place that reads DICOM files from disk."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_cae.errors import DicomCaeError, DicomInputError, NotDicomError

LOGGER = logging.getLogger(__name__)


def read(path: str | os.PathLike[str], *, pixels: bool = True) -> Dataset:
    """Read one DICOM file (Part 10, or a bare dataset that pydicom can still parse).

    With ``pixels=False`` reading stops before the pixel data.

    Raises:
        DicomInputError: the file is missing, unreadable, not DICOM or truncated.
    """
    name = str(path)
    try:
        ds = pydicom.dcmread(name, force=False, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        # Some old files lack the 128-byte preamble; try once more without it.
        try:
            ds = pydicom.dcmread(name, force=True, stop_before_pixels=not pixels)
        except Exception as exc2:  # pydicom raises many types on garbage
            raise NotDicomError(name, f"not a DICOM file ({exc2})") from exc
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise NotDicomError(name, "not a DICOM file (no 'DICM' prefix, no SOP Class or Instance UID)") from exc
    except OSError as exc:
        raise DicomInputError(name, f"cannot read file ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated or malformed element structure
        raise DicomInputError(name, f"malformed DICOM ({type(exc).__name__}: {exc})") from exc
    ds.filename = name
    return ds


#: Pixel Data and its float and double float forms.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def without_pixels(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without its pixel data (the same element objects, its file meta and
    encoding); ``ds`` itself is left whole, and returned as it is when it holds no pixels."""
    if not any(tag in ds for tag in PIXEL_TAGS):
        return ds
    out = Dataset()
    for elem in ds.elements():  # raw elements stay raw: nothing is decoded here
        if elem.tag not in PIXEL_TAGS:
            out[elem.tag] = elem
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    out.preamble = getattr(ds, "preamble", None)
    if ds.original_encoding != (None, None):
        out.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    return out


def walk(root: str | os.PathLike[str], *, skip: tuple[str | os.PathLike[str], ...] = ()) -> list[Path]:
    """All regular files under ``root`` (recursively), sorted, skipping hidden ones, DICOMDIRs
    and the folders ``skip`` (an output folder inside the input, say)."""
    root = Path(root)
    if root.is_file():
        return [root]
    skipped = {Path(s).resolve() for s in skip}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (not skipped or (Path(dirpath) / d).resolve() not in skipped))
        for f in sorted(filenames):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            files.append(Path(dirpath) / f)
    return files


class FolderInUse(DicomCaeError):
    """Another process holds the folder's lock (its pid in ``holder``)."""

    def __init__(self, folder: str, holder: str) -> None:
        super().__init__(folder, holder)
        self.folder, self.holder = folder, holder


def lock_folder(folder: str | os.PathLike[str], name: str) -> int:
    """Take ``folder`` for this process: an advisory lock on ``folder/name`` that the kernel
    drops when the process dies, however it dies; returns the lock's file descriptor (close it
    to let go). Raises FolderInUse when another process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUse(str(folder), holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(ds: Dataset, path: str | os.PathLike[str], *, durable: bool = False) -> None:
    """Write ``ds`` as a Part 10 file atomically: a temporary file, then rename.

    With ``durable`` the file is fsync'd before the rename (and the folder after it), so that it
    survives a power loss once this returns; conversions from files that stay where they are
    need not pay for that.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


TEMPORARY_GLOB = ".*.tmp"


def temporary(path: Path) -> Path:
    """A unique hidden name beside ``path`` for writing it: two writers of the same file (two
    threads, two processes) never share one. Leftovers match TEMPORARY_GLOB."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def remove_temporaries(root: str | os.PathLike[str]) -> int:
    """Delete the temporary files of interrupted writes under ``root``; returns how many."""
    removed = 0
    for stale in Path(root).rglob(TEMPORARY_GLOB):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed
