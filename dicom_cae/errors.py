"""The project's own errors; each names the input and the reason."""

from __future__ import annotations


class DicomCaeError(Exception):
    """Base class of every error this package raises on purpose."""


class DicomInputError(DicomCaeError):
    """An input file or dataset that cannot be processed.

    ``source`` names the file (or the SOP Instance UID when there is no file);
    ``reason`` says why, in words an operator can act on.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # so that it crosses process boundaries intact (a pool, a Dask worker)
        return (type(self), (self.source, self.reason))


class NotAnImageError(DicomInputError):
    """A valid DICOM object that holds no grayscale image (SR, presentation state, colour...)."""


class ModelError(DicomCaeError):
    """An unknown model name or a weights file that does not fit the model."""


def is_resource_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the machine's problem, not the input's: a full disk or quota, a
    read-only file system, memory. Such a failure hits every instance alike; an instance that
    meets it is tried again once the machine recovers, never failed for ever."""
    import errno

    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM)


class NotDicomError(DicomInputError):
    """A file that is not DICOM at all (no 'DICM' prefix and nothing pydicom can parse)."""
