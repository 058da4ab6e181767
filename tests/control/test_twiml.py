"""TwiML parsing: <Start>/<Stop> <Siprec>, refusals, and the stateful replay check."""

from __future__ import annotations

import pytest

from mediafork.control import errors
from mediafork.control.errors import ApiError
from mediafork.control.forms import SiprecRequest
from mediafork.control.twiml import (
    MAX_TWIML_LENGTH,
    ActiveSiprec,
    StartSiprec,
    StopSiprec,
    TwimlProgram,
    check_program,
    parse_twiml,
)

DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def refused(document: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_twiml(document)
    assert info.value.status == 400
    return info.value


def test_seed_basic_example():
    program = parse_twiml(
        f"""{DECL}
<Response>
   <Start>
       <Siprec connectorName="my_addon_connector" />
   </Start>
</Response>"""
    )
    assert program == TwimlProgram(
        actions=(StartSiprec(SiprecRequest(connector_name="my_addon_connector")),), ignored=()
    )
    assert program.actions[0].request.track == "both_tracks"


def test_start_with_everything_and_parameters():
    program = parse_twiml(
        """<Response><Start>
        <Siprec name="my_stream_1" connectorName="Gridspace_1" track="outbound_track"
                statusCallback="https://87b252436d40.ngrok.app" statusCallbackMethod="GET">
            <Parameter name="Custom1" value ="Bob" />
            <Parameter name="Custom2" value ="Blah" />
            <Parameter name="Custom3" value ="Alice" />
        </Siprec></Start></Response>"""
    )
    (action,) = program.actions
    assert isinstance(action, StartSiprec)
    assert action.request == SiprecRequest(
        name="my_stream_1",
        connector_name="Gridspace_1",
        track="outbound_track",
        status_callback="https://87b252436d40.ngrok.app",
        status_callback_method="GET",
        parameters=(("Custom1", "Bob"), ("Custom2", "Blah"), ("Custom3", "Alice")),
    )


def test_actions_keep_document_order_and_other_verbs_are_reported():
    program = parse_twiml(
        """<Response>
          <Say>Recording starts</Say>
          <Start><Siprec name="a" connectorName="C"/><Siprec name="b"/></Start>
          <Pause length="10"/>
          <Stop><Siprec name="a"/></Stop>
          <Start><Siprec name="c" track="inbound_track"/></Start>
          <Dial><Number>+15551230000</Number></Dial>
        </Response>"""
    )
    assert [type(a).__name__ for a in program.actions] == [
        "StartSiprec", "StartSiprec", "StopSiprec", "StartSiprec"
    ]
    assert [getattr(a, "name", None) or a.request.name for a in program.actions] == [
        "a", "b", "a", "c"
    ]
    assert program.ignored == ("Say", "Pause", "Dial")


def test_empty_response_is_an_empty_program():
    assert parse_twiml("<Response/>") == TwimlProgram(actions=(), ignored=())


@pytest.mark.parametrize(
    "document",
    [
        "",
        "<Response>",
        "<Response><Start></Response>",
        "not xml at all",
        "<Response><Start><Siprec name='a'></Start></Response>",
        '<Response><Start><Siprec name="a" name="b"/></Start></Response>',
        "<Response/><Response/>",
    ],
)
def test_malformed_xml_is_12100(document):
    error = refused(document)
    assert error.code == 12100


@pytest.mark.parametrize(
    "document",
    [
        # billion laughs
        """<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
        <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
        <Response><Start><Siprec name="&lol2;"/></Start></Response>""",
        # external entity
        """<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
        <Response><Start><Siprec name="&xxe;"/></Start></Response>""",
        # a bare DTD
        """<?xml version="1.0"?><!DOCTYPE Response SYSTEM "http://example.com/x.dtd">
        <Response/>""",
    ],
)
def test_dtd_and_entity_tricks_are_refused(document):
    error = refused(document)
    assert error.code == 12100
    assert "DTD" in error.message


def test_root_must_be_response():
    assert refused("<Respond/>").code == 12102
    assert refused('<Response xmlns="urn:x"/>').code == 12102


@pytest.mark.parametrize(
    "document,fragment",
    [
        ("<Response><Start><Stream url='wss://x'/></Start></Response>", "<Stream>"),
        ("<Response><Stop><Stream name='x'/></Stop></Response>", "<Stream>"),
        ("<Response><start><Siprec/></start></Response>", "<start>"),
        ("<Response><Strat><Siprec/></Strat></Response>", "<Strat>"),
        ("<Response><Siprec/></Response>", "<Siprec>"),
        ("<Response><Start><Siprec bogus='1'/></Start></Response>", "'bogus'"),
        ("<Response><Start><Siprec ConnectorName='1'/></Start></Response>", "'ConnectorName'"),
        ("<Response><Start action='x'><Siprec/></Start></Response>", "<Start>"),
        ("<Response><Start><Siprec><Param name='a' value='b'/></Siprec></Start></Response>",
         "<Param>"),
        ("<Response><Start><Siprec><Parameter name='a'/></Siprec></Start></Response>", "value"),
        ("<Response><Start><Siprec><Parameter value='b'/></Siprec></Start></Response>", "name"),
        ("<Response><Start><Siprec><Parameter name='a' value='b' x='1'/></Siprec></Start>"
         "</Response>", "'x'"),
        ("<Response><Start>text<Siprec/></Start></Response>", "text"),
        ("<Response><Start><Siprec>text</Siprec></Start></Response>", "text"),
        ("<Response><Stop><Siprec/></Stop></Response>", "name"),
        ("<Response><Stop><Siprec name='a' track='inbound_track'/></Stop></Response>", "'track'"),
        ("<Response>hello</Response>", "text"),
    ],
)
def test_schema_violations_are_12200(document, fragment):
    error = refused(document)
    assert error.code == 12200
    assert fragment in error.message


@pytest.mark.parametrize(
    "attributes,code,field",
    [
        ('track="both"', 31941, "track"),
        ('statusCallback="ftp://x"', 21609, "statusCallback"),
        ('statusCallbackMethod="PUT"', errors.INVALID_METHOD.code, "statusCallbackMethod"),
        ('name="' + "n" * 300 + '"', errors.INVALID_NAME.code, "name"),
    ],
)
def test_bad_attribute_values_use_form_rules_with_attribute_names(attributes, code, field):
    error = refused(f"<Response><Start><Siprec {attributes}/></Start></Response>")
    assert error.code == code
    assert field in error.message


def test_parameter_rules_apply_in_twiml():
    duplicate = (
        "<Response><Start><Siprec>"
        "<Parameter name='A' value='1'/><Parameter name='a' value='2'/>"
        "</Siprec></Start></Response>"
    )
    assert refused(duplicate).code == errors.INVALID_CUSTOM_PARAMETER.code
    hundred = "".join(f"<Parameter name='P{n}' value='v'/>" for n in range(100))
    assert refused(f"<Response><Start><Siprec>{hundred}</Siprec></Start></Response>").code == (
        errors.INVALID_CUSTOM_PARAMETER.code
    )


def test_size_limit_is_4000_characters():
    def padded(total: int) -> str:
        head = "<Response><Start><Siprec name='a'/></Start>"
        tail = "</Response>"
        return head + " " * (total - len(head) - len(tail)) + tail

    assert len(padded(MAX_TWIML_LENGTH)) == 4000
    assert len(parse_twiml(padded(4000)).actions) == 1
    error = refused(padded(4001))
    assert error.code == 32018
    assert "4000" in error.message


def test_size_is_counted_in_characters_not_bytes():
    name = "é" * 1000  # 2000 bytes in UTF-8, 1000 characters
    doc = f"<Response><Start><Siprec name='{name[:200]}'/></Start></Response>"
    assert len(doc.encode()) > len(doc)
    assert parse_twiml(doc).actions[0].request.name == name[:200]


def test_error_messages_do_not_echo_secrets():
    secret = "p4ssw0rd-in-callback"
    error = refused(
        f"<Response><Start><Siprec statusCallback='ftp://u:{secret}@h/'/></Start></Response>"
    )
    assert secret not in error.message


def test_requires_str():
    with pytest.raises(TypeError):
        parse_twiml(b"<Response/>")  # type: ignore[arg-type]


# -- check_program --------------------------------------------------------------------------


def program(document: str) -> TwimlProgram:
    return parse_twiml(f"<Response>{document}</Response>")


def test_check_program_accepts_valid_sequence():
    check_program(
        program(
            "<Start><Siprec name='a'/></Start><Start><Siprec name='b'/></Start>"
            "<Stop><Siprec name='a'/></Stop><Start><Siprec name='c'/></Start>"
        ),
        [],
    )


def test_check_program_stream_budget_counts_existing_and_earlier_actions():
    both = ActiveSiprec("x", "both_tracks", True)
    with pytest.raises(ApiError) as info:
        check_program(program("<Start><Siprec/><Siprec track='inbound_track'/></Start>"), [both])
    assert info.value.code == errors.TOO_MANY_STREAMS.code
    # a stopped existing Siprec does not count
    check_program(program("<Start><Siprec/></Start>"),
                  [both, ActiveSiprec("y", "both_tracks", False)])
    # a Stop earlier in the document frees streams for a later Start
    check_program(
        program("<Stop><Siprec name='x'/></Stop><Start><Siprec/></Start>"),
        [both, ActiveSiprec("z", "both_tracks", True)],
    )


def test_check_program_names():
    existing = [ActiveSiprec("old", "inbound_track", False)]
    with pytest.raises(ApiError) as info:
        check_program(program("<Start><Siprec name='old'/></Start>"), existing)
    assert info.value.code == errors.DUPLICATE_NAME.code
    with pytest.raises(ApiError) as info:
        check_program(program("<Start><Siprec name='n'/><Siprec name='n'/></Start>"), [])
    assert info.value.code == errors.DUPLICATE_NAME.code
    with pytest.raises(ApiError) as info:
        check_program(program("<Stop><Siprec name='ghost'/></Stop>"), existing)
    assert info.value.status == 404 and info.value.code == 20404
    # stopping an already stopped Siprec is idempotent
    check_program(program("<Stop><Siprec name='old'/></Stop>"), existing)


def test_stop_action_type():
    assert program("<Stop><Siprec name='a'/></Stop>").actions == (StopSiprec("a"),)
