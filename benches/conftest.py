"""Benchmarks are not tests: they live here, run with scripts/bench, and
report ratios against baselines measured in the same run."""

import resource


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end load through real sockets")
    # The end-to-end benchmark opens a few thousand sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
