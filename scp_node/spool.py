"""The spool: every received instance, as received, durably on disk before it is acknowledged."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from dicom_cae.io import fsync_dir


class Spool:
    """A folder of received instances, oldest first.

    ``put`` writes to ``tmp/``, fsyncs, renames into ``incoming/`` and fsyncs the folder: once
    it returns, the instance survives a crash or power loss. Names are made here (receive time,
    a hash of the study the instance belongs to, a random part), never from the received text.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.tmp = self.root / "tmp"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Partial writes of a crashed process were never acknowledged: drop them.
        for stale in self.tmp.iterdir():
            stale.unlink()

    def put(self, data: bytes, study_key: str) -> Path:
        """Store ``data`` durably; ``study_key`` (hex) says which study it belongs to."""
        if not study_key.isalnum():
            raise ValueError("a study key is alphanumeric")
        name = f"{time.time_ns():020d}-{study_key}-{uuid.uuid4().hex}.dcm"
        tmp = self.tmp / name
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # a full disk: the part written goes at once, not at the next start
            tmp.unlink(missing_ok=True)
            raise
        final = self.incoming / name
        os.replace(tmp, final)
        fsync_dir(self.incoming)
        return final

    def pending(self) -> list[Path]:
        """Spooled instances, oldest first."""
        return sorted(self.incoming.glob("*.dcm"))

    def __len__(self) -> int:
        return sum(1 for _ in self.incoming.glob("*.dcm"))

    @staticmethod
    def study_key(path: Path) -> str | None:
        """The study key in a spool file's name (None for names written before keys existed)."""
        parts = path.stem.split("-")
        return parts[1] if len(parts) == 3 else None

    @staticmethod
    def received_at(path: Path) -> float:
        """Receive time (seconds since the epoch) encoded in a spool file's name."""
        return int(path.name.split("-", 1)[0]) / 1e9

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
