"""Random and mutated bytes to every port the daemon listens on never crash or wedge it.

One real daemon (tests/badinput/mfstack.py): a live call with a Siprec to the reference
recorder is up while SIP UDP and TCP, both media ingress ports, the forks' egress (RTCP)
sockets, the HTTP API and the control socket are blasted with a fixed-seed mix of random
bytes, mutated real messages and hostile but well-formed requests. Afterwards: no response
was a 5xx, no unhandled error was logged, the media counters show the rejects, the live call
still forwards, and a fresh call works end to end (register, Siprec, siprec-started,
stop, end). The daemon's SIP side has no TLS listener (the SRC only connects out over TLS),
so TLS is exercised from the client side in tests/security.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
from mfstack import ACCOUNT_A, API, Stack, metric, run, with_stack

from fuzz.strategies import INTERESTING, _mutate
from fuzz.targets import CONFIG_SEED, TWIML_SEED, sip_seeds
from mediafork.api.control_socket import MAX_FRAME, encode_frame

SEED = 4475


def _mutations(rng: random.Random, seeds: list[bytes], n: int, max_size: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(rng.randbytes(rng.randrange(0, 1500)))
            continue
        ops = [(rng.randrange(6), rng.randrange(1 << 16), rng.randbytes(rng.randrange(12)))
               for _ in range(rng.randrange(1, 6))]
        out.append(_mutate(rng.choice(seeds), ops)[:max_size])
    return out


async def _udp_blast(address: tuple[str, int], datagrams: list[bytes]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for i, data in enumerate(datagrams):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.sendto(data, address)
            if i % 50 == 49:
                await asyncio.sleep(0.005)  # let the receiver keep up; this is not a load test
    finally:
        sock.close()


async def _exchange(host: str, port: int, data: bytes, *, timeout: float = 5.0,
                    read_limit: int = 65536) -> bytes:
    """Send raw bytes on a new TCP connection; return whatever comes back before EOF."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        answer = b""
        # No answer at all is fine for SIP over TCP (garbage is dropped); HTTP always answers.
        with contextlib.suppress(ConnectionError, TimeoutError):
            answer = await asyncio.wait_for(reader.read(read_limit), timeout)
        return answer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


# -- SIP ------------------------------------------------------------------------------------


async def _blast_sip(stack: Stack, rng: random.Random) -> None:
    seeds = sip_seeds()
    await _udp_blast(("127.0.0.1", stack.sip_port), _mutations(rng, seeds, 400, 65000))
    # Well-formed requests for dialogs that do not exist must not disturb anything either.
    stray = [s.replace(b"Call-ID: ", b"Call-ID: stray-") for s in seeds]
    await _udp_blast(("127.0.0.1", stack.sip_port), stray)
    # TCP: mutated streams, then the size limits, which must close the connection early.
    for data in _mutations(rng, seeds, 12, 65000):
        await _exchange("127.0.0.1", stack.sip_port, data, timeout=0.3)
    endless_head = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n" + b"X-Pad: " + b"a" * 70000
    huge_body = (b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1"
                 b"\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: big\r\n"
                 b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 10000000\r\n\r\n")
    for data in (endless_head, huge_body):
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.sip_port)
        writer.write(data)
        # Closed by the daemon as soon as the limit is known, without the rest arriving.
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()


# -- media ----------------------------------------------------------------------------------


def _rtp_seeds() -> list[bytes]:
    rtp = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + b"\xff" * 160
    ext = struct.pack("!BBHII", 0x90 | 0x20 | 1, 0x80, 2, 160, 0x1234) + b"\0\0\0\1"
    ext += struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\0\0" + b"pay" + b"\x02\x02"
    rr = struct.pack("!BBHI", 0x81, 201, 7, 99) + struct.pack("!IB", 0x1000, 5) + b"\0\0\1"
    rr += struct.pack("!IIII", 10, 20, 0, 0)
    return [rtp, ext, rr]


