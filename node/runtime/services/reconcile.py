"""ReconcileService: the nightly reconciliation in the running node, and the runner the admin op uses.

The rules below are the feature's; its parts: node/app/reconcile.py (run_lock, run_direct),
node/interfaces/admin/reconcile.py, node/interfaces/cli/reconcile.py, node/link/reconcile.py (the protocol).

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

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from node.app.reconcile import run_lock, skipped
from node.core.ledger import Ledger
from node.core.store import LogKey
from node.link.client import GrpcParent
from node.link.reconcile import (
    Db,
    ReconcileError,
    RunReport,
    last_per_peer,
    last_reports,
    reconcile_with_parent,
)
from node.runtime.service import Service
from proto.fednode.v1 import fednode_pb2 as pb

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)

JOB_ID = "fednode.reconcile"
TIMEZONE = "Asia/Shanghai"
MISFIRE_GRACE_S = 6 * 3600  # a node down at 02:00 still reconciles when it comes back the same morning
PUSH_WAIT_S = 120.0


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
        from node.link.protocol import LOG

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
