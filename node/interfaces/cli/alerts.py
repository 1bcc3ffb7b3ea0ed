"""`fednode alerts list|show|dispose|reopen|handle` and `fednode calendar import|show`: parse, call node.app.alerts,
render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app import alerts as app
from node.features.alerts.disposal import RESULTS, STATE_LABELS
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
    sp.add_argument("--state", choices=list(app.STATE_FILTERS),
                    help="open (待处置), disposed (any of:), corrected (已纠正), false-alarm (误报核销), ticket (已转督办)")
    sp = add("show", "one alert: its fields, the signed record, its disposal and the tickets that cite it", asub)
    sp.add_argument("alert_id")
    sp = add("dispose", "dispose of an alert (处置): 已纠正, 误报核销 (with the reason), 已转督办; a signed record", asub)
    sp.add_argument("alert_id")
    sp.add_argument("--result", required=True, choices=list(RESULTS),
                    help="corrected (已纠正), false-alarm (误报核销: the note is the reason), ticket (已转督办)")
    sp.add_argument("--note", required=True, help="what was done, or why it is a false alarm")
    sp.add_argument("--ticket", default="", help="with --result ticket: the 督办单 it went to (held here)")
    sp = add("reopen", "reopen a disposed alert (监察员, 监察领导): it is 待处置 again", asub)
    sp.add_argument("alert_id")
    sp.add_argument("--note", required=True, help="why it is reopened")
    sp = add("handle", "the same as `alerts dispose --result corrected` (kept for scripts)", asub)
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
    rows = app.list_alert_rows(open_home(args), level=args.level, rule=args.rule, division=args.division,
                               case=args.case, limit=args.limit, person=args.acting, state=args.state)

    def human() -> str:
        lines = [f"{'level':<9}{'state':<8}{'at':<27}{'division':<10}{'rule':<16}{'case':<26}message"]
        for p in rows:
            name = LEVEL_NAMES.get(int(p.get("level", 0)), "?")
            lines.append(f"{name:<7}{p['state_label']:<6}{p.get('at', '')!s:<27}{p.get('division', '')!s:<10}"
                         f"{p.get('rule_id', '')!s:<16}{p.get('case_no', '')!s:<26}{p.get('message', '')}")
        lines.append(f"({len(rows)} alert{'s' if len(rows) != 1 else ''})")
        return "\n".join(lines)

    emit(args, rows, human)
    return 0


@command("alerts show")
def cmd_alerts_show(args: argparse.Namespace) -> int:
    data = app.show_alert(open_home(args), args.alert_id, person=args.acting)

    def human() -> str:
        p = data
        lines = [f"{p.get('alert_id')}  {LEVEL_NAMES.get(int(p.get('level', 0)), '?')}  {p.get('message', '')}"]
        for k in ALERT_FIELDS:
            if k in p and k not in ("alert_id", "message"):
                lines.append(f"  {k:<10} {p[k]}")
        lines.append(f"  record     {p['origin']}/monitor/{p['seq']} (signed; `fednode proof DIR "
                     f"{p['origin']} monitor {p['seq']}` exports it)")
        who = p.get("disposed_by") or {}
        lines.append(f"  state      {p['state_label']}" + (f" by {who.get('name', '')} ({who.get('role_label', '')}, "
                                                          f"{who.get('scope', '')}) at {p['disposed_at']}: {p['note']}"
                                                          if who else ""))
        for t in p["ticket_states"]:
            lines.append(f"  ticket     {t['ticket']} {t['state'] or '(not held here)'} to {t['to'] or '?'}: "
                         f"{t['subject'] or ''}")
        if p.get("draft"):
            dr = p["draft"]
            lines.append(f"  draft      {dr['state']}: to {dr.get('to')} {dr.get('subject')}")
        for h in p["history"]:
            by = h.get("by") or {}
            flag = "" if h.get("applied", True) else f"  (not applied: {h.get('why', '')})"
            lines.append(f"  {h.get('at', '')!s:<27}{h.get('node', ''):<11}{by.get('name') or h.get('actor', ''):<10}"
                         f"{h['event']} {h.get('result') or h.get('ticket') or ''} {h.get('note') or ''}{flag}")
        for n in p.get("notified") or []:
            lines.append(f"  told       {n.get('at', '')} {n.get('name') or n.get('person')} via {n.get('channel')}: "
                         f"{n.get('outcome')}" + (f" ({n['error']})" if n.get("error") else ""))
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def _disposed_text(p: dict[str, Any], code: str) -> str:
    who = p.get("by", {})
    what = STATE_LABELS.get(p.get("result", ""), "重新打开（待处置）" if "result" not in p else p.get("result", ""))
    return (f"{p['alert_id']}: {what} by {who.get('name', p['actor'])} ({who.get('role_label', '')}) at {p['at']} "
            f"(signed at {code}, {p.get('via', '')})")


@command("alerts dispose")
def cmd_alerts_dispose(args: argparse.Namespace) -> int:
    home = open_home(args)
    p = app.dispose_alert(home, args.auth, args.alert_id, args.result, args.note, ticket=args.ticket)
    emit(args, p, _disposed_text(p, home.code))
    return 0


@command("alerts reopen")
def cmd_alerts_reopen(args: argparse.Namespace) -> int:
    home = open_home(args)
    p = app.reopen_alert(home, args.auth, args.alert_id, args.note)
    emit(args, p, _disposed_text(p, home.code))
    return 0


@command("alerts handle")
def cmd_alerts_handle(args: argparse.Namespace) -> int:
    home = open_home(args)
    payload = app.handle_alert(home, args.auth, args.alert_id, args.note)
    emit(args, {"alert_id": args.alert_id, "handled": payload}, _disposed_text(payload, home.code))
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
