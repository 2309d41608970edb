"""The node: the SCP, the worker, the study monitor, the forwarder and the HTTP endpoint."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from hashlib import sha1
from pathlib import Path

from dicom_cae import io, report
from dicom_cae.errors import is_resource_error
from dicom_cae.identity import safe_name
from dicom_cae.pipeline import Pipeline
from dicom_cae.store import Store
from scp_node import server
from scp_node.config import Config
from scp_node.forward import Forwarder
from scp_node.monitor import Counters, Problems, serve_http
from scp_node.spool import Spool
from scp_node.state import State
from scp_node.worker import Worker

LOGGER = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """The node cannot start: its data folder is in use, or it cannot listen."""


LOCK_FILE = "node.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Take the data folder for this process (an advisory lock the kernel drops when the
    process dies, however it dies); returns the lock's file descriptor.

    Raises NodeError when another process holds it.
    """
    try:
        return io.lock_folder(data_dir, LOCK_FILE)
    except io.FolderInUse as exc:
        raise NodeError(f"another dicom-cae node (pid {exc.holder}) is using the data folder {data_dir}") from None


class Node:
    """Start with start(), stop with stop() (the batch in hand is finished first).

    Raises NodeError when another node uses the same data folder.
    """

    def __init__(self, cfg: Config, pipe: Pipeline, *, lock_fd: int | None = None) -> None:
        """``lock_fd``: the data folder's lock when the caller took it already (lock_data_dir)."""
        self.cfg = cfg
        self._lock_fd = lock_fd if lock_fd is not None else lock_data_dir(Path(cfg.data_dir))
        for d in (cfg.output_dir, cfg.kept_dir, cfg.failed_dir, cfg.conflicts_dir):
            d.mkdir(parents=True, exist_ok=True)
            removed = io.remove_temporaries(d)
            if removed:
                LOGGER.info("removed %d temporary file(s) of interrupted writes in %s", removed, d)
        self.counters = Counters()
        self.spool = Spool(cfg.spool_dir)
        self.state = State(cfg.state_path)
        self.store = Store(cfg.output_dir)
        try:
            self.worker = Worker(cfg, self.spool, self.state, pipe, self.counters, self.store)
        except (OSError, TimeoutError) as exc:  # a Dask scheduler that cannot be reached
            raise NodeError(f"cannot reach the Dask scheduler at {cfg.dask}: {exc}") from exc
        self.forwarder = Forwarder(cfg, self.state, self.counters) if cfg.forward else None
        self._stop = threading.Event()
        self._studies = threading.Thread(target=self._watch_studies, name="studies", daemon=True)
        self._scp = None
        self._http = None
        self._report_retry: dict[str, tuple[float, float]] = {}  # study -> (next try, back-off s)
        self._report_problem: str | None = None
        self.problems = Problems()

    def start(self) -> None:
        """Listen, then start processing.

        Raises NodeError when a port cannot be bound (in use, or an address not of this host);
        nothing is started then.
        """
        ae = server.make_ae(self.cfg)
        self.gate = server.Gate(self.cfg, self.counters)
        ae.maximum_associations = self.gate.thread_limit  # the gate counts associations itself
        try:
            self._scp = ae.start_server(
                (self.cfg.bind, self.cfg.port),
                block=False,
                evt_handlers=server.handlers(self.cfg, self.spool, self.counters, self.worker.wake.set, self.gate),
                ssl_context=server.tls_context(self.cfg),
            )
        except OSError as exc:
            raise NodeError(f"cannot listen on {self.cfg.bind}:{self.cfg.port}: {exc.strerror or exc}") from exc
        if self.cfg.http_port is not None:
            try:
                self._http = serve_http(self.cfg.http_bind, self.cfg.http_port, self.status, self.health)
            except OSError as exc:
                self._scp.shutdown()
                self._scp = None
                raise NodeError(f"cannot serve HTTP on {self.cfg.http_bind}:{self.cfg.http_port}: "
                                f"{exc.strerror or exc}") from exc
        server.count_tls_failures(self._scp, self.counters)
        self.gate.start()
        recovered = len(self.spool)
        if recovered:
            LOGGER.info("%d instance(s) acknowledged before a restart are in the spool: processing them", recovered)
        self.worker.start()
        self._studies.start()
        if self.forwarder:
            self.forwarder.start()
        LOGGER.info(
            "listening as %s on %s:%d%s; data in %s",
            self.cfg.ae_title, self.cfg.bind, self._scp.server_address[1],
            " (TLS)" if self.cfg.tls else "", Path(self.cfg.data_dir).resolve(),
        )

    @property
    def port(self) -> int:
        return int(self._scp.server_address[1]) if self._scp else self.cfg.port

    def status(self) -> tuple[dict, dict]:
        gauges = {
            "queue_depth": len(self.spool),
            "outbox_depth": self.state.outbox_size(),
            "associations": len(self._scp.active_associations) if self._scp else 0,
        }
        return self.counters.snapshot(), gauges

    def health(self) -> dict:
        """The /health document: "ok", or "degraded" with what is wrong (processing failing,
        forwarding failing, reports that could not be written)."""
        counters, gauges = self.status()
        now = time.time()
        problems = []
        oldest = self.spool.pending()[:1]
        doc: dict = {**gauges, **{k: counters[k] for k in Counters.NAMES}}
        doc["oldest_queued_age_s"] = round(now - Spool.received_at(oldest[0]), 1) if oldest else None
        if self.worker.last_error:
            since, error = self.worker.last_error
            problems.append("processing")
            doc["processing"] = {"failing_for_s": round(now - since, 1), "last_error": error}
        depth, queued, failing, last_error = self.state.outbox_health()
        if failing:
            problems.append("forwarding")
            doc["forwarding"] = {"outbox_depth": depth, "failing": failing,
                                 "oldest_waiting_s": round(now - queued, 1) if queued else None, "last_error": last_error}
        report_errors = self.state.report_errors()
        if report_errors or self._report_retry:
            problems.append("reports")
            doc["reports"] = {"failed_studies": len(report_errors) + len(self._report_retry),
                              "last_error": self._report_problem or report_errors[-1][1]}
        full = self.disk_space()
        if full:
            problems.append("disk")
            doc["disk"] = full
        if not self.worker.is_alive() and self.worker.ident is not None and not self._stop.is_set():
            problems.append("worker stopped")
        return {"status": "degraded" if problems else "ok", "problems": problems, **doc}

    #: Free space below which a volume counts as full (an instance and its outputs need more).
    DISK_LOW_BYTES = 64 * 1024 * 1024

    def disk_space(self) -> dict[str, dict[str, float]]:
        """The node's folders whose volume is (nearly) full: free MB and the limit. Measured with
        statvfs, which needs no disk space itself."""
        out = {}
        for name, folder in (("spool", self.cfg.spool_dir), ("output", self.cfg.output_dir), ("data", Path(self.cfg.data_dir))):
            try:
                st = os.statvfs(folder)
            except OSError:
                continue
            free = st.f_bavail * st.f_frsize
            if free < self.DISK_LOW_BYTES:
                out[name] = {"free_mb": round(free / 2**20, 2), "low_mb": self.DISK_LOW_BYTES / 2**20}
        return out

    def stop(self) -> None:
        """Stop accepting, finish the batch and the study report in hand, stop the helpers."""
        if self._scp:
            self._scp.shutdown()
        if getattr(self, "gate", None) is not None:
            self.gate.stop()
        self._stop.set()
        self.worker.stop()
        if self.worker.ident is not None:
            self.worker.join()
        if self.forwarder and self.forwarder.ident is not None:
            self.forwarder.stop()
            self.forwarder.join(timeout=30)
        if self._studies.ident is not None:
            self._studies.join()  # a report half-written when the process ends would abort it
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        self.state.close()
        os.close(self._lock_fd)
        LOGGER.info("stopped")

    def _watch_studies(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.complete_due_studies()
            except Exception:  # noqa: BLE001 (keep watching; the next round retries)
                LOGGER.exception("study completion failed")

    def complete_due_studies(self) -> list[str]:
        """Write the reports of studies quiet for study_quiet_s that have nothing waiting in the
        spool (and queue them for forwarding). Each study on its own: one study's instances
        in the queue, or one study's failing report, holds back no other."""
        waiting = {Spool.study_key(p) for p in self.spool.pending()}
        done = []
        for study_uid in self.state.due_studies(self.cfg.study_quiet_s):
            if self._stop.is_set():
                break
            if None in waiting or sha1(study_uid.encode()).hexdigest()[:16] in waiting:
                continue  # instances of it (or, from an older spool, of any study) still to process
            if self._report_retry.get(study_uid, (0.0, 0.0))[0] > time.monotonic():
                continue  # its report failed for want of disk or memory: tried again after a while
            seen = time.time()
            error = None
            try:
                self._complete(study_uid)
            except Exception as exc:  # noqa: BLE001 (this study's problem; it is retried when more of it arrives)
                error = f"{type(exc).__name__}: {exc}"
                if is_resource_error(exc):  # the machine's problem: the study stays due, tried again with back-off
                    wait = min(2 * self._report_retry.get(study_uid, (0.0, 2.5))[1], 60.0)
                    self._report_retry[study_uid] = (time.monotonic() + wait, wait)
                    self._report_problem = error
                    self.problems.note(f"study reports cannot be written: {error}", exc)
                    continue
                LOGGER.exception("the report of study %s failed", study_uid)
            self._report_retry.pop(study_uid, None)
            self._report_problem = None if not self._report_retry else self._report_problem
            self.state.study_reported(study_uid, seen, error)
            done.append(study_uid)
        return done

    def _complete(self, study_uid: str) -> None:
        folder = self.store.study_dir(study_uid)
        derived = self.store.study_files(study_uid) if study_uid else []
        originals = self.cfg.originals_dir / safe_name(study_uid) if study_uid else None
        if not derived:
            if originals is not None:
                shutil.rmtree(originals, ignore_errors=True)
            return
        # The originals the worker kept, by SOP Instance UID: shown beside the derived images.
        sources = {p.stem: p for p in originals.glob("*.dcm")} if originals is not None else {}
        path = report.write(folder, files=derived, sources=sources)
        shutil.rmtree(originals, ignore_errors=True)  # shown: no longer needed
        LOGGER.info("study %s complete: report %s", study_uid, path)
        if self.forwarder:  # the derived instances and the report's document
            files = sorted({str(p) for p in derived} | {str(p) for p in folder.glob("*/*.dcm") if p.parent.name == report.document_series(folder.name)})
            added = self.state.enqueue(files, study_uid)
            if added:
                LOGGER.info("study %s: %d instance(s) queued for forwarding", study_uid, added)
                self.forwarder.wake.set()
