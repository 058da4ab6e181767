"""mediafork command line.

    mediafork serve [--config FILE]     the sidecar daemon (embedded defaults without a file)
    mediafork check-config FILE         validate a config file without starting
    mediafork reload                    make a running daemon re-read its config file
    mediafork srs [...]                 the reference Session Recording Server
    mediafork status                    live calls, forks and counters from a running daemon
    mediafork callbacks [--redeliver]   given-up status callbacks, and sending them again
    mediafork demo                      the end-to-end demo (scripts/demo; --rtpengine)
    mediafork secret genkey|encrypt     secrets at rest for the config file
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from . import __version__


def _serve(args: argparse.Namespace) -> int:
    from .daemon import logs
    from .daemon.config import ConfigError, default_config, load_config, with_overrides

    try:
        config = load_config(args.config) if args.config else default_config(args.data)
        # Flags (or their MEDIAFORK_* variables) win over the file and the embedded
        # defaults: a sidecar next to a PBX on 5060 or an app on 8080 must be movable.
        config = with_overrides(config, listen=args.listen, sip_port=args.sip_port,
                                media_ports=args.media_ports)
    except ConfigError as exc:
        print(f"mediafork: invalid configuration: {exc}", file=sys.stderr)
        return 2
    scrubber = logs.configure(args.log_format, args.log_level or config.log_level or "info")
    for account in config.accounts:
        scrubber.add(account.auth_token)
    for connector in config.connectors:
        scrubber.add(connector.credentials, connector.digest_password)
        scrubber.add(*(value for _, value in connector.profile.headers))  # may be tokens
    if config.generated_token_file is not None:
        account = config.accounts[0]
        # Printed once, to the terminal, never to the log.
        print(f"Generated account {account.sid}\n  auth token: {account.auth_token}\n"
              f"  (saved with mode 0600 in {config.generated_token_file})", flush=True)
    embedded = not args.config and not args.no_recorder

    def announce(daemon) -> None:
        print(f"mediafork ready on {daemon.base_url}", flush=True)

    from .daemon.process import serve

    extra = {} if args.recorder_port is None else {"recorder_port": args.recorder_port}

    def overrides(loaded):  # applied again to every reloaded file
        return with_overrides(loaded, listen=args.listen, sip_port=args.sip_port,
                              media_ports=args.media_ports)

    running = serve(config, embedded_recorder=embedded, announce=announce, **extra,
                    overrides=overrides, log_level_flag=args.log_level)
    try:
        import uvloop

        return uvloop.run(running)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(running)


def _check_config(args: argparse.Namespace) -> int:
    from .daemon.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"mediafork: invalid configuration: {exc}", file=sys.stderr)
        return 2
    edges = ", ".join(e.name for e in config.edges) or "default"
    print(f"{args.file}: OK ({len(config.accounts)} accounts, {len(config.connectors)} "
          f"connectors, edges: {edges}; API {config.api.host}:{config.api.port}, SIP port "
          f"{config.sip.port}, media ports {config.media.port_range[0]}-"
          f"{config.media.port_range[1]})")
    return 0


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise SystemExit(f"mediafork: {name}: must be a port number (0-65535)")
    return int(value)


def _status(args: argparse.Namespace) -> int:
    from .daemon.status import main as status_main

    return status_main(args)


def _secret(args: argparse.Namespace) -> int:
    from .daemon.config import ConfigError, encrypt_secret, generate_secret_key

    if args.action == "genkey":
        sys.stdout.write(generate_secret_key().decode() + "\n")
        return 0
    try:
        key = Path(args.key_file).read_bytes().strip()
    except OSError as exc:
        print(f"mediafork: --key-file: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    plaintext, problem = _secret_from_stdin()
    if problem is not None:
        print(f"mediafork: the secret on standard input {problem}; nothing encrypted",
              file=sys.stderr)
        return 2
    try:
        sys.stdout.write(encrypt_secret(key, plaintext) + "\n")
    except ConfigError as exc:
        print(f"mediafork: --key-file: {exc}", file=sys.stderr)
        return 2
    return 0


def _secret_from_stdin() -> tuple[str, str | None]:
    """The secret on standard input and what is wrong with it (None: nothing).

    ``printf '%s\\n'``, ``echo`` and a terminal add one line ending, ``\\r\\n`` on a
    Windows-edited file: exactly one is removed. Any other control character is refused
    rather than stripped: the config loader refuses it too, so an encrypted value is
    always one the daemon accepts.
    """
    from .daemon.secret_rules import ANY_SECRET

    raw = sys.stdin.buffer.read(ANY_SECRET.max_chars * 4 + 3)  # bounded: UTF-8 + CRLF
    for ending in (b"\r\n", b"\n"):
        if raw.endswith(ending):
            raw = raw[: -len(ending)]
            break
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "", "is not valid UTF-8"
    if not text:
        return "", "is empty (give the secret on standard input)"
    return text, ANY_SECRET.problem(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["srs"]:  # the recorder parses its own flags
        from .srs.cli import main as srs_main

        return srs_main(argv[1:])
    parser = argparse.ArgumentParser(prog="mediafork", description="SIPREC media-forking engine")
    parser.add_argument("--version", action="version", version=f"mediafork {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    env = os.environ.get
    serve = sub.add_parser(
        "serve", help="run the sidecar daemon",
        description="Each flag can also be set by the MEDIAFORK_* variable it names; "
                    "a flag wins over its variable, and both over the config file.")
    serve.add_argument("--config", default=env("MEDIAFORK_CONFIG"),
                       help="TOML config file (default: embedded defaults) [MEDIAFORK_CONFIG]")
    serve.add_argument("--data", default=env("MEDIAFORK_DATA", "data"),
                       help="data folder for the embedded defaults (default: ./data) "
                            "[MEDIAFORK_DATA]")
    serve.add_argument("--listen", metavar="HOST:PORT", default=env("MEDIAFORK_LISTEN"),
                       help="API address, overriding [api] listen (port 0: any free port) "
                            "[MEDIAFORK_LISTEN]")
    serve.add_argument("--sip-port", metavar="PORT", default=env("MEDIAFORK_SIP_PORT"),
                       help="SIP port on every edge, overriding [sip] port (0: any free port) "
                            "[MEDIAFORK_SIP_PORT]")
    serve.add_argument("--media-ports", metavar="FIRST-LAST",
                       default=env("MEDIAFORK_MEDIA_PORTS"),
                       help="media port range, overriding [media] port_range "
                            "[MEDIAFORK_MEDIA_PORTS]")
    serve.add_argument("--recorder-port", metavar="PORT", type=int,
                       default=_env_port("MEDIAFORK_RECORDER_PORT"),
                       help="SIP port of the embedded reference recorder (default: 5070; "
                            "0: any free port) [MEDIAFORK_RECORDER_PORT]")
    serve.add_argument("--no-recorder", action="store_true",
                       help="without --config: do not start the embedded reference recorder")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="default: [logging] level, else info")

    sub.add_parser("srs", help="run the reference recorder (see `mediafork srs --help`)")

    reload = sub.add_parser(
        "reload", help="make a running daemon re-read its config file",
        description="Through the control socket (waits for the outcome) or by SIGHUP to a "
                    "pid. Credentials as for `mediafork status`.")
    how = reload.add_mutually_exclusive_group(required=True)
    how.add_argument("--control-socket", metavar="PATH", help="the daemon's [control_socket]")
    how.add_argument("--pid", type=int, help="send SIGHUP to this process")
    reload.add_argument("--account", help="account SID")
    reload.add_argument("--token", help="auth token (prefer MEDIAFORK_AUTH_TOKEN)")
    reload.add_argument("--data", default=env("MEDIAFORK_DATA", "data"))

    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("file", help="the TOML config file")

    status = sub.add_parser(
        "status", help="show live calls, forks and counters",
        description="Credentials: --account/--token, else MEDIAFORK_ACCOUNT_SID and "
                    "MEDIAFORK_AUTH_TOKEN, else DATA/auth_token (embedded defaults).")
    status.add_argument("--url", help="the daemon's API (default: MEDIAFORK_URL or "
                                      "http://127.0.0.1:8080)")
    status.add_argument("--account", help="account SID")
    status.add_argument("--token", help="auth token (prefer MEDIAFORK_AUTH_TOKEN: a command "
                                        "line is visible to other users)")
    status.add_argument("--data", default=env("MEDIAFORK_DATA", "data"))
    status.add_argument("--json", action="store_true", help="one JSON object per snapshot")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                        metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--count", type=int, default=0,
                        help="with --watch: stop after this many snapshots")

    cbs = sub.add_parser(
        "callbacks", help="list given-up (or pending) status callbacks; send them again",
        description="Credentials and URL as for `mediafork status`.")
    cbs.add_argument("--url", help="the daemon's API (default: MEDIAFORK_URL or "
                                   "http://127.0.0.1:8080)")
    cbs.add_argument("--account", help="account SID")
    cbs.add_argument("--token", help="auth token (prefer MEDIAFORK_AUTH_TOKEN)")
    cbs.add_argument("--data", default=env("MEDIAFORK_DATA", "data"))
    cbs.add_argument("--state", default="failed,dropped",
                     help="states to list, comma-separated: pending, delivered, failed, dropped "
                          "(default: failed,dropped, the given-up ones)")
    cbs.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    cbs.add_argument("--redeliver", type=int, nargs="*", metavar="ID",
                     help="send these given-up callbacks again (no ID: all of them)")
    cbs.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic calls")
    demo.add_argument("--dataplane", action="store_true",
                      help="only the data-plane demo (no daemon, no SIP)")
    demo.add_argument("--rtpengine", action="store_true",
                      help="rtpengine proxies each call's legs; mediafork subscribes to it "
                           "(skipped when rtpengine is not installed)")
    demo.add_argument("--keep", metavar="DIR", type=Path,
                      help="copy the recorder's WAV files and metadata to DIR and print their paths")

    secret = sub.add_parser("secret", help="secrets at rest for the config file")
    secret.add_argument("action", choices=["genkey", "encrypt"])
    secret.add_argument("--key-file", help="with encrypt: the key made by genkey")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "status":
        return _status(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "reload":
        from .daemon.reload_cli import main as reload_main

        return reload_main(args)
    if args.command == "callbacks":
        from .daemon.callbacks_cli import main as callbacks_main

        return callbacks_main(args)
    if args.command == "secret":
        if args.action == "encrypt" and not args.key_file:
            parser.error("secret encrypt needs --key-file")
        return _secret(args)
    if args.command == "demo":
        if args.dataplane:
            from .dataplane_demo import run

            return run(args.seconds)
        from .daemon.demo import main as demo_main

        return demo_main(seconds=args.seconds, keep=args.keep, rtpengine=args.rtpengine)
    return 2


if __name__ == "__main__":
    sys.exit(main())
