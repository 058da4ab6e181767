"""`mediafork reload`: make a running daemon re-read its config file.

Through the control socket (``--control-socket PATH``, credentials as for ``mediafork
status``) it waits for the outcome and prints it; with ``--pid PID`` it sends SIGHUP, as
``systemctl reload`` does, and the outcome is in the daemon's log and
``mediafork_config_reloads_total``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
from typing import Any, TextIO

import msgpack

from .status import credentials

_HEADER = struct.Struct("!I")


def _call(sock: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
    body = msgpack.packb(message)
    sock.sendall(_HEADER.pack(len(body)) + body)
    header = _read(sock, _HEADER.size)
    return msgpack.unpackb(_read(sock, _HEADER.unpack(header)[0]))


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the daemon closed the control socket")
        data += chunk
    return data


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as exc:
            print(f"mediafork reload: cannot signal {args.pid}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to {args.pid}; the outcome is in its log", file=out)
        return 0
    account, token = credentials(args)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(args.control_socket)
            auth = _call(sock, {"id": 1, "op": "auth", "account_sid": account,
                                "auth_token": token})
            if not auth.get("ok"):
                print("mediafork reload: the control socket refused the credentials",
                      file=sys.stderr)
                return 1
            answer = _call(sock, {"id": 2, "op": "reload"})
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"mediafork reload: {args.control_socket}: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"mediafork reload: {answer['error']['message']}", file=sys.stderr)
        return 1
    result = answer["result"]
    restart = ", ".join(result["restart_required"])
    print(f"reloaded: {result['added']} added, {result['changed']} changed, "
          f"{result['removed']} removed" + (f"; needs a restart: {restart}" if restart else ""),
          file=out)
    return 0
