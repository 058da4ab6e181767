"""Benchmarks are not tests: they live here, run with scripts/bench, and
report ratios against baselines measured in the same run."""

import resource


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end load through real sockets")
    # The end-to-end benchmark opens a few thousand sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pytest_runtest_logreport(report):
    """Print a failed bench's traceback at once: pytest-benchmark's JSON writer crashes at
    the session's end on a benchmark that recorded no timing, before pytest's summary."""
    if report.failed:
        import sys

        sys.stderr.write(f"\n{report.nodeid} failed:\n{report.longreprtext}\n")
