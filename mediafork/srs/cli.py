"""``mediafork srs``: run the reference recorder until Ctrl-C / SIGTERM.

The ``mediafork`` entry point calls :func:`main` with the arguments after ``srs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from .server import RecorderConfig, ReferenceRecorder


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _port_range(value: str) -> tuple[int, int]:
    first, sep, last = value.partition("-")
    if not (sep and first.isdigit() and last.isdigit()
            and 1024 <= int(first) < int(last) <= 65535 and int(last) - int(first) >= 3):
        raise argparse.ArgumentTypeError(
            f"expected FIRST-LAST within 1024-65535 holding at least 4 ports, got {value!r}")
    return int(first), int(last)


def _userpass(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def _header(value: str) -> tuple[str, str]:
    name, sep, secret = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name.strip(), secret


def _status(value: str) -> int:
    if not value.isdigit() or not 200 <= int(value) <= 699:
        raise argparse.ArgumentTypeError("expected a final SIP status code (200-699)")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="mediafork srs",
        description="Reference SIPREC Session Recording Server: records what an SRC sends "
        "(one WAV per stream, the metadata and a JSON summary per session). --listen, "
        "--media-ports and --out can also be set by the MEDIAFORK_SRS_* variable each names.",
    )
    # argparse runs `type` on string defaults too, so a bad variable is reported like a bad flag.
    parser.add_argument("--listen", type=_hostport,
                        default=env("MEDIAFORK_SRS_LISTEN", "127.0.0.1:5070"),
                        metavar="HOST:PORT",
                        help="SIP address (UDP; TCP too with --tcp) [MEDIAFORK_SRS_LISTEN]")
    parser.add_argument("--media-ports", type=_port_range,
                        default=env("MEDIAFORK_SRS_MEDIA_PORTS", "40000-49999"),
                        metavar="FIRST-LAST",
                        help="RTP/RTCP port range (default: %(default)s) "
                             "[MEDIAFORK_SRS_MEDIA_PORTS]")
    parser.add_argument("--tcp", action="store_true", help="also listen on TCP")
    parser.add_argument("--tls-cert", metavar="FILE", help="certificate (PEM) to listen on TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="private key (PEM) for --tls-cert")
    parser.add_argument("--tls-port", type=int, metavar="PORT",
                        help="TLS port (default: the SIP port + 1)")
    parser.add_argument("--out", default=env("MEDIAFORK_SRS_OUT", "srs-recordings"),
                        metavar="DIR", help="where session folders are written "
                        "(default: %(default)s) [MEDIAFORK_SRS_OUT]")
    parser.add_argument("--media-host", metavar="ADDR", help="RTP address (default: --listen)")
    parser.add_argument("--answer", type=_status, default=200, metavar="STATUS",
                        help="final response to initial INVITEs, e.g. 486 or 503 (default 200)")
    parser.add_argument("--no-answer", action="store_true",
                        help="never answer initial INVITEs (the SRC must time out)")
    parser.add_argument("--hangup-after", type=float, metavar="SECONDS",
                        help="send BYE this long after each session is established")
    parser.add_argument("--reinvite-after", type=float, metavar="SECONDS",
                        help="re-INVITE each session onto new media ports this long after ACK")
    parser.add_argument("--keep-payloads", action="store_true",
                        help="also write every stream's payloads as received to "
                             "LABEL.payloads (2-byte length, then the bytes)")
    parser.add_argument("--dial-contact", action="store_true",
                        help="send in-dialog requests over TCP/TLS on a connection of our own "
                             "to the SRC's Contact, as some recorders do, instead of the "
                             "connection the INVITE came on")
    parser.add_argument("--require-auth", type=_userpass, metavar="USER:PASS",
                        help="challenge initial INVITEs with digest auth (401)")
    parser.add_argument("--credentials-header", type=_header, metavar="NAME=VALUE",
                        help="reject initial INVITEs without this header and value (403)")
    parser.add_argument("--rtcp-interval", type=float, default=2.0, metavar="SECONDS",
                        help="receiver report interval (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> RecorderConfig:
    host, port = args.listen
    return RecorderConfig(
        host=host,
        port=port,
        tcp=args.tcp,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_port=args.tls_port,
        out_dir=args.out,
        media_host=args.media_host,
        media_ports=args.media_ports,
        answer=args.answer,
        no_answer=args.no_answer,
        hangup_after=args.hangup_after,
        reinvite_after=args.reinvite_after,
        dial_contact=args.dial_contact,
        keep_payloads=args.keep_payloads,
        require_auth=args.require_auth,
        credentials_header=args.credentials_header,
        rtcp_interval=args.rtcp_interval,
    )


async def _serve(config: RecorderConfig, ready: asyncio.Event | None = None) -> None:
    recorder = ReferenceRecorder(config)
    await recorder.start()
    host, port = recorder.address
    transports = ["udp"] + (["tcp"] if recorder.tcp_address else [])
    print(f"mediafork srs: listening on {host}:{port} ({', '.join(transports)})", flush=True)
    if recorder.tls_address:
        print(f"mediafork srs: TLS on {recorder.tls_address[0]}:{recorder.tls_address[1]}",
              flush=True)
    print(f"mediafork srs: recordings in {recorder.out_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await recorder.stop()
        for session in recorder.sessions:
            s = session.summary()
            print(f"  {s['call_id']}: {s['state']} status={s['status']} "
                  f"packets={s['totals']['packets']} lost={s['totals']['lost']} "
                  f"-> {s['directory']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(_serve(config_from_args(args)))
    except OSError as exc:
        print(f"mediafork srs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
