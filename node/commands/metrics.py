"""Observability: the Prometheus endpoint ([metrics] in node.toml), `fednode metrics` and `fednode health`.

- ``MetricsService`` serves GET /metrics and /healthz on ``[metrics] listen`` while the node runs
  (node/metrics.py says what is exported and why); SIGHUP re-reads the section and rebinds if it moved.
  A bad section or a busy port stops `fednode run` before it starts (node/configcheck.py, node/runtime.py).
- ``fednode metrics DIR [--json]`` prints the same exposition: from the running node (admin op
  ``metrics``), or from the store when the node is stopped (no links then).
- ``fednode health DIR [--json] [--wait S]`` is the probe for systemd, container HEALTHCHECKs and
  monitoring: the admin socket answers, and the node's own evaluation (node/health.py: store,
  recovered, uplink, each service, certificates, disk; admin op ``health``, which only reads the last
  evaluation) with every check and its state; then, from outside, the gRPC health service
  (grpc.health.v1, mutual TLS with the node's own certificate) on the link port when the node listens,
  and /healthz when the metrics endpoint is on. Exit 0 healthy, 0 with a warning on stderr degraded,
  1 unhealthy or not running. ``--wait S`` asks again until the node is not unhealthy, for at most S
  seconds (right after `systemctl start`, or a start in a script). A stopped node still gets its
  certificates and disk judged.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from node import admin, health, metrics
from node.cli import command, emit, open_home, status_data
from node.errors import FednodeError
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
        server = metrics.MetricsServer(host, port, lambda: scrape_running(self.rt), self.rt.health.http)
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

    def health(self) -> list[health.Check]:
        """(Loop.) The endpoint: off without [metrics] or with listen = "", degraded when it cannot listen."""
        if not self.config.enabled:
            return [health.Check("service:metrics", health.OFF, "no [metrics] listen address: no endpoint")]
        if self.server is None:
            return [health.Check("service:metrics", health.DEGRADED,
                                 f"not serving {self.config.listen}: {self.error or 'not started'}")]
        return [health.Check("service:metrics", health.OK, f"serving on {self.config.listen}")]

    def status(self) -> dict[str, Any] | None:
        return {"listen": self.config.listen, "serving": self.server is not None,
                "port": self.server.bound_port if self.server is not None else 0,
                "scrapes": self.server.scrapes if self.server is not None else 0, "error": self.error}


SERVICES = [MetricsService]


@admin.op("metrics")
async def _metrics_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    return {"text": await scrape_running(rt)}


@admin.op("health")
async def _health_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    """The node's last health evaluation (node/health.py); evaluated now only before the first one."""
    return await rt.health.current()


# ---- CLI ---------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Any) -> None:
    add("metrics", "print the Prometheus metrics (from the running node, or from the store)")
    sp = add("health", "every health check of the node (store, recovery, uplink, services, certificates, disk, gRPC "
             "health, /healthz); exit 1 if unhealthy, 0 with a warning if degraded")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")
    sp.add_argument("--wait", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the node to be healthy (exit 0 as soon as it is, 1 if not by then)")


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


def probe_grpc_health(home: Home, timeout: float) -> tuple[str, str]:
    """(state, detail) of the gRPC health service on the link port, over mutual TLS with the node's own
    certificate: SERVING is ok, anything else (NOT_SERVING while unhealthy, no answer) unhealthy."""
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


_LABEL = {health.OK: "ok", health.OFF: "off", health.DEGRADED: "DEGRADED", health.UNHEALTHY: "UNHEALTHY"}


@command("health")
def cmd_health(args: argparse.Namespace) -> int:
    home = open_home(args)
    metrics.parse_config(home.config.path, home.config.sections.get("metrics"))  # exit 2 on a bad section
    t0 = time.monotonic()
    deadline = t0 + max(0.0, args.wait)
    while True:
        data = health_once(home, args.timeout)
        if data["state"] != "unhealthy" or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    data["elapsed_s"] = round(time.monotonic() - t0, 3)
    state, checks = data["state"], data["checks"]
    emit(args, data, lambda: "\n".join(
        [f"{home.code}: {'UNHEALTHY' if state == 'unhealthy' else state}"]
        + [f"  {_LABEL.get(c['state'], c['state']):<9} {name}: {c['detail']}" for name, c in checks.items()]))
    if state == "degraded":
        print(f"warning: {home.code} is {health.summary(state, checks)}", file=sys.stderr)
    return 0 if data["healthy"] else 1
