"""Account isolation on every route, and constant-time credential checks.

Routes are enumerated from the running daemon's aiohttp router, so a route added later is
covered without touching this file; a route with a path parameter this file does not know
how to fill fails the test (add it to ``_fill``).
"""

from __future__ import annotations

import ast
import inspect
import secrets
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mfstack import ACCOUNT_A, ACCOUNT_B, API, Stack, run, with_stack

import mediafork.api.app as app_module
import mediafork.api.control_socket as control_socket_module
import mediafork.daemon.service as service_module

# Unauthenticated operations routes: they take no account and carry no per-call data.
OPERATIONS = {"/healthz", "/readyz", "/metrics"}


def _fill(canonical: str, ids: dict[str, str]) -> str:
    path = canonical
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{canonical}: unknown path parameter; teach _fill about it"
    return path


async def _b_resources(stack: Stack) -> dict[str, str]:
    """Account B's call, Siprec and Recording: what A must not be able to reach."""
    view = await stack.register(ACCOUNT_B)
    call_sid = view["call_sid"]
    siprec = await stack.start_siprec(ACCOUNT_B, call_sid)
    status, rec, raw = await stack.request(
        "POST", f"{API}/Accounts/{ACCOUNT_B}/Calls/{call_sid}/Recordings.json", ACCOUNT_B,
        data={"RecordingChannels": "dual"})
    assert status == 201, raw
    return {"call": call_sid, "siprec": siprec, "recording": rec["sid"]}


