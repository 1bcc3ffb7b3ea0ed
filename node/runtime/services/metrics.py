"""MetricsService: the Prometheus endpoint of the running node, and scrape_running.

The rules below are the feature's; its parts: node/features/metrics.py, node/app/metrics.py,
node/interfaces/admin/metrics.py (ops metrics, health), node/interfaces/cli/metrics.py.

- ``MetricsService`` serves GET /metrics and /healthz on ``[metrics] listen`` while the node runs
  (node/features/metrics.py says what is exported and why); SIGHUP re-reads the section and rebinds if it moved.
  A bad section or a busy port stops `fednode run` before it starts (node/runtime/configcheck.py, node/runtime/process.py).
- ``fednode metrics DIR [--json]`` prints the same exposition: from the running node (admin op
  ``metrics``), or from the store when the node is stopped (no links then).
- ``fednode health DIR [--json] [--wait S]`` is the probe for systemd, container HEALTHCHECKs and
  monitoring: the admin socket answers, and the node's own evaluation (node/runtime/health.py: store,
  recovered, uplink, each service, certificates, disk; admin op ``health``, which only reads the last
  evaluation) with every check and its state; then, from outside, the gRPC health service
  (grpc.health.v1, mutual TLS with the node's own certificate) on the link port when the node listens,
  and /healthz when the metrics endpoint is on. Exit 0 healthy, 0 with a warning on stderr degraded,
  1 unhealthy or not running. ``--wait S`` asks again until the node is not unhealthy, for at most S
  seconds (right after `systemctl start`, or a start in a script). A stopped node still gets its
  certificates and disk judged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from node.features import metrics
from node.runtime import health
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

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
    return metrics.render(metrics.families(snap), rt.instruments.registry)


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
            # `fednode run` refuses a bad [metrics] before it starts (node/runtime/configcheck.py) and SIGHUP keeps
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
