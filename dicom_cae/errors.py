"""The project's own errors; each names the input and the reason."""

from __future__ import annotations


class DicomCaeError(Exception):
    """Base class of every error this package raises on purpose."""


#: What an instance's failure is put down to: its own content, or the machine's.
INPUT, DISK, MEMORY, MODEL, ENGINE = "input", "disk", "memory", "model", "engine"


class InstanceError(DicomCaeError):
    """One instance that was not processed, and why.

    ``source`` names the file (or the SOP Instance UID when there is no file); ``reason`` says
    why, in words an operator can act on; ``stage`` where it stopped (read, prepare,
    reconstruct, write, engine); ``cause`` whose fault it is: ``input`` (its own content: it
    will fail again) or the machine's (``disk``, ``memory``, ``model``, ``engine``: it may
    succeed once that is mended). errors.tsv and the node's failed/ say both.
    """

    def __init__(self, source: str, reason: str, stage: str = "prepare", cause: str = INPUT) -> None:
        super().__init__(f"{source}: {reason}")
        self.source, self.reason, self.stage, self.cause = source, reason, stage, cause

    def __reduce__(self):  # so that it crosses process boundaries intact (a pool, a Dask worker)
        return (InstanceError, (self.source, self.reason, self.stage, self.cause))

    def named(self, source: str) -> InstanceError:
        """The same error for ``source`` (a file as the user named it)."""
        import copy

        out = copy.copy(self)
        out.source, out.args = source, (f"{source}: {self.reason}",)
        return out


class DicomInputError(InstanceError):
    """An input file or dataset that cannot be processed for what it holds (cause ``input``)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason, "prepare", INPUT)

    def __reduce__(self):
        return (type(self), (self.source, self.reason))


class NotAnImageError(DicomInputError):
    """A valid DICOM object that holds no grayscale image (SR, presentation state, colour...)."""


class ModelError(DicomCaeError):
    """An unknown model name or a weights file that does not fit the model."""


def is_resource_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the machine's problem, not the input's: a full disk or quota, a
    read-only file system, memory. Such a failure hits every instance alike; an instance that
    meets it is tried again once the machine recovers, never failed for ever."""
    return cause_of(exc) in (DISK, MEMORY)


class NotDicomError(DicomInputError):
    """A file that is not DICOM at all (no 'DICM' prefix and nothing pydicom can parse)."""


def cause_of(exc: BaseException, default: str = INPUT) -> str:
    """Whose fault ``exc`` is: ``disk`` (full, over quota, read-only), ``memory``, else ``default``."""
    import errno

    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return MEMORY
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return DISK
    return default