def _address(value: dict[str, Any]) -> tuple[str, int]:
    return value["address"], value["port"]


async def _blast_media(stack: Stack, rng: random.Random, view: dict[str, Any]) -> None:
    datagrams = _mutations(rng, _rtp_seeds(), 300, 1500)
    for ingress in view["ingress"].values():
        await _udp_blast(_address(ingress), datagrams)
    for fork in view["forks"]:
        if fork["local_address"]:
            await _udp_blast(_address(fork["local_address"]), datagrams)


# -- HTTP -----------------------------------------------------------------------------------


def _raw_requests(limit: int) -> list[bytes]:
    call = f"{API}/Accounts/{ACCOUNT_A}/Calls/CA{'0' * 32}/Siprec.json".encode()
    return [
        b"GARBAGE\r\n\r\n",
        b"\x00\xff" * 300 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(500)) + b"\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST " + call + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!!\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + b"A" * 4000
        + b"\r\nContent-Length: 0\r\n\r\n",
        b"GET /v1/Calls/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/Calls/%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limit * 4),
    ]


def _json_bodies(rng: random.Random) -> list[bytes]:
    values: list[Any] = [None, True, 0, -1, 1 << 70, 1.5, float("inf"), "", "x" * 300, [], {},
                         [1, "a"], {"name": 1}, "CA" + "0" * 32, "1.2.3.4", "::1"]
    keys = ["call_sid", "account_sid", "from", "to", "codec", "dtmf_payload_type", "sources",
            "name", "payload_type", "clock_rate", "inbound", "outbound"]
    bodies = [b"{", b"[]", b"null", b'"x"', b"1e999999", b"\xff\xfe", b'{"a":1}' * 2,
              b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
              b'{"call_sid": "\\ud800"}', b'{"codec": {"clock_rate": 1e400}}']
    for _ in range(80):
        def value(depth: int = 0) -> Any:
            if depth < 2 and rng.random() < 0.3:
                return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}
            return rng.choice(values)
        body = {rng.choice(keys): value() for _ in range(rng.randrange(1, 7))}
        if rng.random() < 0.5:
            body["call_sid"] = "CA" + rng.randbytes(16).hex()
        bodies.append(json.dumps(body).encode())
    return bodies


async def _blast_http(stack: Stack, rng: random.Random, call_sid: str) -> list[int]:
    host, port = stack.base.removeprefix("http://").split(":")
    limit = stack.daemon.config.api.max_request_bytes
    statuses: list[int] = []
    for data in _raw_requests(limit):
        answer = await _exchange(host, int(port), data, timeout=5.0)
        status = _status(answer)
        if status is not None:
            statuses.append(status)
    siprec = f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}/Siprec.json"
    forms: list[tuple[dict[str, str], bytes]] = [
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"Name=%zz%&Track=%"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"Name=\xff\xfe&Track=\xc3"),
        ({"Content-Type": "application/x-www-form-urlencoded; charset=bogus-42"}, b"Name=a"),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n\r\n"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nbroken\r\n--x--"),
        ({"Content-Type": "multipart/form-data; boundary=x"},
         b'--x\r\nContent-Disposition: form-data; name="Name"; filename="a"\r\n\r\n'
         + b"v" * 100 + b"\r\n--x--\r\n"),
        ({"Content-Type": "application/json"}, b'{"Name": "a"}'),
        ({"Content-Type": "application/x-www-form-urlencoded"},
         b"&".join(b"P%d=%d" % (i, i) for i in range(3000))[:limit - 10]),
        ({"Content-Type": "application/x-www-form-urlencoded"},
         b"&".join(b"Parameter%d.Name=n%d&Parameter%d.Value=v" % (i, i, i) for i in range(1, 101))),
    ]
    for headers, body in forms:
        status, _, _ = await stack.request("POST", siprec, data=body, headers=headers)
        statuses.append(status)
    for body in _json_bodies(rng):
        status, view, _ = await stack.request("POST", "/v1/Calls", data=body,
                                              headers={"Content-Type": "application/json"})
        statuses.append(status)
        assert status in (201, 400, 409, 413), (status, body[:200])
        if status == 201:  # a random body can be valid: end it, the port range is small
            await stack.request("DELETE", f"/v1/Calls/{view['call_sid']}")
    twiml = f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}.json"
    for document in (TWIML_SEED, "<Response>" + " " * 4000 + "</Response>",
                     "<!DOCTYPE x [<!ENTITY a 'b'>]><Response>&a;</Response>", "<Response"):
        status, _, _ = await stack.request("POST", twiml, data={"Twiml": document})
        statuses.append(status)
    return statuses


