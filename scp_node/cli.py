"""`dicom-cae serve`: registered with the dicom-cae command line through an entry point."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from dicom_cae.pipeline import DEFAULT_QUALITY
from scp_node.config import EXAMPLE, ConfigError, load


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class OneLineFormatter(logging.Formatter):
    """Text log lines that no received string can forge: control characters in the message (a
    newline in a received UID, say) are escaped, and every further line of a record (a
    traceback, whose last line can quote received text) starts with "  | ", so that only a
    record's own first line ever starts a line with a timestamp. pynetdicom's records pass
    through the same handler."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        from dicom_cae.identity import printable

        record.message = printable(record.message, limit=10_000)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        from dicom_cae.identity import printable

        first, *rest = super().format(record).split("\n")
        return "\n".join([first, *("  | " + printable(line, limit=10_000) for line in rest)])


def _port_free(host: str, port: int) -> None:
    """Raise NodeError at once when ``host:port`` cannot be bound (in use, or not ours), rather
    than after the model has loaded; the node binds it for real a moment later."""
    import socket

    from scp_node.node import NodeError

    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise NodeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the DICOM node: receive by C-STORE, process, store, forward")
    p.add_argument("--config", metavar="FILE", help="TOML settings file (see --print-config)")
    p.add_argument("--ae-title", metavar="AE", help="our AE title (default DICOM_CAE)")
    p.add_argument("--port", type=int, metavar="N", help="DICOM port (default 11112; 0 picks a free one)")
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--data-dir", metavar="DIR", help="spool, output, state (default ./dicom-cae-data)")
    p.add_argument("--http-port", type=int, metavar="N", help="serve /health and /metrics on this port")
    p.add_argument("--quality", type=int, metavar="Q", help=f"JPEG quality (default {DEFAULT_QUALITY})")
    p.add_argument("--target-psnr", type=float, metavar="DB", help="per image, the lowest JPEG quality reaching this PSNR (instead of --quality)")
    p.add_argument("--target-ssim", type=float, metavar="S", help="the same for SSIM")
    p.add_argument("--target-ratio", type=float, metavar="R", help="per image, coding size and quality within this compression ratio (instead of --quality)")
    p.add_argument("--value-mapping", choices=("minmax", "window"), help="how values become the image JPEG codes (default window)")
    p.add_argument("--model", metavar="NAME", help="model name (default blockres)")
    p.add_argument("--weights", metavar="FILE", help="weights file instead of the shipped ones")
    p.add_argument("--study-quiet", type=float, dest="study_quiet_s", metavar="S", help="seconds without new instances after which a study is complete (default 30)")
    p.add_argument("--print-config", action="store_true", help="print an example settings file and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        print(EXAMPLE, end="")
        return 0
    try:
        cfg = load(
            args.config, ae_title=args.ae_title, port=args.port, bind=args.bind, data_dir=args.data_dir,
            http_port=args.http_port, quality=args.quality, model=args.model, weights=args.weights,
            study_quiet_s=args.study_quiet_s, target_psnr=args.target_psnr, target_ssim=args.target_ssim,
            value_mapping=args.value_mapping, target_ratio=args.target_ratio,
        )
    except ConfigError as exc:
        print(f"dicom-cae serve: error: {exc}", file=sys.stderr)
        return 2
    root = logging.getLogger()
    for h in root.handlers:
        if cfg.log_format == "json":
            h.setFormatter(JsonFormatter())
        else:
            h.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.setLevel(min(root.level, logging.INFO))
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    from pathlib import Path

    from scp_node.node import NodeError, lock_data_dir

    try:  # before TensorFlow is imported: a second node on the folder, or a port in use, is told at once
        lock_fd = lock_data_dir(Path(cfg.data_dir))
        _port_free(cfg.bind, cfg.port)
        if cfg.http_port:
            _port_free(cfg.http_bind, cfg.http_port)
    except NodeError as exc:
        print(f"dicom-cae serve: error: {exc}", file=sys.stderr)
        return 2
    from dicom_cae.model import load as load_model
    from dicom_cae.pipeline import Pipeline
    from scp_node.node import Node

    recon = load_model(cfg.model, weights=cfg.weights)
    node = Node(cfg, Pipeline(recon, batch_size=cfg.batch_size, mapping=cfg.value_mapping), lock_fd=lock_fd)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        node.start()
    except NodeError as exc:
        node.stop()
        print(f"dicom-cae serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"dicom-cae node {cfg.ae_title} listening on {cfg.bind}:{node.port} with {recon.short_id}; "
          f"output in {cfg.output_dir}", flush=True)
    stopping.wait()
    logging.getLogger(__name__).info("stopping: finishing the batch in hand")
    node.stop()
    return 0
