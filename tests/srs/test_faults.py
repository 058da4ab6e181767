"""Fault modes and hostile input at the reference recorder (real loopback sockets)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from mediafork.sip.digest import Challenge, DigestClient
from mediafork.sip.message import Request
from mediafork.sip.sdp import SessionDescription, build_offer
from mediafork.srs import ReferenceRecorder

from .srcclient import SrcClient, read_answer_into_legs
from .test_recorder import establish


async def _started(tmp_path: Path, **options) -> tuple[ReferenceRecorder, SrcClient]:
    recorder = await ReferenceRecorder(port=0, out_dir=tmp_path, **options).start()
    client = await SrcClient("udp", recorder.address).open()
    return recorder, client


@pytest.mark.parametrize("status", [486, 503, 603])
def test_answer_with_error_code(run, tmp_path, status):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path, answer=status)
        try:
            invite = client.invite(recorder.uri(), await client.add_legs(["1"], True))
            client.send(invite)
            response = await client.final_response()
            assert response.status == status
            assert response.to.tag  # a final response to INVITE carries our tag
            client.send(client.ack(invite, response))  # ACK for non-2xx: absorbed
            await asyncio.sleep(0.05)
            (session,) = recorder.sessions
            assert session.state == "rejected" and session.summary()["status"] == status
            assert session.directory is None  # nothing recorded, nothing written
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


def test_no_answer_stays_silent_and_cancel_gets_487(run, tmp_path):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path, no_answer=True)
        try:
            invite = client.invite(recorder.uri(), await client.add_legs(["1"], True))
            client.send(invite)
            with pytest.raises(asyncio.TimeoutError):
                await client.next_message(timeout=0.7)
            client.send(invite)  # a retransmission: still nothing
            with pytest.raises(asyncio.TimeoutError):
                await client.next_message(timeout=0.3)
            assert recorder.sessions[0].state == "unanswered"
            cancel = Request("CANCEL", invite.uri, invite.headers.copy())
            cancel.headers.set("CSeq", "1 CANCEL")
            cancel.headers.remove("Content-Type")
            client.send(cancel)
            statuses = sorted([(await client.final_response()).status for _ in range(2)])
            assert statuses == [200, 487]
            assert recorder.sessions[0].state == "cancelled"
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


def test_hangup_after_sends_bye(run, tmp_path):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path, hangup_after=0.3)
        try:
            invite, ok = await establish(recorder, client, ["1"])
            bye = await client.next_request(timeout=3)
            assert bye.method == "BYE"
            assert bye.call_id == invite.call_id
            assert bye.from_.tag == ok.to.tag and bye.to.tag == invite.from_.tag
            assert bye.uri.startswith("sip:src@127.0.0.1")
            client.send(client.answer_to(bye, 200))
            session = recorder.sessions[0]
            await recorder.wait_for(lambda r: session.bye_status == 200)
            summary = json.loads((Path(session.directory) / "summary.json").read_text())
            assert summary["ended_by"] == "srs" and summary["bye_status"] == 200
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


def test_digest_auth_challenge_then_success(run, tmp_path):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path, require_auth=("alice", "s3cret"))
        try:
            streams = await client.add_legs(["1"], True)
            invite = client.invite(recorder.uri(), streams)
            client.send(invite)
            challenge = await client.final_response()
            assert challenge.status == 401
            client.send(client.ack(invite, challenge))
            parsed = Challenge.parse(challenge.headers.get("WWW-Authenticate") or "")
            assert recorder.sessions == []

            wrong = client.invite(recorder.uri(), streams, call_id=invite.call_id, cseq=2)
            wrong.headers.add("Authorization", DigestClient("alice", "nope").authorization(
                parsed, "INVITE", wrong.uri))
            client.send(wrong)
            assert (await client.final_response()).status == 401

            retry = client.invite(recorder.uri(), streams, call_id=invite.call_id, cseq=3)
            retry.headers.add("Authorization", DigestClient("alice", "s3cret").authorization(
                parsed, "INVITE", retry.uri))
            client.send(retry)
            ok = await client.final_response()
            assert ok.status == 200
            client.send(client.ack(retry, ok))
            await recorder.wait_for(lambda r: r.sessions[0].state == "established")
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


@pytest.mark.parametrize("value", [None, "wrong-token"])
def test_credentials_header_missing_or_wrong_is_403(run, tmp_path, value):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path,
                                          credentials_header=("X-Auth-Token", "right-token"))
        try:
            streams = await client.add_legs(["1"], False)
            extra = [("X-Auth-Token", value)] if value else []
            client.send(client.invite(recorder.uri(), streams, extra=extra))
            response = await client.final_response()
            assert response.status == 403
            assert "right-token" not in response.to_bytes().decode()
            client.send(client.invite(recorder.uri(), streams, cseq=2,
                                      extra=[("X-Auth-Token", "right-token")]))
            assert (await client.final_response()).status == 200
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


def test_garbage_does_not_crash_it(run, tmp_path):
    async def scenario() -> None:
        recorder = await ReferenceRecorder(port=0, tcp=True, out_dir=tmp_path).start()
        try:
            host, port = recorder.address
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for junk in (b"\x00\xff" * 40, b"INVITE\r\n\r\n", b"SIP/2.0 200\r\n\r\n",
                             b"OPTIONS sip:x SIP/2.0\r\nVia: nope\r\n\r\n", b"\r\n\r\n",
                             bytes(range(256)) * 200):
                    sock.sendto(junk, (host, port))
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GARBAGE GARBAGE\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 3) == b""  # connection closed
            writer.close()
            # Media sockets get garbage too once a session exists.
            client = await SrcClient("udp", recorder.address).open()
            await establish(recorder, client, ["1"])
            media_port = client.legs[0].answer_port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for junk in (b"", b"\x80", b"\x80\x00" + b"\x00" * 30, b"\xff" * 200):
                    sock.sendto(junk, ("127.0.0.1", media_port))
                    sock.sendto(junk, ("127.0.0.1", media_port + 1))
            await client.legs[0].send_tone("127.0.0.1", 440.0, 10)
            session = recorder.sessions[0]
            await recorder.wait_for(lambda r: session.summary()["totals"]["packets"] == 10)
            stream = session.summary()["streams"][0]
            assert stream["srtp_auth_failures"] + stream["srtp_other_errors"] >= 3
            # Still answering SIP after all that.
            options = client.in_dialog("OPTIONS", client.invite(recorder.uri(), []),
                                       _fake_ok(), 1)
            options.headers.set("To", f"<{recorder.uri()}>")
            client.send(options)
            response = await client.final_response()
            assert response.status == 200 and "INVITE" in (response.headers.get("Allow") or "")
            await client.close()
            assert recorder.bad_messages >= 4
        finally:
            await recorder.stop()

    run(scenario())


def _fake_ok():
    from mediafork.sip.message import Response

    ok = Response(200, "OK")
    ok.headers.add("To", "<sip:recorder@127.0.0.1>")
    return ok


def test_reinvite_inactive_pauses_and_resumes(run, tmp_path):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path)
        try:
            streams = await client.add_legs(["1"], True)
            invite, ok = await establish_with(recorder, client, streams)
            first = SessionDescription.parse(ok.body)

            offer = build_offer(streams, "127.0.0.1", 1234, 2, direction="inactive")
            reinvite = client.in_dialog("INVITE", invite, ok, 2, offer.to_bytes(),
                                        "application/sdp")
            client.send(reinvite)
            answer_ok = await client.final_response()
            assert answer_ok.status == 200
            client.send(client.ack(reinvite, answer_ok))
            paused = SessionDescription.parse(answer_ok.body)
            assert paused.media[0].direction == "inactive"
            assert paused.media[0].port == first.media[0].port  # same receiver, same port
            assert paused.media[0].cryptos[0].key == first.media[0].cryptos[0].key
            assert paused.origin.split()[2] == str(int(first.origin.split()[2]) + 1)

            offer = build_offer(streams, "127.0.0.1", 1234, 3)
            update = client.in_dialog("UPDATE", invite, ok, 3, offer.to_bytes(),
                                      "application/sdp")
            client.send(update)
            resumed_ok = await client.final_response()
            assert SessionDescription.parse(resumed_ok.body).media[0].direction == "recvonly"
            summary = recorder.sessions[0].summary()
            assert summary["reinvites"] == 1 and summary["updates"] == 1
            assert summary["streams"][0]["pauses"] == 1
            assert summary["streams"][0]["paused"] is False
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())


async def establish_with(recorder, client, streams):
    invite = client.invite(recorder.uri(), streams)
    client.send(invite)
    ok = await client.final_response()
    assert ok.status == 200
    read_answer_into_legs(client, ok)
    client.send(client.ack(invite, ok))
    await recorder.wait_for(lambda r: r.sessions[-1].state == "established")
    return invite, ok


def test_unknown_dialog_and_stop_sends_bye(run, tmp_path):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path)
        try:
            invite, ok = await establish(recorder, client, ["1", "2"])
            stray = client.in_dialog("BYE", invite, ok, 5)
            stray.headers.set("Call-ID", "nobody@here")
            client.send(stray)
            assert (await client.final_response()).status == 481

            async def answer_bye() -> None:
                bye = await client.next_request(timeout=3)
                client.send(client.answer_to(bye, 200))

            answering = asyncio.create_task(answer_bye())
            await recorder.stop()
            await answering
            session = recorder.sessions[0]
            assert session.state == "ended" and session.ended_by == "shutdown"
            assert session.bye_status == 200
        finally:
            await client.close()

    run(scenario())


def test_bye_dials_the_src_contact_when_its_tcp_connection_is_gone(run, tmp_path):
    from mediafork.sip.message import StreamFramer

    async def scenario() -> None:
        received: asyncio.Queue[Request] = asyncio.Queue()

        async def src_listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            framer = StreamFramer()
            while data := await reader.read(65536):
                for msg in framer.feed(data):
                    if isinstance(msg, Request):
                        writer.write(client.answer_to(msg, 200).to_bytes())
                        received.put_nowait(msg)

        listener = await asyncio.start_server(src_listener, "127.0.0.1", 0)
        contact_port = listener.sockets[0].getsockname()[1]
        recorder = await ReferenceRecorder(port=0, tcp=True, out_dir=tmp_path,
                                           hangup_after=0.3).start()
        client = await SrcClient("tcp", recorder.address).open()
        client.contact_addr = ("127.0.0.1", contact_port)
        try:
            await establish(recorder, client, ["1"], transport="tcp")
            await client.close()  # the SRC drops its connection after setup
            bye = await asyncio.wait_for(received.get(), 5)
            assert bye.method == "BYE"
            session = recorder.sessions[0]
            await recorder.wait_for(lambda r: session.bye_status == 200)
        finally:
            await recorder.stop()
            listener.close()

    run(scenario())


def test_mutated_invites_are_refused_without_internal_errors(run, tmp_path, caplog):
    """Seeded byte/line mutations of a real SIPREC INVITE: every one is either answered or
    dropped as unparsable, and no handler ever fails with an unexpected exception."""
    import logging
    import random

    async def scenario() -> None:
        recorder, client = await _started(tmp_path)
        try:
            streams = await client.add_legs(["1", "2"], True)
            template = client.invite(recorder.uri(), streams).to_bytes()
            rng = random.Random(7866)
            lines = template.split(b"\r\n")
            for n in range(300):
                kind = n % 3
                if kind == 0:  # flip bytes anywhere (head, SDP, crypto, XML)
                    data = bytearray(template)
                    for _ in range(rng.randint(1, 8)):
                        data[rng.randrange(len(data))] = rng.randrange(256)
                    packet = bytes(data)
                elif kind == 1:  # drop or duplicate a line
                    mutated = list(lines)
                    index = rng.randrange(1, len(mutated))
                    if rng.random() < 0.5:
                        del mutated[index]
                    else:
                        mutated.insert(index, mutated[index])
                    packet = b"\r\n".join(mutated)
                else:  # truncate
                    packet = template[: rng.randrange(len(template))]
                packet = packet.replace(b"branch=z9hG4bK", b"branch=z9hG4bK%d" % n, 1)
                client.send(packet)
                if n % 20 == 19:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            options = client.in_dialog("OPTIONS", client.invite(recorder.uri(), []),
                                       _fake_ok(), 1)
            options.headers.set("To", f"<{recorder.uri()}>")
            while not client.inbox.empty():
                client.inbox.get_nowait()
            client.send(options)
            while True:
                response = await client.final_response()
                if response.cseq[1] == "OPTIONS":
                    break
            assert response.status == 200
        finally:
            await client.close()
            await recorder.stop()

    with caplog.at_level(logging.WARNING, logger="mediafork.srs"):
        run(scenario(), timeout=60)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:3]]


@pytest.mark.parametrize(
    "bad", [b"a=rtpmap:0 PCMU", b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!"])
def test_malformed_sdp_attribute_gets_a_final_error(run, tmp_path, bad):
    async def scenario() -> None:
        recorder, client = await _started(tmp_path)
        try:
            invite = client.invite(recorder.uri(), await client.add_legs(["1"], True))
            invite.body = invite.body.replace(b"a=rtpmap:0 PCMU/8000", bad, 1)
            client.send(invite)
            response = await client.final_response()
            assert response.status in (400, 488), response
            assert "Warning" in response.headers
        finally:
            await client.close()
            await recorder.stop()

    run(scenario())
