"""The admin API: JSON lines over a Unix socket in the node home (mode 0600: file permissions are the
access control). The CLI uses it while the node runs, so only the node itself writes its store."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from node.errors import FednodeError
from node.home import Home

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)
MAX_REQUEST = 256 * 1024 * 1024

Op = Callable[["NodeRuntime", dict[str, Any]], Awaitable[Any]]
OPS: dict[str, Op] = {}


def op(name: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        OPS[name] = fn
        return fn

    return register


def socket_path(home: Home) -> str:
    p = home.config.admin_socket
    return p if os.path.isabs(p) else str(home.dir / p)


@op("status")
async def _status(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    return await rt.status()


@op("ingest")
async def _ingest(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    from node import ingest

    await rt.wait_recovered()
    result = await rt.db(ingest.run_request, rt.ledger, req, rt.notify_threadsafe)
    rt.notify()
    return result


@op("probe")
async def _probe(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    """Append one `link.probe` control record (latency measurements, smoke tests of a deployment)."""
    from node.ledger import NewRecord
    from node.records import CONTROL, now_us

    payload = {"note": str(req.get("note", ""))[:200], "at_us": now_us()}
    res = await rt.db(rt.ledger.append, [NewRecord("link.probe", payload)])
    rt.notify()
    return {"channel": "control", "seq": res[CONTROL].head.seq}


async def _handle(rt: NodeRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        req = json.loads(line)
        fn = OPS.get(req.get("op", ""))
        if fn is None:
            resp: dict[str, Any] = {"ok": False, "code": "usage", "error": f"unknown admin op {req.get('op')!r}"}
        else:
            resp = {"ok": True, "result": await fn(rt, req)}
    except FednodeError as e:
        resp = {"ok": False, **e.as_dict(), "exit_status": e.exit_status}
    except Exception as e:  # the node must survive a bad admin request
        log.exception("admin_request_failed")
        resp = {"ok": False, "code": "internal", "error": f"{type(e).__name__}: {e}"}
    writer.write(json.dumps(resp, ensure_ascii=False, default=str).encode() + b"\n")
    await writer.drain()
    writer.close()


async def serve(rt: NodeRuntime) -> asyncio.AbstractServer:
    from node.commands import load_all

    load_all()  # feature modules register their admin ops on import
    path = socket_path(rt.home)
    if os.path.exists(path):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _handle(rt, r, w), path=path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


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
