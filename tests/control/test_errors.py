"""ApiError's wire shape, and docs/api-errors.md kept in step with the registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mediafork.control import errors
from mediafork.control.errors import REGISTRY, ApiError, authenticate, not_found

DOC = Path(__file__).resolve().parents[2] / "docs" / "api-errors.md"


def test_to_dict_has_exactly_the_platform_fields():
    error = ApiError(errors.INVALID_TRACK, "Track must be one of …")
    body = error.to_dict()
    assert body == {
        "code": 31941,
        "message": "Track must be one of …",
        "more_info": "https://www.twilio.com/docs/errors/31941",
        "status": 400,
    }
    assert json.loads(json.dumps(body)) == body
    assert str(error) == "Track must be one of …"


def test_mediafork_codes_link_to_our_docs_and_status_can_be_overridden():
    error = ApiError(errors.TOO_MANY_STREAMS, "x")
    assert error.more_info.endswith("docs/api-errors.md#900007")
    assert ApiError(errors.NOT_FOUND, "x", status=404).status == 404
    assert ApiError(errors.INVALID_STATUS, "x", status=409).to_dict()["status"] == 409


def test_helpers():
    assert authenticate().to_dict()["status"] == 401
    assert authenticate().code == 20003
    error = not_found("Siprec")
    assert (error.status, error.code) == (404, 20404)
    assert "Siprec" in error.message


def test_codes_are_in_their_ranges():
    for code, entry in REGISTRY.items():
        assert code == entry.code
        assert (10000 <= code <= 99999) or (900000 <= code <= 909999), code
        assert entry.status in (400, 401, 404, 409, 429, 500, 503)


def documented_sections() -> dict[int, str]:
    text = DOC.read_text()
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    return {int(section.split("\n", 1)[0]): section for section in sections}


def test_every_code_is_documented_with_its_status():
    sections = documented_sections()
    assert set(sections) == set(REGISTRY), "docs/api-errors.md and errors.REGISTRY differ"
    for code, entry in REGISTRY.items():
        section = sections[code]
        assert entry.title in section, code
        if entry.code == errors.ENGINE_RESTARTED.code:
            continue  # a callback error code, not an HTTP response
        assert f"HTTP {entry.status}" in section, code


def test_registering_a_code_twice_is_a_bug():
    with pytest.raises(RuntimeError):
        errors._register(31941, 400, "again")


def test_repr_is_safe_and_informative():
    error = ApiError(errors.INVALID_NAME, "Name must be …")
    assert repr(error) == "ApiError(status=400, code=900006, message='Name must be …')"
