"""`fednode cases show|list`: parse, call node.app.cases, render. Reads only (a desk read: the day's first
one per person is a `visit` in the work log, nothing else)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app import cases as app
from node.features.cases.view import STATES
from node.interfaces.cli.base import command, emit, open_home

LEVELS = {1: "预警", 2: "黄牌", 3: "红牌", 4: "严重违规"}


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    cp = sub.add_parser("cases", help="cases (办件) held here: one seen whole, or a filtered list")
    cs = cp.add_subparsers(dest="cases_command", required=True)
    sp = add("show", "one case whole: acceptance, every step, times against the limits, alerts, tickets, complaints", cs)
    sp.add_argument("case_no")
    sp = add("list", "the cases held here, newest case number first, with their 办理状态", cs)
    sp.add_argument("--dept", default="", help="only this department (code) or its subtree")
    sp.add_argument("--item", default="", help="only this item code")
    sp.add_argument("--state", choices=list(STATES), help="办理状态: " + " ".join(STATES))
    sp.add_argument("--handler", default="", help="only the cases this handler worked on (as the local system names them)")
    sp.add_argument("--since", default="", help="accepted (or applied) at or after this date/time, e.g. 2025-06-01")
    sp.add_argument("--limit", type=int, default=50, help=f"cases per page (1..{app.MAX_PAGE}, default 50)")
    sp.add_argument("--offset", type=int, default=0, help="skip this many (paging)")
    sp.add_argument("--page", type=int, help="page N (1-based) of --limit cases; instead of --offset")


def _days(minutes: Any, per_day: float) -> str:
    return "-" if minutes is None else f"{minutes / per_day:.2f}"


@command("cases show")
def cmd_show(args: argparse.Namespace) -> int:
    d = app.show_case(open_home(args), args.case_no, person=args.acting)

    def human() -> str:
        lim = d["limits"]
        lines = [f"办件 {d['case_no']}  {d['item_name'] or d['item_code']}  [{d['state']}]",
                 f"  division {d['division']}  dept {d['dept']}  item {d['item_code']}  held from "
                 f"{', '.join(d['held_from'])} (as seen at {d['here']})"]
        if d["application"]:
            a = d["application"]
            lines.append(f"  申办  {a.get('time')}  {a.get('applicant_name', '')} ({a.get('applicant_type', '')})")
        if d["acceptance"]:
            a = d["acceptance"]
            what = "受理" if a.get("accepted", True) else f"不予受理: {a.get('refuse_reason') or '(未说明理由)'}"
            lines.append(f"  受理  {a.get('time')}  {a.get('handler', '')}  {what}  承诺 {a.get('promised_at') or '-'}")
        for s in d["steps"]:
            over = " 超时" if s["over_limit"] else ""
            lines.append(f"  环节 {s['step_no']} {s['step_code']} {s['step_name']}  {s['handler']} ({s['post']})  "
                         f"{s['action']}  {s['started_at']} → {s['ended_at'] or '…'}  用时 {s['used_days'] or '-'}/"
                         f"{s['limit_days'] if s['limit_days'] is not None else '-'} 工作日{over}  {s['opinion'] or ''}")
        for s in d["suspensions"]:
            lines.append(f"  特别程序 {s.get('suspend_no')}  {s.get('reason', '')}  {s.get('started_at')} → "
                         f"{s.get('ended_at') or '…'}  批准 {s.get('approved_days')} 日  {s.get('approver', '')}")
        for c in d["corrections"]:
            lines.append(f"  补正 {c.get('notice_no')}  {c.get('at')} → {c.get('accepted_at') or '未补正'}  "
                         f"{'、'.join(c.get('materials') or [])}")
        if d["completion"]:
            c = d["completion"]
            lines.append(f"  办结  {c.get('time')}  结果 {c.get('result_code')}  {c.get('cert_name') or ''}")
        if d["collection"]:
            lines.append(f"  领取  {d['collection'].get('time')}  {d['collection'].get('collector', '')}")
        if d["evaluation"]:
            lines.append(f"  评价  {d['evaluation'].get('time')}  满意度 {d['evaluation'].get('satisfaction')}")
        lines.append(f"  时限  承诺 {lim['promised_days']} / 法定 {lim['statutory_days']} "
                     f"{'日' if lim['unit'] == 'day' else '工作日'}; 已用 {lim['used_days'] if lim['used_days'] is not None else '-'}"
                     f" (至 {lim['counted_until']})" + ("  超承诺时限" if lim["over_promised"] else "")
                     + ("  超法定时限" if lim["over_statutory"] else ""))
        for a in d["alerts"]:
            who = (a["disposed_by"] or {}).get("name", "")
            lines.append(f"  预警 {LEVELS.get(int(a['level'] or 0), '?')} {a['alert_id']}  [{a['state_label']}"
                         f"{' ' + who if who else ''}]  {a['message']}")
        for t in d["tickets"]:
            lines.append(f"  督办 {t['ticket']} → {t['to']}  {t['state']}  {t['subject']}")
        for c in d["complaints"]:
            lines.append(f"  投诉 {c.get('complaint_no')}  {c.get('complainant')}: {c.get('content')}  "
                         f"督办 {c.get('ticket') or '-'}")
        for f in d["findings"]:
            lines.append(f"  认定 {f['ticket']}#{f['assign_no']}  {f.get('responsible_unit', '')} "
                         f"{f.get('responsible_person', '')}: {f.get('finding', '')} {f.get('result') or ''}")
        return "\n".join(lines)

    emit(args, d, human)
    return 0


@command("cases list")
def cmd_list(args: argparse.Namespace) -> int:
    offset = (args.page - 1) * args.limit if args.page else args.offset
    d = app.list_cases(open_home(args), dept=args.dept, item=args.item, state=args.state or "", handler=args.handler,
                       since=args.since, offset=offset, limit=args.limit, person=args.acting)

    def human() -> str:
        lines = [f"{'case':<26}{'state':<7}{'dept':<14}{'item':<15}{'accepted':<27}{'completed':<27}handlers"]
        for r in d["cases"]:
            lines.append(f"{r['case_no']:<26}{r['state']:<5}{r['dept']:<14}{r['item_code']:<15}"
                         f"{r['accepted_at'] or '-':<27}{r['completed_at'] or '-':<27}{'、'.join(r['handlers'])}")
        last = d["offset"] + len(d["cases"])
        lines.append(f"({d['offset'] + 1 if d['cases'] else 0}-{last} of {d['total']} at {d['here']}"
                     + (f"; next: --offset {last}" if last < d["total"] else "") + ")")
        return "\n".join(lines)

    emit(args, d, human)
    return 0
