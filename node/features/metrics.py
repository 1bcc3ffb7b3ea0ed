"""Prometheus metrics for a node: the [metrics] section, a snapshot of the node, its text exposition.

Rules of this module:
- The endpoint exists only when node.toml has a ``[metrics]`` section (``listen`` defaults to
  127.0.0.1:9464; ``listen = ""`` turns it off): several nodes on one host (demos, tests, a city and
  its department on one server) must not fight over one default port.
- The exposition is prometheus_client's (text format 0.0.4): typed families, counters named
  ``*_total``, histograms, the process collector. Two sources: ``families`` turns a snapshot of the
  node (``collect_store`` on the store thread, the runtime's `status`) into families, pure; the
  runtime's ``Instruments`` count what happens as it happens (refused peers, batch apply and commit
  latency) with ``process_*``, ``python_*`` beside them. A stopped node (`fednode metrics` reading the
  store) has only the snapshot: no process of its own to describe.
- Each figure has its own family with its own type and help; nothing is exported as an anonymous
  "field" of a catch-all gauge. What other features own (rules, tickets, reconciliation, adapters) is
  read from their `status` sections only if present, so the metrics degrade, never fail, while those
  features are absent or off.
- ``MetricsServer`` is a minimal HTTP/1.1 server on asyncio: GET /metrics, GET /healthz, anything else
  404/405. /healthz answers from the node's last health evaluation (node/runtime/health.py): 200 "ok"
  healthy, 200 "degraded: ..." degraded, 503 "unhealthy: ..." unhealthy or not evaluated yet;
  answering it reads that result and nothing else.
- A scrape never hurts the node: a bad request gets a 4xx and is closed; a failing collection gets a
  500 with the error text; a port already in use is logged and the node runs on without metrics.
- deploy/prometheus/alerts.yml holds the alert rules on these names; tests/test_metrics.py checks them
  and a live page with promtool when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import and_, func, or_, select

from node.core import schema
from node.core.errors import ConfigError
from node.core.records import CHANNEL_NAMES, channel_name
from node.core.store import Store
from node.core.times import CST

log = structlog.get_logger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9464"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
# monitor-channel kinds counted as "alerts" (records.py: _MONITOR_PREFIXES); counted per kind
ALERT_PREFIXES = ("alert", "anomaly", "risk.", "complaint.", "incident.")
LINK_STATES = ("connected", "connecting", "down", "refused")
# counters carry no `_created` series: a scraper of this node has no use for them
prometheus_client.disable_created_metrics()


class MetricsConfigError(ConfigError):
    code = "metrics_config"


# ---- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    listen: str  # "" = no endpoint

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def parse_config(path: Path | str, section: Any) -> MetricsConfig:
    """Validate [metrics]. ``section`` is None when node.toml has no such section (no endpoint)."""
    if section is None:
        return MetricsConfig(listen="")
    if not isinstance(section, dict):
        raise MetricsConfigError(f"{path}: [metrics] must be a table", fix='write it as [metrics] with listen = "HOST:PORT"')
    unknown = sorted(set(section) - {"listen"})
    if unknown:
        raise MetricsConfigError(f"{path}: unknown field metrics.{unknown[0]}", fix="remove it; [metrics] knows only: listen")
    listen = section.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise MetricsConfigError(f"{path}: metrics.listen = {listen!r} must be a string",
                                 fix=f'use "HOST:PORT", e.g. "{DEFAULT_LISTEN}", or "" for no endpoint')
    if listen:
        host, sep, port = listen.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise MetricsConfigError(f"{path}: metrics.listen = {listen!r} is not valid",
                                     fix=f'use "HOST:PORT", e.g. "{DEFAULT_LISTEN}" (loopback: only local scrapers)')
    return MetricsConfig(listen=listen)


# ---- the exposition (pure) ---------------------------------------------------------------------------

# batch latencies: a small batch applies in milliseconds; a full bulk batch on a busy PostgreSQL in seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REFUSED_RPCS = ("Link", "Heads", "Fetch", "Chains")
Metric = prometheus_client.Metric


class Instruments:
    """What only the running node can count as it happens (one registry per runtime, nothing global):
    the process collector (``process_*``: CPU, memory, open files, start time), the Python platform
    and GC collectors, peers refused at the identity check, and the latency histograms of the links.

    ``batch_apply``: on the receiving side, from taking a batch off the inbox to having it verified and
    committed to the store (what delays the acknowledgement). ``batch_commit``: on the sending side,
    from writing a batch to the peer's acknowledgement, i.e. until the peer holds it committed."""

    def __init__(self, process: bool = True) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        if process:
            prometheus_client.ProcessCollector(registry=self.registry)
            prometheus_client.PlatformCollector(registry=self.registry)
            prometheus_client.GCCollector(registry=self.registry)
        self.refused_peers = prometheus_client.Counter(
            "fednode_refused_peers", "peers refused at the TLS/identity check since the node started, by RPC",
            ["rpc"], registry=self.registry)
        for rpc in REFUSED_RPCS:
            self.refused_peers.labels(rpc=rpc)
        self.batch_apply = prometheus_client.Histogram(
            "fednode_batch_apply_seconds", "received batch: verify and commit to the store (seconds)",
            ["peer", "direction"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_commit = prometheus_client.Histogram(
            "fednode_batch_commit_seconds", "sent batch: until the peer acknowledged it committed (seconds)",
            ["peer", "direction"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def refused(self, rpc: str) -> None:
        self.refused_peers.labels(rpc=rpc if rpc in REFUSED_RPCS else "other").inc()

    def applied(self, peer: str, direction: str, seconds: float) -> None:
        self.batch_apply.labels(peer=peer, direction=direction).observe(seconds)

    def committed(self, peer: str, direction: str, seconds: float) -> None:
        self.batch_commit.labels(peer=peer, direction=direction).observe(seconds)


class _Fixed:
    """A collector over metric families already built (one scrape's snapshot)."""

    def __init__(self, fams: Iterable[Metric]) -> None:
        self.fams = [f for f in fams if f.samples]

    def collect(self) -> Iterable[Metric]:
        return iter(self.fams)


def render(fams: Iterable[Metric], *live: Any) -> str:
    """The text exposition (format 0.0.4) of snapshot families plus live collectors (``Instruments.registry``),
    written by prometheus_client. Families without samples are left out."""
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(fams))  # type: ignore[arg-type]
    for collector in live:
        registry.register(collector)
    return prometheus_client.generate_latest(registry).decode()


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (sample name, labels) (for tests and `fednode metrics --json`)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def _gauge(name: str, help_: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, labels=list(labels))


def _counter(name: str, help_: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_, labels=list(labels))


def _ts(iso: Any) -> float | None:
    """Unix time of an ISO 8601 text (naive: Asia/Shanghai, the tree's one zone), None if it is not one."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=CST)).timestamp()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _one(out: list[Metric], make: Callable[..., Any], name: str, help_: str, value: float | None) -> None:
    """Append a family with one unlabelled sample, unless the value is missing."""
    if value is not None:
        f = make(name, help_)
        f.add_metric([], value)
        out.append(f)


def service_families(services: dict[str, Any]) -> list[Metric]:
    """One typed family per figure of the services' `status` sections (instead of one gauge for all):
    counters for what a service counted since the node started, gauges for states and timestamps."""
    out: list[Metric] = []
    rules = services.get("rules")
    if isinstance(rules, dict):
        last_scan = rules.get("last_scan") or {}
        notify = rules.get("notify") or {}
        for make, name, help_, value in (
                (_gauge, "fednode_rules_enabled", "1 when the rules engine is on ([rules] enabled)",
                 1.0 if rules.get("enabled") else 0.0),
                (_gauge, "fednode_rules_caught_up", "1 when the rules engine has read every record it watches",
                 1.0 if rules.get("caught_up") else 0.0),
                (_gauge, "fednode_rules_scan_interval_seconds", "[rules] scan_interval_s: the time-based scans' period",
                 _num(rules.get("scan_interval_s"))),
                (_gauge, "fednode_rules_last_scan_timestamp_seconds", "when the last time-based scan ran (unix time)",
                 _ts(last_scan.get("at"))),
                (_gauge, "fednode_rules_last_scan_duration_seconds", "how long the last time-based scan took",
                 _num(last_scan.get("s"))),
                (_gauge, "fednode_rules_open_cases", "cases the rules engine watches", _num(rules.get("open_cases"))),
                (_gauge, "fednode_rules_cases_held", "cases held in the engine's memory", _num(rules.get("cases_held"))),
                (_counter, "fednode_rules_alerts_appended", "alerts the rules engine appended since start",
                 _num(rules.get("alerts_appended"))),
                (_counter, "fednode_rules_records_skipped", "records the rules engine could not read",
                 _num(rules.get("records_skipped"))),
                (_counter, "fednode_rules_scans", "time-based scans run since start", _num(rules.get("scheduled_scans")))):
            _one(out, make, name, help_, value)
        if notify:
            c = _counter("fednode_notify_messages", "alert notifications since start, by outcome", "outcome")
            for outcome in ("sent", "failed"):
                c.add_metric([outcome], _num(notify.get(outcome)) or 0)
            out.append(c)
    tickets = services.get("tickets")
    if isinstance(tickets, dict):
        c = _counter("fednode_ticket_records_written", "ticket records the node wrote by itself since start, by kind",
                     "kind")
        for key, kind in (("receipts_written", "receipt"), ("reminders_written", "reminder"),
                          ("escalations_written", "escalation")):
            c.add_metric([kind], _num(tickets.get(key)) or 0)
        out.append(c)
        _one(out, _gauge, "fednode_tickets_last_deadline_check_timestamp_seconds",
             "when ticket deadlines were last checked", _ts(tickets.get("last_deadline_check")))
    reconcile = services.get("reconcile")
    if isinstance(reconcile, dict):
        last = reconcile.get("last") or {}
        if last:
            fin = _num(last.get("finished_us"))
            _one(out, _gauge, "fednode_reconcile_last_ok",
                 "1 when the last reconciliation with the parent found no incident and no error",
                 1.0 if last.get("ok") else 0.0)
            _one(out, _gauge, "fednode_reconcile_last_run_timestamp_seconds", "when the last reconciliation ended",
                 fin / 1e6 if fin is not None else None)
            _one(out, _gauge, "fednode_reconcile_last_records_repaired", "records the last reconciliation repaired",
                 _num(last.get("records_repaired")) or 0.0)
        _one(out, _gauge, "fednode_reconcile_next_run_timestamp_seconds", "when the next reconciliation is due",
             _ts(reconcile.get("next_run")))
    adapters = services.get("adapters")
    if isinstance(adapters, dict):
        up = _gauge("fednode_adapter_up", "1 when the adapter's last poll worked", "adapter", "type")
        rows = _counter("fednode_adapter_rows", "rows an adapter read since start, by outcome", "adapter", "type",
                        "outcome")
        batches = _counter("fednode_adapter_batches", "batches an adapter committed since start", "adapter", "type")
        last_commit = _gauge("fednode_adapter_last_commit_timestamp_seconds", "when an adapter last committed rows",
                             "adapter", "type")
        for name, c in sorted(adapters.items()):
            if name.startswith("_") or not isinstance(c, dict):
                continue
            lab = [name, str(c.get("type", ""))]
            up.add_metric(lab, 1 if c.get("state") == "ok" else 0)
            for key in ("read", "accepted", "duplicates", "quarantined"):
                rows.add_metric([*lab, key], _num(c.get(key)) or 0)
            batches.add_metric(lab, _num(c.get("batches")) or 0)
            if c.get("last_commit_us"):
                last_commit.add_metric(lab, float(c["last_commit_us"]) / 1e6)
        out += [up, rows, batches, last_commit]
    keys = services.get("keys")
    if isinstance(keys, dict):
        _one(out, _gauge, "fednode_key_resend_pending_logs", "own logs waiting to be re-signed after a revocation",
             float(len(keys.get("resend_pending") or {})))
    stats = services.get("stats")
    if isinstance(stats, dict):
        _one(out, _gauge, "fednode_stats_cursor", "the statistics projection's position in the records it reads",
             _num(stats.get("cursor")))
    served = services.get("metrics")
    if isinstance(served, dict):
        _one(out, _counter, "fednode_metrics_scrapes", "scrapes the metrics endpoint answered since it started listening",
             _num(served.get("scrapes")) or 0.0)
    return out


def families(snap: dict[str, Any]) -> list[Metric]:
    """The metric families of one snapshot (see ``snapshot``)."""
    node = snap["node"]
    info = InfoMetricFamily("fednode_node", "this node: code, name, level, path, version (value 1)")
    info.add_metric([], {"code": str(node["code"]), "name": str(node["name"]), "level": str(node["level"]),
                         "path": str(node.get("path") or ""), "version": str(node.get("version", ""))})
    up = _gauge("fednode_running", "1 while `fednode run` serves this node")
    up.add_metric([], 1 if snap.get("running") else 0)
    started = _gauge("fednode_start_time_seconds", "when the running node started (unix time)")
    if snap.get("started_us"):
        started.add_metric([], snap["started_us"] / 1e6)
    recovered = _gauge("fednode_recovered",
                       "1 once the node holds its own logs as far as its parent does (0: restored node still recovering)")
    if "recovered" in snap:
        recovered.add_metric([], 1 if snap["recovered"] else 0)

    log_seq = _gauge("fednode_log_seq", "head seq of each (origin, channel) log held here", "origin", "channel")
    own = _gauge("fednode_own_records", "records born at this node, per channel", "channel")
    for lg in snap.get("logs", []):
        log_seq.add_metric([lg["origin"], lg["channel"]], lg["seq"])
        if lg["origin"] == node["code"]:
            own.add_metric([lg["channel"]], lg["seq"])

    lk = ("peer", "direction")
    link_up = _gauge("fednode_link_up", "1 when the link is connected", *lk)
    link_state = _gauge("fednode_link_state", "the link's state (1 for the current one)", *lk, "state")
    rin = _counter("fednode_link_records_in", "records received on the link since the node started", *lk)
    rout = _counter("fednode_link_records_out", "records sent on the link since the node started", *lk)
    cin = _counter("fednode_link_channel_records_in", "records received on the link, per channel", *lk, "channel")
    cout = _counter("fednode_link_channel_records_out", "records sent on the link, per channel", *lk, "channel")
    acked = _gauge("fednode_link_acked_seq", "the peer's acknowledged head, per channel (sum over origins)", *lk,
                   "channel")
    backlog = _gauge("fednode_link_backlog_records", "records held here that the peer lacks, per channel", *lk,
                     "channel")
    lag = _gauge("fednode_link_lag_seconds", "age of the oldest record the peer lacks, per channel", *lk, "channel")
    rtt = _gauge("fednode_link_rtt_seconds", "round trip of the last acknowledged batch", *lk)
    last_in = _gauge("fednode_link_last_in_timestamp_seconds", "when the peer last sent anything", *lk)
    since = _gauge("fednode_link_state_since_timestamp_seconds", "when the link entered its state", *lk)
    paused = _gauge("fednode_link_paused_streams", "streams the peer refused (retried later)", *lk)
    errored = _gauge("fednode_link_error", "1 when the link's last error is set (see `fednode status`)", *lk)
    for ln in snap.get("links", []):
        lab = [ln["peer"], ln["direction"]]
        link_up.add_metric(lab, 1 if ln["state"] == "connected" else 0)
        for s in LINK_STATES:
            link_state.add_metric([*lab, s], 1 if ln["state"] == s else 0)
        rin.add_metric(lab, ln.get("records_in", 0))
        rout.add_metric(lab, ln.get("records_out", 0))
        for ch, n in sorted((ln.get("channel_records_in") or {}).items()):
            cin.add_metric([*lab, ch], n)
        for ch, n in sorted((ln.get("channel_records_out") or {}).items()):
            cout.add_metric([*lab, ch], n)
        per_channel: dict[str, int] = {}
        for a in ln.get("acked", []):
            if a.get("kind", "log") == "log":
                per_channel[a["channel"]] = per_channel.get(a["channel"], 0) + int(a["seq"])
        for ch, n in sorted(per_channel.items()):
            acked.add_metric([*lab, ch], n)
        for ch in CHANNEL_NAMES.values():
            b = (ln.get("backlog") or {}).get(ch, {"records": 0, "oldest_age_s": 0.0})
            backlog.add_metric([*lab, ch], b["records"])
            lag.add_metric([*lab, ch], b["oldest_age_s"])
        if ln.get("rtt_ms") is not None:
            rtt.add_metric(lab, ln["rtt_ms"] / 1000)
        if ln.get("last_in_us"):
            last_in.add_metric(lab, ln["last_in_us"] / 1e6)
        if ln.get("since_us"):
            since.add_metric(lab, ln["since_us"] / 1e6)
        paused.add_metric(lab, len(ln.get("paused") or {}))
        errored.add_metric(lab, 1 if ln.get("last_error") else 0)

    incidents = _gauge("fednode_incidents", "integrity incidents recorded here (forks, verification failures), by kind",
                       "kind")
    for kind, n in sorted(snap.get("incidents_by_kind", {}).items()):
        incidents.add_metric([kind], n)
    incidents_total = _gauge("fednode_incidents_stored", "integrity incidents recorded here")
    incidents_total.add_metric([], snap.get("incidents", 0))
    quarantine = _gauge("fednode_quarantine_items", "quarantined items by source (replayed or not)", "source", "state")
    for (source, state), n in sorted(snap.get("quarantine_by_source", {}).items()):
        quarantine.add_metric([source, state], n)
    quarantine_total = _gauge("fednode_quarantine_stored", "quarantined items")
    quarantine_total.add_metric([], snap.get("quarantine", 0))
    alerts = _gauge("fednode_alert_records",
                    "monitor records (alerts, anomalies, risk points, complaints) held here, by kind", "kind")
    for kind, n in sorted(snap.get("alerts_by_kind", {}).items()):
        alerts.add_metric([kind], n)
    certs = _gauge("fednode_certificate_expiry_timestamp_seconds", "certificate not-after (unix time)", "certificate")
    for name, ts in sorted(snap.get("certificate_expiry", {}).items()):
        certs.add_metric([name], ts)
    return [info, up, started, recovered, log_seq, own, link_up, link_state, rin, rout, cin, cout, acked, backlog,
            lag, rtt, last_in, since, paused, errored, incidents, incidents_total, quarantine,
            quarantine_total, alerts, certs, *service_families(snap.get("services", {}))]


# ---- reading the node (store thread) -----------------------------------------------------------------


def _prefix_range(column: Any, prefix: str) -> Any:
    # a range instead of LIKE so both SQLite and PostgreSQL use the kind index
    return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def collect_store(store: Store) -> dict[str, Any]:
    """Counts that are not in `status`: incidents by kind, quarantine by source, alert records by kind."""
    out: dict[str, Any] = {"incidents_by_kind": {}, "quarantine_by_source": {}, "alerts_by_kind": {}}
    with store.read() as conn:
        inc = schema.incidents
        for kind, n in conn.execute(select(inc.c.kind, func.count()).group_by(inc.c.kind)):
            out["incidents_by_kind"][kind] = int(n)
        q = schema.quarantine
        state = q.c.replayed_us.is_(None)
        for source, pending, n in conn.execute(select(q.c.source, state, func.count()).group_by(q.c.source, state)):
            out["quarantine_by_source"][(source, "pending" if pending else "replayed")] = int(n)
        rec = schema.records
        cond = or_(*[_prefix_range(rec.c.kind, p) for p in ALERT_PREFIXES])
        for kind, n in conn.execute(select(rec.c.kind, func.count()).where(cond).group_by(rec.c.kind)):
            out["alerts_by_kind"][kind] = int(n)
    return out


def certificate_expiry(status: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, iso in (status.get("certificates") or {}).items():
        with contextlib.suppress(ValueError, TypeError):
            out[name] = dt.datetime.fromisoformat(iso).timestamp()
    return out


def snapshot(status: dict[str, Any], store_counts: dict[str, Any], services: dict[str, Any] | None = None,
             channel_counts: dict[str, tuple[dict[str, int], dict[str, int]]] | None = None) -> dict[str, Any]:
    """One dict with everything ``families`` reads. ``status``: `fednode status --json` data."""
    snap = dict(status)
    snap.update(store_counts)
    snap["certificate_expiry"] = certificate_expiry(status)
    snap["services"] = services or {}
    if channel_counts:
        links = []
        for ln in snap.get("links", []):
            ci, co = channel_counts.get(f"{ln['peer']}/{ln['direction']}", ({}, {}))
            links.append({**ln, "channel_records_in": ci, "channel_records_out": co})
        snap["links"] = links
    return snap


def channel_counters(link_state: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Per-channel record counters of a runtime LinkState, when it keeps them (else empty)."""
    def norm(d: Any) -> dict[str, int]:
        return {channel_name(k) if isinstance(k, int) else str(k): int(v) for k, v in (d or {}).items()}

    return (norm(getattr(link_state, "channel_records_in", None)),
            norm(getattr(link_state, "channel_records_out", None)))


# ---- the HTTP shell ----------------------------------------------------------------------------------


class MetricsServer:
    """GET /metrics → the exposition from ``scrape()``; GET /healthz → ``health()`` (status line, body),
    200 "ok" without one."""

    def __init__(self, host: str, port: int, scrape: Callable[[], Awaitable[str]],
                 health: Callable[[], tuple[str, bytes]] | None = None) -> None:
        self.host, self.port = host, port
        self.scrape = scrape
        self.health = health
        self.server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_HEAD)

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._respond(reader), REQUEST_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            status, ctype, body = "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n"
        try:
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # headers: not needed
            pass
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain; charset=utf-8", b"bad request line\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain; charset=utf-8", b"only GET\n"
        if target == "/healthz":
            status, body = self.health() if self.health is not None else ("200 OK", b"ok\n")
            return status, "text/plain; charset=utf-8", body if method == "GET" else b""
        if target not in ("/metrics", "/"):
            return "404 Not Found", "text/plain; charset=utf-8", b"see /metrics\n"
        try:
            text = await self.scrape()
        except Exception as e:  # the node must survive a failing collection
            log.exception("metrics_scrape_failed")
            return "500 Internal Server Error", "text/plain; charset=utf-8", f"{type(e).__name__}: {e}\n".encode()
        self.scrapes += 1
        return "200 OK", CONTENT_TYPE, text.encode() if method == "GET" else b""
