"""`fednode alerts list|show|handle` and `fednode calendar import|show`: parse, call node.app.alerts, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app import alerts as app
from node.features.rules.engine import LEVEL_NAMES
from node.features.rules.overrides import OVERRIDES_FILE
from node.features.rules.settings import ALERT_FIELDS, LEVELS_BY_NAME
from node.interfaces.cli.base import command, emit, open_home


def _level(value: str) -> int:
    v = value.strip().lower()
    if v.isdigit() and 1 <= int(v) <= 4:
        return int(v)
    if v in LEVELS_BY_NAME:
        return LEVELS_BY_NAME[v]
    raise argparse.ArgumentTypeError(f"{value!r} is not a level: use 1-4, warn, yellow, red, serious (预警 黄牌 红牌 严重违规)")


# ---- CLI ------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    ap = sub.add_parser("alerts", help="monitoring alerts (预警 黄牌 红牌 严重违规) held by this node")
    asub = ap.add_subparsers(dest="alerts_command", required=True)
    sp = add("list", "alerts held here (raised here or forwarded from the subtree), oldest first", asub)
    sp.add_argument("--level", type=_level, help="at least this level: 1-4, warn, yellow, red, serious")
    sp.add_argument("--rule", help="only this rule, e.g. case_time, permission")
    sp.add_argument("--division", help="only alerts of this division or its subtree")
    sp.add_argument("--case", help="only alerts of this case number")
    sp.add_argument("--limit", type=int, default=0, help="only the last N (default: all)")
    sp = add("show", "one alert: its fields and the signed record that holds it", asub)
    sp.add_argument("alert_id")
    sp = add("handle", "record that an alert was dealt with (处置): the work log keeps who, when and what", asub)
    sp.add_argument("alert_id")
    sp.add_argument("--note", required=True, help="what was done (处置情况), e.g. 已核实并督促整改")

    cp = sub.add_parser("calendar", help="the working-day calendar: operator overrides and coverage")
    csub = cp.add_subparsers(dest="calendar_command", required=True)
    sp = add("import", "import official holidays / make-up days (CSV date,kind[,name] or TOML); merged", csub)
    sp.add_argument("file")
    sp = add("show", "covered years, office hours, the operator's overrides; --year lists a year's special days",
             csub)
    sp.add_argument("--year", type=int)


@command("alerts list")
def cmd_alerts_list(args: argparse.Namespace) -> int:
    alerts = app.list_alerts(open_home(args), level=args.level, rule=args.rule, division=args.division,
                             case=args.case, limit=args.limit, person=args.acting)
    rows = [a.as_dict() for a in alerts]

    def human() -> str:
        lines = [f"{'level':<9}{'at':<27}{'division':<10}{'rule':<16}{'case':<26}message"]
        for a in alerts:
            p = a.payload
            name = LEVEL_NAMES.get(int(p.get("level", 0)), "?")
            lines.append(f"{name:<7}{p.get('at', '')!s:<27}{p.get('division', '')!s:<10}{p.get('rule_id', '')!s:<16}"
                         f"{p.get('case_no', '')!s:<26}{p.get('message', '')}")
        lines.append(f"({len(alerts)} alert{'s' if len(alerts) != 1 else ''})")
        return "\n".join(lines)

    emit(args, rows, human)
    return 0


@command("alerts show")
def cmd_alerts_show(args: argparse.Namespace) -> int:
    found = app.find_alert(open_home(args), args.alert_id, person=args.acting)
    data = found[0].as_dict()
    if len(found) > 1:  # the same id raised by two nodes (e.g. a child and, before it was known, here)
        data["also_in"] = [{"origin": a.origin, "seq": a.seq} for a in found[1:]]

    def human() -> str:
        p = found[0].payload
        lines = [f"{p.get('alert_id')}  {LEVEL_NAMES.get(int(p.get('level', 0)), '?')}  {p.get('message', '')}"]
        for k in ALERT_FIELDS:
            if k in p and k not in ("alert_id", "message"):
                lines.append(f"  {k:<10} {p[k]}")
        lines.append(f"  record     {found[0].origin}/monitor/{found[0].seq} (signed; `fednode proof DIR "
                     f"{found[0].origin} monitor {found[0].seq}` exports it)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


@command("alerts handle")
def cmd_alerts_handle(args: argparse.Namespace) -> int:
    home = open_home(args)
    payload = app.handle_alert(home, args.auth, args.alert_id, args.note)
    who = payload.get("by", {})
    emit(args, {"alert_id": args.alert_id, "handled": payload},
         f"{args.alert_id}: handled by {who.get('name', payload['actor'])} ({who.get('role_label', '')}) at "
         f"{payload['at']} (work log of {home.code})")
    return 0


@command("calendar import")
def cmd_calendar_import(args: argparse.Namespace) -> int:
    home = open_home(args)
    result = app.import_calendar(home, args.file)
    emit(args, result, lambda: (
        f"imported {result['days']} day(s) and year(s) {result['years'] or '-'} from {result['file']}; "
        f"{home.dir / OVERRIDES_FILE} now holds {result['total_days']} day(s), years {result['total_years'] or '-'}; "
        f"running node: {result['node']}"))  # fmt: skip
    return 0


@command("calendar show")
def cmd_calendar_show(args: argparse.Namespace) -> int:
    data, status = app.calendar_info(open_home(args), args.year)

    def human() -> str:
        yrs = data["official_years"]
        lines = [f"office hours   : {', '.join(data['office_hours'])}",
                 f"official years : {yrs[0]}-{yrs[-1]} (chinese-calendar)" if yrs else "official years : none",
                 f"operator years : {', '.join(map(str, data['operator_years'])) or '-'}",
                 f"overrides      : {len(data['overrides'])} day(s) in {data['overrides_file']}"]  # fmt: skip
        if args.year is not None:
            if data["covered"]:
                lines.append(f"{args.year}: holidays and make-up working days")
                lines += [f"  {d['date']}  {d['kind']:<8} {d['source']:<9} {d['name']}" for d in data["special_days"]]
            else:
                lines.append(f"{args.year} is NOT covered: {data['fix']}")
        return "\n".join(lines)

    emit(args, data, human)
    return status
