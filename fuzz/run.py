"""Run one Python fuzz target for a while.

    python -m fuzz.run TARGET SECONDS [--corpus DIR] [--artifacts DIR] [--hypothesis]
    python -m fuzz.run --list

With atheris installed (``pip install atheris``) the run is coverage-guided libFuzzer: the
corpus persists in DIR (seeded from the target's seeds), a crashing input is written to the
artifacts directory and the exit status is non-zero. ``--hypothesis`` (or atheris missing)
runs the same target under hypothesis with seed mutation for the same time instead.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fuzz.targets import Target

PER_INPUT_TIMEOUT = 10  # seconds; libFuzzer reports a "timeout" crash past this


def _seed_corpus(target: Target, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in target.seeds():
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        path = corpus / name
        if not path.exists():
            path.write_bytes(seed)


def run_atheris(name: str, seconds: int, corpus: Path | None, artifacts: Path) -> int:
    import atheris

    # Coverage feedback is what atheris adds over hypothesis. Only mediafork is instrumented
    # (instrument_all() over every loaded module takes minutes); the targets module must not
    # have been imported before this point for the import hook to see mediafork.
    with atheris.instrument_imports(include=["mediafork"]):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    corpus = corpus or Path("build/fuzz-corpus") / f"py-{target.name}"
    _seed_corpus(target, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={seconds}", f"-timeout={PER_INPUT_TIMEOUT}",
            "-rss_limit_mb=2048", "-max_len=70000",
            f"-artifact_prefix={artifacts}/{target.name}-", str(corpus)]
    atheris.Setup(argv, target.run)
    atheris.Fuzz()  # exits the process: 0 when time ran out, non-zero on a finding
    return 0


def run_hypothesis(target: Target, seconds: int) -> int:
    from hypothesis import HealthCheck, given, settings

    from fuzz.strategies import mutated

    deadline = time.monotonic() + seconds
    seeds = target.seeds()
    rounds = 0

    @settings(max_examples=2000, deadline=PER_INPUT_TIMEOUT * 1000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated(seeds, max_random=4096))
    def check(data: bytes) -> None:
        target.run(data)

    while time.monotonic() < deadline:
        check()
        rounds += 1
    print(f"{target.name}: {rounds * 2000} hypothesis examples, no finding")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run")
    parser.add_argument("target", nargs="?")
    parser.add_argument("seconds", nargs="?", type=int, default=60)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--artifacts", type=Path, default=Path("build/fuzz-artifacts"))
    parser.add_argument("--hypothesis", action="store_true")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list or args.target is None:
        from fuzz.targets import TARGETS

        print("\n".join(sorted(TARGETS)))
        return 0
    if not args.hypothesis:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install atheris): using hypothesis",
                  file=sys.stderr)
            args.hypothesis = True
    if args.hypothesis:
        from fuzz.targets import TARGETS

        return run_hypothesis(TARGETS[args.target], args.seconds)
    return run_atheris(args.target, args.seconds, args.corpus, args.artifacts)


if __name__ == "__main__":
    sys.exit(main())
