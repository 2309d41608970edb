"""The output store: where derived instances go, durable writes, and an index of what it holds.

Layout: ``ROOT/<study>/<series>/<sop>.dcm`` (UIDs made safe as file names by
identity.safe_name), study reports beside the series. The index (``ROOT/index.sqlite``)
records each derived instance with its series and study, the source instance it comes from
and its path, so that reports, forwarding and any later retrieval read it instead of walking
folders. Workers (threads, processes, Dask workers) write files; one process, the one that
runs the conversion or the node, writes the index.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_cae import identity, io

INDEX = "index.sqlite"


@dataclass(frozen=True)
class Entry:
    """One derived instance in the store."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_sop_instance_uid: str
    source: str  # the file (or spool entry) it was made from
    path: str  # relative to the store's root


def relative_path(study_uid: object, series_uid: object, sop_uid: object) -> Path:
    name = identity.safe_name
    return Path(name(study_uid)) / name(series_uid) / f"{name(sop_uid)}.dcm"


class Store:
    """A folder of derived instances and its index."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- files (any worker) ------------------------------------------------------------------
    def path_of(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        return self.root / relative_path(study_uid, series_uid, sop_uid)

    def study_dir(self, study_uid: object) -> Path:
        return self.root / identity.safe_name(study_uid)

    def write(self, ds: Dataset, *, durable: bool = False) -> Path:
        """Write a derived instance where its UIDs put it (atomically; ``durable``: fsync'd
        with its folder before this returns)."""
        out = self.path_of(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        io.write(ds, out, durable=durable)
        return out

    # -- index (one process) -------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / INDEX, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS instances (sop_instance_uid TEXT PRIMARY KEY, series_instance_uid TEXT,"
                " study_instance_uid TEXT, source_sop_instance_uid TEXT, source TEXT, path TEXT, written_at REAL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS by_study ON instances (study_instance_uid)")
            db.execute("CREATE INDEX IF NOT EXISTS by_source ON instances (source_sop_instance_uid)")
            db.commit()
            self._db = db
        return self._db

    def add(self, entries: list[Entry]) -> None:
        """Record instances written (again: the newer record wins)."""
        if not entries:
            return
        with self._lock:
            self.db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.sop_instance_uid, e.series_instance_uid, e.study_instance_uid, e.source_sop_instance_uid,
                  e.source, e.path, time.time()) for e in entries],
            )
            self.db.commit()

    def entries(self, study_uid: str | None = None) -> list[Entry]:
        """What the index holds (of one study), in path order."""
        query = "SELECT sop_instance_uid, series_instance_uid, study_instance_uid, source_sop_instance_uid, source, path FROM instances"
        with self._lock:
            rows = (self.db.execute(query + " WHERE study_instance_uid = ? ORDER BY path", (study_uid,)) if study_uid is not None
                    else self.db.execute(query + " ORDER BY path")).fetchall()
        return [Entry(*r) for r in rows]

    def study_files(self, study_uid: str) -> list[Path]:
        """The derived instances of a study that are on disk, by the index."""
        return [p for p in (self.root / e.path for e in self.entries(study_uid)) if p.is_file()]

    def studies(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT study_instance_uid FROM instances ORDER BY 1")]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
