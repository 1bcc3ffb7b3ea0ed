"""Health and readiness of a running node: every check with its state; the worst one decides.

Rules of this module:
- The checks: ``store`` (answers a query; writable: the SQLite file and its directory, or a PostgreSQL
  server that is not read-only), ``recovered`` (own logs current: a restored node may not append yet),
  ``uplink`` (a node below the province: the link to its parent; down longer than
  ``parent_down_unhealthy_s`` is unhealthy, shorter is degraded; no parent address is degraded), one
  per service (``service:NAME``, ``adapter:NAME``: switched off by configuration, failed, crashed),
  ``cert:FILE`` for each certificate of the node (expired or not yet valid: unhealthy; within
  CERT_WARN_DAYS of its end: degraded) and ``disk`` (free space where the store lives).
- A check is ``ok``, ``off`` (switched off by configuration: shown, never counted), ``degraded`` or
  ``unhealthy``. The node is the worst of its checks: ``healthy``, ``degraded`` (`fednode health`
  warns and exits 0) or ``unhealthy`` (exit 1).
- ``HealthMonitor`` evaluates on the node every INTERVAL_S seconds (and at once when the node becomes
  ready); everything that reports health reads its last result: the admin op ``health``, the gRPC
  health service (NOT_SERVING while unhealthy), the HTTP /healthz (503 while unhealthy) and systemd's
  STATUS=. A read never evaluates and never logs; an evaluation logs only a change of the node's state,
  and only once the node is ready.
- Services are judged from their ``status()`` section (on the store thread, like `fednode status`),
  or from their own ``health()`` (on the loop) when they have one; a service whose background task
  died with an exception is ``crashed`` whatever its status says.
- Readiness: ``SystemdNotifier`` writes sd_notify datagrams to $NOTIFY_SOCKET (a path, or ``@name`` in
  the abstract namespace); the variable is taken out of the environment so that child processes
  (adapter readers, notify commands) never talk to systemd. No package: ``sdnotify`` (the pure-Python
  one) has had no release since 2017, and ``systemd-python``/``cysystemd`` need libsystemd to build,
  which the offline bundle cannot assume. The protocol is one datagram of ``KEY=value`` lines.
- The states, ``Check``, ``worst``/``summary`` and the certificate and disk checks (those `fednode health`
  judges a stopped node by) are node/features/health.py's, re-exported here; this module adds the checks
  of the running node and the monitor.
- The judging functions are pure (they take what they judge, and ``now``); only ``probe_store``,
  ``disk_check`` and ``load_certificates`` touch the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from node.core.config import Config
    from node.core.home import Home
    from node.core.store import Store
    from node.runtime.process import LinkState, NodeRuntime

from node.features.health import (  # noqa: F401  (the states and pure judgements, re-exported: health.OK ...)
    _RANK,
    CERT_WARN_DAYS,
    CERTIFICATES,
    DEGRADED,
    DISK_DEGRADED_BYTES,
    DISK_UNHEALTHY_BYTES,
    NODE_STATES,
    OFF,
    OK,
    UNHEALTHY,
    Check,
    certificate_checks,
    disk_check,
    disk_judgement,
    load_certificates,
    offline_checks,
    store_dir,
    summary,
    worst,
)

log = structlog.get_logger(__name__)

INTERVAL_S = 3.0  # how often the running node evaluates its health
STORE_TIMEOUT_S = 10.0  # a store (or store thread) that does not answer within this is unhealthy
# READY=1 waits for recovery at most this long (below the unit's TimeoutStartSec=120): a node that waits
# for its parent however long it takes (a store restored from an old copy) must not be killed by systemd
READY_MAX_WAIT_S = 90.0


def parent_down_unhealthy_s(cfg: Config) -> float:
    return float(cfg.parent_down_unhealthy_s)  # [link] parent_down_unhealthy_s (docs/configuration.md)


def has_parent(home: Home) -> bool:
    """Whether this node sits below another one (everything but the root of the tree)."""
    if home.config.parent_code or home.config.parent:
        return True
    try:
        return "/" in home.path()
    except Exception:  # not enrolled: judged by its level
        return home.config.level != "province"


# ---- the checks (pure) -----------------------------------------------------------------------------------


def recovered_check(recovered: bool) -> Check:
    if recovered:
        return Check("recovered", OK, "own logs current")
    return Check("recovered", UNHEALTHY, "still recovering its own logs from the parent: it may not append yet "
                 "(bring the link to the parent up)")


def uplink_check(below_root: bool, parent: str, link: LinkState | None, now_us: int, threshold_s: float) -> Check:
    if not below_root:
        return Check("uplink", OK, "the root of the tree: no parent")
    if not parent:
        return Check("uplink", DEGRADED, 'this node has no [link] parent: its records go nowhere (set [link] parent = '
                     '"HOST:PORT" of the parent node and restart)')
    if link is None:
        return Check("uplink", DEGRADED, f"not dialled yet ({parent})")
    if link.state == "connected":
        return Check("uplink", OK, f"connected to {link.peer} ({parent})")
    down_s = max(0.0, (now_us - link.down_since_us) / 1e6)
    state = UNHEALTHY if down_s >= threshold_s else DEGRADED
    detail = (f"no connection to {link.peer} ({parent}) for {down_s:.0f} s, now {link.state} "
              f"(unhealthy after {threshold_s:g} s)")
    if link.last_error:
        detail += f": {link.last_error}"
    return Check("uplink", state, detail)


def _error_text(section: Mapping[str, Any]) -> str:
    for key in ("error", "_config_error", "config_error"):
        v = section.get(key)
        if isinstance(v, str) and v:
            return v
    return ""


def adapter_checks(section: Any, sections: Mapping[str, Any]) -> list[Check]:
    """[adapters.*]: one check per adapter, the switched-off ones included."""
    out = []
    conf = sections.get("adapters")
    status = section if isinstance(section, dict) else {}
    if status.get("_config_error"):
        out.append(Check("service:adapters", UNHEALTHY, f"not started: {status['_config_error']}"))
    for name, sec in (conf.items() if isinstance(conf, dict) else []):
        if not isinstance(sec, dict) or name in status:
            continue
        if name == "push":
            if not sec.get("listen"):
                out.append(Check("adapter:push", OFF, "[adapters.push] has no listen address"))
        elif sec.get("enabled", True) is False:
            out.append(Check(f"adapter:{name}", OFF, f"[adapters.{name}] enabled = false"))
    for name, c in status.items():
        if name.startswith("_") or not isinstance(c, dict):
            continue
        kind = c.get("type") or "?"
        if c.get("state") == "error":
            out.append(Check(f"adapter:{name}", UNHEALTHY, f"{kind}: failing: {c.get('last_error') or '?'}"))
        else:
            out.append(Check(f"adapter:{name}", OK, f"{kind}: {c.get('state', '?')}, read {c.get('read', 0)}, "
                             f"accepted {c.get('accepted', 0)}" + (f", at {c['position']}" if c.get("position") else "")))
    return out


def service_checks(name: str, section: Any, sections: Mapping[str, Any], crashed: str = "") -> list[Check]:
    """A service judged from its `status()` section (None: it has nothing to report)."""
    if name == "adapters":
        out = adapter_checks(section, sections)
        if crashed:
            out.append(Check("service:adapters", UNHEALTHY, f"crashed: {crashed}"))
        return out
    if crashed:
        return [Check(f"service:{name}", UNHEALTHY, f"crashed: {crashed}")]
    if isinstance(section, Exception):
        return [Check(f"service:{name}", UNHEALTHY, f"its status cannot be read: {type(section).__name__}: {section}")]
    if not isinstance(section, dict):
        return [Check(f"service:{name}", OK, "running")]
    error = _error_text(section)
    if error:
        return [Check(f"service:{name}", UNHEALTHY, f"failed: {error}")]
    if section.get("enabled") is False:
        return [Check(f"service:{name}", OFF, f"[{name}] enabled = false")]
    detail = str(section.get("state") or "running")
    if isinstance(section.get("last_error"), str) and section["last_error"]:
        detail += f" (last error: {section['last_error'][:200]})"
    return [Check(f"service:{name}", OK, detail)]


def crashed_task(svc: Any) -> str:
    """The exception that ended one of a service's background tasks (its usual attribute names), or ''."""
    tasks: list[Any] = []
    for attr in ("_task", "_notifier_task", "task", "tasks"):
        v = getattr(svc, attr, None)
        tasks.extend(v if isinstance(v, list | tuple | set) else [v])
    for t in tasks:
        if isinstance(t, asyncio.Task) and t.done() and not t.cancelled() and t.exception() is not None:
            e = t.exception()
            return f"{type(e).__name__}: {e}"
    return ""


