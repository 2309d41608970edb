"""dicom-cae inside Orthanc: the plugin (loaded by Orthanc's Python plugin) and the command that
runs an Orthanc with it.

When Orthanc says a study is stable, the study is queued (a durable SQLite queue in the
plugin's data folder) and the callback returns at once. A thread of the plugin takes queued
studies one at a time: it copies the study's original image instances out of Orthanc, runs
them through the same batch driver as ``convert`` and the node (runner.Driver, the service
policy: a failure of the machine leaves the study queued) on local worker processes (the
model never loads inside Orthanc), posts the derived instances and the report (Encapsulated
PDF) back into Orthanc as new series of the same study, and marks the study done.

Never a loop, never twice: an instance carrying dicom-cae's private block (a derived image)
or no pixels (the report) is never processed; the derived UIDs are deterministic, so a study
processed again, or completed after a restart, gives the same instances, which Orthanc keeps
once. The queue survives a restart or a SIGKILL: what was pending is taken again.

In Orthanc: ``/dicom-cae/health`` (the queue and its problems), ``/dicom-cae/studies/{id}/report``
(the study's HTML report), ``POST /dicom-cae/studies/{id}/reprocess`` (queue it again, with
other settings in a JSON body: quality, target_ratio, value_mapping). An instance that cannot
be processed gets the metadata ``DicomCaeError`` (its reason) and a warning in Orthanc's log.

The command ``dicom-cae orthanc`` writes an Orthanc configuration (storage in the data folder,
the Python and DICOMweb plugins, this plugin, StableAge) and runs the Orthanc on the PATH with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_cae.errors import DicomCaeError

LOGGER = logging.getLogger(__name__)

#: The user metadata an instance that could not be processed gets (declared in Orthanc's
#: configuration under "UserMetadata"; the command's configuration has it).
ERROR_METADATA = "DicomCaeError"
ERROR_METADATA_INDEX = 4242
CONFIG_KEY = "DicomCae"
PENDING, DONE, PROBLEM = "pending", "done", "problem"
RECENT = 50  # health lists the newest of the instances that are not images, and counts them all
NICE = 19  # the worker processes and the worker thread inside Orthanc: receiving comes first
RETRY_S = 30.0  # a study whose processing failed as a whole is tried again after this
#: While a modality is sending (an instance that dicom-cae did not store itself arrived within
#: RECEIVING_QUIET_S), the worker thread waits before it copies originals out of Orthanc or
#: stores results into it, at most RECEIVING_WAIT_MAX_S at a time (so that a site that receives
#: all day still gets its derived series); the batches already with the workers go on at nice 19.
RECEIVING_QUIET_S = 1.0
RECEIVING_WAIT_MAX_S = 30.0


# -- the durable queue ---------------------------------------------------------------------------

class StudyQueue:
    """Orthanc study ids to process, kept in SQLite (WAL, synchronous FULL): a study queued is
    processed even if Orthanc is killed before it is; one marked done is not processed again
    unless asked (reprocess)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                         "settings TEXT, tries INTEGER NOT NULL DEFAULT 0, problem TEXT, updated REAL NOT NULL, "
                         "version INTEGER NOT NULL DEFAULT 0, fingerprint TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS failures (study TEXT, instance TEXT, reason TEXT, cause TEXT, "
                         "PRIMARY KEY (study, instance))")
        self._db.execute("CREATE TABLE IF NOT EXISTS posted (sop_instance_uid TEXT PRIMARY KEY)")

    def add(self, study: str, settings: dict[str, Any] | None = None, *, again: bool = False) -> None:
        """Queue ``study``: pending again, its version moved on (a study taken while this
        happens is not marked done over it). ``again``: processed anew even if nothing changed."""
        with self._lock:
            self._db.execute(
                "INSERT INTO studies (id, state, settings, tries, problem, updated, version) VALUES (?, ?, ?, 0, NULL, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, tries = 0, problem = NULL, "
                "settings = COALESCE(excluded.settings, studies.settings), updated = excluded.updated, "
                "version = studies.version + 1" + (", fingerprint = NULL" if again else ""),
                (study, PENDING, json.dumps(settings) if settings else None, time.time()))

    def next(self) -> tuple[str, dict[str, Any] | None, int, str | None] | None:
        """The oldest pending study (a problem one once RETRY_S has passed): (id, settings,
        version, fingerprint of what was processed last), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, settings, version, fingerprint FROM studies WHERE state = ? OR (state = ? AND updated <= ?) "
                "ORDER BY updated LIMIT 1", (PENDING, PROBLEM, time.time() - RETRY_S)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]) if row[1] else None, row[2], row[3])

    def done(self, study: str, version: int, fingerprint: str | None = None) -> None:
        """Done, unless it was queued again while being processed (then it stays pending)."""
        with self._lock:
            self._db.execute("UPDATE studies SET state = ?, problem = NULL, updated = ?, fingerprint = ? "
                             "WHERE id = ? AND version = ?", (DONE, time.time(), fingerprint, study, version))

    def problem(self, study: str, what: str) -> None:
        with self._lock:
            self._db.execute("UPDATE studies SET state = ?, tries = tries + 1, problem = ?, updated = ? WHERE id = ?",
                             (PROBLEM, what, time.time(), study))

    def posted(self, sop_instance_uids: list[str]) -> None:
        """Instances dicom-cae put into Orthanc: never downloaded to be looked at again."""
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO posted VALUES (?)", [(u,) for u in sop_instance_uids])

    def is_posted(self, sop_instance_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM posted WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone() is not None

    def failed(self, study: str, instance: str, reason: str, cause: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (study, instance, reason, cause))

    def state(self, study: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM studies WHERE id = ?", (study,)).fetchone()
        return row[0] if row else None

    def summary(self) -> dict[str, Any]:
        from dicom_cae.runner import NOT_IMAGE  # the cause recorded for what is not an image we code

        with self._lock:
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
            problems = [{"study": s, "tries": t, "problem": p} for s, t, p in
                        self._db.execute("SELECT id, tries, problem FROM studies WHERE state = ?", (PROBLEM,))]
            failures = [{"study": s, "instance": i, "reason": r, "cause": c} for s, i, r, c in self._db.execute(
                "SELECT study, instance, reason, cause FROM failures WHERE cause != ? ORDER BY study", (NOT_IMAGE,))]
            not_images = self._db.execute("SELECT COUNT(*) FROM failures WHERE cause = ?", (NOT_IMAGE,)).fetchone()[0]
            recent = [{"study": s, "instance": i, "reason": r} for s, i, r in self._db.execute(
                "SELECT study, instance, reason FROM failures WHERE cause = ? ORDER BY rowid DESC LIMIT ?",
                (NOT_IMAGE, RECENT))]
        return {"queue": {k: counts.get(k, 0) for k in (PENDING, PROBLEM, DONE)}, "problems": problems,
                "failed_instances": failures, "not_images": {"count": not_images, "recent": recent}}


# -- the plugin (inside Orthanc) -------------------------------------------------------------------

@dataclass
class Options:
    """The plugin's settings (Orthanc's configuration, under "DicomCae")."""

    data_dir: str
    python: str | None = None  # the worker processes' interpreter (inside Orthanc, sys.executable is Orthanc)
    workers: int = 1
    quality: int | None = None
    target_ratio: float | None = None
    value_mapping: str | None = None
    model: str | None = None
    batch_size: int | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> Options:
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"unknown {CONFIG_KEY} setting(s): {', '.join(unknown)}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**known)


class Plugin:
    """The queue, the worker thread and the REST routes, inside Orthanc."""

    def __init__(self, orthanc: Any, options: Options) -> None:
        self.orthanc, self.options = orthanc, options
        self.root = Path(options.data_dir)
        self.queue = StudyQueue(self.root / "queue.sqlite")
        self.store_root = self.root / "derived"
        self.work = self.root / "work"
        self.wake = threading.Event()
        self.stopping = threading.Event()
        # Orthanc answers its REST API to a plugin only once it has started: a study queued
        # before a restart waits for that (asked too early, it listed no instance: "done").
        self.started = threading.Event()
        self.current: str | None = None
        self.last_error: str | None = None
        # Instances Orthanc says are new, and those of them dicom-cae stored itself: the rest
        # arrived from outside (a modality sending). High-water mark of that difference, and when
        # it last rose (the events of dicom-cae's own stores come after them: the difference dips,
        # then comes back, without rising).
        self._counts = threading.Lock()
        self._arrived = self._own = self._outside_seen = 0
        self._outside_at = -math.inf
        self._engines: dict[tuple, Any] = {}
        self._drivers: dict[Any, Any] = {}
        self.thread = threading.Thread(target=self._loop, name="dicom-cae", daemon=True)

    # callbacks: each returns at once (the Python plugin holds the GIL in a callback)
    def on_change(self, change_type: Any, level: Any, resource: str) -> None:
        try:
            if change_type == self.orthanc.ChangeType.STABLE_STUDY:
                self.queue.add(resource)
                self.wake.set()
            elif change_type == self.orthanc.ChangeType.NEW_INSTANCE:
                with self._counts:
                    self._arrived += 1
            elif change_type == self.orthanc.ChangeType.ORTHANC_STARTED:
                self.started.set()
                self.wake.set()
            elif change_type == self.orthanc.ChangeType.ORTHANC_STOPPED:
                self.stopping.set()
                self.wake.set()
        except Exception:  # noqa: BLE001 (a plugin's exception must never reach Orthanc)
            self.orthanc.LogError(f"dicom-cae: {traceback.format_exc()}")

    def health(self, output: Any, uri: str, **request: Any) -> None:
        doc = {"status": "degraded" if self.last_error else "ok", "processing": self.current,
               "waiting_while_receiving": self.receiving(),
               "last_error": self.last_error, **self.queue.summary()}
        output.AnswerBuffer(json.dumps(doc, indent=1), "application/json")

    def report(self, output: Any, uri: str, **request: Any) -> None:
        study = request["groups"][0]
        path = self._study_folder(study) / "report.html" if self._study_folder(study) else None
        if path is None or not path.exists():
            output.SendHttpStatusCode(404)
            return
        output.AnswerBuffer(path.read_bytes(), "text/html")

    def reprocess(self, output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "POST":
            output.SendMethodNotAllowed("POST")
            return
        study = request["groups"][0]
        body = request.get("body") or b""
        try:
            settings = json.loads(body) if body.strip() else None
            if settings is not None:
                self._settings(settings)  # checked now: a mistyped setting is answered, not queued
        except (ValueError, TypeError, DicomCaeError) as exc:
            body = json.dumps({"error": str(exc)})
            output.SendHttpStatus(400, body, len(body))  # a bad request, answered: nothing queued
            return
        self.queue.add(study, settings, again=True)
        self.wake.set()
        output.AnswerBuffer(json.dumps({"queued": study, "settings": settings}), "application/json")

    def receiving(self) -> bool:
        """Whether an instance arrived from outside (not stored by dicom-cae) within RECEIVING_QUIET_S."""
        now = time.monotonic()
        with self._counts:
            outside = self._arrived - self._own
            if outside > self._outside_seen:
                self._outside_seen, self._outside_at = outside, now
            return now - self._outside_at < RECEIVING_QUIET_S

    def _yield_to_receiving(self) -> None:
        """Orthanc's receiving first: wait while a modality sends (at most RECEIVING_WAIT_MAX_S)."""
        end = time.monotonic() + RECEIVING_WAIT_MAX_S
        while self.receiving() and time.monotonic() < end and not self.stopping.is_set():
            self.stopping.wait(0.1)

    # the worker thread
    def _loop(self) -> None:
        # This thread at the lowest priority too: what it asks of Orthanc (copying the originals
        # out, storing the derived instances) runs in it, and Orthanc's receiving comes first.
        # On Linux the nice value of a thread is its own (setpriority on its thread id).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (AttributeError, OSError):  # not Linux, or not allowed: at Orthanc's priority
            pass
        while not self.started.is_set() and not self.stopping.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
        while not self.stopping.is_set():
            try:
                item = self.queue.next()
                if item is None:
                    self.wake.wait(2.0)
                    self.wake.clear()
                    continue
                study, settings, version, fingerprint = item
                self.current = study
                try:
                    done = self.process(study, settings, fingerprint)
                    self.queue.done(study, version, done)
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 (the model, the disk, Orthanc: the study stays queued)
                    what = f"{type(exc).__name__}: {exc}"
                    self.last_error = f"study {study}: {what}"
                    self.orthanc.LogWarning(f"dicom-cae: study {study} stays queued (tried again in {RETRY_S:g} s): {what}")
                    self.queue.problem(study, what)
                finally:
                    self.current = None
            except Exception:  # noqa: BLE001 (the queue itself: a full disk under it; never end the thread)
                self.last_error = f"the queue: {traceback.format_exc(limit=2)}"
                self.orthanc.LogError(f"dicom-cae: {self.last_error}")
                self.stopping.wait(10.0)
        for engine in self._engines.values():
            engine.close()

    #: What a reprocess request may set.
    SETTINGS = ("quality", "target_ratio", "value_mapping", "model", "batch_size")

    def _settings(self, override: dict[str, Any] | None = None) -> Any:
        from dicom_cae import runner

        unknown = sorted(set(override or {}) - set(self.SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(self.SETTINGS)}")
        o = {k: v for k, v in vars(self.options).items() if v is not None}
        o.update(override or {})
        return runner.Settings.build(model=o.get("model"), mapping=o.get("value_mapping"), quality=o.get("quality"),
                                     target_ratio=o.get("target_ratio"), batch_size=o.get("batch_size"))

    def _engine(self, settings: Any) -> Any:
        """The worker pool for these settings' model (one pool at a time: another model's is closed)."""
        key = settings.model_key
        if key not in self._engines:
            from dicom_cae import engines

            for old in self._engines.values():
                old.close()
            self._engines.clear()
            self._drivers.clear()
            python = self.options.python or shutil.which("python3")
            if not python:
                raise DicomCaeError(f"set {CONFIG_KEY}.python: the Python that runs the worker processes")
            spawn_with(python)
            # At the lowest priority: Orthanc's own work (receiving, answering queries) comes first.
            self._engines[key] = engines.create("processes", settings, workers=max(1, int(self.options.workers)), nice=NICE)
        return self._engines[key]

    def _driver(self, settings: Any) -> Any:
        """One driver per settings, kept: it counts the tries of a batch that fails as a whole."""
        from dicom_cae import runner

        if settings not in self._drivers:
            policy = runner.Policy(requeue=True, tries=3, skip_done=True, durable=True, by_sop=True)
            self._drivers[settings] = runner.Driver(self._engine(settings), settings, self.store_root, policy)
        return self._drivers[settings]

    def _study_folder(self, study: str) -> Path | None:
        info = self._get(f"/studies/{study}")
        uid = info.get("MainDicomTags", {}).get("StudyInstanceUID") if info else None
        if not uid:
            return None
        from dicom_cae.store import Store

        return Store(self.store_root).study_dir(uid)

    def _get(self, uri: str) -> Any:
        try:
            return json.loads(self.orthanc.RestApiGet(uri))
        except Exception:  # noqa: BLE001 (gone from Orthanc)
            return None

    def process(self, study: str, override: dict[str, Any] | None = None, fingerprint: str | None = None) -> str:
        """One study: its original images through the driver, the results into Orthanc. Returns
        the fingerprint of the originals processed; a study whose originals have not changed
        since (it turned stable again because its derived series were added) is left as it is."""
        import hashlib

        from dicom_cae import io, private_tags, report, runner  # noqa: F401 (report: its series UID)
        from dicom_cae.store import Entry, Store

        settings = self._settings(override)
        listed = self._get(f"/studies/{study}/instances")
        if listed is None:  # Orthanc did not answer (or the study is gone): tried again later, not "done"
            raise DicomCaeError(f"Orthanc lists no instances for study {study}")
        instances = [i for i in listed
                     if not self.queue.is_posted(i.get("MainDicomTags", {}).get("SOPInstanceUID", ""))]
        now = hashlib.sha256(json.dumps([sorted(i["ID"] for i in instances), override], sort_keys=True).encode()).hexdigest()
        if now == fingerprint:
            return now  # nothing new: only what dicom-cae added itself
        folder = self.work / study
        folder.mkdir(parents=True, exist_ok=True)
        ids: dict[str, str] = {}  # file -> Orthanc instance id

        def batches():
            """The study's original images copied out of Orthanc a batch at a time: the first
            batch is processed while the next ones are copied."""
            batch: list[str] = []
            for inst in instances:
                if not batch:
                    self._yield_to_receiving()
                path = folder / f"{inst['ID']}.dcm"
                if not path.exists():
                    tmp = io.temporary(path)
                    tmp.write_bytes(self.orthanc.GetDicomForInstance(inst["ID"]))
                    os.replace(tmp, path)
                try:
                    ds = io.read(path, pixels=False)
                except Exception:  # noqa: BLE001 (the driver says what is wrong with it)
                    ds = None
                if ds is not None and (private_tags.is_ours(ds) or "PixelData" not in ds and str(ds.get("Modality", "")) == "DOC"):
                    continue  # dicom-cae's own output (a derived image, the report): never processed again
                batch.append(str(path.resolve()))
                ids[batch[-1]] = inst["ID"]
                if len(batch) == settings.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        store = Store(self.store_root)
        derived, sources, studies = [], {}, set()

        def take(_: list[str], outcomes: list[runner.Outcome]) -> None:
            """Each batch's results into Orthanc as they come (while the workers go on); the
            queue and the index written once a batch."""
            written = [o for o in outcomes if o.kind in (runner.WRITTEN, runner.DONE) and o.output and o.derived]
            self._yield_to_receiving()
            self.queue.posted([o.derived[1] for o in written])
            for o in written:
                out = store.root / o.output
                self._post(out.read_bytes())
                derived.append(out)
                sources[o.sop_instance] = Path(o.source)
                studies.add(o.study)
            store.add([Entry(o.derived[1], o.derived[0], o.study, o.sop_instance, o.source, o.output) for o in written])
            for o in outcomes:
                if o.kind == runner.NOT_IMAGE and o.error is not None:  # left in Orthanc as it is, said in health
                    self.queue.failed(study, ids.get(o.source, o.source), o.error.reason, runner.NOT_IMAGE)
                elif o.kind == runner.FAILED and o.error is not None:
                    iid = ids.get(o.source, o.source)
                    self.queue.failed(study, iid, o.error.reason, o.error.cause)
                    self.orthanc.LogWarning(f"dicom-cae: instance {iid} not processed ({o.error.cause}): {o.error.reason}")
                    try:
                        self.orthanc.RestApiPut(f"/instances/{iid}/metadata/{ERROR_METADATA}",
                                                f"{o.error.cause}: {o.error.reason}"[:1000])
                    except Exception:  # noqa: BLE001 (the metadata is not declared in this Orthanc's configuration)
                        pass

        self._driver(settings).run(batches(), take)  # Deferred: the study stays queued
        study_uid = next(iter(studies), None)
        if study_uid:  # the report on a worker too: nothing heavy runs inside Orthanc
            from dicom_cae.convert import study_report

            files = [str(p) for p in sorted(set(store.study_files(study_uid)))]
            self._engine(settings).submit(study_report, str(store.root.resolve()), study_uid, files,
                                          {k: Path(v) for k, v in sources.items()}).result()
            for doc in store.study_dir(study_uid).glob("*/*.dcm"):
                if doc.parent.name == report.document_series(study_uid):
                    self.queue.posted([doc.stem])
                    self._post(doc.read_bytes())
                    self._drop_earlier_reports(doc.parent.name, doc.stem)
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
        return now

    def _drop_earlier_reports(self, series_uid: str, current: str) -> None:
        """The study's report series in Orthanc keeps the current report only: an earlier version
        (about fewer instances, or other settings' series) is deleted, as the store's folder
        drops it. A failure here is said in the log; the study is done all the same."""
        try:
            found = json.loads(self.orthanc.RestApiPost("/tools/lookup", series_uid))
            for series in (r for r in found if r.get("Type") == "Series"):
                for inst in self._get(f"/series/{series['ID']}/instances") or []:
                    if inst.get("MainDicomTags", {}).get("SOPInstanceUID") != current:
                        self.orthanc.RestApiDelete(f"/instances/{inst['ID']}")
        except Exception as exc:  # noqa: BLE001 (an earlier report left beside the current one)
            self.orthanc.LogWarning(f"dicom-cae: an earlier report of series {series_uid} not removed: {exc}")

    def _post(self, data: bytes) -> None:
        with self._counts:
            self._own += 1  # counted before: its NEW_INSTANCE must not pass for an arrival
        new = False
        try:
            answer = self.orthanc.RestApiPost("/instances", data)  # an instance Orthanc holds already is kept once
            try:
                new = json.loads(answer).get("Status") != "AlreadyStored"
            except (TypeError, ValueError, AttributeError):
                new = True
        finally:
            if not new:  # refused, or held already: no NEW_INSTANCE follows
                with self._counts:
                    self._own -= 1


def spawn_with(python: str) -> None:
    """Worker processes started from inside Orthanc run ``python`` with its own module path.

    Inside Orthanc, ``sys.executable`` is Orthanc itself and ``sys.path`` leads to the Python
    that Orthanc embeds (Debian's); a spawned process is given the parent's path, and a mix of
    two standard libraries fails (modules built into one are files in the other). So the
    interpreter is set, and the path each spawned process gets is that interpreter's own
    (with the folders that hold dicom-cae first)."""
    import multiprocessing
    import multiprocessing.spawn as spawn
    import subprocess

    multiprocessing.set_executable(python)
    own = json.loads(subprocess.run([python, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                    capture_output=True, text=True, check=True).stdout)
    ours = [p for p in sys.path if p not in own and (Path(p) / "dicom_cae").is_dir()]
    path = ours + own
    original = getattr(spawn.get_preparation_data, "__wrapped__", spawn.get_preparation_data)

    def preparation_data(name: str) -> dict:
        data = original(name)
        data["sys_path"] = path
        data.pop("init_main_from_path", None)  # Orthanc's __main__ is no file to run
        return data

    preparation_data.__wrapped__ = original
    spawn.get_preparation_data = preparation_data


def register_private_tags(orthanc: Any) -> None:
    """Name every element of the private block in Orthanc's dictionary (its tags view, /tags)."""
    from dicom_cae import private_tags

    for e in private_tags.ELEMENTS:
        vr = getattr(orthanc.ValueRepresentation, e.vr, None)
        if vr is None:
            continue
        orthanc.RegisterPrivateDictionaryTag(private_tags.PRIVATE_GROUP, 0x1000 | e.offset, vr, e.keyword, 1, 0,
                                             private_tags.PRIVATE_CREATOR)


def start() -> Plugin:
    """Called by the PythonScript inside Orthanc: read the "DicomCae" settings, register the
    callbacks and routes, start the worker thread."""
    import orthanc  # provided by Orthanc's Python plugin

    config = json.loads(orthanc.GetConfiguration()).get(CONFIG_KEY, {})
    plugin = Plugin(orthanc, Options.of(config))
    try:
        register_private_tags(orthanc)
    except Exception:  # noqa: BLE001 (names in the tags view are a nicety)
        orthanc.LogWarning(f"dicom-cae: private tags not registered: {traceback.format_exc()}")
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    orthanc.RegisterRestCallback("/dicom-cae/health", plugin.health)
    orthanc.RegisterRestCallback("/dicom-cae/studies/([^/]+)/report", plugin.report)
    orthanc.RegisterRestCallback("/dicom-cae/studies/([^/]+)/reprocess", plugin.reprocess)
    plugin.thread.start()
    orthanc.LogWarning(f"dicom-cae: plugin started, data in {plugin.root}, {plugin.queue.summary()['queue']}")
    return plugin


# -- the command ---------------------------------------------------------------------------------

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def _plugin_library(name: str) -> str | None:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob(f"lib{name}.so*")):
            return str(p)
    return None


def configuration(data_dir: Path, *, dicom_port: int, http_port: int, aet: str = "DICOM_CAE", stable_age: int = 10,
                  workers: int = 1, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Orthanc configuration that runs dicom-cae inside it."""
    paths = [p for p in sys.path if p.endswith("site-packages")]
    root = str(Path(__file__).resolve().parents[1])
    script = data_dir / "dicom_cae_plugin.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "# Written by `dicom-cae orthanc`: Orthanc's Python plugin runs this at start.\n"
        "import sys\n"
        f"sys.path[:0] = {[root, *paths]!r}  # dicom-cae and the packages it needs\n"
        "from dicom_cae import orthanc_plugin\n"
        "PLUGIN = orthanc_plugin.start()\n")
    plugins = [p for p in (_plugin_library("OrthancPython"), _plugin_library("OrthancDicomWeb")) if p]
    cfg = {
        "Name": "dicom-cae",
        "StorageDirectory": str(data_dir / "orthanc-storage"),
        "IndexDirectory": str(data_dir / "orthanc-storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # HTTP from this machine only
        "AuthenticationEnabled": False,
        "StableAge": stable_age,
        "Plugins": plugins,
        "PythonScript": str(script),
        "PythonVerbose": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "UserMetadata": {ERROR_METADATA: ERROR_METADATA_INDEX},
        "DicomModalities": {},
        "OverwriteInstances": False,
        CONFIG_KEY: {"data_dir": str(data_dir / "dicom-cae"), "python": sys.executable, "workers": workers},
    }
    for k, v in (extra or {}).items():
        cfg[CONFIG_KEY][k] = v
    return cfg


def register(sub: Any) -> None:
    """The ``dicom-cae orthanc`` command (the dicom_cae.commands entry point)."""
    p = sub.add_parser("orthanc", help="run Orthanc with dicom-cae inside it (its Python plugin)")
    p.add_argument("--data-dir", default="dicom-cae-orthanc", help="Orthanc's storage and the plugin's data (default ./dicom-cae-orthanc)")
    p.add_argument("--dicom-port", type=int, default=4242)
    p.add_argument("--http-port", type=int, default=8042)
    p.add_argument("--aet", default="DICOM_CAE")
    p.add_argument("--stable-age", type=int, default=10, metavar="S", help="seconds without a new instance before a study is processed")
    p.add_argument("--workers", type=int, default=1, help="worker processes that run the model (default 1)")
    p.add_argument("--config", help="a JSON file whose keys are added to (and override) the written configuration")
    p.add_argument("--print-config", action="store_true", help="print the configuration and exit (for a site's own Orthanc)")
    p.set_defaults(func=run_command)


def run_command(args: Any) -> int:
    data_dir = Path(args.data_dir).resolve()
    extra = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = configuration(data_dir, dicom_port=args.dicom_port, http_port=args.http_port, aet=args.aet,
                        stable_age=args.stable_age, workers=args.workers)
    ours = extra.pop(CONFIG_KEY, {})
    cfg.update(extra)
    cfg[CONFIG_KEY].update(ours)
    if args.print_config:
        print(json.dumps(cfg, indent=2))
        return 0
    orthanc = shutil.which("Orthanc")
    if orthanc is None:
        print("dicom-cae orthanc: error: Orthanc is not on the PATH (Debian: apt-get install orthanc orthanc-python "
              "orthanc-dicomweb)", file=sys.stderr)
        return 2
    if not any("OrthancPython" in p for p in cfg["Plugins"]):
        print("dicom-cae orthanc: error: Orthanc's Python plugin is missing (Debian: apt-get install orthanc-python)",
              file=sys.stderr)
        return 2
    path = data_dir / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=2))
    print(f"dicom-cae orthanc: DICOM {args.aet} on port {args.dicom_port}, http://127.0.0.1:{args.http_port}/ "
          f"(configuration {path})", file=sys.stderr)
    env = {**os.environ, "TCP_NODELAY": os.environ.get("TCP_NODELAY", "1")}
    os.execve(orthanc, [orthanc, str(path)], env)
    return 0  # not reached
