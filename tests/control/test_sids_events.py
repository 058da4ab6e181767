"""SIDs, timestamp formats and status-callback parameter lists."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest

from mediafork.control import errors
from mediafork.control.errors import ApiError
from mediafork.control.events import (
    CallInfo,
    FailoverDetail,
    recording_params,
    recording_url,
    siprec_params,
)
from mediafork.control.sids import PREFIXES, is_sid, new_sid, require_sid
from mediafork.control.timefmt import iso8601, rfc2822


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_new_sids_match_the_reference_pattern(prefix):
    pattern = re.compile(f"^{prefix}[0-9a-fA-F]{{32}}$")
    sids = {new_sid(prefix) for _ in range(200)}
    assert len(sids) == 200
    for sid in sids:
        assert pattern.match(sid) and len(sid) == 34
        assert sid[2:] == sid[2:].lower()
        assert is_sid(sid, prefix)


def test_is_sid_edge_cases():
    good = "SR" + "0123456789abcdef" * 2
    assert is_sid(good, "SR")
    assert is_sid("SR" + "ABCDEF0123456789" * 2, "SR")  # mixed case is valid input
    assert not is_sid(good + "\n", "SR")  # `$` would have let this through
    assert not is_sid(good[:-1], "SR")
    assert not is_sid(good + "0", "SR")
    assert not is_sid("sr" + good[2:], "SR")
    assert not is_sid("RE" + good[2:], "SR")
    assert not is_sid("SR" + "g" * 32, "SR")
    assert not is_sid(None, "SR")
    with pytest.raises(ValueError):
        is_sid(good, "ZZ")
    with pytest.raises(ValueError):
        new_sid("ZZ")


def test_require_sid():
    sid = new_sid("CA")
    assert require_sid(sid, "CA", "CallSid") == sid
    with pytest.raises(ApiError) as info:
        require_sid("CA123", "CA", "CallSid")
    assert info.value.code == errors.INVALID_SID.code
    assert "CallSid" in info.value.message


def test_time_formats():
    moment = datetime(2015, 7, 30, 22, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert rfc2822(moment) == "Thu, 30 Jul 2015 20:00:00 +0000"
    assert parsedate_to_datetime(rfc2822(moment)) == moment.replace(microsecond=0)
    assert iso8601(moment) == "2015-07-30T20:00:00.123Z"
    with pytest.raises(ValueError):
        rfc2822(datetime(2015, 7, 30))


CALL = CallInfo(account_sid="AC" + "a" * 32, call_sid="CA" + "b" * 32,
                from_="sip:+15551230000@pbx.example", to="sip:+15559870000@pbx.example")
T = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def test_siprec_started_params():
    params = siprec_params(call=CALL, siprec_sid="SR" + "c" * 32, siprec_name="my-first-siprec",
                           event="siprec-started", timestamp=T)
    assert params == (
        ("AccountSid", CALL.account_sid),
        ("CallSid", CALL.call_sid),
        ("SiprecSid", "SR" + "c" * 32),
        ("SiprecName", "my-first-siprec"),
        ("SiprecEvent", "siprec-started"),
        ("Timestamp", "2024-01-15T10:30:00.000Z"),
        ("From", CALL.from_),
        ("To", CALL.to),
        ("ApiVersion", "2010-04-01"),
    )


def test_siprec_error_params_and_unnamed_siprec():
    params = dict(siprec_params(call=CALL, siprec_sid="SR" + "c" * 32, siprec_name=None,
                                event="siprec-error", timestamp=T, error="engine restarted",
                                error_code=900012))
    assert params["SiprecName"] == ""
    assert params["SiprecError"] == "engine restarted"
    assert params["SiprecErrorCode"] == "900012"
    stopped = dict(siprec_params(call=CALL, siprec_sid="SR" + "c" * 32, siprec_name="x",
                                 event="siprec-stopped", timestamp=T, error="ignored"))
    assert "SiprecError" not in stopped and "SiprecErrorCode" not in stopped
    with pytest.raises(ValueError):
        siprec_params(call=CALL, siprec_sid="SR", siprec_name=None,
                      event="siprec-held", timestamp=T)  # type: ignore[arg-type]
    paused = dict(siprec_params(call=CALL, siprec_sid="SR" + "c" * 32, siprec_name="x",
                                event="siprec-paused", timestamp=T, error="ignored"))
    assert paused["SiprecEvent"] == "siprec-paused" and "SiprecError" not in paused


def test_siprec_failover_params():
    detail = FailoverDetail(recorder="sip:b@192.0.2.2", previous_recorder="sip:a@192.0.2.1",
                            reason="recording session lost: SIP 408", count=1, sip_status=408,
                            phase="established")
    params = siprec_params(call=CALL, siprec_sid="SR" + "c" * 32, siprec_name="x",
                           event="siprec-failover", timestamp=T, failover=detail)
    tail = dict(params[9:])
    assert dict(params)["SiprecEvent"] == "siprec-failover"
    assert tail == {"SiprecRecorder": "sip:b@192.0.2.2", "SiprecPreviousRecorder": "sip:a@192.0.2.1",
                    "SiprecFailoverReason": "recording session lost: SIP 408",
                    "SiprecFailoverCount": "1", "SiprecFailoverSipStatus": "408",
                    "SiprecFailoverPhase": "established"}
    # No status for an ICMP loss: the field is left out, never empty.
    bare = dict(FailoverDetail("r", "p", "media unreachable", 2).params())
    assert "SiprecFailoverSipStatus" not in bare and "SiprecFailoverPhase" not in bare


def test_recording_params():
    url = recording_url("https://mf.example/", CALL.account_sid, CALL.call_sid, "RE" + "d" * 32)
    assert url == (f"https://mf.example/2010-04-01/Accounts/{CALL.account_sid}/Calls/"
                   f"{CALL.call_sid}/Recordings/{'RE' + 'd' * 32}")
    params = dict(recording_params(account_sid=CALL.account_sid, call_sid=CALL.call_sid,
                                   recording_sid="RE" + "d" * 32, recording_url=url,
                                   status="completed", duration_seconds=4, channels=2,
                                   start_time=T, track="both", error_code=None))
    assert params == {
        "AccountSid": CALL.account_sid,
        "CallSid": CALL.call_sid,
        "RecordingSid": "RE" + "d" * 32,
        "RecordingUrl": url,
        "RecordingStatus": "completed",
        "RecordingDuration": "4",
        "RecordingChannels": "2",
        "RecordingStartTime": "Mon, 15 Jan 2024 10:30:00 +0000",
        "RecordingSource": "StartCallRecordingAPI",
        "RecordingTrack": "both",
        "ErrorCode": "0",
    }
