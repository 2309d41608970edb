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
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    last_received REAL NOT NULL,
    dirty INTEGER NOT NULL,        -- changed since its report was written
    reported_at REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    path TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, sop_uid: str, study_uid: str, status: str, *, reason: str = "", output: str = "") -> None:
        """Record what became of an instance and mark its study as changed."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, status, reason, output, now),
            )
            self._db.execute(
                "INSERT INTO studies (study_uid, last_received, dirty) VALUES (?, ?, 1) "
                "ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received, dirty = 1",
                (study_uid, now),
            )

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

    def study_reported(self, study_uid: str, seen_until: float) -> None:
        """Mark a study reported, unless an instance arrived after ``seen_until``."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE studies SET dirty = 0, reported_at = ? WHERE study_uid = ? AND last_received <= ?",
                (time.time(), study_uid, seen_until),
            )

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
                    "INSERT OR IGNORE INTO outbox (path, study_uid, next_try) VALUES (?, ?, ?)", (p, study_uid, now)
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
