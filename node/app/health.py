"""`fednode health`: every health check of a node, its own evaluation through the admin socket and the
probes from outside (gRPC health on the link port, GET /healthz), or what can be judged of a stopped node.

Rules of this module: reads only; a probe that does not answer is a check's state, never an exception.
The states and the judgements are node/features/health.py's; the running node's evaluation is
node/runtime/health.py's (read through the admin op ``health``).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from node.core import admin_client as admin
from node.core.errors import FednodeError
from node.core.home import Home
from node.features import health, metrics


def _connect_host(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def probe_grpc_health(home: Home, timeout: float) -> tuple[str, str]:
    """(state, detail) of the gRPC health service on the link port, over mutual TLS with the node's own
    certificate: SERVING is ok, anything else (NOT_SERVING while unhealthy, no answer) unhealthy."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from node.core import pki

    creds = grpc.ssl_channel_credentials(
        root_certificates=home.key_path("root.crt").read_bytes(),
        private_key=home.key_path("tls.key").read_bytes(),
        certificate_chain=home.key_path("tls.crt").read_bytes() + home.key_path("chain.pem").read_bytes(),
    )
    target = _connect_host(home.config.listen)
    with grpc.secure_channel(target, creds,
                             options=[("grpc.ssl_target_name_override",
                                       pki.server_name_of(home.load_cert("tls.crt")))]) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as e:
            return health.UNHEALTHY, f"{target}: {e.code().name}: {e.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return (health.OK if resp.status == health_pb2.HealthCheckResponse.SERVING else health.UNHEALTHY), f"{target}: {name}"


def probe_http(address: str, timeout: float) -> tuple[str, str]:
    """(state, detail) of GET /healthz: 200 ok (or degraded), 503 unhealthy; no answer: degraded (the
    endpoint is for monitoring; the node's work does not depend on it)."""
    host, _, port = _connect_host(address).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: fednode\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError as e:
        return health.DEGRADED, f"{host}:{port}: {e}"
    first = data.split(b"\r\n", 1)[0].decode("latin-1")
    body = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace").strip()
    if first.startswith("HTTP/1.1 200"):
        return (health.DEGRADED if body.startswith("degraded") else health.OK), f"{host}:{port}: {first[9:]}"
    return health.UNHEALTHY, f"{host}:{port}: {first[9:]}: {body[:300]}"


def _check(state: str, detail: str) -> dict[str, Any]:
    return health.Check("", state, detail).as_dict()


def health_once(home: Home, timeout: float) -> dict[str, Any]:
    """Every check, once: the node's own evaluation through the admin socket, then the probes from outside."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        resp = admin.call(home, {"op": "health"}, timeout=timeout)
    except (OSError, ValueError, FednodeError) as e:
        resp, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "" if resp is not None else f"no node answers on {admin.socket_path(home)}"
    running = resp is not None
    if not running:
        checks["admin"] = _check(health.UNHEALTHY, why)
        for c in health.offline_checks(home):
            checks[c.name] = c.as_dict()
    else:
        node = resp["result"] if resp else {}
        checks["admin"] = _check(health.OK, f"answers on {admin.socket_path(home)}")
        checks.update(node.get("checks") or {})
        if home.config.listen:
            checks["grpc_health"] = _check(*probe_grpc_health(home, timeout))
        mcfg = metrics.parse_config(home.config.path, home.config.sections.get("metrics"))
        if mcfg.enabled:
            checks["metrics"] = _check(*probe_http(mcfg.listen, timeout))
    state = health.worst(c["state"] for c in checks.values())
    return {"code": home.code, "state": state, "healthy": state != "unhealthy", "running": running,
            "checks": checks}


def check_health(home: Home, timeout: float, wait: float = 0.0) -> dict[str, Any]:
    """`fednode health`: every check; with ``wait``, again until the node is not unhealthy or ``wait`` s passed."""
    metrics.parse_config(home.config.path, home.config.sections.get("metrics"))  # exit 2 on a bad section
    t0 = time.monotonic()
    deadline = t0 + max(0.0, wait)
    while True:
        data = health_once(home, timeout)
        if data["state"] != "unhealthy" or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    data["elapsed_s"] = round(time.monotonic() - t0, 3)
    return data
