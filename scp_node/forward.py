"""Forwarding derived series to a destination AE by C-STORE, from the persistent outbox."""

from __future__ import annotations

import logging
import threading

import pydicom
from pynetdicom import AE
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scp_node.config import Config
from scp_node.monitor import Counters
from scp_node.state import State

LOGGER = logging.getLogger(__name__)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: doubling from ``initial``, capped."""
    return min(maximum, initial * 2 ** max(0, attempts))


class Forwarder(threading.Thread):
    """Sends what the outbox holds; on failure retries later with back-off. Nothing is
    dropped: an item leaves the outbox only when the destination answered Success."""

    def __init__(self, cfg: Config, state: State, counters: Counters) -> None:
        super().__init__(name="forwarder", daemon=True)
        assert cfg.forward is not None
        self.cfg, self.fwd, self.state, self.counters = cfg, cfg.forward, state, counters
        self.wake = threading.Event()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            items = self.state.outbox_due()
            if items:
                self.send(items)
            else:
                self.wake.wait(0.5)
                self.wake.clear()

    def send(self, items: list) -> None:
        ae = AE(ae_title=self.fwd.calling_ae_title or self.cfg.ae_title)
        classes = []
        for item in items:
            try:
                uid = pydicom.dcmread(item.path, stop_before_pixels=True).SOPClassUID
            except Exception as exc:  # the file vanished or is unreadable: retry later, keep it
                self._failed(item, f"cannot read {item.path}: {exc}")
                continue
            if uid not in classes:
                classes.append(uid)
        if not classes:
            return
        for uid in classes[:128]:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.fwd.host, self.fwd.port, ae_title=self.fwd.ae_title)
        if not assoc.is_established:
            for item in items:
                self._failed(item, "association with the destination failed (rejected, aborted or no answer)")
            return
        try:
            for item in items:
                if self._stopping.is_set():
                    break
                try:
                    status = assoc.send_c_store(item.path)
                except Exception as exc:  # noqa: BLE001 (pynetdicom raises several types)
                    self._failed(item, f"{type(exc).__name__}: {exc}")
                    continue
                code = getattr(status, "Status", None)
                if code in (0x0000, 0xB000, 0xB007, 0xB006):
                    self.state.forwarded(item.path)
                    self.counters.add("forwarded")
                else:
                    self._failed(item, f"C-STORE status {code if code is None else hex(code)}")
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(self, item, error: str) -> None:
        delay = backoff(item.attempts, self.fwd.retry_initial_s, self.fwd.retry_max_s)
        self.state.forward_failed(item.path, error, delay)
        self.counters.add("forward_errors")
        LOGGER.warning("forwarding %s failed (attempt %d, next in %.0f s): %s", item.path, item.attempts + 1, delay, error)
