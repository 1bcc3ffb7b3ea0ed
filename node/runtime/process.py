"""`fednode run`: one asyncio process holding the store, the links, the admin socket and health.

All store work runs on one database thread (one writer per store, never blocking the loop). Local
writers (ingest, tickets, rules) call ``notify()`` so the links wake at once instead of polling.

Before anything starts, ``run`` refuses (exit 2, with the fix) a home another process runs (the
flock of node.home.HomeLock, held until this process ends: a live admin.sock is never replaced),
secrets other local users can read, any problem in any section of node.toml (node.configcheck) and a
listen port (link, push, metrics) another process holds; the link port is then bound without
SO_REUSEPORT, so two nodes never share it. Files the node creates are 0600 (umask 077). A node
below the province without a parent address starts, with a warning: its records go nowhere.

Health (node/runtime/health.py) is evaluated on the node every few seconds; the gRPC health service (the
asyncio servicer: SIGTERM stops the node within the server's grace, 3 s, whatever probes and Watch
streams are open) says NOT_SERVING until the first evaluation and whenever the node is unhealthy.
Readiness: under systemd (``Type=notify``) the node sends READY=1 once it listens, its admin socket
answers, its services run and it has recovered its own logs (at the latest after READY_MAX_WAIT_S,
for a node that waits for its parent however long it takes), then STATUS= lines when its health
changes, and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.core import pki
from node.core.errors import UsageError
from node.core.home import Home, HomeLock, check_secret_modes, tighten_dirs
from node.core.records import CHANNEL_NAMES, channel_name, now_us
from node.features.metrics import Instruments
from node.link import streams
from node.link.budget import ReceiveBudget
from node.link.protocol import LOG, Outbox, StreamKey
from node.runtime.health import READY_MAX_WAIT_S, HealthMonitor, SystemdNotifier, has_parent

log = structlog.get_logger(__name__)
T = TypeVar("T")
VIEW_SYNC_S = 3.0


@dataclass
class LinkState:
    peer: str
    direction: str  # "up": the link to our parent; "down": a link to a child
    state: str = "down"
    since_us: int = field(default_factory=now_us)
    last_in_us: int = 0
    last_out_us: int = 0
    last_records_us: int = 0  # when records last moved (a batch sent or applied): what "busy" means
    rtt_ms: float | None = None
    records_in: int = 0
    records_out: int = 0
    channel_records_in: dict[int, int] = field(default_factory=dict)
    channel_records_out: dict[int, int] = field(default_factory=dict)
    batches_out: int = 0
    last_error: str = ""
    # since when the link has not been connected (its state moves between "connecting" and "down"
    # while it redials; health judges the whole time without a connection); 0 while connected
    down_since_us: int = field(default_factory=now_us)
    peer_heads: dict[StreamKey, int] = field(default_factory=dict)
    local_heads: dict[StreamKey, int] = field(default_factory=dict)
    outbox: Outbox | None = None
    compression: str = ""  # the codec chosen in Hello ("none", "zstd"); "" before the first Hello

    def set(self, state: str) -> None:
        if state != self.state:
            if state == "connected":
                self.down_since_us = 0
            elif self.state == "connected":
                self.down_since_us = now_us()
            self.state, self.since_us = state, now_us()
            log.info("link_state", peer=self.peer, direction=self.direction, state=state)

    def connected(self, peer_heads: dict[StreamKey, int]) -> None:
        self.peer_heads = peer_heads
        self.set("connected")

    def down(self, error: str, refused: bool = False) -> None:
        self.last_error = error
        self.set("refused" if refused else "down")
        log.warning("link_down", peer=self.peer, direction=self.direction, error=error)


class NodeRuntime:
    def __init__(self, home: Home, *, window: int | None = None, batch_records: int | None = None) -> None:
        self.home = home
        self.code = home.code
        self.path = home.path()
        self.parent_code = home.config.parent_code
        self.ledger = home.ledger()
        self.window = window or home.config.window
        self.batch_records = batch_records or home.config.batch_records
        # a relay forwards what its children just sent without reading it back (database thread only); the
        # batches it keeps for that are bounded like those waiting to be applied, by the receive budget
        self.relay = streams.RelayCache(max_bytes=home.config.receive_budget_mb * 1024 * 1024) \
            if self.parent_code else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fednode-db")
        # background services (rules scans, projections, reconciliation) get their own thread, so a long
        # scan never stalls the links; writes still serialise on the store's write lock
        self._bg_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fednode-bg")
        self.sessions: set[Any] = set()
        # bytes of received, unapplied batches held by all links together (node/link/budget.py)
        self.receive_budget = ReceiveBudget(home.config.receive_budget_mb * 1024 * 1024)
        self.links: dict[str, LinkState] = {}
        self.child_reports: dict[str, Any] = {}
        self.refused_peers: dict[str, int] = {}
        # live counters and latency histograms, the process collector (node/features/metrics.py)
        self.instruments = Instruments()
        self.stopping = asyncio.Event()
        self.recovered = asyncio.Event()
        self.recover_target: dict[tuple[str, int], int] = {}
        self.started_us = now_us()
        self.loop = asyncio.get_running_loop()
        self.services: list[Any] = []
        self.scheduler: Any = None
        self._uplink: asyncio.Task[None] | None = None
        self._parent_heads_known = False  # until the first Hello, "recovered" cannot be decided
        self.notifier = SystemdNotifier.from_env()  # systemd's $NOTIFY_SOCKET, taken out of the environment
        self.health = HealthMonitor(self)
        self.health.notifier = self.notifier

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def links_busy(self, within_s: float = 1.0) -> bool:
        """Whether a link moved records this recently: background services then leave it the CPU. Reports,
        acks and keepalives do not count (with children connected, one of those is always arriving)."""
        now = now_us()
        return any(now - st.last_records_us < within_s * 1e6 for st in list(self.links.values()))

    async def bg(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like ``db`` but on the background thread: for services' long work, in chunks."""
        return await self.loop.run_in_executor(self._bg_executor, lambda: fn(*args, **kwargs))

    def notify(self) -> None:
        """Something was stored: wake every service. Links wake by themselves, on the heads view's changes
        (``_heads_changed``), and only those the change concerns."""
        for svc in self.services:
            svc.on_stored()
        if not self.recovered.is_set():
            self.loop.create_task(self._check_recovered())

    def notify_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self.notify)

    def _heads_changed(self, changes: list[Any]) -> None:
        """(On the loop.) Committed changes of the heads view, handed to every link session."""
        for s in list(self.sessions):
            s.changed(changes)

    def _on_commit(self, changes: list[Any]) -> None:
        """(On the writer's thread.) The heads view's listener: hand the changes to the loop."""
        self.loop.call_soon_threadsafe(self._heads_changed, changes)

    async def _sync_heads_view(self) -> None:
        """Writes by another process on this store (a tool run beside the node) reach the links too: one
        read of the change feed's counter every few seconds (``Store.sync_view``)."""
        while True:
            await asyncio.sleep(VIEW_SYNC_S)
            try:
                await self.db(self.ledger.store.sync_view)
            except Exception:  # never fatal: the next round tries again
                log.exception("heads_view_sync_failed")

    def child_state(self, child: str) -> LinkState:
        st = self.links.get(child)
        if st is None:
            st = self.links[child] = LinkState(child, "down")
        return st

    # -- a restored node recovers its own logs before it appends ------------------------------------------
    #
    # Normally the parent's Hello decides: once our own logs are at least what the parent holds of them,
    # we may append. A node that restarts while its parent is down must still work (store and forward),
    # so it also keeps, outside the store, the heads of its own logs as it last saw them (own-heads.json,
    # written a second after appends). A store that is not behind that file is not an old backup: after
    # [link] recover_wait_s without the parent, the node appends. A store behind it (restored from an
    # old copy) waits for the parent however long it takes: appending would reuse seqs it already sent.

    def _own_heads(self) -> dict[str, int]:
        view = self.ledger.store.heads_view()
        return {f"{self.code}/{c}": h.seq for c in CHANNEL_NAMES if (h := view.head(self.code, c)).seq}

    async def _keep_own_heads(self) -> None:
        """Record our own heads outside the store once recovered: on change, at most once a second."""
        await self.recovered.wait()
        written: dict[str, int] | None = None
        while True:
            try:
                heads = await self.db(self._own_heads)
                if heads != written:
                    await asyncio.to_thread(self.home.record_own_heads, heads)
                    written = heads
            except Exception:  # never fatal: the marker only shortens a restart without the parent
                log.exception("own_heads_write_failed")
            await asyncio.sleep(1.0)

    async def after_hello(self, parent_heads: dict[StreamKey, int]) -> None:
        self.recover_target = {(o, c): s for (k, o, c), s in parent_heads.items() if k == LOG and o == self.code}
        self._parent_heads_known = True
        await self._check_recovered()

    async def _check_recovered(self) -> None:
        if self.recovered.is_set() or not self._parent_heads_known:
            return
        heads = await self.db(self.ledger.store.heads)
        behind = {k: s for k, s in self.recover_target.items() if heads.get(k, None) is None or heads[k].seq < s}
        if not behind:
            self.recovered.set()
            log.info("own_logs_current", code=self.code)
        else:
            log.warning("recovering_own_logs", behind={f"{o}/{channel_name(c)}": s for (o, c), s in behind.items()})

    async def _recover_without_parent(self) -> None:
        """After ``recover_wait_s`` without the parent's Hello, recover if the store is not an old copy."""
        await asyncio.sleep(self.home.config.recover_wait_s)
        if self.recovered.is_set():
            return
        recorded = self.home.recorded_own_heads()
        heads = await self.db(self._own_heads)
        if recorded is None:
            log.warning("waiting_for_parent", reason=f"no readable {Home.OWN_HEADS}: a restart cannot be told from a restore",
                        fix="bring the link to the parent up; the node appends once its own logs are current")
            return
        behind = {k: v for k, v in recorded.items() if heads.get(k, 0) < v}
        if behind:
            log.error("store_behind_own_heads", behind=behind, fix="this store looks restored from an older copy: it "
                      "waits for the parent to send back what it had already sent (bring the link up)")
            return
        if not self.recovered.is_set():
            self.recovered.set()
            log.warning("appending_without_parent", waited_s=self.home.config.recover_wait_s,
                        note="the parent is unreachable; own logs are not behind their last recorded heads")

    async def _announce_ready(self) -> None:
        """READY=1 for systemd once the node has recovered its own logs (everything else runs by now)."""
        if not self.recovered.is_set():
            await self.notifier.notify("STATUS=recovering its own logs from the parent")
            try:
                await asyncio.wait_for(self.recovered.wait(), READY_MAX_WAIT_S)
            except TimeoutError:
                log.warning("ready_before_recovered", waited_s=READY_MAX_WAIT_S,
                            note="the node runs and waits for its parent; `fednode health` says unhealthy meanwhile",
                            fix="bring the link to the parent up")
        result, line = await self.health.became_ready()
        await self.notifier.notify("READY=1", f"STATUS={line}")
        log.info("ready", health=result["state"], systemd=self.notifier.enabled)

    async def wait_recovered(self, timeout: float = 30.0) -> None:
        from node.core.errors import FednodeError

        try:
            await asyncio.wait_for(self.recovered.wait(), timeout)
        except TimeoutError:
            raise FednodeError(
                f"{self.code} is still recovering its own logs from its parent and may not append yet",
                fix="wait until the link to the parent is up (`fednode status`); a node restored from an old "
                "backup must first fetch what it had already sent",
            ) from None

    # -- status -------------------------------------------------------------------------------------------

    def _link_status(self, st: LinkState) -> dict[str, Any]:
        backlog: dict[str, Any] = {}
        acked: list[dict[str, Any]] = []
        if st.outbox is not None:
            pending = st.outbox.backlog(dict(st.local_heads))  # a copy: the loop moves it meanwhile
            for stream, n in sorted(pending.items()):
                ch = channel_name(stream[2])
                b = backlog.setdefault(ch, {"records": 0, "oldest_age_s": 0.0})
                b["records"] += n
                t = streams.oldest_pending_time(self.ledger, stream, st.outbox.cursor(stream).acked)
                if t:
                    b["oldest_age_s"] = max(b["oldest_age_s"], round((now_us() - t) / 1e6, 1))
            acked = [{"kind": k, "origin": o, "channel": channel_name(c), "seq": cur.acked,
                      "behind": pending.get((k, o, c), 0)}
                     for (k, o, c), cur in sorted(st.outbox.cursors.items())]
        out = {
            "peer": st.peer, "direction": st.direction, "state": st.state, "since_us": st.since_us,
            "last_in_us": st.last_in_us, "last_out_us": st.last_out_us, "rtt_ms": st.rtt_ms,
            "records_in": st.records_in, "records_out": st.records_out, "backlog": backlog,
            "acked": acked, "last_error": st.last_error, "compression": st.compression,
            "paused": {f"{o}/{channel_name(c)}": p.error for (_k, o, c), p in (st.outbox.paused.items() if st.outbox else [])},
        }
        if st.direction == "up" and self.relay is not None:
            out["relayed_segments"] = self.relay.hits  # forwarded from children without reading the store
            out["relay_cache"] = self.relay.status()
        return out

    def status_sync(self, tree: bool = True, depth: int | None = None, code: str | None = None,
                    logs: bool = True) -> dict[str, Any]:
        """The node's status with its own links; ``tree``: also its subtree's link reports, to ``depth``
        levels below it, only the branch of ``code`` when given (node.app.status.subtree). Without
        ``logs`` nor ``tree``, per-origin lists summarised (node.app.status.shape)."""
        from node.app.status import shape, status_data, subtree

        data = status_data(self.home)
        data["running"] = True
        data["pid"] = os.getpid()
        data["started_us"] = self.started_us
        data["recovered"] = self.recovered.is_set()
        data["links"] = [self._link_status(st) for st in self.links.values()]
        data["refused_peers"] = self.refused_peers
        data["receive_budget"] = self.receive_budget.status()
        if tree:
            data["tree"] = subtree(self.child_reports, depth, code)
        for svc in self.services:
            section = svc.status()
            if section is not None:
                data[svc.name] = section
        return shape(data, detail=logs or tree)

    async def status(self, tree: bool = True, depth: int | None = None, code: str | None = None,
                     logs: bool = True) -> dict[str, Any]:
        return await self.db(self.status_sync, tree, depth, code, logs)

    async def link_report(self) -> dict[str, Any]:
        """What we send up: our links, and our children's reports beneath them."""
        def build() -> dict[str, Any]:
            return {"code": self.code, "time_us": now_us(),
                    "links": [self._link_status(st) for st in self.links.values()],
                    "children": self.child_reports}

        return await self.db(build)

    async def _drain_audit_spool(self) -> None:
        """Operator actions logged while the node was stopped enter the log once our logs are current."""
        from node.features.worklog import drain_spool

        await self.recovered.wait()
        try:
            n = await self.db(drain_spool, self.home.dir, self.ledger)
        except Exception:
            log.exception("audit_spool_failed")
            return
        if n:
            log.info("audit_spool_drained", actions=n)
            self.notify()

    def _start_uplink(self) -> None:
        from node.link import transport

        up = self.links.get(self.parent_code) or LinkState(self.parent_code, "up")
        self.links[self.parent_code] = up
        self._uplink = asyncio.create_task(transport.dial_parent(self, up))

    async def reload(self) -> None:
        """SIGHUP: re-read node.toml and apply what can change without a restart. A changed parent
        address redials (the link resumes from the heads, so nothing is lost); a changed listen address
        or store URL needs a restart, which is logged."""
        from node.core import config as config_mod
        from node.runtime import configcheck
        from node.runtime import logging as node_logging

        try:
            new = config_mod.load(self.home.config.path)
            problems = configcheck.check_config(new)
        except Exception as e:
            log.error("reload_failed", error=str(e), note="the running configuration stays in force")
            return
        if problems:
            log.error("reload_failed", problems=[p.as_dict() for p in problems],
                      note="the running configuration stays in force; `fednode check DIR` lists the problems")
            return
        old, self.home.config = self.home.config, new
        node_logging.configure(new.log_level, new.log_format)
        if (new.parent, new.parent_code) != (old.parent, old.parent_code):
            self.parent_code = new.parent_code
            if self._uplink is not None:
                self._uplink.cancel()
                await asyncio.gather(self._uplink, return_exceptions=True)
                self._uplink = None
            if new.parent and new.parent_code:
                self._start_uplink()
            log.info("reload_parent_changed", parent=new.parent)
        for name in ("listen", "store_url", "code", "admin_socket"):
            if getattr(new, name) != getattr(old, name):
                log.warning("reload_needs_restart", field=name, running=getattr(old, name), configured=getattr(new, name))
                setattr(self.home.config, name, getattr(old, name))
        for svc in self.services:
            hook = getattr(svc, "reload", None)
            if hook is not None:
                await hook()
        log.info("reloaded", config=str(new.path))

    # -- running ------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        from node.link import transport
        from node.runtime import admin
        from node.runtime.services import SERVICES
        from proto.fednode.v1 import fednode_pb2_grpc as pbg

        cfg = self.home.config
        # the heads every link reads, in memory, current with each commit; links hear what moved
        view = await self.db(self.ledger.store.heads_view)
        view.subscribe(self._on_commit)
        self.scheduler = make_scheduler(self)
        self.services = [cls(self) for cls in SERVICES]
        server = None
        # the asyncio servicer: its Watch streams are coroutines the server cancels when it stops (the
        # threaded one blocked a worker thread per Watch, and SIGTERM then waited for the prober)
        health_servicer = health.aio.HealthServicer()
        if cfg.listen:
            server = grpc.aio.server(options=transport.SERVER_OPTIONS)
            pbg.add_FederationServicer_to_server(transport.FederationService(self), server)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            for svc in self.services:
                svc.add_to_server(server)
            try:
                bound = server.add_secure_port(cfg.listen, transport.server_credentials(self))
            except RuntimeError:
                bound = 0
            if not bound:
                raise cannot_listen(cfg.listen, "[link] listen")
            # NOT_SERVING until the first health evaluation says otherwise (node/runtime/health.py)
            for name in ("", "fednode.v1.Federation"):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self.health.servicer = health_servicer
            await server.start()
            log.info("listening", address=cfg.listen, path=self.path)
        if cfg.parent and self.parent_code:
            self._start_uplink()
            recover_task = asyncio.create_task(self._recover_without_parent())
        else:
            self.recovered.set()
            recover_task = None
        heads_task = asyncio.create_task(self._keep_own_heads())
        view_task = asyncio.create_task(self._sync_heads_view())
        admin_server = await admin.serve(self)
        spool_task = asyncio.create_task(self._drain_audit_spool())
        self.scheduler.start()
        for svc in self.services:
            await svc.start()
            log.info("service_started", service=svc.name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # what exists now (modules, services, the keyring) lives as long as the node: keep it out of the
        # collector's full passes, which otherwise rescan it while batches come and go (ingest: -0.3 s
        # of collection per 100k rows)
        gc.freeze()
        health_task = asyncio.create_task(self.health.run())
        ready_task = asyncio.create_task(self._announce_ready())
        log.info("node_running", code=self.code, pid=os.getpid())
        await self.stopping.wait()
        log.info("node_stopping", code=self.code)
        await self.notifier.notify("STOPPING=1", "STATUS=stopping")
        # graceful: stop taking new work, let the in-flight transaction finish, then close
        admin_server.close()
        await admin.drain(self)  # every request accepted is answered: a client never sees a dropped one
        for task in (ready_task, health_task, spool_task, heads_task, view_task):
            task.cancel()
        await asyncio.gather(ready_task, health_task, return_exceptions=True)
        if recover_task is not None:
            recover_task.cancel()
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("service_stop_failed", service=svc.name)
        self.scheduler.shutdown(wait=False)
        if server is not None:
            await health_servicer.enter_graceful_shutdown()
            await server.stop(grace=3)
        if self._uplink is not None:
            self._uplink.cancel()
            await asyncio.gather(self._uplink, return_exceptions=True)
        self._bg_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        view.unsubscribe(self._on_commit)
        with contextlib.suppress(FileNotFoundError):
            Path(admin.socket_path(self.home)).unlink()
        self.home.close()
        log.info("node_stopped", code=self.code)


def make_scheduler(rt: NodeRuntime) -> Any:
    """APScheduler 3.x on our loop, its jobs persisted in the node's own database (table apscheduler_jobs),
    so scheduled work survives restarts; misfires within an hour still run once (coalesced)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    return AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=rt.ledger.store.engine, tablename="apscheduler_jobs")},
        job_defaults={"coalesce": True, "misfire_grace_time": 3600, "max_instances": 1},
        timezone="Asia/Shanghai",
        event_loop=rt.loop,
    )


def port_in_use(address: str, field: str) -> UsageError:
    port = address.rpartition(":")[2]
    return UsageError(f"port {address} is in use by another process: {field} cannot be opened",
                      fix=f"stop the process holding it (`ss -ltnp 'sport = :{port}'` shows it), or change {field} "
                      "in node.toml")


def bind_error(address: str) -> OSError | None:
    """Bind ``address`` once without SO_REUSEPORT (a port held even with SO_REUSEPORT, as gRPC binds by
    default, is then refused), and let it go. The error, or None when it could be bound."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as e:
        return e if isinstance(e, OSError) else OSError(errno.EINVAL, str(e))
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            try:
                s.bind(sockaddr)
            except OSError as e:
                return e
    return None


def cannot_listen(address: str, field: str) -> UsageError:
    """Why ``address`` cannot be listened on: in use (the usual case), or another reason."""
    e = bind_error(address)
    if e is None or e.errno == errno.EADDRINUSE:
        return port_in_use(address, field)
    return UsageError(f"cannot listen on {address} ({field}): {e.strerror or e}",
                      fix=f"use an address of this machine in {field} (0.0.0.0:PORT for every interface)")


def listen_addresses(home: Home) -> list[tuple[str, str]]:
    """(field, HOST:PORT) of every port the node will listen on: link, push, metrics."""
    from node.features import metrics

    cfg = home.config
    out = [("[link] listen", cfg.listen)] if cfg.listen else []
    push = (cfg.sections.get("adapters") or {}).get("push")
    if isinstance(push, dict) and isinstance(push.get("listen"), str) and push["listen"]:
        out.append(("[adapters.push] listen", push["listen"]))
    mcfg = metrics.parse_config(cfg.path, cfg.sections.get("metrics"))
    if mcfg.enabled:
        out.append(("[metrics] listen", mcfg.listen))
    return out


def check_ports_free(home: Home) -> None:
    """Refuse (exit 2) a listen port another process holds, before anything starts."""
    for what, address in listen_addresses(home):
        e = bind_error(address)
        if e is not None and e.errno == errno.EADDRINUSE:
            raise port_in_use(address, what)


def run(home: Home) -> int:
    from node.runtime import configcheck

    if not home.enrolled:
        raise UsageError(f"{home.code} is not enrolled", fix="install its certificate bundle (`fednode pki install`)")
    if home.config.parent and not home.config.parent_code:
        from node.core.errors import ConfigError

        raise ConfigError(f"{home.config.path}: link.parent is set but link.parent_code is empty",
                          fix="install the bundle from the parent (`fednode pki install`), which records it")
    if not home.config.parent and has_parent(home):
        log.warning("no_parent_address", code=home.code, level=home.config.level,
                    warning="this node has no [link] parent: its records go nowhere",
                    fix='set [link] parent = "HOST:PORT" of the parent node in node.toml, then restart')
    os.umask(0o077)  # whatever the node creates (WAL, spool, reports, quarantine files) is its own
    lock = HomeLock(home.dir).acquire()  # one process per home, until this one ends
    try:
        check_secret_modes(home)
        configcheck.require_valid(home.config)
        check_ports_free(home)
        home.store(migrate=True)  # with `fednode migrate`, the only upgrade of an older schema (node/core/migrate.py)
        for change in tighten_dirs(home):
            log.warning("home_mode_tightened", change=change)

        async def main() -> None:
            rt = NodeRuntime(home)
            await rt.serve()

        t0 = time.monotonic()
        asyncio.run(main())
        log.info("exit", uptime_s=round(time.monotonic() - t0, 1))
        return 0
    finally:
        lock.release()


def tls_not_after(home: Home) -> str:
    return pki.not_after(home.load_cert("tls.crt")).isoformat()
