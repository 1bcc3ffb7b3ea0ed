"""The admin socket's client: one JSON request to the node running in a home (None when it does not run)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from node.core.errors import FednodeError
from node.core.home import Home


def socket_path(home: Home) -> str:
    p = home.config.admin_socket
    return p if os.path.isabs(p) else str(home.dir / p)


def call(home: Home, request: dict[str, Any], timeout: float = 600.0) -> dict[str, Any] | None:
    """Send one request to the running node. None when the node is not running."""
    path = socket_path(home)
    if not os.path.exists(path):
        return None
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
    resp: dict[str, Any] = json.loads(b"".join(chunks))
    if not resp.get("ok"):
        err = FednodeError(resp.get("error", "admin request failed"), fix=resp.get("fix", ""))
        err.code = resp.get("code", "error")
        err.exit_status = int(resp.get("exit_status", 1))
        raise err
    return resp
