"""Siprec / Recording form validation and the forked-stream budget."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from mediafork.control import errors
from mediafork.control.errors import ApiError
from mediafork.control.forms import (
    DEFAULT_TRACK,
    MAX_PARAMETER_VALUE_LENGTH,
    RecordingRequest,
    RecordingUpdate,
    SiprecRequest,
    check_stream_budget,
    forked_streams,
    parse_recording_create,
    parse_recording_update,
    parse_siprec_create,
    parse_siprec_update,
    streams_in_use,
)


def refused(form: object, parser=parse_siprec_create) -> ApiError:
    with pytest.raises(ApiError) as info:
        parser(form)
    assert info.value.status == 400
    return info.value


# -- Siprec create ------------------------------------------------------------------------


def test_empty_form_gives_the_documented_defaults():
    request = parse_siprec_create({})
    assert request == SiprecRequest(
        name=None,
        connector_name=None,
        track="both_tracks",
        status_callback=None,
        status_callback_method="POST",
        parameters=(),
    )
    assert DEFAULT_TRACK == "both_tracks"  # seeds README: the prose wins over 002's table


def test_full_form_is_parsed():
    request = parse_siprec_create(
        {
            "Name": "my-first-siprec",
            "ConnectorName": "Gridspace_1",
            "Track": "outbound_track",
            "StatusCallback": "https://example.com/cb?x=1",
            "StatusCallbackMethod": "GET",
            "Parameter1.Name": "Custom1",
            "Parameter1.Value": "Bob",
            "Parameter2.Name": "Custom2",
            "Parameter2.Value": "Alice",
            "PlayBeep": "true",  # unknown: ignored like the platform does
        }
    )
    assert request.name == "my-first-siprec"
    assert request.connector_name == "Gridspace_1"
    assert request.track == "outbound_track"
    assert request.status_callback == "https://example.com/cb?x=1"
    assert request.status_callback_method == "GET"
    assert request.parameters == (("Custom1", "Bob"), ("Custom2", "Alice"))


def test_request_is_frozen():
    request = parse_siprec_create({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.track = "inbound_track"  # type: ignore[misc]


def test_multidict_and_pairs_are_accepted():
    form = MultiDict([("Track", "inbound_track"), ("Name", "a")])
    assert parse_siprec_create(form).track == "inbound_track"
    assert parse_siprec_create([("Name", "b")]).name == "b"


@pytest.mark.parametrize("track", ["inbound_track", "outbound_track", "both_tracks"])
def test_every_track_is_accepted(track):
    assert parse_siprec_create({"Track": track}).track == track


@pytest.mark.parametrize("track", ["inbound", "both", "BOTH_TRACKS", "x"])
def test_bad_track_is_31941(track):
    error = refused({"Track": track})
    assert error.code == 31941
    assert "Track" in error.message and "both_tracks" in error.message


def test_empty_optional_values_count_as_absent():
    request = parse_siprec_create({"Name": "", "Track": "", "StatusCallback": ""})
    assert request.name is None and request.track == "both_tracks"
    assert request.status_callback is None


def test_repeated_field_is_refused():
    error = refused(MultiDict([("Track", "inbound_track"), ("Track", "outbound_track")]))
    assert error.code == errors.REPEATED_PARAMETER.code
    assert "Track" in error.message


@pytest.mark.parametrize("method,expected", [("GET", "GET"), ("post", "POST"), ("Get", "GET")])
def test_callback_method_is_case_insensitive(method, expected):
    assert parse_siprec_create({"StatusCallbackMethod": method}).status_callback_method == expected


@pytest.mark.parametrize("method", ["PUT", "DELETE", "G E T"])
def test_bad_callback_method(method):
    error = refused({"StatusCallbackMethod": method})
    assert error.code == errors.INVALID_METHOD.code
    assert "StatusCallbackMethod" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com:8443/path?q=1#frag",
        "http://127.0.0.1:9/cb",
        "http://[::1]:8080/cb",
    ],
)
def test_good_callback_urls(url):
    assert parse_siprec_create({"StatusCallback": url}).status_callback == url


@pytest.mark.parametrize(
    "url",
    [
        "example.com/cb",
        "/relative",
        "ftp://example.com/",
        "javascript:alert(1)",
        "http://",
        "https:///path",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com:99999/",
        "http://example.com:0/",
        "https://example.com/" + "a" * 4000,
        "https://user:pass@example.com/cb",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_bad_callback_urls_are_21609(url):
    error = refused({"StatusCallback": url})
    assert error.code == 21609
    assert "StatusCallback" in error.message


def test_callback_url_credentials_never_appear_in_errors_or_repr():
    secret = "hunter2-callback-password"
    error = refused({"StatusCallback": f"ftp://user:{secret}@example.com/"})
    assert secret not in error.message and secret not in repr(error)
    error = refused({"StatusCallback": f"https://user:{secret}@example.com/"})
    assert "credentials" in error.message
    assert secret not in error.message and secret not in repr(error)


def test_name_rules():
    assert parse_siprec_create({"Name": "My SIPREC Stream"}).name == "My SIPREC Stream"
    for bad in ["a" * 257, "bad\nname", " padded", "a/b", "SR" + "a" * 32, "SR" + "A" * 32]:
        error = refused({"Name": bad})
        assert error.code == errors.INVALID_NAME.code, bad
    # A name that merely starts like a SID is fine.
    assert parse_siprec_create({"Name": "SR-my-stream"}).name == "SR-my-stream"


def test_connector_name_syntax_is_31940():
    error = refused({"ConnectorName": "a" * 300})
    assert error.code == 31940
    error = refused({"ConnectorName": "bad\x00name"})
    assert error.code == 31940


# -- custom parameters ------------------------------------------------------------------


def params(*pairs: tuple[int, str, str | None]) -> dict[str, str]:
    form: dict[str, str] = {}
    for number, name, value in pairs:
        form[f"Parameter{number}.Name"] = name
        if value is not None:
            form[f"Parameter{number}.Value"] = value
    return form


def test_parameters_are_ordered_by_number_and_gaps_are_allowed():
    form = params((10, "Ten", "10"), (2, "Two", "2"), (99, "Last", ""))
    assert parse_siprec_create(form).parameters == (("Two", "2"), ("Ten", "10"), ("Last", ""))


def test_ninety_nine_parameters_are_accepted():
    form = params(*[(n, f"P{n}", str(n)) for n in range(1, 100)])
    assert len(parse_siprec_create(form).parameters) == 99


@pytest.mark.parametrize("key", ["Parameter100.Name", "Parameter0.Name", "Parameter01.Name"])
def test_parameter_numbers_out_of_range(key):
    error = refused({key: "x", key.replace("Name", "Value"): "y"})
    assert error.code == errors.INVALID_CUSTOM_PARAMETER.code
    assert "1 to 99" in error.message


def test_parameter_missing_value_or_name():
    error = refused(params((1, "Custom1", None)))
    assert "Parameter1.Name needs Parameter1.Value" in error.message
    error = refused({"Parameter3.Value": "v"})
    assert "Parameter3.Value needs Parameter3.Name" in error.message


def test_duplicate_parameter_names_case_insensitive():
    error = refused(params((1, "Custom", "a"), (2, "custom", "b")))
    assert error.code == errors.INVALID_CUSTOM_PARAMETER.code
    assert "twice" in error.message


def test_parameter_value_length_and_content():
    ok = params((1, "Big", "v" * MAX_PARAMETER_VALUE_LENGTH))
    assert parse_siprec_create(ok).parameters[0][1] == "v" * MAX_PARAMETER_VALUE_LENGTH
    error = refused(params((1, "Big", "v" * (MAX_PARAMETER_VALUE_LENGTH + 1))))
    assert "at most" in error.message
    error = refused(params((1, "Inject", "a\r\nX-Evil: 1")))
    assert "control characters" in error.message
    for bad_name in ["", "a\r\nb", "tab\there", "nul\x00", "x" * 129, "\ud800"]:
        error = refused(params((1, bad_name, "v")))
        assert error.code == errors.INVALID_CUSTOM_PARAMETER.code, bad_name
    # Names are free text, as the platform's are: spaces, punctuation, any script.
    for good_name in ["Agent Name", "a:b", "é", "Kundennummer (Bestellung) #1", "客户编号",
                      "x" * 128]:
        assert parse_siprec_create(params((1, good_name, "v"))).parameters == ((good_name, "v"),)


def test_unrelated_parameter_like_fields_are_ignored():
    assert parse_siprec_create({"ParameterFoo": "x", "Parameters": "y"}).parameters == ()


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=12))
def test_any_form_either_parses_or_raises_api_error(form):
    try:
        parse_siprec_create(form)
        parse_recording_create(form)
    except ApiError as error:
        assert error.status == 400 and error.message


# -- Siprec update --------------------------------------------------------------------------


def test_siprec_update_stop_pause_resume():
    # `stopped` is the platform's; `paused` / `in-progress` are mediafork's pause and resume.
    for status in ["stopped", "paused", "in-progress"]:
        assert parse_siprec_update({"Status": status}).status == status
    assert refused({}, parse_siprec_update).code == errors.MISSING_PARAMETER.code
    for status in ["Stopped", "Paused", "resumed", "completed", " paused"]:
        error = refused({"Status": status}, parse_siprec_update)
        assert error.code == errors.INVALID_STATUS.code, status
        assert "stopped, paused, in-progress" in str(error), status


# -- stream budget --------------------------------------------------------------------------


def test_forked_stream_counts():
    assert forked_streams("both_tracks") == 2
    assert forked_streams("inbound_track") == 1
    assert forked_streams("outbound_track") == 1
    assert streams_in_use(["both_tracks", "inbound_track"]) == 3
    with pytest.raises(ValueError):
        forked_streams("sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "active,new,allowed",
    [
        ([], "both_tracks", True),
        (["both_tracks"], "both_tracks", True),
        (["both_tracks", "both_tracks"], "inbound_track", False),
        (["both_tracks", "inbound_track"], "outbound_track", True),
        (["both_tracks", "inbound_track"], "both_tracks", False),
        (["inbound_track"] * 3, "inbound_track", True),
        (["inbound_track"] * 4, "inbound_track", False),
    ],
)
def test_stream_budget(active, new, allowed):
    if allowed:
        check_stream_budget(active, new)
    else:
        with pytest.raises(ApiError) as info:
            check_stream_budget(active, new)
        assert info.value.code == errors.TOO_MANY_STREAMS.code
        assert "at most 4 forked streams" in info.value.message


# -- Recording create/update ------------------------------------------------------------------


def test_recording_defaults():
    assert parse_recording_create({}) == RecordingRequest(
        channels="mono",
        track="both",
        trim="do-not-trim",
        status_callback=None,
        status_callback_method="POST",
        status_callback_events=frozenset({"completed"}),
    )
    assert parse_recording_create({}).channel_count == 1
    assert parse_recording_create({"RecordingChannels": "dual"}).channel_count == 2


def test_recording_full_form_like_the_seed_example():
    # seed 004's request example, "failed" and the unknown fields included
    request = parse_recording_create(
        {
            "Trim": "do-not-trim",
            "PlayBeep": "true",
            "Transcribe": "true",
            "RecordingTrack": "both",
            "RecordingChannels": "dual",
            "RecordingStatusCallback": "https://example.com",
            "TranscriptionConfiguration": "JV" + "a" * 32,
            "RecordingStatusCallbackEvent": "in-progress completed failed",
            "RecordingStatusCallbackMethod": "GET",
        }
    )
    assert request.channels == "dual" and request.track == "both"
    assert request.status_callback_events == frozenset({"in-progress", "completed"})
    assert request.status_callback_method == "GET"


def test_recording_events_as_repeated_keys_like_the_official_client():
    form = MultiDict(
        [("RecordingStatusCallbackEvent", "in-progress"),
         ("RecordingStatusCallbackEvent", "absent")]
    )
    assert parse_recording_create(form).status_callback_events == {"in-progress", "absent"}


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("RecordingChannels", "stereo", errors.INVALID_PARAMETER.code),
        ("RecordingTrack", "inbound_track", errors.INVALID_PARAMETER.code),
        ("Trim", "trim", errors.INVALID_PARAMETER.code),
        ("RecordingStatusCallback", "not a url", 21609),
        ("RecordingStatusCallbackMethod", "PATCH", errors.INVALID_METHOD.code),
        ("RecordingStatusCallbackEvent", "completed started", 21626),
    ],
)
def test_recording_bad_values(field, value, code):
    error = refused({field: value}, parse_recording_create)
    assert error.code == code
    assert field in error.message


def test_recording_update():
    assert parse_recording_update({"Status": "paused"}) == RecordingUpdate("paused", "silence")
    assert parse_recording_update({"Status": "paused", "PauseBehavior": "skip"}) == (
        RecordingUpdate("paused", "skip")
    )
    assert parse_recording_update({"Status": "in-progress", "PauseBehavior": "skip"}) == (
        RecordingUpdate("in-progress", None)
    )
    assert parse_recording_update({"Status": "stopped"}) == RecordingUpdate("stopped")
    assert refused({}, parse_recording_update).code == errors.MISSING_PARAMETER.code
    for status in ["completed", "absent", "processing", "PAUSED"]:
        error = refused({"Status": status}, parse_recording_update)
        assert error.code == errors.INVALID_STATUS.code
    error = refused({"Status": "paused", "PauseBehavior": "mute"}, parse_recording_update)
    assert "PauseBehavior" in error.message
