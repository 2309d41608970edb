"""The pynetdicom SCP: C-ECHO and C-STORE for every storage SOP class and decodable syntax.

Handlers never raise: a failure becomes a DIMSE status and a log line naming the SOP
Instance UID.
"""

from __future__ import annotations

import logging
import ssl
from typing import Callable

from pydicom.pixels import get_decoder
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from scp_node.config import Config
from scp_node.monitor import Counters
from scp_node.spool import Spool

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


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
    syntaxes = decodable_transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    return ae


def handlers(cfg: Config, spool: Spool, counters: Counters, on_stored: Callable[[], None]) -> list:
    def on_requested(event: evt.Event) -> None:
        address = event.assoc.requestor.address
        if cfg.allowed_hosts and address not in cfg.allowed_hosts:
            LOGGER.warning("association from %s rejected: host not allowed", address)
            counters.add("rejected")
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
            event.assoc.kill()  # as pynetdicom does after its own rejections: the PDU goes out first

    def on_rejected(event: evt.Event) -> None:
        counters.add("rejected")
        LOGGER.warning("association from %s (calling AE %s) rejected", event.assoc.requestor.address,
                       event.assoc.requestor.ae_title)

    def on_echo(event: evt.Event) -> int:
        return STATUS_SUCCESS

    def on_store(event: evt.Event) -> int:
        sop_uid = "unknown"
        try:
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            data = event.encoded_dataset(include_meta=True)
            if len(data) > cfg.max_instance_bytes:
                LOGGER.error("SOP Instance %s refused: %d bytes > max_instance_bytes", sop_uid, len(data))
                return STATUS_OUT_OF_RESOURCES
            spool.put(data)
        except OSError:
            LOGGER.exception("SOP Instance %s not stored: cannot write the spool", sop_uid)
            return STATUS_OUT_OF_RESOURCES
        except Exception:  # a handler must never raise
            LOGGER.exception("SOP Instance %s not stored", sop_uid)
            return STATUS_CANNOT_UNDERSTAND
        counters.add("received")
        LOGGER.debug("received SOP Instance %s from %s", sop_uid, event.assoc.requestor.ae_title)
        on_stored()
        return STATUS_SUCCESS

    return [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
    ]
