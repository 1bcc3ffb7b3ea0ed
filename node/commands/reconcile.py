"""`fednode reconcile DIR [--json]`, the `reconcile` admin op, and the nightly ReconcileService.

Rules of this module:
- One run at a time per node home, whoever starts it (the scheduler, the admin op, the CLI on a
  stopped node): an asyncio lock inside the node, and an exclusive ``flock`` on ``DIR/reconcile.lock``
  across processes. A run that finds either taken is skipped and says so; it never waits.
- The schedule is an APScheduler cron job (``[reconcile] cron``, ``jitter_s``; Asia/Shanghai time) in
  the node's persistent job store. At start the stored job is kept when its trigger still matches the
  config, so a run missed while the node was down fires once at start (coalesced, within the misfire
  grace time); a changed config replaces it.
- While the node runs, the reconciliation runs in a worker thread; its store work goes to the node's
  database thread, and tails for the parent go through the live link (its cursors are rewound to the
  parent's heads), so there is only ever one link per parent-child pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from node import admin
from node.cli import command, emit, open_home
from node.home import Home
from node.ledger import Ledger
from node.reconcile import (
    Db,
    GrpcParent,
    ReconcileError,
    RunReport,
    last_per_peer,
    last_reports,
    reconcile_with_parent,
)
from node.services import Service
from node.store import LogKey
from proto.fednode.v1 import fednode_pb2 as pb

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)

JOB_ID = "fednode.reconcile"
TIMEZONE = "Asia/Shanghai"
MISFIRE_GRACE_S = 6 * 3600  # a node down at 02:00 still reconciles when it comes back the same morning
PUSH_WAIT_S = 120.0


# ---- one run at a time ---------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(home_dir: Path) -> Iterator[bool]:
    """Exclusive, non-blocking: yields False when another process holds it."""
    fd = os.open(home_dir / "reconcile.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason}


# ---- the parent, seen from a running node --------------------------------------------------------------


class RunningParent(GrpcParent):
    """Heads, Fetch and Chains over their own RPCs; tails go up through the node's live link."""

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt.home)
        self.rt = rt

    def push(self, ledger: Ledger, db: Db, tails: dict[LogKey, int]) -> dict[LogKey, int]:
        rewound = asyncio.run_coroutine_threadsafe(self._rewind(tails), self.rt.loop).result()
        if not rewound:  # no live link to the parent right now: carry the tails ourselves
            return super().push(ledger, db, tails)
        targets = {k: ledger_head for k in tails if (ledger_head := db(ledger.store.head, *k).seq)}
        deadline = time.monotonic() + PUSH_WAIT_S
        held = dict(tails)
        while time.monotonic() < deadline:
            for (o, c), want in targets.items():
                if held[(o, c)] < want:
                    got = self.chains(pb.ChainsRequest(origin=o, channel=c, seqs=[want]))  # type: ignore[arg-type]
                    if got.chains and got.chains[0]:
                        held[(o, c)] = want
            if all(held[k] >= v for k, v in targets.items()):
                break
            time.sleep(0.2)
        return held

    async def _rewind(self, tails: dict[LogKey, int]) -> bool:
        from node.link import LOG

        for s in list(self.rt.sessions):
            if s.is_child_side and s.established:
                for (o, c), seq in tails.items():
                    cur = s.outbox.cursor((LOG, o, c))
                    cur.acked = min(cur.acked, seq)
                    cur.sent = min(cur.sent, seq)
                s.wake.set()
                return True
        return False


# ---- the service ----------------------------------------------------------------------------------------

_service: ReconcileService | None = None


async def scheduled_reconcile() -> None:
    """The job the scheduler stores (by reference, so it survives restarts)."""
    deadline = time.monotonic() + 60
    while _service is None and time.monotonic() < deadline:  # the scheduler starts before the services
        await asyncio.sleep(0.1)
    if _service is None:
        log.error("reconcile_job_without_service")
        return
    await _service.run("schedule")


def make_trigger(cron: str, jitter_s: int) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron, timezone=TIMEZONE)
    trigger.jitter = jitter_s or None
    return trigger


def trigger_signature(trigger: Any) -> str:
    return f"{trigger}|{trigger.timezone}|{trigger.jitter}"


def ensure_job(scheduler: Any, cron: str, jitter_s: int) -> Any:
    """Keep the stored job when its trigger matches the config (so a missed run still fires), else (re)add."""
    trigger = make_trigger(cron, jitter_s)
    job = scheduler.get_job(JOB_ID)
    if job is not None and trigger_signature(job.trigger) == trigger_signature(trigger):
        return job
    return scheduler.add_job(scheduled_reconcile, trigger=trigger, id=JOB_ID, name="nightly reconciliation",
                             replace_existing=True, coalesce=True, max_instances=1,
                             misfire_grace_time=MISFIRE_GRACE_S)


Runner = Callable[[str], Awaitable[dict[str, Any]]]


