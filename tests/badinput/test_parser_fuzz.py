"""Bounded fuzzing of every parser that sees untrusted input (longer runs: scripts/fuzz).

Each test feeds a few hundred generated inputs to one target of :mod:`fuzz.targets`; the
target accepts, or refuses with the parser's documented error class, and anything else
fails the test. Time per example is checked against a bound far above the normal cost
(milliseconds) so that a parser that loops or goes quadratic on some input is caught while
a loaded machine does not make the suite flaky.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.strategies import config_documents, form_pairs, mutated, twiml_documents
from fuzz.targets import TARGETS, config_dict, forms_pairs, twiml_target

EXAMPLES = 200
GRAMMAR_EXAMPLES = 100  # generating structured documents costs more than running them
PER_EXAMPLE_SECONDS = 2.0

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
GRAMMAR = settings(FUZZ, max_examples=GRAMMAR_EXAMPLES)


def _bounded(run: Callable[[Any], Any], value: Any) -> None:
    started = time.perf_counter()
    run(value)
    elapsed = time.perf_counter() - started
    assert elapsed < PER_EXAMPLE_SECONDS, f"one input took {elapsed:.2f}s"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_accepts_its_seeds(name: str) -> None:
    """The seeds themselves go through cleanly (a target broken on valid input finds nothing)."""
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        _bounded(target.run, seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs(name: str) -> None:
    target = TARGETS[name]

    @FUZZ
    @given(mutated(target.seeds()))
    def check(data: bytes) -> None:
        _bounded(target.run, data)

    check()


@GRAMMAR
@given(form_pairs())
def test_form_grammar(pairs: list[tuple[str, str]]) -> None:
    _bounded(forms_pairs, pairs)


@GRAMMAR
@given(twiml_documents())
def test_twiml_grammar(document: str) -> None:
    _bounded(twiml_target, document.encode())


@GRAMMAR
@given(config_documents())
def test_config_dicts(root: dict[str, Any]) -> None:
    _bounded(config_dict, root)


@settings(max_examples=60, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=64 * 1024))
def test_large_random_datagrams(data: bytes) -> None:
    """Sizes up to the SIP limit, where quadratic behaviour would show."""
    _bounded(TARGETS["sip_message"].run, data)
    _bounded(TARGETS["sip_framer"].run, data)
