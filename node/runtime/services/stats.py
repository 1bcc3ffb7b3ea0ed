"""StatsService: folds the feed, checks the supervisors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from node.app.stats import build_calendar, check_supervisors
from node.features import worklog as auditlog
from node.features.stats import projection
from node.features.stats.config import StatsConfig
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)


# ---- the service ------------------------------------------------------------------------------------------


class StatsService(Service):
    name = "stats"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.cfg = StatsConfig.of_home(rt.home)
        self.clock = build_calendar(rt.home)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, Any] = {}
        # the supervisor rules' facts, folded tick by tick: each tick reads only the records since the last
        self._facts = auditlog.FactsFold(rt.code)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping; errors were logged
                await self._task

    async def reload(self) -> None:
        self.cfg = StatsConfig.of_home(self.rt.home)
        self.clock = build_calendar(self.rt.home)

    def on_stored(self) -> None:
        # Folding is deferred to the interval tick: a relay stores records in bursts, and folding each burst
        # at once took half of a busy city's CPU away from its links. Queries fold what is new first anyway.
        pass

    async def _fold_gently(self) -> projection.FoldResult:
        """Fold the change feed one chunk at a time, yielding between chunks so the links keep the CPU:
        while they move records, the fold takes at most a tenth of it (a relay's catch-up otherwise
        lost a third of its rate to folding what it had just stored). Nothing is lost by folding late:
        a stats query folds what is new first."""
        total = projection.FoldResult(cursor=projection.cursor(self.rt.ledger.store))
        while True:
            t0 = time.monotonic()
            try:
                r = await self.rt.bg(projection.fold_once, self.rt.ledger.store, self.rt.code, self.clock,
                                     timely_hours=self.cfg.timely_hours, limit=min(self.cfg.batch, 2000))
            except projection.Raced:
                continue
            total.skipped += r.skipped
            total.cursor = r.cursor
            if r.folded == 0:
                return total
            total.folded += r.folded
            took = time.monotonic() - t0
            await asyncio.sleep(max(0.2, 9 * took) if self.rt.links_busy() else 0.2)

    async def _loop(self) -> None:
        self._last_check = -float("inf")
        while True:
            with contextlib.suppress(TimeoutError):  # the interval tick also runs the supervisor rules
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.interval_s)
            self._wake.clear()
            try:
                res = await self._fold_gently()
                written: list[dict[str, Any]] = []
                # the supervisor rules: on the interval tick only, never on each notification (they judge
                # every unhandled alert held, and a re-scan per batch once starved the links of a busy relay)
                if time.monotonic() - self._last_check >= self.cfg.interval_s:
                    await self.rt.wait_recovered()
                    written = await self.rt.bg(check_supervisors, self.rt.ledger, self.cfg,
                                               datetime.now(auditlog.CST), self._facts)
                    self._last_check = time.monotonic()
                if written:
                    self.rt.notify()
                self.last = {"cursor": res.cursor, "skipped": res.skipped, "supervisor_records": len(written)}
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — a bad tick is logged and retried, never kills the node
                log.error("stats_tick_failed", error=str(e))
            await asyncio.sleep(1.0)  # batch bursts of notifications into one fold

    def status(self) -> dict[str, Any] | None:
        return {"cursor": projection.cursor(self.rt.ledger.store), **self.last}


SERVICES = [StatsService]
