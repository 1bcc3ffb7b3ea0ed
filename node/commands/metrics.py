"""Observability: the Prometheus endpoint ([metrics] in node.toml), `fednode metrics` and `fednode health`.

- ``MetricsService`` serves GET /metrics and /healthz on ``[metrics] listen`` while the node runs
  (node/metrics.py says what is exported and why); SIGHUP re-reads the section and rebinds if it moved.
  A bad section or a busy port stops `fednode run` before it starts (node/configcheck.py, node/runtime.py).
- ``fednode metrics DIR [--json]`` prints the same exposition: from the running node (admin op
  ``metrics``), or from the store when the node is stopped (no links then).
- ``fednode health DIR [--json]`` is the probe for container HEALTHCHECKs and monitoring: the admin
  socket answers, the gRPC health service (grpc.health.v1, mutual TLS with the node's own
  certificate) says SERVING on the link port when the node listens, and /healthz answers when the
  metrics endpoint is on. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog

from node import admin, metrics
from node.cli import command, emit, open_home, status_data
from node.home import Home
from node.services import Service

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)


def _snapshot_running(rt: NodeRuntime) -> dict[str, Any]:
    """Store thread: `status` data of the running node plus the extra counts."""
    status = rt.status_sync()
    services = {svc.name: status[svc.name] for svc in rt.services if isinstance(status.get(svc.name), dict)}
    return metrics.snapshot(status, metrics.collect_store(rt.ledger.store), services)


async def scrape_running(rt: NodeRuntime) -> str:
    channel_counts = {f"{st.peer}/{st.direction}": metrics.channel_counters(st) for st in list(rt.links.values())}
    snap = await rt.db(_snapshot_running, rt)
    if any(ci or co for ci, co in channel_counts.values()):
        snap = metrics.snapshot(snap, {}, snap.get("services"), channel_counts)
    return metrics.render(metrics.families(snap))


def scrape_stopped(home: Home) -> str:
    status = status_data(home)
    snap = metrics.snapshot(status, metrics.collect_store(home.store()))
    return metrics.render(metrics.families(snap))


class MetricsService(Service):
    name = "metrics"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.server: metrics.MetricsServer | None = None
        self.config = metrics.MetricsConfig(listen="")
        self.error = ""

    async def start(self) -> None:
        try:
            self.config = metrics.parse_config(self.rt.home.config.path, self.rt.home.config.sections.get("metrics"))
        except metrics.MetricsConfigError as e:
            # `fednode run` refuses a bad [metrics] before it starts (node/configcheck.py) and SIGHUP keeps
            # the running configuration: this is only reached by a runtime built without that check
            self.error = str(e)
            log.error("metrics_config_invalid", error=e.message, fix=e.fix)
            return
        if not self.config.enabled:
            return
        host, port = self.config.host_port
        server = metrics.MetricsServer(host, port, lambda: scrape_running(self.rt))
        try:
            await server.start()
        except OSError as e:
            self.error = f"cannot listen on {self.config.listen}: {e.strerror or e}"
            log.error("metrics_listen_failed", address=self.config.listen, error=self.error,
                      fix="choose a free port in [metrics] listen, then `systemctl reload fednode` (SIGHUP)")
            return
        self.server, self.error = server, ""
        log.info("metrics_listening", address=f"{host}:{server.bound_port}")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def reload(self) -> None:
        try:
            new = metrics.parse_config(self.rt.home.config.path, self.rt.home.config.sections.get("metrics"))
        except metrics.MetricsConfigError as e:
            log.error("metrics_config_invalid", error=e.message, fix=e.fix, note="the running endpoint stays")
            return
        if new == self.config and (self.server is not None or not new.enabled):
            return
        await self.stop()
        await self.start()

    def status(self) -> dict[str, Any] | None:
        return {"listen": self.config.listen, "serving": self.server is not None,
                "port": self.server.bound_port if self.server is not None else 0,
                "scrapes": self.server.scrapes if self.server is not None else 0, "error": self.error}


SERVICES = [MetricsService]


@admin.op("metrics")
async def _metrics_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    return {"text": await scrape_running(rt)}


# ---- CLI ---------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Any) -> None:
    add("metrics", "print the Prometheus metrics (from the running node, or from the store)")
    sp = add("health", "probe the node: admin socket, gRPC health on the link port, /healthz; exit 1 if unhealthy")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")


@command("metrics")
def cmd_metrics(args: argparse.Namespace) -> int:
    home = open_home(args)
    metrics.parse_config(home.config.path, home.config.sections.get("metrics"))  # exit 2 on a bad section
    resp = admin.call(home, {"op": "metrics"})
    text = resp["result"]["text"] if resp is not None else scrape_stopped(home)
    if args.json:
        samples = [{"name": n, "labels": dict(sorted(lab)), "value": v}
                   for (n, lab), v in metrics.parse_exposition(text).items()]
        print(json.dumps({"running": resp is not None, "samples": samples}, ensure_ascii=False, indent=2))
    else:
        print(text, end="")
    return 0


def _connect_host(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def probe_grpc_health(home: Home, timeout: float) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from node import pki

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
            return False, f"{target}: {e.code().name}: {e.details()}"
    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
    return serving, f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"


def probe_http(address: str, timeout: float) -> tuple[bool, str]:
    host, _, port = _connect_host(address).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: fednode\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError as e:
        return False, f"{host}:{port}: {e}"
    first = data.split(b"\r\n", 1)[0].decode("latin-1")
    return first.startswith("HTTP/1.1 200"), f"{host}:{port}: {first}"


@command("health")
def cmd_health(args: argparse.Namespace) -> int:
    home = open_home(args)
    checks: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    try:
        resp = admin.call(home, {"op": "status"}, timeout=args.timeout)
    except Exception as e:
        resp, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "" if resp is not None else f"no node answers on {admin.socket_path(home)}"
    running = resp is not None
    checks["admin"] = {"ok": running, "detail": why or "answers"}
    if running:
        result = resp["result"] if resp else {}
        checks["recovered"] = {"ok": bool(result.get("recovered", True)),
                               "detail": "own logs current" if result.get("recovered", True)
                               else "still recovering its own logs from the parent"}
        if home.config.listen:
            ok, detail = probe_grpc_health(home, args.timeout)
            checks["grpc_health"] = {"ok": ok, "detail": detail}
        mcfg = metrics.parse_config(home.config.path, home.config.sections.get("metrics"))
        if mcfg.enabled:
            ok, detail = probe_http(mcfg.listen, args.timeout)
            checks["metrics"] = {"ok": ok, "detail": detail}
    healthy = all(c["ok"] for c in checks.values())
    data = {"code": home.code, "healthy": healthy, "checks": checks, "elapsed_s": round(time.monotonic() - t0, 3)}
    emit(args, data, lambda: "\n".join(
        [f"{home.code}: {'healthy' if healthy else 'UNHEALTHY'}"]
        + [f"  {'ok ' if c['ok'] else 'BAD'} {name}: {c['detail']}" for name, c in checks.items()]))
    return 0 if healthy else 1
