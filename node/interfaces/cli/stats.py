"""`fednode stats` and `fednode worklog`: parse, call node.app.stats, render.

The rules below are the feature's; its parts: node/app/stats.py (fold, compute, worklog,
check_supervisors), node/interfaces/admin/worklog.py (ops audit, audit.visit), node/runtime/services/stats.py.

- ``fednode stats DIR [--by division|dept|item_type|period] [--period month|quarter|year] [--at P]
  [--subtree CODE] [--json|--csv] [--html FILE]``: folds what is new in the change feed into the
  statistics tables (node/features/stats/projection.py), then prints the breakdown. Works whether the node runs
  or not: the fold moves the cursor in the same transaction as its rows, and a concurrent fold by the
  running node's ``StatsService`` is detected (the cursor moved) and simply retried.
- ``fednode worklog DIR [--actor NAME] [--limit N] [--check]``: the 监察日志 (``audit.*`` records held
  here) and, with ``--check``, the supervisor rules run once (reminders, escalations written).
- ``StatsService`` folds on every store notification (at most every ``[stats] interval_s``) and runs
  the supervisor rules on the same tick.
- admin op ``audit``: appends one ``audit.action`` for the CLI while the node runs (node/features/worklog.py).
- admin op ``audit.visit``: the day's first desk read by a person appends one ``visit``; every later one
  that day is answered from a cache in this process without touching the store (reads are never
  records, node/features/worklog.py). Before the node's own logs are current the visit is spooled instead, so a
  read never waits for recovery.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from node.app.stats import build_calendar, check_supervisors, compute, worklog, worklog_by_person
from node.core.errors import UsageError
from node.features import worklog as auditlog
from node.features.stats import query, report
from node.features.stats.config import StatsConfig
from node.interfaces.cli.base import command, emit, open_home

# ---- CLI --------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("stats", "indicators (办结率, 按时/提前办结率, 提速率, 报送率, 亮牌, 督办, 满意度) of this subtree")
    sp.add_argument("--by", dest="group_by", choices=query.BY, default="division",  # args.by: who acts (cli/main.py)
                    help="rows per division, dept, item_type or period")
    sp.add_argument("--period", choices=("month", "quarter", "year"), default="quarter",
                    help="period granularity (default quarter)")
    sp.add_argument("--at", metavar="PERIOD", help="one period (2025, 2025-Q3, 2025-07): rows for it with 环比/同比")
    sp.add_argument("--subtree", metavar="CODE", help="only this part of the node's subtree")
    sp.add_argument("--csv", action="store_true", help="CSV on stdout")
    sp.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    sp = add("worklog", "the supervisor work log (监察日志); --check runs the supervisor rules once")
    sp.add_argument("--actor", help="only this person (login)")
    sp.add_argument("--by-person", action="store_true", help="one line per person: acts, visits, refusals, last")
    sp.add_argument("--limit", type=int, default=50, help="latest N entries (0 = all; default 50)")
    sp.add_argument("--check", action="store_true", help="write the reminders/escalations due now")


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    home = open_home(args)
    cfg = StatsConfig.of_home(home)
    if args.at:
        try:
            from node.core.indicators import parse_period

            parse_period(args.at)
        except ValueError as e:
            raise UsageError(str(e), fix="--at 2025 | 2025-Q3 | 2025-07") from None
    q = query.Query(by=args.group_by, period=args.period, at=args.at, subtree=args.subtree)
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
    if args.by_person:
        people = worklog_by_person(rows)
        emit(args, {"people": people, "written": written}, lambda: report.text_table(
            ["登录名", "姓名", "角色", "辖区", "操作", "登录/查看", "越权被拒", "最近一次"],
            [[p["login"], p["name"], p["role"], p["scope"], str(p["acts"]), str(p["visits"]), str(p["refused"]),
              str(p["last"])] for p in people]) if people else "the work log is empty")
        return 0

    def human() -> str:
        lines = [f"{r.get('at', '')}  {r.get('kind', ''):<13} {_who(r):<10} "
                 f"{r.get('action', r.get('subject', ''))}  {r.get('target', r.get('message', ''))}" for r in rows]
        if args.check:
            lines.append(f"supervisor rules: {len(written)} record(s) written")
        return "\n".join(lines) if lines else "the work log is empty"

    emit(args, {"entries": rows, "written": written}, human)
    return 0


def _who(r: dict[str, Any]) -> str:
    by = r.get("by")
    if isinstance(by, dict) and by.get("name"):
        return f"{by['name']}({by.get('role_label', '')})"
    return str(r.get("actor", r.get("rule", "")))

