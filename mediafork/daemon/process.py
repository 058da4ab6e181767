"""`mediafork serve`: the sidecar daemon.

Wires the engine, the store, the control service, SIPREC links, local
recordings and the HTTP API together; adds /healthz, /readyz and /metrics;
feeds media-worker events to the links; and shuts down gracefully on SIGTERM
or SIGINT: stop accepting, BYE every recording session, finish recordings,
deliver (or persist) pending callbacks, then exit within a bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import stat
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api import build_app
from ..api.control_socket import ControlSocketServer
from ..control.store import AsyncStore
from ..engine import Engine
from ..private_dirs import make_private_dir, open_to_other_users, warn_if_open
from ..recorder_api import Connector
from ..recording.manager import RecordingManager
from ..sip.recorder_links import SipRecorderLinks
from ..sip.transport import client_tls_context
from .config import Config
from .metrics import EngineCollector, build_registry
from .service import ControlService

log = logging.getLogger("mediafork.daemon.process")

EMBEDDED_RECORDER_PORT = 5070


class Daemon:
    """One running mediafork: ``await start()``, then ``await shutdown()``."""

    def __init__(self, config: Config, *, embedded_recorder: bool = False,
                 recorder_port: int = EMBEDDED_RECORDER_PORT,
                 shutdown_timeout: float = 10.0) -> None:
        self.config = config
        self.embedded_recorder = embedded_recorder
        self.recorder_port = recorder_port
        self.shutdown_timeout = shutdown_timeout
        self.engine: Engine | None = None
        self.store: AsyncStore | None = None
        self.service: ControlService | None = None
        self.links: SipRecorderLinks | None = None
        self.recorder: Any = None  # mediafork.srs.ReferenceRecorder when embedded
        self._runner: web.AppRunner | None = None
        self._control_socket: ControlSocketServer | None = None
        self._ready = False
        self._stopping = asyncio.Event()
        self._shut_down = False
        self.base_url = config.api.base_url

    # -- start ------------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        if self.embedded_recorder:
            config = await self._start_recorder(config)
            self.config = config
        self.engine = Engine(media_address=config.media.address,
                             port_range=config.media.port_range,
                             workers=config.media.workers)
        data = make_private_dir(config.storage.data_dir)
        warn_if_open(data, "the data folder")
        make_private_dir(data / "recordings", tighten_below=data)
        self.store = await AsyncStore.open(config.storage.path)
        self.service = ControlService(config, engine=self.engine, store=self.store)
        sip = config.sip
        self.links = SipRecorderLinks(
            self.service.on_link_event,
            config.edges,
            default_address=config.media.address,
            sip_port=sip.port,
            # Recorders are verified against the configured CA file (else the system
            # CAs); a client certificate is presented when one is configured (mutual TLS).
            tls_context=client_tls_context(
                str(sip.tls_ca_file) if sip.tls_ca_file else None,
                cert_file=str(sip.tls_cert_file) if sip.tls_cert_file else None,
                key_file=str(sip.tls_key_file) if sip.tls_key_file else None,
            ),
        )
        await self.links.open()  # bind SIP on every edge now: bind errors surface at start
        self.service.set_links(self.links)
        self.service.set_recordings(RecordingManager(
            engine=self.engine, store=self.store, outbox=self.service.outbox,
            storage_dir=config.storage.data_dir / "recordings",
            public_base_url=config.api.base_url,
        ))
        await self.service.start()
        loop = asyncio.get_running_loop()
        for fd in self.engine.event_fds:
            loop.add_reader(fd, self._on_engine_events)

        app = build_app(self.service, max_request_bytes=config.api.max_request_bytes)
        self._add_operations_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.api.host, config.api.port, reuse_address=True)
        await site.start()
        if config.api.port == 0:  # report the port the OS picked
            sock = site._server.sockets[0]  # type: ignore[union-attr]
            host, port = sock.getsockname()[:2]
            self.base_url = f"http://{host}:{port}"
        if config.control_socket:
            self._control_socket = ControlSocketServer(self.service, config.control_socket)
            await self._control_socket.start()
        self._ready = True
        log.info("mediafork listening on %s (media %s, ports %d-%d)", self.base_url,
                 config.media.address, *config.media.port_range)

    async def _start_recorder(self, config: Config) -> Config:
        """The embedded reference recorder, and `Default` / `Secure` connectors to it
        for every account that has none (the no-config quick start)."""
        from ..srs.server import RecorderConfig, ReferenceRecorder
        from ..tlsutil import self_signed

        data = make_private_dir(config.storage.data_dir)
        cert, key = self_signed(make_private_dir(data / "tls", tighten_below=data), "recorder")
        make_private_dir(data / "srs", tighten_below=data)  # call audio the recorder writes
        self.recorder = ReferenceRecorder(RecorderConfig(
            host=config.media.address, port=self.recorder_port, tcp=True,
            tls_cert=str(cert), tls_key=str(key), out_dir=data / "srs",
        ))
        await self.recorder.start()
        host, port = self.recorder.address
        tls_host, tls_port = self.recorder.tls_address
        connectors = list(config.connectors)
        for account in config.accounts:
            if config.connectors_for(account.sid):
                continue
            connectors.append(Connector(account.sid, "Default", f"sip:recorder@{host}:{port}"))
            connectors.append(Connector(account.sid, "Secure",
                                        f"sips:recorder@{tls_host}:{tls_port};secure=true"))
        log.info("embedded reference recorder on %s:%d (UDP/TCP), TLS %s:%d; files in %s",
                 host, port, tls_host, tls_port, data / "srs")
        return dataclasses.replace(
            config, connectors=tuple(connectors),
            sip=dataclasses.replace(config.sip, tls_ca_file=config.sip.tls_ca_file or cert),
        )

    def _on_engine_events(self) -> None:
        assert self.engine is not None
        for event in self.engine.poll_events():
            if event.kind == "no_media":
                log.info("call %s: no %s media for %d ms", event.call_sid, event.track.label,
                         event.value)
            if self.links is not None:
                self.links.handle_engine_event(event)

    # -- operations routes ------------------------------------------------------------------
    def _add_operations_routes(self, app: web.Application) -> None:
        assert self.engine is not None and self.service is not None
        outbox = self.service.outbox
        collector = EngineCollector(
            self.engine,
            callbacks=lambda: outbox.dispatcher.stats.as_dict(),
            sip_responses=getattr(self.links, "response_counts", None),
            siprecs=getattr(self.service, "siprec_counts", None),
            sip_malformed=getattr(self.links, "malformed_messages", None),
        )
        registry = build_registry(collector)

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            if self._ready and not self._stopping.is_set():
                return web.json_response({"status": "ready"})
            return web.json_response({"status": "draining" if self._stopping.is_set()
                                      else "starting"}, status=503)

        async def metrics(_: web.Request) -> web.Response:
            body = await asyncio.get_running_loop().run_in_executor(None, generate_latest,
                                                                      registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)

    # -- stop -------------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        self._stopping.set()

    async def wait_for_shutdown_request(self) -> None:
        await self._stopping.wait()

    async def shutdown(self) -> None:
        """Graceful stop, bounded by ``shutdown_timeout``. Idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stopping.set()
        self._ready = False
        log.info("shutting down: ending calls and recording sessions")
        if self._control_socket is not None:
            await self._control_socket.close()
        try:
            if self.service is not None:
                await asyncio.wait_for(self.service.close(timeout=self.shutdown_timeout * 0.7),
                                       self.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown bound of %.0fs reached; pending work abandoned",
                        self.shutdown_timeout)
        if self.service is not None:
            # Otherwise silent: the operator should know callbacks are waiting in the
            # database for the next start (and that their application was not answering).
            kept = self.service.outbox.dispatcher.stats.abandoned
            if kept:
                log.warning("%d status callbacks not delivered within the shutdown bound; "
                            "kept in the database and replayed at the next start", kept)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.engine is not None:
            for fd in self.engine.event_fds:
                asyncio.get_running_loop().remove_reader(fd)
            self.engine.close()
        if self.store is not None:
            await self.store.close()
        if self.recorder is not None:
            await self.recorder.stop()
        log.info("stopped")


