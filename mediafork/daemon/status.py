"""`mediafork status`: what a running daemon is doing, from its HTTP API.

One snapshot (:func:`collect`) is read from ``/metrics``, ``/readyz`` and the host call API;
it is printed as text (:func:`render`), as JSON (``--json``), or refreshed in place every few
seconds (``--watch``). Credentials come from ``--account``/``--token``, else
``MEDIAFORK_ACCOUNT_SID``/``MEDIAFORK_AUTH_TOKEN``, else the data folder's ``auth_token``
file, so the token need not appear on a command line (where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

SUMMARY = [
    ("mediafork_calls", "live calls"),
    ("mediafork_packets_received_total", "packets received"),
    ("mediafork_packets_forwarded_total", "packets forwarded"),
    ("mediafork_packets_sent_total", "packets sent"),
    ("mediafork_dtmf_filtered_total", "DTMF filtered"),
    ("mediafork_worker_cpu_seconds_total", "worker CPU seconds"),  # all workers
]


class StatusError(Exception):
    """The daemon could not be read; the message says why (never with the token)."""


def credentials(args: argparse.Namespace, environ: dict[str, str] | None = None
                ) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    account = args.account or env.get("MEDIAFORK_ACCOUNT_SID")
    token = args.token or env.get("MEDIAFORK_AUTH_TOKEN")
    if account and token:
        return account, token
    token_file = Path(args.data) / "auth_token"
    try:
        sid, _, stored = token_file.read_text().strip().partition(":")
    except OSError:
        raise SystemExit(
            "mediafork status: no credentials: set MEDIAFORK_ACCOUNT_SID and "
            f"MEDIAFORK_AUTH_TOKEN, or give --data with an auth_token file (no {token_file})"
        ) from None
    return account or sid, token or stored


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def collect(base: str, auth: tuple[str, str]) -> dict[str, Any]:
    """One snapshot: engine totals, drops, forks, workers, readiness and the account's calls."""
    try:
        code, metrics = _get(f"{base}/metrics")
        if code != 200:
            raise StatusError(f"{base} answered {code}")
        ready_code, ready = _get(f"{base}/readyz")
        code, calls_body = _get(f"{base}/v1/Calls", auth)
        if code != 200:
            raise StatusError(f"{base} answered {code}")
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    totals: dict[str, float] = {}
    forks_by_state: dict[str, float] = {}
    dropped: dict[str, float] = {}
    worker_calls: dict[str, float] = {}
    callbacks: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.decode()):
        for sample in family.samples:
            if sample.name == "mediafork_callback_deliveries_total":
                callbacks[sample.labels.get("outcome", "?")] = sample.value
            elif sample.name == "mediafork_forks":
                forks_by_state[sample.labels.get("state", "")] = sample.value
            elif sample.name == "mediafork_packets_dropped_total" and sample.value:
                dropped[sample.labels.get("reason", "?")] = sample.value
            elif sample.name == "mediafork_worker_calls":
                worker_calls[sample.labels.get("worker", "0")] = sample.value
            elif sample.name == "mediafork_worker_cpu_seconds_total":
                # one sample per media worker: the summary shows them together
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            elif not sample.labels:
                totals[sample.name] = sample.value
    try:
        readiness = json.loads(ready)
    except ValueError:
        readiness = {"status": f"HTTP {ready_code}"}
    calls = json.loads(calls_body)
    return {
        "url": base,
        "account_sid": auth[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "readiness": readiness,
        "totals": {name.removeprefix("mediafork_"): totals[name]
                   for name, _ in SUMMARY if name in totals},
        "packets_dropped": dropped,
        "forks": forks_by_state,
        "worker_calls": dict(sorted(worker_calls.items(), key=lambda kv: int(kv[0]))),
        "callbacks": {"outstanding": totals.get("mediafork_callbacks_outstanding", 0.0),
                      "delivered": callbacks.get("delivered", 0.0),
                      "given_up": callbacks.get("failed", 0.0) + callbacks.get("dropped", 0.0)},
        "calls": calls.get("calls", calls if isinstance(calls, list) else []),
    }


def render(snapshot: dict[str, Any]) -> str:
    lines = [f"mediafork at {snapshot['url']}  ({snapshot['time']})"]
    readiness = snapshot["readiness"]
    lines.append(f"  {'readiness':20} {readiness.get('status', '?')}"
                 + "".join(f"\n    ! {p}" for p in readiness.get("problems", [])))
    totals = snapshot["totals"]
    for name, label in SUMMARY:
        key = name.removeprefix("mediafork_")
        if key in totals:
            # Seconds are small numbers: whole units would print 0 for a busy minute.
            fmt = ",.2f" if name.endswith("_seconds_total") else ",.0f"
            lines.append(f"  {label:20} {totals[key]:{fmt}}")
    dropped = snapshot["packets_dropped"]
    lines.append(f"  {'packets dropped':20} {sum(dropped.values()):,.0f}"
                 + "".join(f", {k} {v:,.0f}" for k, v in sorted(dropped.items())))
    lines.append("  forks                " + ", ".join(
        f"{k} {v:,.0f}" for k, v in sorted(snapshot["forks"].items())))
    cb = snapshot["callbacks"]
    lines.append(f"  {'status callbacks':20} delivered {cb['delivered']:,.0f}, outstanding "
                 f"{cb['outstanding']:,.0f}, given up {cb['given_up']:,.0f}"
                 + ("  (see `mediafork callbacks`)" if cb["given_up"] else ""))
    workers = snapshot["worker_calls"]
    if workers:  # the balance of calls over the media workers
        lines.append(f"  {'media workers':20} {len(workers)} (calls "
                     + " / ".join(f"{n:,.0f}" for n in workers.values()) + ")")
    items = snapshot["calls"]
    lines.append(f"\nlive calls of {snapshot['account_sid']}: {len(items)}")
    for call in items:
        lines.append(f"  {call.get('call_sid')}  {call.get('from', '')} -> {call.get('to', '')}")
        # The host API's fork view has no Siprec SID (a fork belongs to the engine, not to
        # a resource): list the call's Siprecs, then its forks by track and destination.
        for siprec in call.get("siprecs", []):
            lines.append(f"    siprec {siprec.get('sid', '?')} {siprec.get('name', '')} "
                         f"{siprec.get('status', '?')} via {siprec.get('connector_name', '?')} "
                         f"({siprec.get('track', '?')})")
        for fork in call.get("forks", []):
            c = fork.get("counters", {})
            dest = fork.get("destination") or {}
            where = f"{dest['address']}:{dest['port']}" if "address" in dest else "-"
            lines.append(
                f"    fork {fork.get('track', '?'):9} to {where} "
                f"{'srtp ' if fork.get('secure') else ''}"
                f"{'paused ' if fork.get('paused') else ''}"
                f"sent {c.get('sent', 0)} dropped {c.get('dropped_full', 0)} "
                f"rr-loss {c.get('rr_cumulative_lost', 0)}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    base = (args.url or os.environ.get("MEDIAFORK_URL") or "http://127.0.0.1:8080").rstrip("/")
    if args.watch is not None and args.watch < 0.2:
        raise SystemExit("mediafork status: --watch takes at least 0.2 seconds")
    auth = credentials(args)
    refreshes = 0
    interactive = out.isatty()
    try:
        while True:
            try:
                snapshot = collect(base, auth)
            except StatusError as exc:
                print(f"mediafork status: {exc}", file=sys.stderr)
                if args.watch is None:
                    return 1
                snapshot = None
            if snapshot is not None:
                text = json.dumps(snapshot) + "\n" if args.json else render(snapshot)
                if args.watch is not None and interactive and not args.json:
                    text = "\x1b[H\x1b[2J" + text  # redraw in place on a terminal
                out.write(text)
                out.flush()
            refreshes += 1
            if args.watch is None or (args.count and refreshes >= args.count):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
