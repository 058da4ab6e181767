"""The floor forwarder of the benches (csrc/bench.c ``mf_bench_floor_forward``) really
forwards: every generated packet, once per fork, reaches the sinks, on both backends."""

from __future__ import annotations

import pytest

from .loadsetup import run_floor_load


@pytest.mark.parametrize("mode", ["mmsg", "io_uring"])
@pytest.mark.parametrize(("forks_per_track", "srtp"), [(1, False), (2, False), (1, True)])
def test_floor_forwards_every_packet(mode: str, forks_per_track: int, srtp: bool) -> None:
    try:
        r = run_floor_load(20, 1.0, mode, forks_per_track=forks_per_track, srtp=srtp)
    except OSError as exc:  # io_uring disabled by the kernel or a seccomp profile
        pytest.skip(f"{mode} cannot run here: {exc}")
    assert r.generated > 1500  # 40 streams at 50 pps for a second
    assert r.received == r.generated
    assert r.forwarded == r.generated * forks_per_track
    assert r.sink_received == r.forwarded
    # 172-byte PCMU packets; SRTP (AES_CM_128_HMAC_SHA1_80) appends a 10-byte tag
    assert r.sink_bytes == r.forwarded * (182 if srtp else 172)
    assert r.cpu_us_per_pkt > 0


def test_floor_rejects_mismatched_sockets() -> None:
    from mediafork.media import _fastpath

    with pytest.raises(ValueError):
        _fastpath.floor_forward("mmsg", [3, 4], [5, 6, 7], [("127.0.0.1", 9)] * 3, 200, 0.1)
    with pytest.raises(ValueError):
        _fastpath.floor_forward("epoll", [3], [5], [("127.0.0.1", 9)], 200, 0.1)


def test_closed_srtp_session_is_refused() -> None:
    from mediafork.engine import SrtpKey
    from mediafork.media import _fastpath
    from mediafork.media.srtp import outbound_session

    session = outbound_session(SrtpKey.generate())
    session.close()
    with pytest.raises(ValueError, match="closed"):
        _fastpath.bench_protect_spread([session], b"\x80" + bytes(171), 0, 1)
    with pytest.raises(ValueError, match="closed"):
        _fastpath.floor_forward("mmsg", [3], [5], [("127.0.0.1", 9)], 200, 0.1, [session])