def test_every_route_hides_other_accounts_resources(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        b = await _b_resources(stack)
        ghost = {"call": "CA" + secrets.token_hex(16), "siprec": "SR" + secrets.token_hex(16),
                 "recording": "RE" + secrets.token_hex(16)}
        routes = [(r.method, r.resource.canonical)  # type: ignore[union-attr]
                  for r in stack.daemon._runner.app.router.routes()]  # type: ignore[union-attr]
        assert len(routes) >= 19
        checked = 0
        for method, canonical in routes:
            if canonical in OPERATIONS:
                status, _, raw = await stack.request(method, canonical, None)
                assert status < 500 and b["call"].encode() not in raw, canonical
                continue
            if "{" not in canonical:
                continue  # /v1/Calls: list and register, checked below
            which = "recording" if "/Recordings" in canonical else "siprec"
            if canonical.endswith("/Recordings.json") and "{CallSid}" not in canonical:
                # The account-level list: B's path is a 404; A's is A's list, without B's.
                status, _, raw = await stack.request(
                    method, _fill(canonical, {"AccountSid": ACCOUNT_B}))
                assert status == 404, raw
                status, listing, raw = await stack.request(
                    method, _fill(canonical, {"AccountSid": ACCOUNT_A}))
                assert status == 200 and b["recording"].encode() not in raw
                assert b["call"].encode() not in raw
                checked += 1
                continue
            data = {"Status": "stopped", "Twiml": "<Response/>"} if method == "POST" else None
            answers = []
            # A's credentials against: B's path, A's path with B's ids, A's path with ids that
            # exist nowhere. All three must be the same 404 (nothing tells them apart).
            for account_in_path, ids in ((ACCOUNT_B, b), (ACCOUNT_A, b), (ACCOUNT_A, ghost)):
                path = _fill(canonical, {"AccountSid": account_in_path, "CallSid": ids["call"],
                                         "Sid": ids[which]})
                if method == "POST" and canonical.startswith("/v1/"):
                    status, body, raw = await stack.request(method, path, json={"from": "x"})
                else:
                    status, body, raw = await stack.request(method, path, data=data)
                answers.append((status, raw))
            assert answers[0][0] == 404, (method, canonical, answers[0])
            assert len(set(answers)) == 1, (method, canonical, answers)
            checked += 1
        assert checked >= 14

        # The list shows only A's calls; B's call is still live and untouched.
        status, listing, _ = await stack.request("GET", "/v1/Calls")
        assert status == 200 and b["call"] not in {c["call_sid"] for c in listing["calls"]}
        status, view, _ = await stack.request("GET", f"/v1/Calls/{b['call']}", ACCOUNT_B)
        assert status == 200 and view["status"] == "live"
        assert stack.receiver.events(b["siprec"]) == ["siprec-started"]
        # Registering under B's account id is refused without naming B.
        status, body, _ = await stack.request(
            "POST", "/v1/Calls", json={"call_sid": "CA" + secrets.token_hex(16),
                                       "account_sid": ACCOUNT_B})
        assert status == 400 and ACCOUNT_B not in body["message"]

        # The control socket applies the same rule to get/update/end.
        from test_daemon_blast import _control  # the blast test's socket client

        auth = {"id": 0, "op": "auth", "account_sid": ACCOUNT_A,
                "auth_token": stack.secrets.token_a}
        replies = await _control(stack, [auth] + [
            {"id": i, "op": op, "call_sid": sid, "from": "x"}
            for i, (op, sid) in enumerate([(op, sid) for op in ("get", "update", "end")
                                           for sid in (b["call"], ghost["call"])], start=1)])
        errors = [r["error"] for r in replies[1:]]
        assert len(errors) == 6 and all(e["status"] == 404 for e in errors)
        assert len({str(e) for e in errors}) == 1
        status, view, _ = await stack.request("GET", f"/v1/Calls/{b['call']}", ACCOUNT_B)
        assert status == 200 and view["status"] == "live"

    run(with_stack(tmp_path, scenario), timeout=60)


def test_unknown_account_and_wrong_token_look_the_same(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        path = "/v1/Calls"
        answers = []
        for headers in (stack.auth(ACCOUNT_A, "wrong-token-of-some-length"),
                        stack.auth("AC" + "9" * 32, stack.secrets.token_a),
                        stack.auth(ACCOUNT_A, stack.secrets.token_b),
                        {"Authorization": "Basic !!!"}, {}):
            status, _, raw = await stack.request("GET", path, None, headers=headers)
            answers.append((status, raw))
        assert {s for s, _ in answers} == {401}
        assert len({raw for _, raw in answers}) == 1

    run(with_stack(tmp_path, scenario), timeout=30)


# -- constant time ------------------------------------------------------------------------------


def test_auth_path_uses_compare_digest_not_equality() -> None:
    """Code-level: the token comparison is hmac.compare_digest, and no ``==`` / ``!=`` / ``in``
    on the auth path touches a token (those short-circuit on the first differing byte)."""
    source = textwrap.dedent(inspect.getsource(service_module.ControlService.authenticate))
    assert "hmac.compare_digest(" in source
    for function in (service_module.ControlService.authenticate,
                     app_module._authenticated_account,
                     control_socket_module._Connection.dispatch):
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                assert not names & {"token", "expected", "auth_token"}, (
                    f"{function.__qualname__}: token compared with {ast.unparse(node)}")


def test_compare_digest_runs_for_known_and_unknown_accounts(monkeypatch: Any) -> None:
    """Behavioural: every check, whatever the account, does one full-length constant-time
    comparison (an unknown account compares against a dummy token: same work)."""
    calls: list[tuple[bytes, bytes]] = []
    real = service_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service_module.hmac, "compare_digest", spy)

    class _Config:
        def auth_token_for(self, sid: str) -> str | None:
            return "right-token-0123456789" if sid == ACCOUNT_A else None

    service = object.__new__(service_module.ControlService)
    service.config = _Config()  # type: ignore[assignment]
    service._dummy_token = "d" * 32  # type: ignore[attr-defined]
    if not hasattr(service_module.ControlService, "authenticate"):
        pytest.skip("no authenticate")
    assert service.authenticate(ACCOUNT_A, "right-token-0123456789") is True
    assert service.authenticate(ACCOUNT_A, "wrong-token-0123456789") is False
    assert service.authenticate("AC" + "9" * 32, "right-token-0123456789") is False
    assert service.authenticate(ACCOUNT_A, "") is False
    assert len(calls) == 4
