"""`mediafork callbacks`: the account's status callbacks that were given up (or are still
pending), and sending them again, through the host API (``GET /v1/Callbacks``,
``POST /v1/Callbacks/Redeliver``). Credentials and URL as for ``mediafork status``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from typing import TextIO

from .status import credentials


def _request(method: str, url: str, auth: tuple[str, str], body: object = None
             ) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    base = (args.url or os.environ.get("MEDIAFORK_URL") or "http://127.0.0.1:8080").rstrip("/")
    auth = credentials(args)
    try:
        if args.redeliver is not None:
            body = {"ids": args.redeliver} if args.redeliver else {}
            status, answer = _request("POST", f"{base}/v1/Callbacks/Redeliver", auth, body)
        else:
            query = urllib.parse.urlencode({"State": args.state, "PageSize": args.limit})
            status, answer = _request("GET", f"{base}/v1/Callbacks?{query}", auth)
    except (urllib.error.URLError, OSError) as exc:
        print(f"mediafork callbacks: cannot reach {base}: {getattr(exc, 'reason', exc)}",
              file=sys.stderr)
        return 1
    if status != 200:
        print(f"mediafork callbacks: {base} answered {status}: {answer.get('message', '')}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer), file=out)
    elif args.redeliver is not None:
        print(f"redelivering {answer['redelivered']} status callbacks", file=out)
    else:
        counts = answer["counts"]
        print("callbacks of " + auth[0] + ": " + ", ".join(f"{k} {v}" for k, v in counts.items()),
              file=out)
        for item in answer["callbacks"]:
            print(f"  {item['id']:>8}  {item['delivery_state']:9} {item['event']:16} "
                  f"{item['resource_sid']}  {item['date_created']}  {item['url']}", file=out)
    return 0
