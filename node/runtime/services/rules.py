"""RulesService: the monitoring rules in the running node.

The rules below are the feature's; its parts: node/features/rules/{settings,overrides,processor,alerts}.py,
node/app/alerts.py (the use cases), node/interfaces/admin/rules.py, node/interfaces/cli/alerts.py.

Rules of this module:
- The RulesService follows this node's change feed (``Store.feed``: only the kinds the rules read,
  filtered in the database) with its own cursor (meta ``rules.cursor``). Every batch is fed to the
  pure engine (node.rules) and the alerts it causes are appended as signed ``alert`` records (monitor
  channel, so the links forward them up) IN THE SAME TRANSACTION as the cursor moves past the batch
  (``Ledger.append(..., also=...)``): a crash either keeps both or neither.
- Bounded memory: the engine holds only the cases that can still raise a card without a new record;
  the others (closed, or every deadline reached) go to the archive (node/features/rules/archive.py, table
  ``rules_cases``) in that same transaction, and come back before a record about them is fed, or
  when the item they waited for arrives. Memory follows the open cases, not the length of the log.
- The work runs on the runtime's background thread (``rt.bg``), a batch (``[rules] batch``) per turn;
  while the links move records, the service pauses after each batch as long as the batch took, so a
  catch-up's links are not starved of the interpreter.
- Time-based rules run in a periodic scan: an APScheduler interval job (``rules.scan``, stored in the
  node's database), and after the feed is followed to its end (cheap: deadlines are computed for the
  cases touched since, then only cases whose next deadline passed are looked at).
- Idempotent across restarts: on start the engine is rebuilt from the records themselves, every
  stored ``alert`` first (cards already shown, from here or from children, are never repeated, only
  escalated), then every rule input up to the cursor, except those an archived case already holds.
  The archive is a cache of what the records say, written with the cursor: it never claims an alert
  the log does not hold. When the rules configuration changed (meta ``rules.config``), the rebuild
  evaluates every archived case again, so what the new configuration raises is raised then.
- Scope: by default (``scope = "own"``) the engine reads the cases born at this node. At a parent
  whose children do not run the rules, ``scope = "subtree"`` makes it read every case the feed
  brings (the children's records come through it); alerts already raised anywhere (a child's, a
  local system's with the same id) are read in any scope and never raised again. Run the rules at
  one level per case: a parent in scope "subtree" above children that run them too may raise an
  alert before the child's copy arrives.
- ``[rules] enabled = false`` switches it off (a local system produces monitoring results that come
  in through an adapter); the scan job is then removed.
- A calendar year the calendar does not cover raises one operator alert record per year (rule
  ``calendar_year_missing``, level 4) and an error log line; `fednode calendar import` fixes it, and
  the running node picks the import up at once (admin op ``rules.reload``).
- A complaint is watched (rule complaint_time) until the ticket that carries its ``complaint_no``
  is concluded (``ticket.conclude``); ticket records are read from any origin.
- Bad records (unreadable payloads, impossible times) are logged and skipped; they never stop the
  service or move the cursor backwards.
- `alerts list|show` and `calendar show` only read (the work log gets at most the day's first visit,
  node/features/worklog.py); `alerts handle ALERT_ID --note TEXT` is the act that records an alert as dealt with
  (one ``audit.action`` targeting it, what the supervisor rule alert_unhandled looks for).

Configuration (node.toml)::

    [rules]
    enabled = true
    scope = "own"                # or "subtree" at a parent over children that do not run the rules
    scan_interval_s = 60
    batch = 1000                 # records per turn on the background thread
    [rules.default]              # thresholds (node/features/rules/config.py), every one optional
    case_warn_before_days = 2
    [rules.item_types.02]        # per item type, only what differs
    step_red_ratio = 1.5
    [rules.anomaly_levels]
    workflow = 2

    [calendar]
    office_hours = "08:30-12:00,13:30-17:30"

Operator calendar overrides live in ``DIR/calendar-overrides.json`` (written by `calendar import`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog

from node.core.errors import FednodeError
from node.features.notify import Dispatcher
from node.features.notify import load as load_dispatcher
from node.features.rules.overrides import load_calendar
from node.features.rules.processor import _LINK_SHARE, RulesProcessor
from node.features.rules.settings import JOB_ID, RulesSettings
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)


# ---- the service ----------------------------------------------------------------------------------------

_service: RulesService | None = None


async def scheduled_scan() -> None:
    """The job the scheduler stores (by reference, so it survives restarts)."""
    if _service is None:  # rules switched off, or the node is stopping
        return
    _service.scheduled_scans += 1
    await _service.scan_now()


class RulesService(Service):
    name = "rules"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.settings: RulesSettings | None = None
        self.processor: RulesProcessor | None = None
        self.dispatcher: Dispatcher | None = None
        self.error = ""
        self.scheduled_scans = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._notifier_task: asyncio.Task[None] | None = None
        self._to_notify: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one engine operation at a time (they also share the store thread)

    # -- lifecycle --------------------------------------------------------------------------------------

    def _configure(self) -> bool:
        cfg = self.rt.home.config
        try:
            self.settings = RulesSettings.from_sections(cfg.sections, where=str(cfg.path))
            self.dispatcher = load_dispatcher(cfg.sections, cfg.home)
            self.error = ""
            return True
        except FednodeError as e:
            self.error = f"{e.message} (fix: {e.fix})"
            log.error("rules_config_invalid", error=e.message, fix=e.fix,
                      note="the rules service is idle until the configuration is fixed (SIGHUP reloads)")
            return False

    async def start(self) -> None:
        global _service
        if not self._configure() or self.settings is None or not self.settings.enabled:
            self._remove_job()
            if self.settings is not None and not self.settings.enabled:
                log.info("rules_disabled", note="[rules] enabled = false: monitoring results come from an adapter")
            return
        _service = self
        self._task = asyncio.create_task(self._run())
        self._notifier_task = asyncio.create_task(self._notify_loop())
        self._ensure_job()

    async def stop(self) -> None:
        global _service
        if _service is self:
            _service = None
        for task in (self._task, self._notifier_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._notifier_task = None

    async def reload(self) -> None:
        """SIGHUP or `calendar import`: re-read the settings and the calendar; rebuild the engine."""
        await self.stop()
        self.processor = None
        await self.start()

    def on_stored(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any] | None:
        if self.processor is None:
            enabled = self.settings.enabled if self.settings else False
            return {"enabled": enabled, "error": self.error, "state": "starting" if enabled else "off"}
        try:
            out = self.processor.status()
        except RuntimeError:  # a set changed size under a concurrent scan: report the basics
            return {"enabled": True, "cursor": self.processor.cursor, "state": "scanning"}
        out["scan_interval_s"] = self.settings.scan_interval_s if self.settings else None
        out["scheduled_scans"] = self.scheduled_scans
        if self.dispatcher is not None:
            out["notify"] = {"sent": self.dispatcher.sent, "failed": self.dispatcher.failed}
        return out

    def _ensure_job(self) -> None:
        assert self.settings is not None
        self.rt.scheduler.add_job(scheduled_scan, trigger="interval", seconds=self.settings.scan_interval_s,
                                  id=JOB_ID, name="rules: time-based scan", replace_existing=True,
                                  coalesce=True, max_instances=1, misfire_grace_time=3600)  # fmt: skip

    def _remove_job(self) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with contextlib.suppress(JobLookupError):
            self.rt.scheduler.remove_job(JOB_ID)

    # -- work -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self.rt.recovered.wait()  # a restored node may not append before it has its own logs back
        while True:
            if self.processor is None:
                await self._build()
                self._wake.set()
            await self._wake.wait()
            self._wake.clear()
            await self.follow()
            await self.scan_now()

    async def _build(self) -> None:
        """(Re)build the engine from the records; retried until it works (e.g. the database is back)."""
        rt, settings = self.rt, self.settings
        assert settings is not None

        def make() -> RulesProcessor:
            return RulesProcessor(rt.ledger, settings, load_calendar(rt.home.dir, settings))

        while self.processor is None:
            try:
                async with self._lock:
                    processor = await rt.bg(make)
                    while True:
                        t0 = time.monotonic()
                        done, due = await rt.bg(processor.rebuild_step)
                        self._after(due)
                        if done:
                            break
                        await self._pause(t0)
                    self.processor = processor
                self.error = ""
                log.info("rules_started", cursor=self.processor.cursor,
                         open_cases=self.processor.engine.open_case_count())  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                log.exception("rules_start_failed", note="retrying in 5 s")
                await asyncio.sleep(5)

    async def _call(self, method: str) -> Any:
        """Run a processor method on the background thread (``rt.bg``: the links keep the store thread
        ``rt.db``; one batch per call, so other background work interleaves). On failure the engine may hold alerts that were
        never stored (its transaction rolled back): drop it, and the run loop rebuilds it from the
        records."""
        processor = self.processor
        if processor is None:
            return None
        try:
            async with self._lock:
                return await self.rt.bg(getattr(processor, method))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(processor, method, e)
            return None

    async def follow(self) -> int:
        """Feed everything after the cursor. Returns the number of records read."""
        total = 0
        while True:
            t0 = time.monotonic()
            result = await self._call("step")
            if result is None:
                return total
            n, alerts = result
            self._after(alerts)
            total += n
            if n < (self.settings.batch if self.settings else 1):
                return total
            await self._pause(t0)

    async def _pause(self, t0: float) -> None:
        """Between two batches begun at ``t0``: other background work runs then; while the links move
        records, they get the interpreter for as long as the batch took (the rules half of it)."""
        await asyncio.sleep((time.monotonic() - t0) * _LINK_SHARE if self.rt.links_busy() else 0)

    async def scan_now(self) -> list[dict[str, Any]]:
        """The time rules now, and storing what they raise (with the cases they left nothing to watch
        for), on the background thread."""
        processor = self.processor
        if processor is None:
            return []
        try:
            async with self._lock:
                alerts = await self.rt.bg(processor.scan)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(processor, "scan", e)
            return []
        self._after(alerts)
        return alerts

    def _failed(self, processor: RulesProcessor, step: str, e: Exception) -> None:
        self.error = f"{type(e).__name__}: {e}"
        log.error("rules_failed", step=step, error=self.error, note="rebuilding the engine from the records",
                  exc_info=True)
        if self.processor is processor:
            self.processor = None
        self._wake.set()

    def _after(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts were stored: wake the links, hand them to the notifiers. Safe from any thread."""
        if not alerts:
            return
        self.rt.notify_threadsafe()
        self.rt.loop.call_soon_threadsafe(self._to_notify.put_nowait, alerts)

    async def _notify_loop(self) -> None:
        while True:
            alerts = await self._to_notify.get()
            if self.dispatcher is not None:
                try:
                    await asyncio.to_thread(self.dispatcher.dispatch, alerts)
                except Exception:
                    log.exception("notify_dispatch_failed")


SERVICES = [RulesService]


# ---- admin operations -----------------------------------------------------------------------------------


def _running_service() -> RulesService:
    if _service is None:
        raise FednodeError("the rules service is not running in this node",
                           fix="check [rules] in node.toml (enabled = true) and `fednode status` for its error")
    return _service
