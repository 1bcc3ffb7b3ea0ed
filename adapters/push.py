"""Local push: the ``Ingest`` gRPC service (proto/fednode/v1/fednode.proto) for local systems that push.

Decisions (the design left them open):
- its own port and its own credentials, never the federation port: ``[adapters.push] listen =
  "127.0.0.1:PORT"``. The listen address must be loopback (127.0.0.0/8, ::1 or localhost): local
  systems run on the node's host or reach it through the operator's own tunnel, and a plaintext
  port must not face the network.
- authentication by a shared bearer token: gRPC metadata ``authorization: Bearer <token>``. The token
  lives in ``<home>/push.token`` (mode 0600, created on first start with 32 random bytes, hex;
  ``token_file`` overrides the path). Compared in constant time; a wrong or missing token is
  ``UNAUTHENTICATED`` and nothing is read: the server interceptor (``TokenGate``) checks the call's
  metadata, which arrives before the request message, and answers with a handler that never asks
  for the message, so an unauthenticated body is never taken in nor parsed (whatever its size, ~4 MB
  of it at most cross the connection: HTTP/2's flow-control window and socket buffers). ``Push`` checks the token again (one rule, two
  places: an unauthenticated call can never reach the commit).
- every item goes through adapters.base.commit in one transaction per request: valid items are
  appended, invalid ones quarantined with ``source = push:<request.source>`` and position
  ``<source>:<source_position>``; the reply says, per item, accepted or the quarantine reason.
  Re-pushing the same item is a no-op by its natural key (it is reported accepted again).
- at most ``MAX_ITEMS`` items per request and ``MAX_MESSAGE`` (16 MiB) per message (split bigger
  pushes: 10,000 ordinary records are ~5 MB); a bigger message is ``RESOURCE_EXHAUSTED``.
- the port is opened without SO_REUSEPORT (gRPC's default would let a second process share it and
  take half the calls): a port already in use fails ``make_server`` with ``RuntimeError``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from adapters.base import Accepted, Outcome, SourceRow, commit_prepared, prepare
from node.core.errors import ConfigError
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg

MAX_ITEMS = 10_000
MAX_MESSAGE = 16 * 1024 * 1024
UNAUTHENTICATED_DETAIL = "missing or wrong token: send metadata 'authorization: Bearer <push.token>'"


def check_listen(listen: Any) -> str:
    if not isinstance(listen, str) or ":" not in listen:
        raise ConfigError("[adapters.push]: listen must be HOST:PORT on loopback, e.g. 127.0.0.1:7451",
                          fix="set listen = \"127.0.0.1:7451\"")
    host = listen.rsplit(":", 1)[0].strip("[]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ConfigError(f"[adapters.push]: listen = {listen!r} is not a loopback address",
                          fix="the push port is plaintext with a token: bind it to 127.0.0.1 and tunnel to it")
    return listen


def token_path(home_dir: Path, section: dict[str, Any]) -> Path:
    p = Path(str(section.get("token_file") or "push.token"))
    return p if p.is_absolute() else home_dir / p


def ensure_token(path: Path) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def rows_of(request: pb.IngestRequest) -> list[SourceRow]:
    source = request.source or "push"
    rows = []
    for i, item in enumerate(request.items):
        pos = f"{source}:{item.source_position or i + 1}"
        try:
            payload = json.loads(item.payload.decode("utf-8"))
        except UnicodeDecodeError as e:
            rows.append(SourceRow(pos, item.kind, raw=item.payload, error=f"payload is not UTF-8 (byte {e.start}): "
                                  "wrong encoding (fix: send the JSON as UTF-8)"))
            continue
        except (ValueError, RecursionError) as e:
            rows.append(SourceRow(pos, item.kind, raw=item.payload, error=f"payload is not valid JSON ({str(e)[:120]}) "
                                  "(fix: send one JSON object per item)"))
            continue
        rows.append(SourceRow(pos, item.kind, payload))
    return rows


Commit = Callable[[str, list[Any]], Awaitable[Outcome]]


def authorised(metadata: Any, token: bytes) -> bool:
    """Whether the call's metadata carries ``authorization: Bearer <token>`` (compared in constant time)."""
    for k, v in metadata or ():
        if k == "authorization" and isinstance(v, str) and v.startswith("Bearer "):
            return hmac.compare_digest(v[7:].strip().encode(), token)
    return False


async def _refuse(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # a stream handler that never iterates its requests: the message is never asked for, so never received
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAIL)


class TokenGate(grpc.aio.ServerInterceptor):
    """Refuses a call without the token from its metadata alone, before its request message is read."""

    _refusal = grpc.stream_unary_rpc_method_handler(_refuse)

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        if authorised(handler_call_details.invocation_metadata, self._token):
            return await continuation(handler_call_details)
        return self._refusal


class IngestServicer(pbg.IngestServicer):
    def __init__(self, token: str, commit: Commit, counted: Callable[[Outcome, str], None]) -> None:
        self._token = token.encode()
        self._commit = commit
        self._counted = counted

    @property
    def token(self) -> str:
        return self._token.decode()

    async def Push(self, request: pb.IngestRequest, context: Any) -> pb.IngestReply:  # noqa: N802
        if not authorised(context.invocation_metadata(), self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAIL)
        if len(request.items) > MAX_ITEMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{len(request.items)} items in one request; at most {MAX_ITEMS}, split it")
        rows = rows_of(request)
        prepared = prepare(rows)
        source = f"push:{request.source or 'push'}"[:128]
        out = await self._commit(source, prepared)
        self._counted(out, rows[-1].position if rows else "")
        refused = {r["position"]: r["reason"] for r in out.reasons}
        results = []
        for item, p in zip(request.items, prepared, strict=True):
            err = refused.get(p.position, "") if isinstance(p, Accepted) else p.reason
            results.append(pb.IngestResult(source_position=item.source_position, accepted=not err, error=err))
        return pb.IngestReply(results=results)


def make_server(listen: str, servicer: IngestServicer) -> grpc.aio.Server:
    """The Ingest server on ``listen``, behind the token gate. Raises RuntimeError when the port is taken."""
    server = grpc.aio.server(interceptors=[TokenGate(servicer.token)],
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE),
                                      ("grpc.so_reuseport", 0)])
    pbg.add_IngestServicer_to_server(servicer, server)
    server.add_insecure_port(listen)
    return server


def commit_for(ledger: Any) -> Callable[[str, list[Any]], Outcome]:
    def run(source: str, prepared: list[Any]) -> Outcome:
        return commit_prepared(ledger, source, prepared)

    return run