async def serve(config: Config, *, embedded_recorder: bool = False,
                announce: Any = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    warn_about_exposure(config)
    daemon = Daemon(config, embedded_recorder=embedded_recorder)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_shutdown)
    try:
        await daemon.start()
    except Exception:
        log.exception("could not start")
        await daemon.shutdown()
        return 1
    if announce is not None:
        announce(daemon)
    await daemon.wait_for_shutdown_request()
    await daemon.shutdown()
    return 0


def warn_about_exposure(config: Config) -> None:
    """Start-up WARNINGs (once, never fatal) for setups that expose secrets: running as
    root, and a config file with clear-text secrets that other users can read."""
    if os.geteuid() == 0:
        log.warning("running as root: a flaw in any part of the daemon would be root's; "
                    "run it as its own unprivileged user (docs/systemd/)")
    if config.source is None or not config.clear_secrets:
        return
    try:
        st = os.stat(config.source)
    except OSError:
        return
    if open_to_other_users(st):
        log.warning("%s holds secrets in clear (%s) and other users can read it (mode %04o): "
                    "chmod 600 (or 640 with the daemon's group), or use *_env / *_encrypted",
                    config.source, ", ".join(config.clear_secrets), stat.S_IMODE(st.st_mode))


def data_dir_default() -> Path:
    return Path("data")
