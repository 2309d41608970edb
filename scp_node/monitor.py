"""Counters of the node, and a small HTTP endpoint: /health (JSON) and /metrics (Prometheus)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

LOGGER = logging.getLogger(__name__)


class Counters:
    """Monotonic counters and a latency sum, safe to update from any thread."""

    NAMES = (
        "received", "processed", "kept", "failed", "forwarded", "forward_errors", "rejected", "refused",
        "tls_failures", "resent", "conflicts", "warnings",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {n: 0 for n in self.NAMES}
        self.latency_sum = 0.0
        self.latency_count = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency_sum += seconds
            self.latency_count += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {**self._values, "latency_sum": self.latency_sum, "latency_count": self.latency_count}


def prometheus(counters: dict[str, float], gauges: dict[str, float]) -> str:
    lines = []
    for name in Counters.NAMES:
        lines += [f"# TYPE dicom_cae_{name}_total counter", f"dicom_cae_{name}_total {counters[name]}"]
    lines += [
        "# HELP dicom_cae_processing_latency_seconds Time from acknowledgement to derived instance written.",
        "# TYPE dicom_cae_processing_latency_seconds summary",
        f"dicom_cae_processing_latency_seconds_sum {counters['latency_sum']:.6f}",
        f"dicom_cae_processing_latency_seconds_count {counters['latency_count']}",
    ]
    for name, value in gauges.items():
        lines += [f"# TYPE dicom_cae_{name} gauge", f"dicom_cae_{name} {value}"]
    return "\n".join(lines) + "\n"


def serve_http(
    bind: str, port: int, status: Callable[[], tuple[dict, dict]], health: Callable[[], dict]
) -> ThreadingHTTPServer:
    """Start /health and /metrics on ``bind:port`` in a daemon thread; returns the server.

    ``status()`` returns (counters, gauges); ``health()`` the /health document.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                body = json.dumps(health()).encode()
                ctype = "application/json"
            elif self.path == "/metrics":
                counters, gauges = status()
                body = prometheus(counters, gauges).encode()
                ctype = "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            LOGGER.debug("http: " + fmt, *args)

    server = ThreadingHTTPServer((bind, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class Problems:
    """One log line per distinct problem, then again only after a back-off (doubling from 10 s
    to 10 min) while it lasts: a full disk must not write a traceback every half second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, float]] = {}  # message -> (next log time, back-off s)

    def note(self, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` (a warning, with the traceback the first time) unless it was logged
        within its back-off; True when it was logged."""
        now = time.monotonic()
        with self._lock:
            due, wait = self._seen.get(message, (0.0, 5.0))
            if now < due:
                return False
            wait = min(wait * 2, 600.0)
            first = message not in self._seen
            self._seen[message] = (now + wait, wait)
        LOGGER.warning("%s (logged at most every %g s while it lasts)", message, wait, exc_info=exc if first else None)
        return True