# -- control socket ----------------------------------------------------------------------------


async def _control(stack: Stack, messages: list[Any], raw: bytes = b"") -> list[Any]:
    path = stack.daemon.config.control_socket
    assert path is not None
    reader, writer = await asyncio.open_unix_connection(str(path))
    replies: list[Any] = []
    try:
        writer.write(raw + b"".join(encode_frame(m) for m in messages))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        expected = len(messages) + (1 if raw else 0)
        while len(replies) < expected:
            header = await asyncio.wait_for(reader.read(4), 5.0)
            if len(header) < 4:
                break
            body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 5.0)
            unpacker.feed(body)
            replies.extend(unpacker)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return replies


async def _blast_control(stack: Stack, rng: random.Random) -> list[Any]:
    replies: list[Any] = []
    for _ in range(20):  # random bytes: a malformed-frame reply, then the connection closes
        replies += await _control(stack, [], raw=rng.randbytes(rng.randrange(1, 300)))
    # A header announcing more than the limit is refused from the header alone.
    replies += await _control(stack, [], raw=(MAX_FRAME + 1).to_bytes(4, "big"))
    auth = {"id": 0, "op": "auth", "account_sid": ACCOUNT_A, "auth_token": stack.secrets.token_a}
    values: list[Any] = [None, 1, -1, "x", b"\x00", [], {}, [1], {"a": 1}, 1.5, "CA" + "0" * 32,
                         {"call_sid": 5}, {"call_sid": "CA" + "1" * 32, "from": []}]
    ops = ["auth", "register", "get", "list", "update", "end", "subscribe", "bogus", None, 7]
    messages: list[Any] = [auth]
    for i in range(1, 150):
        message = {"id": i, "op": rng.choice(ops)}
        for key in rng.sample(["call", "call_sid", "from", "to", "account_sid", "auth_token"],
                              rng.randrange(4)):
            message[key] = rng.choice(values)
        messages.append(message if i % 10 else rng.choice(values))
    replies += await _control(stack, messages)
    return replies


# -- the test ---------------------------------------------------------------------------------


