"""The admin API: JSON lines over a Unix socket in the node home (mode 0600: file permissions are the
access control). The CLI uses it while the node runs, so only the node itself writes its store.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from node.core.admin_client import socket_path
from node.core.errors import FednodeError

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)
MAX_REQUEST = 256 * 1024 * 1024

Op = Callable[["NodeRuntime", dict[str, Any]], Awaitable[Any]]
OPS: dict[str, Op] = {}


def op(name: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        OPS[name] = fn
        return fn

    return register


# The requests being answered, per runtime: a stopping node answers each of them before its services and
# its store go (``drain``), so a client whose connection closes without an answer knows the request was
# never taken and may send it again (node/core/admin_client.py).
_INFLIGHT: dict[int, set[asyncio.Task[Any]]] = {}


async def drain(rt: NodeRuntime, timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` s) for the requests already accepted to be answered; call after closing
    the server, before stopping the services."""
    pending = {t for t in _INFLIGHT.get(id(rt), set()) if not t.done()}
    if pending:
        log.info("admin_draining", requests=len(pending))
        await asyncio.wait(pending, timeout=timeout)


async def _handle(rt: NodeRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    task = asyncio.current_task()
    inflight = _INFLIGHT.setdefault(id(rt), set())
    if task is not None:
        inflight.add(task)
    try:
        await _answer(rt, reader, writer)
    finally:
        if task is not None:
            inflight.discard(task)


async def _answer(rt: NodeRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    req: Any = None
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
    try:
        writer.write(json.dumps(resp, ensure_ascii=False, default=str).encode() + b"\n")
        await writer.drain()
    except ConnectionError:  # the client went away first (killed, or it gave up waiting): its loss
        log.info("admin_client_gone", op=str(req.get("op", "")) if isinstance(req, dict) else "")
    finally:
        writer.close()


async def serve(rt: NodeRuntime) -> asyncio.AbstractServer:
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
