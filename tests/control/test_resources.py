"""Rendered resources validate against the reference OpenAPI (nullable handled)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import jsonschema
import pytest

from mediafork.control.resources import (
    PageRequest,
    list_page,
    page_request,
    recording_list_uri,
    render_recording,
    render_siprec,
    siprec_list_uri,
)
from mediafork.control.sids import new_sid
from mediafork.control.store import RecordingRecord, SiprecRecord

ACCOUNT = "AC" + "0123456789abcdef" * 2
CALL = "CA" + "1" * 32
T0 = datetime(2015, 7, 30, 20, 0, 0, 999999, tzinfo=UTC)

SIPREC_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Siprec.json"
SIPREC_ONE_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Siprec/{Sid}.json"
RECORDINGS_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings.json"
RECORDING_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings/{Sid}.json"


def siprec(name: str | None = "myName", status: str = "in-progress") -> SiprecRecord:
    return SiprecRecord(
        sid="SR" + "a" * 32, account_sid=ACCOUNT, call_sid=CALL, name=name,
        connector_name="Gridspace_1", track="both_tracks", status=status,  # type: ignore[arg-type]
        status_callback="https://user:secret@example.com/cb", status_callback_method="POST",
        parameters=(("Custom1", "partner-token"),), date_created=T0, date_updated=T0,
    )


def recording(**changes) -> RecordingRecord:
    base = dict(
        sid="RE" + "b" * 32, account_sid=ACCOUNT, call_sid=CALL, status="in-progress",
        channels=2, track="both", trim="do-not-trim", status_callback=None,
        status_callback_method="POST", status_callback_events=("completed",), start_time=T0,
        date_created=T0, date_updated=T0, file_path="/secret/path.wav",
    )
    base.update(changes)
    return RecordingRecord(**base)  # type: ignore[arg-type]


def assert_rfc2822_gmt(value: str) -> None:
    parsed = parsedate_to_datetime(value)
    assert parsed.utcoffset() == timedelta(0)
    assert value.endswith(" +0000")


def test_siprec_matches_the_seed_example_shape(schema_for):
    rendered = render_siprec(siprec())
    assert rendered == {
        "sid": "SR" + "a" * 32,
        "account_sid": ACCOUNT,
        "call_sid": CALL,
        "name": "myName",
        "status": "in-progress",
        "date_updated": "Thu, 30 Jul 2015 20:00:00 +0000",
        "uri": f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}/Siprec/{'SR' + 'a' * 32}.json",
    }
    jsonschema.validate(rendered, schema_for("api.v2010.account.call.siprec"))


@pytest.mark.parametrize("name,status", [(None, "in-progress"), ("x", "stopped")])
def test_siprec_validates_against_each_documented_response(name, status, response_schema,
                                                           reference):
    rendered = render_siprec(siprec(name, status))
    for path in (SIPREC_PATH, SIPREC_ONE_PATH):
        jsonschema.validate(rendered, response_schema(path, "post", "200"))
    # exactly the documented properties, nothing internal leaks
    properties = reference["components"]["schemas"]["api.v2010.account.call.siprec"]
    assert set(rendered) == set(properties["properties"])
    assert "secret" not in str(rendered) and "partner-token" not in str(rendered)
    assert_rfc2822_gmt(rendered["date_updated"])


def test_schema_helper_can_fail(schema_for):
    """The nullable conversion must not make the schema accept anything."""
    bad = render_siprec(siprec())
    for field, value in [("sid", "XX" + "a" * 32), ("status", "paused"), ("account_sid", 5)]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**bad, field: value}, schema_for("api.v2010.account.call.siprec"))
    jsonschema.validate({**bad, "name": None}, schema_for("api.v2010.account.call.siprec"))


def test_recording_in_progress_matches_the_seed_example(schema_for):
    rendered = render_recording(recording())
    assert rendered == {
        "sid": "RE" + "b" * 32,
        "uri": f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}/Recordings/{'RE' + 'b' * 32}.json",
        "price": None,
        "track": "both",
        "source": "StartCallRecordingAPI",
        "status": "in-progress",
        "call_sid": CALL,
        "channels": 2,
        "duration": None,
        "error_code": None,
        "price_unit": None,
        "start_time": "Thu, 30 Jul 2015 20:00:00 +0000",
        "account_sid": ACCOUNT,
        "api_version": "2010-04-01",
        "date_created": "Thu, 30 Jul 2015 20:00:00 +0000",
        "date_updated": "Thu, 30 Jul 2015 20:00:00 +0000",
        "conference_sid": None,
        "encryption_details": None,
    }
    jsonschema.validate(rendered, schema_for("api.v2010.account.call.call_recording"))


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "paused", "pause_behavior": "skip"},
        {"status": "completed", "duration": 4, "channels": 1, "track": "inbound"},
        {"status": "absent", "duration": 0, "error_code": 13617},
        {"status": "processing"},
        {"status": "stopped", "price_unit": "USD"},
    ],
)
def test_recording_states_validate(changes, response_schema, reference):
    rendered = render_recording(recording(**changes))
    for method, path, status in [("post", RECORDINGS_PATH, "201"), ("post", RECORDINGS_PATH, "200"),
                                 ("get", RECORDING_PATH, "200"), ("post", RECORDING_PATH, "200")]:
        jsonschema.validate(rendered, response_schema(path, method, status))
    properties = reference["components"]["schemas"]["api.v2010.account.call.call_recording"]
    assert set(rendered) == set(properties["properties"])
    assert "/secret/path.wav" not in str(rendered)
    if "duration" in changes:
        assert rendered["duration"] == str(changes["duration"])
    for field in ("date_created", "date_updated", "start_time"):
        assert_rfc2822_gmt(rendered[field])


def test_recording_list_envelope_validates(response_schema):
    records = [recording(sid=new_sid("RE")) for _ in range(5)]
    uri = recording_list_uri(ACCOUNT, CALL)
    page = list_page("recordings", records, render_recording, uri, PageRequest(1, 2))
    jsonschema.validate(page, response_schema(RECORDINGS_PATH, "get", "200"))
    assert [r["sid"] for r in page["recordings"]] == [r.sid for r in records[2:4]]
    assert (page["start"], page["end"], page["page"], page["page_size"]) == (2, 3, 1, 2)
    assert page["uri"] == f"{uri}?PageSize=2&Page=1"
    assert page["first_page_uri"] == f"{uri}?PageSize=2&Page=0"
    assert page["next_page_uri"] == f"{uri}?PageSize=2&Page=2"
    assert page["previous_page_uri"] == f"{uri}?PageSize=2&Page=0"
    last = list_page("recordings", records, render_recording, uri, PageRequest(2, 2))
    assert last["next_page_uri"] is None and len(last["recordings"]) == 1
    empty = list_page("recordings", [], render_recording, uri)
    jsonschema.validate(empty, response_schema(RECORDINGS_PATH, "get", "200"))
    assert (empty["recordings"], empty["start"], empty["end"]) == ([], 0, 0)
    assert empty["previous_page_uri"] is None and empty["next_page_uri"] is None


def test_siprec_list_uses_the_same_envelope(schema_for):
    page = list_page("siprec", [siprec("a"), siprec("b")], render_siprec,
                     siprec_list_uri(ACCOUNT, CALL))
    assert [s["name"] for s in page["siprec"]] == ["a", "b"]
    for item in page["siprec"]:
        jsonschema.validate(item, schema_for("api.v2010.account.call.siprec"))


@pytest.mark.parametrize(
    "query,expected",
    [
        ({}, PageRequest(0, 50)),
        ({"Page": "3", "PageSize": "20"}, PageRequest(3, 20)),
        ({"PageSize": "5000"}, PageRequest(0, 1000)),
        ({"PageSize": "0", "Page": "-2"}, PageRequest(0, 1)),
        ({"PageSize": "junk", "Page": "x"}, PageRequest(0, 50)),
    ],
)
def test_page_request(query, expected):
    assert page_request(query) == expected