# ---- the checks that touch the system ------------------------------------------------------------------


def probe_store(store: Store, home: Home) -> Check:
    """(Blocking.) The store answers a query and can be written."""
    from sqlalchemy import select, text

    from node.core import schema
    from node.core.home import sqlite_path

    t0 = time.monotonic()
    try:
        with store.read() as conn:
            conn.execute(select(schema.meta.c.key).limit(1)).scalar()  # reads the database, not only the socket
            read_only = bool(store.is_postgres and conn.execute(text("SHOW transaction_read_only")).scalar() == "on")
    except Exception as e:
        return Check("store", UNHEALTHY, f"does not answer: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    took_ms = (time.monotonic() - t0) * 1000
    db = sqlite_path(home.config.store_url, home.dir)
    if read_only:
        return Check("store", UNHEALTHY, "the PostgreSQL server is read-only (a standby?): the node cannot write")
    if db is not None:
        for p in (db, db.parent):
            if not os.access(p, os.W_OK):
                return Check("store", UNHEALTHY, f"{p} is not writable by this process (owner, mode, read-only mount?)")
        return Check("store", OK, f"SQLite {db} answers in {took_ms:.0f} ms, writable")
    return Check("store", OK, f"PostgreSQL answers in {took_ms:.0f} ms, writable")


# ---- systemd readiness ----------------------------------------------------------------------------------


class SystemdNotifier:
    """sd_notify(3) without libsystemd: one datagram of KEY=value lines to $NOTIFY_SOCKET."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self.sent: list[str] = []
        self._warned = False

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | None:
        a = self.address
        if not a:
            return None
        if a.startswith("@"):
            return "\0" + a[1:]
        return a if a.startswith("/") else None

    def send(self, *fields: str) -> bool:
        """(Blocking, briefly.) Send one notification; False when not under systemd or it failed (logged once)."""
        target = self._target()
        if target is None:
            if self.address and not self._warned:
                self._warned = True
                log.warning("notify_socket_unsupported", address=self.address, note="only paths and @abstract names")
            return False
        msg = "\n".join(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(5.0)
                s.connect(target)
                s.sendall(msg.encode())
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("notify_socket_failed", address=self.address, error=str(e))
            return False
        self.sent.append(msg)
        return True

    async def notify(self, *fields: str) -> bool:
        if not self.enabled:
            return False
        return await asyncio.to_thread(self.send, *fields)


# ---- the monitor on the running node ---------------------------------------------------------------------


class HealthMonitor:
    """Evaluates the node's health every INTERVAL_S seconds; the reports read ``last``."""

    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.last: dict[str, Any] | None = None
        self.ready = False
        self.servicer: Any = None  # grpc_health.v1 health.aio.HealthServicer, when the node listens
        self.notifier: SystemdNotifier | None = None
        self._serving: bool | None = None
        self._status_line = ""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._store_probe: asyncio.Future[Check] | None = None
        self._store_probe_since = 0.0
        self._services: list[Check] = []
        self._certs: dict[str, Any] = {}
        self._cert_mtimes: dict[str, int] = {}
        self._below_root: bool | None = None  # the node's place in the tree changes only with a new enrolment

    @property
    def state(self) -> str | None:
        return self.last["state"] if self.last else None

    # -- reads (never evaluate, never log) --------------------------------------------------------------

    def http(self) -> tuple[str, bytes]:
        """/healthz: 200 "ok" healthy, 200 "degraded: ..." degraded, 503 unhealthy or not evaluated yet."""
        if self.last is None:
            return "503 Service Unavailable", b"starting\n"
        state = self.last["state"]
        if state == "healthy":
            return "200 OK", b"ok\n"
        line = summary(state, self.last["checks"]).encode()[:4000] + b"\n"
        return ("200 OK" if state == "degraded" else "503 Service Unavailable"), line

    async def current(self) -> dict[str, Any]:
        if self.last is None:
            return await self.evaluate()
        return self.last

    # -- evaluation --------------------------------------------------------------------------------------

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:  # never fatal; the last result stays
                log.exception("health_evaluation_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), INTERVAL_S)
            self._wake.clear()

    def _certificates(self) -> dict[str, Any]:
        """keys/*.crt, read again only when a file changed (rotation, install)."""
        home = self.rt.home
        for name in CERTIFICATES:
            p = home.key_path(name)
            try:
                mtime = p.stat().st_mtime_ns
            except OSError:
                self._certs.pop(name, None)
                self._cert_mtimes.pop(name, None)
                continue
            if self._cert_mtimes.get(name) != mtime:
                with contextlib.suppress(Exception):
                    self._certs[name] = home.load_cert(name)
                    self._cert_mtimes[name] = mtime
        return {n: self._certs[n] for n in CERTIFICATES if n in self._certs}

    async def _store_check(self) -> Check:
        """The store probe on a thread of its own (not the store thread, which may be busy with a batch);
        one at a time: a probe that hangs is reported, not stacked."""
        loop = asyncio.get_running_loop()
        if self._store_probe is None:
            self._store_probe = loop.run_in_executor(None, probe_store, self.rt.ledger.store, self.rt.home)
            self._store_probe_since = time.monotonic()
        probe = self._store_probe
        try:
            result = await asyncio.wait_for(asyncio.shield(probe), STORE_TIMEOUT_S)
        except TimeoutError:
            return Check("store", UNHEALTHY, f"does not answer for {time.monotonic() - self._store_probe_since:.0f} s")
        self._store_probe = None
        return result

    def _statuses(self, names: list[str]) -> dict[str, Any]:
        """(Store thread.) status() of the services that have no health() of their own."""
        out: dict[str, Any] = {}
        for svc in self.rt.services:
            if svc.name in names:
                try:
                    out[svc.name] = svc.status()
                except Exception as e:
                    out[svc.name] = e
        return out

    async def _service_checks(self) -> list[Check]:
        rt = self.rt
        sections = rt.home.config.sections
        out: list[Check] = []
        by_status = [svc.name for svc in rt.services if not callable(getattr(svc, "health", None))]
        try:
            statuses = await asyncio.wait_for(rt.db(self._statuses, by_status), STORE_TIMEOUT_S)
        except TimeoutError:
            return self._services  # the store check says why; keep the last judgement
        for svc in rt.services:
            hook = getattr(svc, "health", None)
            crashed = crashed_task(svc)
            if callable(hook) and not crashed:
                try:
                    out.extend(hook())
                except Exception as e:
                    out.append(Check(f"service:{svc.name}", UNHEALTHY, f"its health cannot be read: {type(e).__name__}: {e}"))
            else:
                out.extend(service_checks(svc.name, statuses.get(svc.name), sections, crashed))
        self._services = out
        return out

    async def evaluate(self) -> dict[str, Any]:
        from node.core.records import now_us

        async with self._lock:
            rt = self.rt
            t0 = time.monotonic()
            store = await self._store_check()
            checks = [store, recovered_check(rt.recovered.is_set())]
            link = rt.links.get(rt.parent_code) if rt.parent_code else None
            if self._below_root is None:
                self._below_root = has_parent(rt.home)
            checks.append(uplink_check(self._below_root, rt.home.config.parent, link, now_us(),
                                       parent_down_unhealthy_s(rt.home.config)))
            checks += await self._service_checks()
            checks += certificate_checks(self._certificates(), dt.datetime.now(dt.UTC))
            try:
                checks.append(await asyncio.wait_for(asyncio.to_thread(disk_check, rt.home), STORE_TIMEOUT_S))
            except TimeoutError:
                checks.append(Check("disk", UNHEALTHY, f"the filesystem of {store_dir(rt.home)} does not answer"))
            result = {
                "state": worst(c.state for c in checks),
                "checks": {c.name: c.as_dict() for c in checks},
                "evaluated_us": now_us(),
                "took_ms": round((time.monotonic() - t0) * 1000, 1),
                "ready": self.ready,
            }
            previous, self.last = self.last, result
            await self._publish(previous, result)
            return result

    async def _publish(self, previous: dict[str, Any] | None, result: dict[str, Any]) -> None:
        state = result["state"]
        serving = state != "unhealthy"
        if self.servicer is not None and serving != self._serving:
            from grpc_health.v1 import health_pb2

            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in ("", "fednode.v1.Federation"):
                await self.servicer.set(service, status)
            self._serving = serving
        line = summary(state, result["checks"])[:1000]
        if self.ready and line != self._status_line and self.notifier is not None:
            await self.notifier.notify(f"STATUS={line}")
        self._status_line = line
        if self.ready and previous is not None and previous["state"] != state:
            bad = {n: c["detail"] for n, c in result["checks"].items() if _RANK.get(c["state"], 0) > 0}
            worse = NODE_STATES.index(state) > NODE_STATES.index(previous["state"])
            (log.warning if worse else log.info)("health_changed", state=state, was=previous["state"], checks=bad)

    async def became_ready(self) -> tuple[dict[str, Any], str]:
        """Evaluate now, and from now on report changes (logs, STATUS=). The result and its STATUS line."""
        result = await self.evaluate()
        self.ready = result["ready"] = True
        self._status_line = summary(result["state"], result["checks"])[:1000]
        return result, self._status_line
