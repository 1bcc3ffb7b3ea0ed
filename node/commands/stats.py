"""Statistics, performance evaluation and the supervisor work log in the node: CLI, admin ops, services.

- ``fednode stats DIR [--by division|dept|item_type|period] [--period month|quarter|year] [--at P]
  [--subtree CODE] [--json|--csv] [--html FILE]``: folds what is new in the change feed into the
  statistics tables (node/stats/projection.py), then prints the breakdown. Works whether the node runs
  or not: the fold moves the cursor in the same transaction as its rows, and a concurrent fold by the
  running node's ``StatsService`` is detected (the cursor moved) and simply retried.
- ``fednode worklog DIR [--actor NAME] [--limit N] [--check]``: the 监察日志 (``audit.*`` records held
  here) and, with ``--check``, the supervisor rules run once (reminders, escalations written).
- ``StatsService`` folds on every store notification (at most every ``[stats] interval_s``) and runs
  the supervisor rules on the same tick.
- admin op ``audit``: appends one ``audit.action`` for the CLI while the node runs (node/auditlog.py).
- admin op ``audit.visit``: the day's first desk read by a person appends one ``visit``; every later one
  that day is answered from a cache in this process without touching the store (reads are never
  records, node/auditlog.py). Before the node's own logs are current the visit is spooled instead, so a
  read never waits for recovery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from node import admin, auditlog
from node.calendar import Calendar, OfficeHours, Overrides
from node.cli import command, emit, open_home
from node.errors import ConfigError, FednodeError, UsageError
from node.home import Home
from node.ledger import Ledger, NewRecord
from node.services import Service
from node.stats import projection, query, report
from node.stats.config import StatsConfig
from node.store import Store

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)


class StatsError(FednodeError):
    code = "stats_invalid"
    exit_status = 2


def build_calendar(home: Home) -> Calendar:
    """The working-day calendar the rules engine uses: [calendar] office_hours + imported overrides."""
    section = home.config.sections.get("calendar", {}) or {}
    hours_text = section.get("office_hours") if isinstance(section, dict) else None
    if hours_text is not None and not isinstance(hours_text, str):
        raise ConfigError(f"{home.config.path}: calendar.office_hours must be a string", fix='"08:30-12:00,13:30-17:30"')
    overrides = Overrides()
    try:
        from node.commands.alerts import stored_overrides

        overrides = stored_overrides(home.dir)
    except ImportError:  # the rules feature is absent: the library's calendar alone
        pass
    return Calendar(OfficeHours.parse(hours_text) if hours_text else OfficeHours(), overrides)


def fold(store: Store, code: str, clock: Calendar, cfg: StatsConfig) -> projection.FoldResult:
    return projection.fold_all(store, code, clock, timely_hours=cfg.timely_hours, limit=cfg.batch)


def compute(store: Store, code: str, clock: Calendar, cfg: StatsConfig, q: query.Query) -> dict[str, Any]:
    """Fold what is new, then the breakdown for ``q`` (store work: the store thread or the CLI)."""
    res = fold(store, code, clock, cfg)
    gs = query.groups(store, code)
    try:
        data = query.breakdown(gs, q, cfg)
    except ValueError as e:
        raise StatsError(str(e), fix="see `fednode stats --help`") from None
    data.update(scope=code, cursor=res.cursor, skipped=res.skipped)
    return data


# ---- supervisor rules: facts from the store, records written --------------------------------------------

_WATCHED = ("audit.", "alert", "ticket.")


def audit_records(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, writer, payload) of every audit.*, alert and ticket.* record held here."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    after = 0
    while True:
        batch = store.changes(after, 5000, kinds=_WATCHED)
        if not batch:
            return out
        for c in batch:
            try:
                p = c.payload()
            except Exception:  # noqa: BLE001 — a bad body is skipped, never fatal
                continue
            if isinstance(p, dict):
                out.append((c.kind, c.origin, p))
        after = batch[-1].local_seq


def check_supervisors(ledger: Ledger, cfg: StatsConfig, now: datetime) -> list[dict[str, Any]]:
    """Run the supervisor rules once and write what is due; returns what was written."""
    facts = auditlog.facts_from_records(ledger.code, audit_records(ledger.store))
    due = auditlog.supervisor_actions(facts, cfg.supervisors, now, cfg.supervisors.names)
    if due:
        ledger.append([NewRecord(d.kind, d.payload) for d in due])
    return [{"kind": d.kind, **d.payload} for d in due]


def worklog(store: Store, actor: str | None, limit: int) -> list[dict[str, Any]]:
    rows = [{"kind": k, "node": w, **p} for k, w, p in audit_records(store)
            if k.startswith("audit.") and (actor is None or p.get("actor") == actor)]
    rows.sort(key=lambda r: str(r.get("at", "")))
    return rows[-limit:] if limit else rows


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
                # the supervisor rules read every audit/alert/ticket record: on the interval tick only, never
                # on each notification (that re-scan per batch starved the links of a busy relay)
                if time.monotonic() - self._last_check >= self.cfg.interval_s:
                    await self.rt.wait_recovered()
                    written = await self.rt.bg(check_supervisors, self.rt.ledger, self.cfg,
                                               datetime.now(auditlog.CST))
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


@admin.op("audit")
async def _op_audit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    p = req.get("payload")
    if not isinstance(p, dict):
        raise auditlog.AuditError("the audit op needs a payload", fix="use node.auditlog.record_action")
    payload = auditlog.action_payload(str(p.get("actor", "")), str(p.get("action", "")), str(p.get("target", "")),
                                      p.get("detail"), auditlog._time(p.get("at")))
    await rt.wait_recovered()
    await rt.db(rt.ledger.append, [NewRecord(auditlog.ACTION, payload)])
    rt.notify()
    return payload


_VISITED: dict[tuple[str, str], str] = {}  # (node home, actor) -> the last day visited, in this process


@admin.op("audit.visit")
async def _op_visit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    p = req.get("payload")
    if not isinstance(p, dict):
        raise auditlog.AuditError("the audit.visit op needs a payload", fix="use node.auditlog.record_visit")
    payload = auditlog.action_payload(str(p.get("actor", "")), auditlog.VISIT, "", p.get("detail"),
                                      auditlog._time(p.get("at")))
    key, day = (str(rt.home.dir), payload["actor"]), payload["at"][:10]
    if _VISITED.get(key, "") >= day:
        return {"written": False}
    _VISITED[key] = day  # claimed before any await: two first reads at once still write one visit
    try:
        if not rt.recovered.is_set():
            auditlog.spool(rt.home.dir, payload)  # drained (one per person per day) once recovered
            return {"written": False, "spooled": True}
        written = await rt.db(auditlog.append_visit, rt.ledger, payload)
    except BaseException:
        _VISITED.pop(key, None)
        raise
    if written:
        rt.notify()
    return {"written": written}


# ---- CLI --------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("stats", "indicators (办结率, 按时/提前办结率, 提速率, 报送率, 亮牌, 督办, 满意度) of this subtree")
    sp.add_argument("--by", choices=query.BY, default="division", help="rows per division, dept, item_type or period")
    sp.add_argument("--period", choices=("month", "quarter", "year"), default="quarter",
                    help="period granularity (default quarter)")
    sp.add_argument("--at", metavar="PERIOD", help="one period (2025, 2025-Q3, 2025-07): rows for it with 环比/同比")
    sp.add_argument("--subtree", metavar="CODE", help="only this part of the node's subtree")
    sp.add_argument("--csv", action="store_true", help="CSV on stdout")
    sp.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    sp = add("worklog", "the supervisor work log (监察日志); --check runs the supervisor rules once")
    sp.add_argument("--actor", help="only this operator")
    sp.add_argument("--limit", type=int, default=50, help="latest N entries (0 = all; default 50)")
    sp.add_argument("--check", action="store_true", help="write the reminders/escalations due now")


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    home = open_home(args)
    cfg = StatsConfig.of_home(home)
    if args.at:
        try:
            from node.stats.indicators import parse_period

            parse_period(args.at)
        except ValueError as e:
            raise UsageError(str(e), fix="--at 2025 | 2025-Q3 | 2025-07") from None
    q = query.Query(by=args.by, period=args.period, at=args.at, subtree=args.subtree)
    data = compute(home.store(), home.code, build_calendar(home), cfg, q)
    if args.html:
        Path(args.html).write_text(report.html(data, title=f"{home.config.name} ({home.code}) 电子监察统计分析"),
                                   encoding="utf-8")
        data["html"] = args.html
    if args.csv and not args.json:
        print(report.csv_text(data), end="")
    else:
        emit(args, data, lambda: report.text(data))
    return 0


@command("worklog")
def cmd_worklog(args: argparse.Namespace) -> int:
    home = open_home(args)
    if args.limit < 0:
        raise UsageError("--limit must not be negative", fix="--limit 50, or 0 for all")
    written: list[dict[str, Any]] = []
    if args.check:
        cfg = StatsConfig.of_home(home)
        written = check_supervisors(home.ledger(), cfg, datetime.now(auditlog.CST))
    rows = worklog(home.store(), args.actor, args.limit)

    def human() -> str:
        lines = [f"{r.get('at', '')}  {r.get('kind', ''):<13} {r.get('actor', r.get('rule', '')):<10} "
                 f"{r.get('action', r.get('subject', ''))}  {r.get('target', r.get('message', ''))}" for r in rows]
        if args.check:
            lines.append(f"supervisor rules: {len(written)} record(s) written")
        return "\n".join(lines) if lines else "the work log is empty"

    emit(args, {"entries": rows, "written": written}, human)
    return 0
