"""The node's durable state in SQLite: instances, studies and the forwarding outbox."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    status TEXT NOT NULL,          -- processed | kept | failed
    reason TEXT,
    output TEXT,
    at REAL NOT NULL,
    digest TEXT                    -- of the received content: tells a resend from a conflict
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    last_received REAL NOT NULL,
    dirty INTEGER NOT NULL,        -- changed since its report was written
    reported_at REAL,
    report_error TEXT              -- why its last report could not be written
);
CREATE TABLE IF NOT EXISTS outbox (
    path TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT,
    queued_at REAL
);
CREATE TABLE IF NOT EXISTS forwarded (
    path TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxItem:
    path: str
    study_uid: str
    attempts: int


class State:
    """Thread-safe access to the state database (one connection, one lock, WAL journal)."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        # Columns added since the first version: add them to a database that lacks them.
        for table, column in (("instances", "digest TEXT"), ("studies", "report_error TEXT"), ("outbox", "queued_at REAL")):
            names = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] not in names:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, sop_uid: str, study_uid: str | None, status: str, *, reason: str = "", output: str = "",
               digest: str = "") -> None:
        """Record what became of an instance and mark its study (when it has one) as changed."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, study_uid, status, reason, output, at, digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid or "", status, reason, output, now, digest),
            )
            if not study_uid:
                return
            self._db.execute(
                "INSERT INTO studies (study_uid, last_received, dirty) VALUES (?, ?, 1) "
                "ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received, dirty = 1",
                (study_uid, now),
            )

    def digest(self, sop_uid: str, statuses: tuple[str, ...]) -> str | None:
        """The content digest of an instance recorded with one of ``statuses``, else None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT digest FROM instances WHERE sop_instance_uid = ? AND status IN ({','.join('?' * len(statuses))})",
                (sop_uid, *statuses),
            ).fetchone()
        return row[0] if row and row[0] else None

    def output_of(self, sop_uid: str) -> str | None:
        """Where the outcome of an instance was written (derived instance, kept or failed copy)."""
        with self._lock:
            row = self._db.execute("SELECT output FROM instances WHERE sop_instance_uid = ?", (sop_uid,)).fetchone()
        return row[0] if row else None

    def instances(self, status: str | None = None) -> list[tuple[str, str, str, str]]:
        with self._lock:
            q = "SELECT sop_instance_uid, study_uid, status, reason FROM instances"
            rows = self._db.execute(q + (" WHERE status = ?" if status else ""), (status,) if status else ())
            return list(rows)

    def due_studies(self, quiet_s: float) -> list[str]:
        """Studies changed since their last report and quiet for ``quiet_s`` seconds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid FROM studies WHERE dirty = 1 AND last_received <= ?", (time.time() - quiet_s,)
            )
            return [r[0] for r in rows]

    def study_reported(self, study_uid: str, seen_until: float, error: str | None = None) -> None:
        """Mark a study reported (or its report failed, with ``error``: it is tried again when
        more of it arrives), unless an instance arrived after ``seen_until``."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE studies SET dirty = 0, reported_at = ?, report_error = ? WHERE study_uid = ? AND last_received <= ?",
                (time.time(), error, study_uid, seen_until),
            )

    def report_errors(self) -> list[tuple[str, str]]:
        """(study, error) of the studies whose last report failed."""
        with self._lock:
            return list(self._db.execute("SELECT study_uid, report_error FROM studies WHERE report_error IS NOT NULL ORDER BY reported_at"))

    def studies(self) -> list[tuple[str, float, int, float | None]]:
        with self._lock:
            return list(self._db.execute("SELECT study_uid, last_received, dirty, reported_at FROM studies"))

    # -- outbox -------------------------------------------------------------------------------
    def enqueue(self, paths: list[str], study_uid: str) -> int:
        """Add files not forwarded yet (nor queued) to the outbox; returns how many were added."""
        added = 0
        now = time.time()
        with self._lock, self._db:
            for p in paths:
                if self._db.execute("SELECT 1 FROM forwarded WHERE path = ?", (p,)).fetchone():
                    continue
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO outbox (path, study_uid, next_try, queued_at) VALUES (?, ?, ?, ?)",
                    (p, study_uid, now, now),
                )
                added += cur.rowcount
        return added

    def outbox_due(self, limit: int = 100) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, study_uid, attempts FROM outbox WHERE next_try <= ? ORDER BY next_try, path LIMIT ?",
                (time.time(), limit),
            )
            return [OutboxItem(*r) for r in rows]

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def outbox_health(self) -> tuple[int, float | None, int, str | None]:
        """(items waiting, queue time of the oldest, items that failed at least once, last error)."""
        with self._lock:
            depth, oldest, failing = self._db.execute(
                "SELECT COUNT(*), MIN(COALESCE(queued_at, next_try)), SUM(attempts > 0) FROM outbox"
            ).fetchone()
            row = self._db.execute(
                "SELECT last_error FROM outbox WHERE last_error IS NOT NULL ORDER BY next_try DESC LIMIT 1"
            ).fetchone()
        return int(depth), oldest, int(failing or 0), row[0] if row else None

    def forwarded(self, path: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM outbox WHERE path = ?", (path,))
            self._db.execute("INSERT OR REPLACE INTO forwarded VALUES (?, ?)", (path, time.time()))

    def forward_failed(self, path: str, error: str, delay_s: float) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE path = ?",
                (time.time() + delay_s, error[:500], path),
            )
