"""The admin socket's client: one JSON request to the node running in a home (None when it does not run)."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from node.core.errors import FednodeError
from node.core.home import Home


def socket_path(home: Home) -> str:
    p = home.config.admin_socket
    return p if os.path.isabs(p) else str(home.dir / p)


# A node that stops or restarts answers every request it has accepted (node/runtime/admin.py drains them
# before its services stop), so a connection closed without an answer was never taken: the request is
# sent again once the node answers again, or falls back to the stopped node's way (None) once it is gone.
DROPPED_WAIT_S = 20.0


class NodeDropped(FednodeError):
    """The node closed the admin connection without an answer, and kept doing so."""

    code = "admin_dropped"


def _once(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        return None
    with s:
        s.sendall(json.dumps(request, ensure_ascii=False).encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    if not data.endswith(b"\n"):  # every answer is one whole line: anything else was cut off
        raise ConnectionResetError(f"the node closed the connection after {len(data)} bytes of its answer")
    resp: dict[str, Any] = json.loads(data)
    return resp


def call(home: Home, request: dict[str, Any], timeout: float = 600.0) -> dict[str, Any] | None:
    """Send one request to the running node. None when the node is not running."""
    path = socket_path(home)
    deadline = time.monotonic() + DROPPED_WAIT_S
    while True:
        if not os.path.exists(path):
            return None
        try:
            resp = _once(path, request, timeout)
            break
        except (ConnectionResetError, BrokenPipeError) as e:  # stopping or restarting: try again
            if time.monotonic() > deadline:
                raise NodeDropped(f"the node at {path} kept closing the admin connection without an answer ({e})",
                                  fix="see its log (journalctl -u fednode); run the command again once "
                                      "`fednode status DIR` answers") from None
            time.sleep(0.2)
    if resp is None:
        return None
    if not resp.get("ok"):
        err = FednodeError(resp.get("error", "admin request failed"), fix=resp.get("fix", ""))
        err.code = resp.get("code", "error")
        err.exit_status = int(resp.get("exit_status", 1))
        raise err
    return resp
