"""Prometheus metrics for a node: the [metrics] section, a snapshot of the node, its text exposition.

Rules of this module:
- The endpoint exists only when node.toml has a ``[metrics]`` section (``listen`` defaults to
  127.0.0.1:9464; ``listen = ""`` turns it off): several nodes on one host (demos, tests, a city and
  its department on one server) must not fight over one default port.
- Pure core, thin shell: ``collect_store`` (store thread) and ``link_samples`` (loop) read the node;
  ``families`` turns that snapshot into metric families; ``render`` writes the text format
  (version 0.0.4). ``MetricsServer`` is a minimal HTTP/1.1 server on asyncio (no new dependency):
  GET /metrics, GET /healthz, anything else 404/405. /healthz answers from the node's last health
  evaluation (node/runtime/health.py): 200 "ok" healthy, 200 "degraded: ..." degraded, 503 "unhealthy: ..."
  unhealthy or not evaluated yet; answering it reads that result and nothing else.
- A scrape never hurts the node: a bad request gets a 4xx and is closed; a failing collection gets a
  500 with the error text; a port already in use is logged and the node runs on without metrics.
- What other features own (reconciliation, alerts) is read only if it exists: a service's numeric
  ``status()`` fields become ``fednode_service_value``; alert records are counted by kind from the
  records table, so the metrics degrade, never fail, while those features are absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select

from node.core import schema
from node.core.errors import ConfigError
from node.core.records import CHANNEL_NAMES, channel_name
from node.core.store import Store

log = structlog.get_logger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9464"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
# monitor-channel kinds counted as "alerts" (records.py: _MONITOR_PREFIXES); counted per kind
ALERT_PREFIXES = ("alert", "anomaly", "risk.", "complaint.", "incident.")
LINK_STATES = ("connected", "connecting", "down", "refused")


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


@dataclass
class Family:
    name: str
    type: str  # gauge | counter | info
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: Any) -> None:
        self.samples.append(({k: str(v) for k, v in labels.items()}, float(value)))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def render(families: Iterable[Family]) -> str:
    """Prometheus text format 0.0.4. Families without samples are left out."""
    out: list[str] = []
    for f in families:
        if not f.samples:
            continue
        kind = "gauge" if f.type == "info" else f.type
        out.append(f"# HELP {f.name} {f.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {f.name} {kind}")
        for labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            out.append(f"{f.name}{{{lab}}} {_format_value(value)}" if lab else f"{f.name} {_format_value(value)}")
    return "\n".join(out) + "\n"


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Read back what ``render`` writes (for tests and `fednode metrics --json`)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels: list[tuple[str, str]] = []
        name = head
        if "{" in head:
            name, _, rest = head.partition("{")
            rest = rest[:-1]
            i = 0
            while i < len(rest):
                eq = rest.index("=", i)
                key = rest[i:eq]
                j, buf = eq + 2, []
                while rest[j] != '"':
                    if rest[j] == "\\":
                        j += 1
                        buf.append({"n": "\n"}.get(rest[j], rest[j]))
                    else:
                        buf.append(rest[j])
                    j += 1
                labels.append((key, "".join(buf)))
                i = j + 2  # skip the closing quote and the comma
        out[(name, frozenset(labels))] = float(value)
    return out


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    if isinstance(value, bool):
        yield prefix, 1.0 if value else 0.0
    elif isinstance(value, int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)


def families(snap: dict[str, Any]) -> list[Family]:
    """The metric families of one snapshot (see ``snapshot``)."""
    node = snap["node"]
    info = Family("fednode_node_info", "info", "this node: code, name, level, path, version (value 1)")
    info.add(1, code=node["code"], name=node["name"], level=node["level"], path=node.get("path") or "",
             version=node.get("version", ""))
    up = Family("fednode_running", "gauge", "1 while `fednode run` serves this node")
    up.add(1 if snap.get("running") else 0)
    started = Family("fednode_start_time_seconds", "gauge", "when the running node started (unix time)")
    if snap.get("started_us"):
        started.add(snap["started_us"] / 1e6)
    recovered = Family("fednode_recovered", "gauge",
                       "1 once the node holds its own logs as far as its parent does (0: restored node still recovering)")
    if "recovered" in snap:
        recovered.add(1 if snap["recovered"] else 0)

    log_seq = Family("fednode_log_seq", "gauge", "head seq of each (origin, channel) log held here")
    for lg in snap.get("logs", []):
        log_seq.add(lg["seq"], origin=lg["origin"], channel=lg["channel"])
    own = Family("fednode_own_records", "gauge", "records born at this node, per channel")
    for lg in snap.get("logs", []):
        if lg["origin"] == node["code"]:
            own.add(lg["seq"], channel=lg["channel"])

    link_up = Family("fednode_link_up", "gauge", "1 when the link is connected")
    link_state = Family("fednode_link_state", "gauge", "the link's state (1 for the current one)")
    rin = Family("fednode_link_records_in_total", "counter", "records received on the link since the node started")
    rout = Family("fednode_link_records_out_total", "counter", "records sent on the link since the node started")
    cin = Family("fednode_link_channel_records_in_total", "counter", "records received on the link, per channel")
    cout = Family("fednode_link_channel_records_out_total", "counter", "records sent on the link, per channel")
    acked = Family("fednode_link_acked_seq", "gauge", "the peer's acknowledged head, per channel (sum over origins)")
    backlog = Family("fednode_link_backlog_records", "gauge", "records held here that the peer lacks, per channel")
    lag = Family("fednode_link_lag_seconds", "gauge", "age of the oldest record the peer lacks, per channel")
    rtt = Family("fednode_link_rtt_seconds", "gauge", "round trip of the last acknowledged batch")
    last_in = Family("fednode_link_last_in_timestamp_seconds", "gauge", "when the peer last sent anything")
    since = Family("fednode_link_state_since_timestamp_seconds", "gauge", "when the link entered its state")
    paused = Family("fednode_link_paused_streams", "gauge", "streams the peer refused (retried later)")
    errored = Family("fednode_link_error", "gauge", "1 when the link's last error is set (see `fednode status`)")
    for ln in snap.get("links", []):
        lab = {"peer": ln["peer"], "direction": ln["direction"]}
        link_up.add(1 if ln["state"] == "connected" else 0, **lab)
        for s in LINK_STATES:
            link_state.add(1 if ln["state"] == s else 0, **lab, state=s)
        rin.add(ln.get("records_in", 0), **lab)
        rout.add(ln.get("records_out", 0), **lab)
        for ch, n in sorted((ln.get("channel_records_in") or {}).items()):
            cin.add(n, **lab, channel=ch)
        for ch, n in sorted((ln.get("channel_records_out") or {}).items()):
            cout.add(n, **lab, channel=ch)
        per_channel: dict[str, int] = {}
        for a in ln.get("acked", []):
            if a.get("kind", "log") == "log":
                per_channel[a["channel"]] = per_channel.get(a["channel"], 0) + int(a["seq"])
        for ch, n in sorted(per_channel.items()):
            acked.add(n, **lab, channel=ch)
        for ch in CHANNEL_NAMES.values():
            b = (ln.get("backlog") or {}).get(ch, {"records": 0, "oldest_age_s": 0.0})
            backlog.add(b["records"], **lab, channel=ch)
            lag.add(b["oldest_age_s"], **lab, channel=ch)
        if ln.get("rtt_ms") is not None:
            rtt.add(ln["rtt_ms"] / 1000, **lab)
        if ln.get("last_in_us"):
            last_in.add(ln["last_in_us"] / 1e6, **lab)
        if ln.get("since_us"):
            since.add(ln["since_us"] / 1e6, **lab)
        paused.add(len(ln.get("paused") or {}), **lab)
        errored.add(1 if ln.get("last_error") else 0, **lab)

    incidents = Family("fednode_incidents", "gauge", "integrity incidents recorded here (forks, verification failures), by kind")
    for kind, n in sorted(snap.get("incidents_by_kind", {}).items()):
        incidents.add(n, kind=kind)
    incidents_total = Family("fednode_incidents_stored", "gauge", "integrity incidents recorded here")
    incidents_total.add(snap.get("incidents", 0))
    quarantine = Family("fednode_quarantine_items", "gauge", "quarantined items by source (replayed or not)")
    for (source, state), n in sorted(snap.get("quarantine_by_source", {}).items()):
        quarantine.add(n, source=source, state=state)
    quarantine_total = Family("fednode_quarantine_stored", "gauge", "quarantined items")
    quarantine_total.add(snap.get("quarantine", 0))
    refused = Family("fednode_refused_peers", "gauge", "peers refused at the TLS/identity check since start")
    if "refused_peers" in snap:
        refused.add(len(snap["refused_peers"]))
    alerts = Family("fednode_alert_records", "gauge", "monitor records (alerts, anomalies, risk points, complaints) held here, by kind")
    for kind, n in sorted(snap.get("alerts_by_kind", {}).items()):
        alerts.add(n, kind=kind)
    certs = Family("fednode_certificate_expiry_timestamp_seconds", "gauge", "certificate not-after (unix time)")
    for name, ts in sorted(snap.get("certificate_expiry", {}).items()):
        certs.add(ts, certificate=name)
    service = Family("fednode_service_value", "gauge",
                     "numeric fields of each service's status section (reconcile results, alert counts, ...)")
    for svc, section in sorted(snap.get("services", {}).items()):
        for key, value in _flatten("", section):
            service.add(value, service=svc, field=key)
    return [info, up, started, recovered, log_seq, own, link_up, link_state, rin, rout, cin, cout, acked, backlog,
            lag, rtt, last_in, since, paused, errored, incidents, incidents_total, quarantine, quarantine_total,
            refused, alerts, certs, service]


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
    import datetime as dt

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
