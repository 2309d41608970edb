"""The node: the SCP, the worker, the study monitor, the forwarder and the HTTP endpoint."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from dicom_cae import report
from dicom_cae.convert import safe_uid_name
from dicom_cae.pipeline import Pipeline
from scp_node import server
from scp_node.config import Config
from scp_node.forward import Forwarder
from scp_node.monitor import Counters, serve_http
from scp_node.spool import Spool
from scp_node.state import State
from scp_node.worker import Worker

LOGGER = logging.getLogger(__name__)


class Node:
    """Start with start(), stop with stop() (the batch in hand is finished first)."""

    def __init__(self, cfg: Config, pipe: Pipeline) -> None:
        self.cfg = cfg
        for d in (cfg.output_dir, cfg.kept_dir, cfg.failed_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.counters = Counters()
        self.spool = Spool(cfg.spool_dir)
        self.state = State(cfg.state_path)
        self.worker = Worker(cfg, self.spool, self.state, pipe, self.counters)
        self.forwarder = Forwarder(cfg, self.state, self.counters) if cfg.forward else None
        self._stop = threading.Event()
        self._studies = threading.Thread(target=self._watch_studies, name="studies", daemon=True)
        self._scp = None
        self._http = None

    def start(self) -> None:
        recovered = len(self.spool)
        if recovered:
            LOGGER.info("%d instance(s) acknowledged before a restart are in the spool: processing them", recovered)
        self.worker.start()
        self._studies.start()
        if self.forwarder:
            self.forwarder.start()
        if self.cfg.http_port is not None:
            self._http = serve_http(self.cfg.http_bind, self.cfg.http_port, self.status)
        ae = server.make_ae(self.cfg)
        self._scp = ae.start_server(
            (self.cfg.bind, self.cfg.port),
            block=False,
            evt_handlers=server.handlers(self.cfg, self.spool, self.counters, self.worker.wake.set),
            ssl_context=server.tls_context(self.cfg),
        )
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

    def stop(self) -> None:
        """Stop accepting, finish the batch in hand, stop the helpers."""
        if self._scp:
            self._scp.shutdown()
        self._stop.set()
        self.worker.stop()
        self.worker.join()
        if self.forwarder:
            self.forwarder.stop()
            self.forwarder.join(timeout=30)
        self._studies.join(timeout=10)
        if self._http:
            self._http.shutdown()
        self.state.close()
        LOGGER.info("stopped")

    def _watch_studies(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.complete_due_studies()
            except Exception:  # keep watching; the next round retries
                LOGGER.exception("study completion failed")

    def complete_due_studies(self) -> list[str]:
        """Write the reports of studies quiet for study_quiet_s (and queue them for forwarding)."""
        if len(self.spool) or not self.worker.idle.is_set():
            return []  # instances still to process may belong to a due study
        done = []
        for study_uid in self.state.due_studies(self.cfg.study_quiet_s):
            seen = time.time()
            folder = self.cfg.output_dir / safe_uid_name(study_uid)
            if study_uid and folder.is_dir() and any(folder.rglob("*.dcm")):
                path = report.write(folder)
                LOGGER.info("study %s complete: report %s", study_uid, path)
                if self.forwarder:
                    files = sorted(str(p) for p in folder.rglob("*.dcm"))
                    added = self.state.enqueue(files, study_uid)
                    if added:
                        LOGGER.info("study %s: %d instance(s) queued for forwarding", study_uid, added)
                        self.forwarder.wake.set()
            self.state.study_reported(study_uid, seen)
            done.append(study_uid)
        return done
