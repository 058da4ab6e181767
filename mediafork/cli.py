"""mediafork command line.

    mediafork serve [--config FILE]     the sidecar daemon (embedded defaults without a file)
    mediafork srs [...]                 the reference Session Recording Server
    mediafork status                    live calls, forks and counters from a running daemon
    mediafork demo                      the end-to-end demo (scripts/demo)
    mediafork secret genkey|encrypt     secrets at rest for the config file
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from .daemon import logs
    from .daemon.config import ConfigError, _listen, default_config, load_config

    try:
        config = load_config(args.config) if args.config else default_config(args.data)
        if args.listen:
            # The embedded defaults fix the API on 127.0.0.1:8080; a sidecar next to
            # something already on 8080 (or a test wanting a free port) needs another one.
            host, port = _listen(args.listen, "--listen")
            config = dataclasses.replace(config,
                                         api=dataclasses.replace(config.api, host=host,
                                                                 port=port))
    except ConfigError as exc:
        print(f"mediafork: invalid configuration: {exc}", file=sys.stderr)
        return 2
    scrubber = logs.configure(args.log_format, args.log_level)
    for account in config.accounts:
        scrubber.add(account.auth_token)
    for connector in config.connectors:
        scrubber.add(connector.credentials, connector.digest_password)
    if config.generated_token_file is not None:
        account = config.accounts[0]
        # Printed once, to the terminal, never to the log.
        print(f"Generated account {account.sid}\n  auth token: {account.auth_token}\n"
              f"  (saved with mode 0600 in {config.generated_token_file})", flush=True)
    embedded = not args.config and not args.no_recorder

    def announce(daemon) -> None:
        print(f"mediafork ready on {daemon.base_url}", flush=True)

    from .daemon.process import serve

    try:
        import uvloop

        return uvloop.run(serve(config, embedded_recorder=embedded, announce=announce))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(serve(config, embedded_recorder=embedded, announce=announce))


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
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sidecar daemon")
    serve.add_argument("--config", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--data", default="data",
                       help="data folder for the embedded defaults (default: ./data)")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="API address, overriding [api] listen (port 0: any free port)")
    serve.add_argument("--no-recorder", action="store_true",
                       help="without --config: do not start the embedded reference recorder")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])

    sub.add_parser("srs", help="run the reference recorder (see `mediafork srs --help`)")

    status = sub.add_parser("status", help="show live calls, forks and counters")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--account", help="account SID (default: from --data/auth_token)")
    status.add_argument("--token", help="auth token (default: from --data/auth_token)")
    status.add_argument("--data", default="data")

    demo = sub.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic calls")
    demo.add_argument("--dataplane", action="store_true",
                      help="only the data-plane demo (no daemon, no SIP)")

    secret = sub.add_parser("secret", help="secrets at rest for the config file")
    secret.add_argument("action", choices=["genkey", "encrypt"])
    secret.add_argument("--key-file", help="with encrypt: the key made by genkey")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "status":
        return _status(args)
    if args.command == "secret":
        if args.action == "encrypt" and not args.key_file:
            parser.error("secret encrypt needs --key-file")
        return _secret(args)
    if args.command == "demo":
        if args.dataplane:
            from .dataplane_demo import run

            return run(args.seconds)
        from .daemon.demo import main as demo_main

        return demo_main(seconds=args.seconds)
    return 2


if __name__ == "__main__":
    sys.exit(main())
