"""The pynetdicom SCP: C-ECHO and C-STORE for every storage SOP class and decodable syntax.

Handlers never raise: a failure becomes a DIMSE status and a log line naming the SOP
Instance UID.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
import zlib
from typing import Callable

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom._handlers import standard_dimse_recv_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.sop_class import Verification

from dicom_cae.errors import DicomInputError
from dicom_cae.identity import identify, printable
from scp_node.config import Config
from scp_node.monitor import Counters
from scp_node.spool import Spool

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_CANNOT_DECODE = 0xC210  # pynetdicom's storescp: a dataset it cannot decode or name


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data an installed pydicom decoder handles."""
    out = []
    for uid in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    if cfg.tls.ca:
        ctx.load_verify_locations(cfg.tls.ca)
    if cfg.tls.require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_ae(cfg: Config) -> AE:
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_associations = cfg.max_associations
    ae.maximum_pdu_size = cfg.max_pdu
    ae.require_calling_aet = list(cfg.allowed_aets)
    ae.require_called_aet = cfg.require_called_aet
    syntaxes = decodable_transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    return ae


def inflated_size_within(data: bytes, limit: int) -> bool:
    """True when the deflated dataset ``data`` inflates to at most ``limit`` bytes; inflates in
    bounded steps and stops as soon as the limit is passed (a zip bomb costs nothing)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, data
    while pending or not inflater.eof:
        chunk = inflater.decompress(pending, 1 << 20)
        total += len(chunk)
        if total > limit:
            return False
        pending = inflater.unconsumed_tail
        if not chunk and not pending:
            break
    return True


def check_received(data: bytes, transfer_syntax: str, cfg: Config, request, source: str) -> tuple[int, str, str]:
    """Parse what a C-STORE brought (without its pixels) and decide its status, as DCMTK's and
    pynetdicom's storescp do: 0xC210 when the dataset cannot be decoded or named (no or an
    invalid SOP Class or Instance UID), 0xA900 when it names another SOP Class or Instance
    than the request, 0xA700 when it is or inflates beyond ``max_instance_bytes``.

    Returns (status, reason, study key): the key says which study the spool file belongs to.
    """
    if len(data) > cfg.max_instance_bytes:
        return STATUS_OUT_OF_RESOURCES, f"{len(data)} bytes > max_instance_bytes", ""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            body = data[data.index(b"DICM") + 4:]
            offset = 12 + int.from_bytes(body[8:12], "little")  # past the meta group (its length first)
            if not inflated_size_within(body[offset:], cfg.max_instance_bytes):
                return STATUS_OUT_OF_RESOURCES, "inflates beyond max_instance_bytes", ""
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ident = identify(ds, source)
    except DicomInputError as exc:
        return STATUS_CANNOT_DECODE, exc.reason, ""
    except Exception as exc:  # pydicom raises many types on malformed data
        return STATUS_CANNOT_DECODE, f"cannot decode the dataset ({type(exc).__name__})", ""
    if ident.sop_class != str(request.AffectedSOPClassUID):
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the request's", ""
    if ident.sop_instance != str(request.AffectedSOPInstanceUID):
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the request's", ""
    return STATUS_SUCCESS, "", ident.study_key


class Gate:
    """Who may hold a connection, and for how long (what DCMTK's and Orthanc's servers bound).

    pynetdicom gives every TCP connection a thread that counts against maximum_associations
    from the moment it connects, and it times out each socket read, not a whole PDU: 30 peers
    that connect and then send one byte every few seconds (or nothing) shut everyone else out.
    So: a connection must deliver its A-ASSOCIATE-RQ within ``request_timeout_s`` and, once
    associated, complete a PDU at least every ``idle_timeout_s``, or it is closed; connections
    not yet associated are capped (``max_pending`` in all, ``max_pending_per_host`` from one
    address: over the cap the oldest waiting one goes, as a sender that means it asks at once);
    and only associations count against ``max_associations``.
    """

    def __init__(self, cfg: Config, counters: Counters, *, request_timeout_s: float = 10.0, idle_timeout_s: float = 60.0,
                 max_pending: int = 32, max_pending_per_host: int = 8) -> None:
        self.cfg, self.counters = cfg, counters
        self.request_timeout_s, self.idle_timeout_s = request_timeout_s, idle_timeout_s
        self.max_pending, self.max_pending_per_host = max_pending, max_pending_per_host
        self._lock = threading.Lock()
        self._open: dict[int, dict] = {}  # id(assoc) -> {"assoc", "host", "opened", "requested", "last_pdu"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gate", daemon=True)

    @property
    def thread_limit(self) -> int:
        """What pynetdicom's own limit must allow: the associations and the connections waiting."""
        return self.cfg.max_associations + self.max_pending + 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def opened(self, event: evt.Event) -> None:
        now = time.monotonic()
        host = str(event.assoc.requestor.address)
        with self._lock:
            self._open[id(event.assoc)] = {"assoc": event.assoc, "host": host, "opened": now, "requested": False,
                                           "last_pdu": now}
            waiting = sorted((c for c in self._open.values() if not c["requested"]), key=lambda c: c["opened"])
            same = [c for c in waiting if c["host"] == host]
            evict = same[: max(0, len(same) - self.max_pending_per_host)]
            rest = [c for c in waiting if c not in evict]
            evict += rest[: max(0, len(rest) - self.max_pending)]
        for c in evict:
            self._close(c, "too many connections waiting to associate")

    def requested(self, event: evt.Event) -> bool:
        """Mark the association requested; False when the associations are at their limit."""
        with self._lock:
            c = self._open.get(id(event.assoc))
            if c is not None:
                c["requested"] = True
                c["last_pdu"] = time.monotonic()
            return sum(x["requested"] for x in self._open.values()) <= self.cfg.max_associations

    def pdu(self, event: evt.Event) -> None:
        with self._lock:
            c = self._open.get(id(event.assoc))
            if c is not None:
                c["last_pdu"] = time.monotonic()

    def closed(self, event: evt.Event) -> None:
        with self._lock:
            self._open.pop(id(event.assoc), None)

    def _close(self, c: dict, why: str) -> None:
        with self._lock:
            if self._open.pop(id(c["assoc"]), None) is None:
                return
        LOGGER.warning("connection from %s closed: %s", printable(c["host"]), why)
        self.counters.add("rejected")
        try:
            c["assoc"].dul.socket.close()  # the association's thread then ends on its own
        except Exception:  # noqa: BLE001 (already closing)
            LOGGER.debug("closing a connection failed", exc_info=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                late = [(c, "no association request within %g s" % self.request_timeout_s) for c in self._open.values()
                        if not c["requested"] and now - c["opened"] > self.request_timeout_s]
                late += [(c, "no complete PDU for %g s" % self.idle_timeout_s) for c in self._open.values()
                         if c["requested"] and now - c["last_pdu"] > self.idle_timeout_s]
            for c, why in late:
                self._close(c, why)


class _Inbound:
    """Bytes of the dataset being received on each association, to refuse an oversized one
    while it arrives (an A-ABORT: DIMSE has no status before the dataset is complete)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[int, int] = {}

    def add(self, assoc, pdu: P_DATA_TF, limit: int) -> bool:
        """Count a P-DATA-TF's dataset fragments; False once the message passes ``limit``."""
        key = id(assoc)
        with self._lock:
            total = self._bytes.get(key, 0)
            for item in pdu.presentation_data_value_items:
                value = item.presentation_data_value
                if value and not value[0] & 0x01:  # a dataset fragment, not a command
                    total += len(value) - 1
                    if value[0] & 0x02:  # its last fragment: the next message starts afresh
                        self._bytes[key] = 0
                        return total <= limit
            self._bytes[key] = total
            return total <= limit

    def forget(self, assoc) -> None:
        with self._lock:
            self._bytes.pop(id(assoc), None)


def handlers(cfg: Config, spool: Spool, counters: Counters, on_stored: Callable[[], None], gate: Gate) -> list:
    inbound = _Inbound()

    def on_requested(event: evt.Event) -> None:
        # pynetdicom's own DIMSE debug logger runs first on every received message and raises on
        # a C-STORE without an Affected SOP Instance UID, which stops on_dimse below from running.
        event.assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
        address = event.assoc.requestor.address
        if not gate.requested(event):
            LOGGER.warning("association from %s rejected: %d associations already (max_associations)",
                           printable(address), cfg.max_associations)
            counters.add("rejected")
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, service provider, local limit exceeded
            event.assoc.kill()
            return
        if cfg.allowed_hosts and address not in cfg.allowed_hosts:
            LOGGER.warning("association from %s rejected: host not allowed", printable(address))
            counters.add("rejected")
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
            event.assoc.kill()  # as pynetdicom does after its own rejections: the PDU goes out first

    def on_rejected(event: evt.Event) -> None:
        counters.add("rejected")
        LOGGER.warning("association from %s (calling AE %s, called AE %s) rejected", event.assoc.requestor.address,
                       printable(event.assoc.requestor.ae_title), printable(event.assoc.acceptor.ae_title))

    def on_pdu(event: evt.Event) -> None:
        gate.pdu(event)
        if isinstance(event.pdu, P_DATA_TF) and not inbound.add(event.assoc, event.pdu, cfg.max_instance_bytes):
            LOGGER.error("association from %s aborted: a dataset larger than max_instance_bytes (%d) is arriving",
                         event.assoc.requestor.address, cfg.max_instance_bytes)
            counters.add("refused")
            inbound.forget(event.assoc)
            # We are in the reactor's thread: Association.abort() would wait for it, and it would
            # first read (and keep) everything already queued. So say A-ABORT (source: service
            # user) on the socket and close it: nothing more of the dataset is read.
            pdu = A_ABORT_RQ()
            pdu.source, pdu.reason_diagnostic = 0x00, 0x00
            sock = event.assoc.dul.socket
            try:
                sock.send(pdu.encode())
            finally:
                sock.close()

    def on_closed(event: evt.Event) -> None:
        inbound.forget(event.assoc)
        gate.closed(event)

    def on_echo(event: evt.Event) -> int:
        return STATUS_SUCCESS

    def on_dimse(event: evt.Event) -> None:
        """A C-STORE request without an Affected SOP Instance UID (absent or empty) is one that
        pynetdicom drops without an answer, leaving the sender waiting: answer it, Cannot
        understand (C210), as for a dataset without a usable UID."""
        command = event.message.command_set
        if command.get("CommandField") != 0x0001 or str(command.get("AffectedSOPInstanceUID") or "").strip():
            return
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = command.MessageID
        if command.get("AffectedSOPClassUID"):
            rsp.AffectedSOPClassUID = command.AffectedSOPClassUID
        rsp.Status = STATUS_CANNOT_DECODE
        LOGGER.error("C-STORE from %s refused (status 0x%04X): no Affected SOP Instance UID in the request",
                     event.assoc.requestor.address, STATUS_CANNOT_DECODE)
        counters.add("refused")
        event.assoc.dimse.send_msg(rsp, event.message.context_id)  # queued for the peer; pynetdicom ignores the request

    def on_store(event: evt.Event) -> int:
        sop_uid = "unknown"
        try:
            sop_uid = printable(event.request.AffectedSOPInstanceUID)
            data = event.encoded_dataset(include_meta=True)
            status, reason, study_key = check_received(
                data, event.context.transfer_syntax, cfg, event.request, f"SOP Instance {sop_uid}"
            )
            if status != STATUS_SUCCESS:
                LOGGER.error("SOP Instance %s refused (status 0x%04X): %s", sop_uid, status, printable(reason, 200))
                counters.add("refused")
                return status
            spool.put(data, study_key)
        except OSError:
            LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)
            return STATUS_OUT_OF_RESOURCES
        except Exception:  # a handler must never raise
            LOGGER.exception("SOP Instance %s not stored", sop_uid)
            return STATUS_CANNOT_UNDERSTAND
        counters.add("received")
        LOGGER.debug("received SOP Instance %s from %s", sop_uid, printable(event.assoc.requestor.ae_title))
        on_stored()
        return STATUS_SUCCESS

    return [
        (evt.EVT_CONN_OPEN, gate.opened),
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_PDU_RECV, on_pdu),
        (evt.EVT_CONN_CLOSE, on_closed),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_DIMSE_RECV, on_dimse),
    ]


def count_tls_failures(server, counters: Counters) -> None:
    """Log and count the TLS handshakes that fail. socketserver drops an OSError raised while
    accepting without a word, and the handshake happens there (pynetdicom's get_request)."""
    accept = server.get_request

    def get_request():
        try:
            return accept()
        except ssl.SSLError as exc:
            counters.add("tls_failures")
            LOGGER.warning("TLS handshake failed: %s", printable(exc.reason or exc, 200))
            raise

    server.get_request = get_request
