"""RecordingSession: what the transport layer needs to drive the data plane beyond events:
the SRS's SRTP key (for SRTCP) and destinations that move together with a pause/resume."""

from __future__ import annotations

from mediafork.sip import events as ev

from .test_session import _srs_offer, established


def test_remote_key_is_the_srs_key_of_the_selected_suite() -> None:
    wire, _ = established()
    assert wire.session.remote_key("1") == bytes(30)  # FakeSrs answers with a zero key
    assert wire.session.remote_key("2") == bytes(30)
    assert wire.session.remote_key("nope") is None


def test_srs_resume_with_new_ports_reports_the_new_destinations() -> None:
    wire, srs = established()
    wire.inject(
        srs.request("INVITE", _srs_offer(srs, (40000, 40002), "inactive"), "application/sdp")
    )
    wire.inject(srs.request("ACK"))
    assert wire.of(ev.Paused) == [ev.Paused(True)]
    # The SRS resumes on other ports: Resumed alone would leave the media on the old ones.
    wire.inject(srs.request("INVITE", _srs_offer(srs, (50000, 50002)), "application/sdp"))
    assert wire.of(ev.Resumed) == [ev.Resumed(True)]
    assert [s.port for s in wire.of(ev.MediaUpdated)[-1].streams] == [50000, 50002]
