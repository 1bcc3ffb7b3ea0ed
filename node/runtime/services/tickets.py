"""TicketService: receipts, reminders and escalations in the running node (persisted job deadline_job)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import Clock, HeldIndex, TicketDesk, TicketsConfig, system_clock
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)

# The clock of the running node's automatic records; tests replace it (the only mock allowed: the clock).
CLOCK: Clock = system_clock
JOB_ID = "tickets.deadlines"
_ACTIVE: dict[str, TicketService] = {}  # code -> the running service (the persisted job names the code)


# ---- the service ---------------------------------------------------------------------------------------------


async def deadline_job(code: str) -> None:
    """The persisted APScheduler job: reminders and escalations due now (module-level: jobs are pickled
    by reference)."""
    svc = _ACTIVE.get(code)
    if svc is not None:
        await svc.check_deadlines()


class TicketService(Service):
    name = "tickets"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.cfg = TicketsConfig.of_home(rt.home)
        self.index = HeldIndex()  # used on the database thread only
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.receipts = 0
        self.reminders = 0
        self.escalations = 0
        self.last_check: str | None = None
        self.last_error = ""

    def desk(self) -> TicketDesk:
        return TicketDesk(self.rt.ledger, self.cfg, lambda: CLOCK(), self.index)

    async def start(self) -> None:
        _ACTIVE[self.rt.code] = self
        self._task = asyncio.create_task(self._follow())
        self.rt.scheduler.add_job(
            "node.runtime.services.tickets:deadline_job", "interval", seconds=self.cfg.check_interval_s,
            args=[self.rt.code], id=JOB_ID, replace_existing=True,
            next_run_time=datetime.now().astimezone() + timedelta(seconds=1),
        )
        self._wake.set()

    async def stop(self) -> None:
        _ACTIVE.pop(self.rt.code, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on_stored(self) -> None:
        self._wake.set()

    async def reload(self) -> None:
        try:
            cfg = TicketsConfig.of_home(self.rt.home)
        except Exception as e:  # a bad edit must not stop the node: the old configuration stays
            log.error("tickets_reload_failed", error=str(e))
            return
        if cfg.check_interval_s != self.cfg.check_interval_s:
            self.rt.scheduler.reschedule_job(JOB_ID, trigger="interval", seconds=cfg.check_interval_s)
        self.cfg = cfg

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            self._wake.clear()
            if not self.rt.recovered.is_set():
                continue
            try:
                written = await self.rt.db(lambda: self.desk().write_receipts())
            except Exception as e:  # never crash the node on one bad record; retried on the next wake
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("ticket_receipts_failed")
                await asyncio.sleep(1.0)
                continue
            if written:
                self.receipts += len(written)
                log.info("ticket_delivered", tickets=[p["ticket"] for p in written])
                self.rt.notify()

    async def check_deadlines(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.rt.recovered.is_set():
            return []
        try:
            written = await self.rt.db(lambda: self.desk().run_due(CLOCK()))
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("ticket_deadlines_failed")
            return []
        self.last_check = lc.format_time(CLOCK())
        for kind, p in written:
            if kind == lc.REMIND:
                self.reminders += 1
            else:
                self.escalations += 1
            log.warning("ticket_" + kind.removeprefix("ticket."), ticket=p["ticket"], deadline=p["deadline"],
                        due=p["due"])
        if written:
            self.rt.notify()
        return written

    def status(self) -> dict[str, Any] | None:
        return {"receipts_written": self.receipts, "reminders_written": self.reminders,
                "escalations_written": self.escalations, "last_deadline_check": self.last_check,
                "last_error": self.last_error}


SERVICES = [TicketService]
