"""`mediafork serve`: the sidecar daemon.

Wires the engine, the store, the control service, SIPREC links, local
recordings and the HTTP API together; adds /healthz, /readyz and /metrics;
feeds media-worker events to the links; and shuts down gracefully on SIGTERM
or SIGINT: stop accepting, BYE every recording session, finish recordings,
deliver (or persist) pending callbacks, then exit within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..admission import Admission, make_admission
from ..api import build_app
from ..api.control_socket import ControlSocketServer
from ..api.http_admission import admitted_factory, request_bounds
from ..control.callbacks import is_local_address
from ..control.egress import Listener
from ..control.store import AsyncStore
from ..engine import Engine
from ..private_dirs import make_private_dir, open_to_other_users, warn_if_open
from ..recorder_api import Connector, Edge
from ..recording.manager import RecordingManager
from ..sip.recorder_links import SipRecorderLinks
from ..sip.transport import client_tls_context
from . import systemd
from .config import Config, ConfigError, load_config
from .media_sources import MediaSources
from .metrics import (
    EngineCollector,
    build_registry,
    link_metrics,
    reload_metrics,
    without_created,
)
from .reload import ReloadPlan, plan_reload
from .service import ControlService
from .sip_tls import sip_server_context

log = logging.getLogger("mediafork.daemon.process")

EMBEDDED_RECORDER_PORT = 5070
READINESS_CACHE_SECONDS = 2.0
"""/readyz is unauthenticated: its store write probe runs at most this often."""


class StartupError(Exception):
    """The daemon cannot start as configured; the message says what and where."""


class ReloadError(Exception):
    """A reload was refused; the running configuration stays. The message says why."""


class Daemon:
    """One running mediafork: ``await start()``, then ``await shutdown()``."""

    def __init__(self, config: Config, *, embedded_recorder: bool = False,
                 recorder_port: int = EMBEDDED_RECORDER_PORT,
                 shutdown_timeout: float = 10.0,
                 overrides: Callable[[Config], Config] | None = None,
                 log_level_flag: str | None = None) -> None:
        """``overrides``: what the command line changes in a loaded config (applied again to
        each reloaded file); ``log_level_flag``: ``--log-level`` when given, which wins over
        ``[logging] level`` at every reload."""
        self.config = config
        self._overrides = overrides or (lambda c: c)
        self._log_level_flag = log_level_flag
        self._reload_lock = asyncio.Lock()
        self.reloads = {"applied": 0, "refused": 0}
        self.embedded_recorder = embedded_recorder
        self.recorder_port = recorder_port
        self.shutdown_timeout = shutdown_timeout
        self.engine: Engine | None = None
        self.store: AsyncStore | None = None
        self.service: ControlService | None = None
        self.links: SipRecorderLinks | None = None
        self.recorder: Any = None  # mediafork.srs.ReferenceRecorder when embedded
        self.media_sources: MediaSources | None = None
        self._runner: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self.admissions: dict[str, Admission] = {}
        """Connection bookkeeping of every listener, by name (for /metrics)."""
        self._control_socket: ControlSocketServer | None = None
        self._ready = False
        self._readiness: tuple[float, list[str]] | None = None
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
                             workers=config.media.workers,
                             io=config.media.io, tick=config.media.tick_us / 1e6,
                             srtp_transform=config.media.srtp_transform)
        data = make_private_dir(config.storage.data_dir)
        warn_if_open(data, "the data folder")
        make_private_dir(data / "recordings", tighten_below=data)
        self.store = await AsyncStore.open(config.storage.path)
        # One NG socket per [[media_sources]] entry, closed in shutdown() (nothing is sent
        # yet: rtpengine may start after us).
        self.media_sources = await MediaSources.open(config.media_sources)
        self.service = ControlService(config, engine=self.engine, store=self.store,
                                      callback_options={"egress": config.callbacks.egress_policy()},
                                      media_sources=self.media_sources)
        sip = config.sip
        self.admissions["sip"] = make_admission("sip", sip.max_connections,
                                                sip.max_connections_per_peer)
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
            # The TLS listener (SIP port + 1) that TLS dialogs' Contact names.
            tls_server_context=sip_server_context(config, quiet=self.embedded_recorder),
            listener_options={"admission": self.admissions["sip"],
                              "idle_timeout": sip.idle_timeout,
                              "tls_handshake_timeout": sip.tls_handshake_timeout},
            health=sip.health, max_failovers=sip.max_failovers,
        )
        await self.links.open()  # bind SIP on every edge now: bind errors surface at start
        self.links.watch_recorders(config.connectors)  # OPTIONS health checks ([sip.health])
        unusable = self.links.unusable_edges()
        if unusable and not sip.start_degraded:
            # A SIP port held by a colocated PBX would otherwise look healthy while no
            # Siprec can ever start on that edge.
            raise StartupError("; ".join(unusable) + " (set [sip] start_degraded = true to "
                               "start anyway with /readyz answering 503)")
        self._refuse_own_listeners()  # before start() replays stored callbacks
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
        app.middlewares.insert(0, request_bounds)  # outermost: it must see every request
        self._add_operations_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        self._http_server = await self._serve_http(config)
        if config.api.port == 0:  # report the port the OS picked
            sock = self._http_server.sockets[0]
            host, port = sock.getsockname()[:2]
            self.base_url = f"http://{host}:{port}"
        self._refuse_own_listeners()
        if config.control_socket:
            limits = config.control_socket_limits
            self.admissions["control_socket"] = make_admission(
                "control_socket", limits.max_connections, per_peer=False)
            self._control_socket = ControlSocketServer(
                self.service, config.control_socket, reload=self.reload,
                admission=self.admissions["control_socket"], idle_timeout=limits.idle_timeout)
            await self._control_socket.start()
        self._ready = True
        log.info("mediafork listening on %s (media %s, ports %d-%d)", self.base_url,
                 config.media.address, *config.media.port_range)

    async def _serve_http(self, config: Config) -> asyncio.Server:
        """The API's listening socket. Not aiohttp's TCPSite: every connection goes through
        the API's admission and timers first (mediafork.api.http_admission)."""
        assert self._runner is not None and self._runner.server is not None
        api = config.api
        self.admissions["api"] = make_admission("api", api.max_connections,
                                                api.max_connections_per_client)
        factory = admitted_factory(self._runner.server, self.admissions["api"],
                                   header_timeout=api.header_timeout,
                                   idle_timeout=api.idle_timeout)
        return await asyncio.get_running_loop().create_server(
            factory, api.host, api.port, reuse_address=True, backlog=128)

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
        try:
            await self.recorder.start()
        except OSError as exc:
            self.recorder = None
            raise StartupError(
                f"embedded reference recorder ({config.media.address}:{self.recorder_port}): "
                f"cannot bind: {exc.strerror or exc} (use --recorder-port, or --no-recorder)"
            ) from None
        self.admissions["srs"] = self.recorder.admission  # same process: same descriptors
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

    def _refuse_own_listeners(self) -> None:
        """Add every TCP socket the daemon listens on to the callbacks' egress policy: a
        status callback aimed at mediafork itself (its API, its SIP, the embedded recorder)
        is refused. Called as sockets get bound; ports 0 are known only after binding."""
        assert self.service is not None
        config = self.config
        bound: list[tuple[str, int]] = []
        if self._http_server is not None:  # served by our own admitted server, not a site
            bound += [sock.getsockname()[:2] for sock in self._http_server.sockets]
        elif config.api.port:
            bound.append((config.api.host, config.api.port))
        if self.links is not None:
            for edge in config.edges or (Edge("default", config.media.address),):
                port, tls_port = self.links.sip_port(edge.name), self.links.tls_port(edge.name)
                bound += [(edge.address, p) for p in (port, tls_port) if p]
        if self.recorder is not None:
            bound += [a for a in (self.recorder.tcp_address, self.recorder.tls_address) if a]
        dispatcher = self.service.outbox.dispatcher
        dispatcher.egress = dispatcher.egress.with_listeners(
            (Listener.of(host, port) for host, port in bound), is_local=is_local_address)

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
            callbacks=lambda: {**outbox.dispatcher.stats.as_dict(),
                               "outstanding": outbox.dispatcher.outstanding},
            sip_responses=getattr(self.links, "response_counts", None),
            siprecs=getattr(self.service, "siprec_counts", None),
            sip_malformed=getattr(self.links, "malformed_messages", None),
            more=[link_metrics(self.links), reload_metrics(lambda: self.reloads),
                  lambda: without_created(outbox.dispatcher.delivery_seconds.collect())],
            listeners=lambda: self.admissions.values(),
            quota_rejections=getattr(self.service, "quota_counts", None),
            idle_calls_ended=getattr(self.service, "idle_count", None),
        )
        registry = build_registry(collector)

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            if self._stopping.is_set() or not self._ready:
                return web.json_response({"status": "draining" if self._stopping.is_set()
                                          else "starting"}, status=503)
            problems = await self.readiness_problems()
            if problems:
                return web.json_response({"status": "unavailable", "problems": problems},
                                         status=503)
            return web.json_response({"status": "ready"})

        async def metrics(_: web.Request) -> web.Response:
            body = await asyncio.get_running_loop().run_in_executor(None, generate_latest,
                                                                      registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)

    async def readiness_problems(self) -> list[str]:
        """Why a new Siprec could not start now (empty: it could). Cached briefly, since
        the store check commits a write."""
        loop = asyncio.get_running_loop()
        if self._readiness is not None and loop.time() - self._readiness[0] < \
                READINESS_CACHE_SECONDS:
            return self._readiness[1]
        assert self.links is not None and self.store is not None and self.engine is not None
        problems = list(self.links.unusable_edges())
        if self.links.usable_edge_count() == 0:
            problems.append("no usable edge: no recording session can be set up")
        try:
            await self.store.probe_write()
        except Exception as exc:  # sqlite3.Error, OSError: any failure means not writable
            problems.append(f"store {self.config.storage.path} is not writable: "
                            f"{type(exc).__name__}: {exc}")
        if self.engine.ports.exhausted:
            low, high = self.config.media.port_range
            problems.append(f"media port range {low}-{high} is exhausted")
        self._readiness = (loop.time(), problems)
        return problems

    # -- reload -----------------------------------------------------------------------------
    async def reload(self) -> ReloadPlan:
        """Re-read the config file and apply what changes live, while calls and Siprecs go
        on: accounts, connectors, edges, callback settings and policy, log level. A file
        that does not validate is refused whole (:class:`ReloadError`) and nothing changes;
        what only a restart can change keeps its running value and is named in the plan."""
        async with self._reload_lock:
            source = self.config.source
            if source is None:
                self.reloads["refused"] += 1
                why = ("running on the embedded defaults: there is no file to re-read (start "
                       "with --config to reload)")
                log.error("reload refused: %s", why)
                raise ReloadError(why)
            try:
                # Reading and decrypting secrets touches the disk: off the event loop.
                new = self._overrides(await asyncio.to_thread(load_config, source))
            except ConfigError as exc:
                self.reloads["refused"] += 1
                log.error("reload refused: %s; the running configuration stays", exc)
                raise ReloadError(str(exc)) from None
            assert self.links is not None and self.service is not None
            plan = plan_reload(self.config, new)
            running = self.config
            new = dataclasses.replace(
                new, api=running.api, storage=running.storage, media=running.media,
                sip=running.sip, control_socket=running.control_socket,
                control_socket_limits=running.control_socket_limits,
                media_sources=running.media_sources,
                generated_token_file=running.generated_token_file)
            systemd.notify("RELOADING=1\nSTATUS=reloading the configuration")
            await self.links.update_edges(new.edges)
            self.links.watch_recorders(new.connectors)
            self.service.apply_config(new)
            self.service.outbox.dispatcher.egress = new.callbacks.egress_policy()
            self.config = new
            self._refuse_own_listeners()  # the new policy must refuse our own sockets too
            level = self._log_level_flag or new.log_level
            if level:
                logging.getLogger().setLevel(level.upper())
            self._readiness = None
            self.reloads["applied"] += 1
            log.info("configuration reloaded from %s: %s", source, plan.summary())
            systemd.notify(f"READY=1\nSTATUS=serving on {self.base_url}")
            return plan

    async def reload_logged(self) -> None:
        """For SIGHUP: a refused reload is logged and counted by :meth:`reload`."""
        with contextlib.suppress(ReloadError):
            await self.reload()

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
        if self._http_server is not None:
            self._http_server.close()  # stop accepting; the runner closes the connections
        if self._runner is not None:
            await self._runner.cleanup()
        if self.media_sources is not None:
            self.media_sources.close()  # after the calls ended: they unsubscribed first
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
                announce: Any = None, recorder_port: int = EMBEDDED_RECORDER_PORT,
                overrides: Callable[[Config], Config] | None = None,
                log_level_flag: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, reloading the config on SIGHUP; returns the exit code."""
    warn_about_exposure(config)
    daemon = Daemon(config, embedded_recorder=embedded_recorder, recorder_port=recorder_port,
                    overrides=overrides, log_level_flag=log_level_flag)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_shutdown)
    reloads: set[asyncio.Task[None]] = set()  # kept until done: a task needs a reference

    def on_sighup() -> None:
        task = loop.create_task(daemon.reload_logged())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start()
    except StartupError as exc:
        log.error("could not start: %s", exc)
        await daemon.shutdown()
        return 1
    except Exception:
        log.exception("could not start")
        await daemon.shutdown()
        return 1
    if announce is not None:
        announce(daemon)
    # Every listener is bound by now: systemd (Type=notify) may start what depends on us.
    systemd.notify(f"READY=1\nSTATUS=serving on {daemon.base_url}\nMAINPID={os.getpid()}")
    watchdog = None
    interval = systemd.watchdog_interval()
    if interval is not None and daemon.engine is not None:
        engine = daemon.engine
        watchdog = systemd.Watchdog(interval, lambda: [int(w["loops"])
                                                       for w in engine.worker_stats()])
        watchdog.start()
    await daemon.wait_for_shutdown_request()
    systemd.notify("STOPPING=1\nSTATUS=shutting down")
    if watchdog is not None:
        await watchdog.stop()
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