def test_random_bytes_to_every_port_never_crash_or_wedge(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        rng = random.Random(SEED)
        view = await stack.register()
        call_sid = view["call_sid"]
        await stack.start_siprec(ACCOUNT_A, call_sid)
        _, view, _ = await stack.request("GET", f"/v1/Calls/{call_sid}")
        assert len(view["forks"]) == 2 and all(f["local_address"] for f in view["forks"])
        before = await stack.metrics()

        await _blast_sip(stack, rng)
        await _blast_media(stack, rng, view)
        statuses = await _blast_http(stack, rng, call_sid)
        control_replies = await _blast_control(stack, rng)

        # Nothing was a server error: every reject is the client's 4xx.
        bad = [(i, s) for i, s in enumerate(statuses) if not (400 <= s < 500 or s in (200, 201))]
        assert statuses and not bad, bad
        assert 413 in statuses
        internal = [r for r in control_replies
                    if isinstance(r, dict) and r.get("error", {}).get("code") == 20500]
        assert not internal, internal
        assert any(isinstance(r, dict) and r.get("error", {}).get("code") == 900015
                   for r in control_replies), "malformed frames are answered before closing"

        # The counters show the rejects: media (engine) and SIP (transport).
        after = await stack.metrics()
        dropped = metric(after, "mediafork_packets_dropped_total", reason="malformed")
        assert dropped > metric(before, "mediafork_packets_dropped_total", reason="malformed")
        _, blasted, _ = await stack.request("GET", f"/v1/Calls/{call_sid}")
        assert sum(c["malformed"] for c in blasted["counters"].values()) >= 100  # ingress
        # The forks' sockets are connect()ed to the recorder: the kernel drops datagrams from
        # anyone else, so the blast from a stranger never reaches the RTCP parser (garbage
        # from the recorder's own address: test_fork_rtcp_garbage_from_the_recorder below).
        assert sum(f["counters"]["rtcp_bad"] for f in blasted["forks"]) == 0
        sip_rejects = metric(after, "mediafork_sip_malformed_total")
        assert sip_rejects - metric(before, "mediafork_sip_malformed_total") >= 300

        # Still serving: health, the live call, and a fresh call end to end.
        status, health, _ = await stack.request("GET", "/healthz", None)
        assert status == 200 and health == {"status": "ok"}
        status, live, _ = await stack.request("GET", f"/v1/Calls/{call_sid}")
        assert status == 200 and live["status"] == "live"
        await stack.fresh_call_works(ACCOUNT_A, "Default")
        await stack.fresh_call_works(ACCOUNT_A, "Secure")
        status, _, _ = await stack.request("DELETE", f"/v1/Calls/{call_sid}")
        assert status == 204

        # aiohttp's own HTTP parser logs each unparsable request ("Error handling request",
        # logger aiohttp.server) with a traceback: the library's behaviour, not a daemon error.
        problems = [line for record, line in zip(stack.logs.records, stack.logs.lines,
                                                  strict=True)
                    if (record.levelno >= logging.ERROR and record.name != "aiohttp.server")
                    or "never retrieved" in line
                    or (record.name.startswith("mediafork") and "Traceback" in line)]
        assert not problems, "\n".join(problems[:5])

    run(with_stack(tmp_path, scenario), timeout=100)


def test_fork_rtcp_garbage_from_the_recorder() -> None:
    """Garbage RTCP from the recorder's own address (the one source a fork's connected
    socket accepts) is counted as rtcp_bad, and the fork keeps forwarding."""
    from mediafork.engine import Engine, Track

    rng = random.Random(SEED)
    recorder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recorder.bind(("127.0.0.1", 0))
    recorder.settimeout(2)
    with Engine(media_address="127.0.0.1", port_range=(39000, 39999)) as engine:
        call = engine.add_call("CA" + "5" * 32)
        fork = call.add_fork(Track.INBOUND, destination=recorder.getsockname())
        assert fork.local_address is not None
        datagrams = _mutations(rng, _rtp_seeds()[2:], 200, 1500)
        for data in datagrams:
            recorder.sendto(data, fork.local_address)
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp = _rtp_seeds()[0]
        for _ in range(50):
            # Media first: all the garbage may be counted before the first packet, and the
            # point is that forwarding still works while (or after) it is handled.
            media.sendto(rtp, call.ingress[Track.INBOUND])
            recorder.recv(2048)
            if fork.counters()["rtcp_bad"] >= 50:
                break
        # The worker counts a send once the kernel took it, which can be just after the
        # recorder already has the datagram.
        deadline = time.monotonic() + 2
        while fork.counters()["sent"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        counters = fork.counters()
        media.close()
    recorder.close()
    # Datagrams that do not look like RTCP at all are ignored uncounted (a recorder sends no
    # media); of the rest, some mutations are still valid reports (rtcp_received).
    assert counters["rtcp_bad"] >= 50, counters
    assert counters["sent"] >= 1


def test_fuzz_seeds_module_is_consistent() -> None:
    """The blast reuses the fuzz seeds and tokens; keep them importable and non-empty."""
    assert INTERESTING and CONFIG_SEED and len(sip_seeds()) > 30
