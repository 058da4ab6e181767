"""`mediafork status`: what a running daemon is doing, from its HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SUMMARY = [
    ("mediafork_calls", "live calls"),
    ("mediafork_packets_received_total", "packets received"),
    ("mediafork_packets_forwarded_total", "packets forwarded"),
    ("mediafork_packets_sent_total", "packets sent"),
    ("mediafork_dtmf_filtered_total", "DTMF filtered"),
    ("mediafork_worker_cpu_seconds_total", "worker CPU seconds"),  # all workers
]


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.account and args.token:
        return args.account, args.token
    token_file = Path(args.data) / "auth_token"
    try:
        sid, _, token = token_file.read_text().strip().partition(":")
    except OSError:
        raise SystemExit(
            f"mediafork status: give --account and --token (no {token_file})"
        ) from None
    return args.account or sid, args.token or token


def _get(url: str, auth: tuple[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def main(args: argparse.Namespace, out=sys.stdout) -> int:
    base = args.url.rstrip("/")
    auth = _credentials(args)
    try:
        metrics = _get(f"{base}/metrics").decode()
        calls = json.loads(_get(f"{base}/v1/Calls", auth))
    except urllib.error.HTTPError as exc:
        print(f"mediafork status: {base} answered {exc.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"mediafork status: cannot reach {base}: {getattr(exc, 'reason', exc)}",
              file=sys.stderr)
        return 1
    values: dict[str, float] = {}
    forks_by_state: dict[str, float] = {}
    dropped: dict[str, float] = {}
    worker_calls: dict[int, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "mediafork_forks":
                forks_by_state[sample.labels.get("state", "")] = sample.value
            elif sample.name == "mediafork_packets_dropped_total" and sample.value:
                dropped[sample.labels.get("reason", "?")] = sample.value
            elif sample.name == "mediafork_worker_calls":
                worker_calls[int(sample.labels.get("worker", "0"))] = sample.value
            elif sample.name == "mediafork_worker_cpu_seconds_total":
                # one sample per media worker: the summary shows them together
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
            elif not sample.labels:
                values[sample.name] = sample.value
    print(f"mediafork at {base}", file=out)
    for name, label in SUMMARY:
        if name in values:
            # Seconds are small numbers: whole units would print 0 for a busy minute.
            fmt = ",.2f" if name.endswith("_seconds_total") else ",.0f"
            print(f"  {label:20} {values[name]:{fmt}}", file=out)
    print(f"  {'packets dropped':20} {sum(dropped.values()):,.0f}"
          + "".join(f", {k} {v:,.0f}" for k, v in sorted(dropped.items())), file=out)
    print("  forks                " + ", ".join(f"{k} {v:,.0f}" for k, v in
                                                 sorted(forks_by_state.items())), file=out)
    if worker_calls:  # the balance of calls over the media workers
        print(f"  {'media workers':20} {len(worker_calls)} (calls "
              + " / ".join(f"{worker_calls[w]:,.0f}" for w in sorted(worker_calls)) + ")",
              file=out)
    items = calls.get("calls", calls if isinstance(calls, list) else [])
    print(f"\nlive calls of {auth[0]}: {len(items)}", file=out)
    for call in items:
        print(f"  {call.get('call_sid')}  {call.get('from', '')} -> {call.get('to', '')}",
              file=out)
        # The host API's fork view has no Siprec SID (a fork belongs to the engine, not to
        # a resource): list the call's Siprecs, then its forks by track and destination.
        for siprec in call.get("siprecs", []):
            print(f"    siprec {siprec.get('sid', '?')} {siprec.get('name', '')} "
                  f"{siprec.get('status', '?')} via {siprec.get('connector_name', '?')} "
                  f"({siprec.get('track', '?')})", file=out)
        for fork in call.get("forks", []):
            c = fork.get("counters", {})
            dest = fork.get("destination") or {}
            where = f"{dest['address']}:{dest['port']}" if "address" in dest else "-"
            print(f"    fork {fork.get('track', '?'):9} to {where} "
                  f"{'srtp ' if fork.get('secure') else ''}{'paused ' if fork.get('paused') else ''}"
                  f"sent {c.get('sent', 0)} dropped {c.get('dropped_full', 0)} "
                  f"rr-loss {c.get('rr_cumulative_lost', 0)}", file=out)
    return 0