class ReconcileService(Service):
    name = "reconcile"

    def __init__(self, rt: NodeRuntime, runner: Runner | None = None) -> None:
        super().__init__(rt)
        self._lock = asyncio.Lock()
        self.running_since_us = 0
        self.runs = 0
        self._runner = runner or self._run_against_parent

    async def start(self) -> None:
        global _service
        cfg = self.rt.home.config
        try:
            ensure_job(self.rt.scheduler, cfg.reconcile_cron, cfg.reconcile_jitter_s)
        except ValueError as e:
            log.error("reconcile_cron_invalid", cron=cfg.reconcile_cron, error=str(e),
                      fix="set [reconcile] cron to a valid 5-field expression and send SIGHUP")
        _service = self

    async def stop(self) -> None:
        global _service
        if _service is self:
            _service = None

    async def reload(self) -> None:
        cfg = self.rt.home.config
        ensure_job(self.rt.scheduler, cfg.reconcile_cron, cfg.reconcile_jitter_s)

    async def run(self, trigger: str) -> dict[str, Any]:
        if self._lock.locked():
            log.warning("reconcile_skipped", reason="already running", trigger=trigger)
            return skipped("a reconciliation is already running in this node")
        async with self._lock:
            with run_lock(self.rt.home.dir) as got:
                if not got:
                    return skipped(f"another process holds {self.rt.home.dir / 'reconcile.lock'}")
                self.running_since_us = time.time_ns() // 1000
                try:
                    self.runs += 1
                    return await self._runner(trigger)
                finally:
                    self.running_since_us = 0

    async def _run_against_parent(self, trigger: str) -> dict[str, Any]:
        rt = self.rt
        if not (rt.home.config.parent and rt.parent_code):
            return {"report": None, "children": await rt.db(last_per_peer, rt.ledger, "parent"),
                    "note": "no parent: the children reconcile with this node"}

        def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(rt.db(fn, *args, **kwargs), rt.loop).result()

        def work() -> RunReport:
            parent = RunningParent(rt)
            try:
                return reconcile_with_parent(rt.ledger, parent, db=db, trigger=trigger)
            finally:
                parent.close()

        try:
            rep = await asyncio.to_thread(work)
        except ReconcileError as e:
            log.error("reconcile_failed", error=str(e))
            raise
        rt.notify()
        log.info("reconciled", peer=rep.peer, compared=rep.logs_compared, repaired=rep.records_repaired,
                 incidents=len(rep.incidents), errors=len(rep.errors))
        return {"report": rep.as_dict(), "children": await rt.db(last_per_peer, rt.ledger, "parent")}

    def status(self) -> dict[str, Any] | None:
        job = self.rt.scheduler.get_job(JOB_ID) if self.rt.scheduler is not None else None
        last = last_reports(self.rt.ledger, "child")
        return {
            "last": last[0] if last else None,
            "children": last_per_peer(self.rt.ledger, "parent"),
            "next_run": job.next_run_time.isoformat() if job is not None and job.next_run_time else None,
            "running_since_us": self.running_since_us or None,
        }


SERVICES = [ReconcileService]


@admin.op("reconcile")
async def _op_reconcile(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = next((s for s in rt.services if isinstance(s, ReconcileService)), None)
    if svc is None:
        raise ReconcileError("the reconcile service is not running in this node", fix="restart the node")
    return await svc.run("demand")


# ---- CLI ------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("reconcile", "compare heads with the parent in one round trip, repair both ways, raise forks")
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run (default 600)")


def run_direct(home: Home, trigger: str = "demand") -> dict[str, Any]:
    """The node is not running: dial the parent ourselves."""
    with run_lock(home.dir) as got:
        if not got:
            return skipped(f"another process holds {home.dir / 'reconcile.lock'}")
        ledger = home.ledger()
        if not (home.config.parent and home.config.parent_code):
            return {"report": None, "children": last_per_peer(ledger, "parent"),
                    "note": "no parent: the children reconcile with this node"}
        parent = GrpcParent(home)
        try:
            rep = reconcile_with_parent(ledger, parent, trigger=trigger)
        finally:
            parent.close()
        return {"report": rep.as_dict(), "children": last_per_peer(ledger, "parent")}


def human(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"reconcile skipped: {data['reason']}"
    lines = []
    rep = data.get("report")
    if rep is None:
        lines.append(data.get("note", "no run"))
    else:
        lines += [
            f"reconciled with {rep['peer']}: {rep['logs_compared']} logs and {rep['down_logs_compared']} downward "
            f"logs compared in {rep['heads_round_trips']} round trip ({rep['heads_bytes']} bytes), "
            f"{rep['logs_equal']} equal, {rep['elapsed_s']} s",
            f"records repaired: {rep['records_repaired']}",
        ]
        for what in ("pushed", "fetched", "down_fetched"):
            for name, n in sorted(rep[what].items()):
                lines.append(f"  {what:<12} {name:<24} {n:>9}")
        for inc in rep["incidents"]:
            lines.append(f"INCIDENT fork {inc['origin']}/{inc['channel']} seq {inc['seq']}"
                         f"{' (known)' if inc.get('known') else ''}: {inc['detail']}")
        for err in rep["errors"]:
            lines.append(f"ERROR {err}")
    for child, r in sorted(data.get("children", {}).items()):
        lines.append(f"child {child}: last asked at {r['started_us']}, {r['logs_compared']} logs, "
                     f"{len(r['incidents'])} incident(s)")
    return "\n".join(lines)


@command("reconcile")
def cmd_reconcile(args: argparse.Namespace) -> int:
    home = open_home(args)
    resp = admin.call(home, {"op": "reconcile"}, timeout=args.timeout)
    data = resp["result"] if resp is not None else {**run_direct(home), "mode": "direct"}
    emit(args, data, lambda: human(data))
    if data.get("skipped"):
        return 1
    rep = data.get("report")
    return 0 if rep is None or rep["ok"] else 1
