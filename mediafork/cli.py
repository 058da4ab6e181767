"""Command line: `mediafork demo` (more subcommands arrive with the daemon)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediafork", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fork a synthetic call over SRTP and check every packet")
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic call")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .dataplane_demo import run

        return run(args.seconds)
    return 2


if __name__ == "__main__":
    sys.exit(main())
