"""The certificate of the daemon's SIP TLS listener.

A recorder that sends its BYE, re-INVITE or OPTIONS on a connection of its own opens it to
the Contact of our INVITE; for a TLS dialog that is the TLS listener on the SIP port + 1 of
the edge. Its identity is ``[sip.tls] server_cert_file``/``server_key_file``, else the
client identity ``cert_file``/``key_file`` (one name for both directions), else a
self-signed certificate for the edge addresses, generated at every start in the data
folder's ``tls/`` (recorders that verify us need a configured one).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from ..private_dirs import make_private_dir
from ..tlsutil import self_signed
from .config import Config

__all__ = ["sip_server_context"]

log = logging.getLogger(__name__)


def sip_server_context(config: Config, *, quiet: bool = False) -> ssl.SSLContext:
    """A TLS server context for the SIP listener; ``quiet`` logs a generated certificate at
    INFO rather than WARNING (the no-config quick start, where nothing can verify it)."""
    sip = config.sip
    cert, key = sip.tls_server_cert_file, sip.tls_server_key_file
    if cert is None or key is None:
        cert, key = sip.tls_cert_file, sip.tls_key_file
    if cert is None or key is None:
        cert, key = _generate(config)
        log.log(logging.INFO if quiet else logging.WARNING,
                "SIP TLS listener: self-signed certificate %s (set [sip.tls] server_cert_file "
                "and server_key_file for recorders that verify it)", cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key, password=lambda: b"")
    return context


def _generate(config: Config) -> tuple[Path, Path]:
    data = make_private_dir(config.storage.data_dir)
    hosts = [edge.address for edge in config.edges] or [config.media.address]
    return self_signed(make_private_dir(data / "tls", tighten_below=data), "sip", hosts[0],
                       days=365, extra_hosts=hosts[1:])
