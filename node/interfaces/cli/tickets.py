"""`fednode tickets` and `fednode complaints`: parse, call node.app.tickets.run_request, render.

The rules below are the feature's; its parts: node/app/tickets.py (execute, run_request),
node/interfaces/admin/tickets.py (op tickets), node/runtime/services/tickets.py (TicketService).

Rules of this module:
- Every verb works whether the node runs or not: the CLI asks the running node over the admin socket
  (op ``tickets``), and when it is not running works on the store directly; the records go out when
  the node runs. Both paths call the same ``execute`` (node/features/tickets/desk.py does the work).
- ``TicketService`` follows ``Store.changes`` with a persisted cursor and writes the receipt
  (``ticket.delivered``) for tickets addressed to this node; an APScheduler interval job (persisted in
  the node's job store, id ``tickets.deadlines``) writes reminders and escalations from
  ``lifecycle.due_actions``. Both decide from the projection of the store at the moment they write,
  on the single database thread, so nothing is written twice, across restarts too.
- The work log (监察日志): each act's own transaction holds its ``audit.action`` (desk.py ``audit``), named
  for the person of ``--as`` (node/app/people.py authorizes the act on its ticket), so node/features/worklog.py
  adds none; the OS operator (no ``--as``) is 系统管理员 and may not act on tickets;
  ``tickets issue --alert ID`` names the alerts a ticket deals with (they count as handled). ``list``
  and ``show`` (and ``complaints list|show``) are reads: nothing but the day's first visit.
- Output contract: ``tickets issue`` prints the ticket number (``--json``: an object with ``ticket``);
  ``tickets list --json`` prints objects with ``ticket``, ``state``, ``to``, ``issuer``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app.tickets import (
    act,
    attachment_of_file,
    confirm_draft,
    drop_draft,
    issue,
    list_drafts,
    run_request,
)
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import VERBS
from node.interfaces.cli.base import command, emit, open_home

# ---- CLI ----------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    tp = sub.add_parser("tickets", help="supervision tickets (督办): issue, list, show, sign, reply, conclude, return")
    ts = tp.add_subparsers(dest="tickets_command", required=True)
    sp = add("issue", "issue a ticket to a descendant jurisdiction; prints its number", ts)
    sp.add_argument("--to", help="target node code, inside this node's subtree (default with --alert: its unit)")
    sp.add_argument("--subject", help="(default with --alert: the rule and the case)")
    sp.add_argument("--body", help="(default with --alert: the alert's message)")
    sp.add_argument("--case", action="append", default=[], dest="cases", help="related case number (repeatable)")
    sp.add_argument("--alert", action="append", default=[], dest="alerts",
                    help="the alert this ticket deals with (repeatable; it becomes 已转督办; the first one fills in "
                         "--to, --subject, --body, the case numbers and the basis left out)")
    sp.add_argument("--sign-days", type=float, help="working days to sign for it (default [tickets] sign_days)")
    sp.add_argument("--reply-days", type=float, help="working days to reply (default [tickets] reply_days)")
    add("drafts", "the tickets drafted from red cards ([tickets] auto_from_red = \"draft\") waiting here", ts)
    sp = add("confirm", "issue a drafted ticket, in your name (the alert becomes 已转督办)", ts)
    sp.add_argument("alert_id", help="the alert the draft was made for (`tickets drafts` lists them)")
    sp = add("drop", "drop a drafted ticket: it is not issued, the alert stays 待处置", ts)
    sp.add_argument("alert_id")
    sp.add_argument("--note", required=True, help="why no ticket is issued")
    sp = add("list", "the tickets this node holds, and the records it refused", ts)
    sp.add_argument("--state", choices=list(lc.STATES))
    sp.add_argument("--rejected", action="store_true", help="only the ticket records refused here")
    sp = add("show", "one ticket: its timeline (who, what, when, where) and where it waits", ts)
    sp.add_argument("ticket")
    sp = add("sign", "sign for a ticket (签收), at the target or inside its subtree", ts)
    sp.add_argument("ticket")
    sp = add("reply", "reply to a ticket (答复)", ts)
    sp.add_argument("ticket")
    sp.add_argument("text")
    sp.add_argument("--attach", action="append", default=[], metavar="FILE",
                    help="a file the reply rests on (repeatable): its name, size, SHA-256 and media type go into the "
                         "signed reply; the file itself stays in the department's system")
    sp = add("conclude", "conclude a replied ticket (办结) with a verdict; issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("verdict", choices=list(lc.VERDICTS))
    sp.add_argument("--text", default="", help="the conclusion (督办结论)")
    sp.add_argument("--score", type=int, help="0..100 (default by verdict: 100 / 70 / 40)")
    sp.add_argument("--satisfaction", choices=list(lc.SATISFACTION_CODES),
                    help="complaint tickets: the complainant's 满意度 code")
    sp = add("return", "return a replied ticket for redo (退回重办); issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("reason")
    sp.add_argument("--reply-days", type=float, help="new reply deadline, working days from now")
    sp = add("extend-request", "ask the issuer for more time (延期)", ts)
    sp.add_argument("ticket")
    sp.add_argument("days", type=float)
    sp.add_argument("reason")
    sp = add("extend-grant", "grant a pending extension request; issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("--reply-days", type=float, required=True, help="new reply deadline, working days from now")
    sp = add("assign", "assign responsibility inside the department (认定), at the target", ts)
    sp.add_argument("ticket")
    sp.add_argument("--unit", required=True, help="responsible unit")
    sp.add_argument("--person", required=True, help="responsible person")
    sp.add_argument("--finding", default="")
    sp = add("assign-result", "report the result of an assignment back up", ts)
    sp.add_argument("ticket")
    sp.add_argument("assign_no", type=int)
    sp.add_argument("result")
    sp.add_argument("--disputed", action="store_true", help="the case went to the supervision office")
    sp.add_argument("--unit", default="", help="final responsible unit")
    sp.add_argument("--person", default="", help="final responsible person")

    cp = sub.add_parser("complaints", help="complaints (投诉): register, list, show")
    cs = cp.add_subparsers(dest="complaints_command", required=True)
    sp = add("register", "register a complaint; it becomes a ticket to the responsible unit", cs)
    sp.add_argument("--complainant", required=True)
    sp.add_argument("--respondent-unit", required=True, help="a node code (320303) or a unit name")
    sp.add_argument("--respondent-person", default="")
    sp.add_argument("--content", required=True)
    sp.add_argument("--source", required=True, help="e.g. 12345 热线, 信访, 网站")
    due = sp.add_mutually_exclusive_group(required=True)
    due.add_argument("--due", help="time limit, ISO-8601 with offset")
    due.add_argument("--due-days", type=float, help="time limit in working days from now")
    sp.add_argument("--to", help="responsible node (default: respondent unit if a code, else this node's division)")
    sp.add_argument("--division", help="division of the complaint (default: this node)")
    sp.add_argument("--no", help="complaint number (default: generated)")
    sp.add_argument("--case", default="", help="the case (办件编号) the complaint is about: `cases show` lists it")
    add("list", "complaints held here, with their ticket, state and satisfaction", cs)
    sp = add("show", "one complaint and its ticket's timeline", cs)
    sp.add_argument("no")


@command("tickets issue")
def cmd_issue(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, via = issue(home, {
        "action": "issue", "to": args.to, "subject": args.subject, "body": args.body, "case_nos": args.cases,
        "sign_days": args.sign_days, "reply_days": args.reply_days, "auth": args.auth,
        "alert_ids": args.alerts})
    result["via"] = via
    emit(args, result, result["ticket"])
    return 0


@command("tickets drafts")
def cmd_drafts(args: argparse.Namespace) -> int:
    rows = list_drafts(open_home(args), args.acting)
    emit(args, rows, lambda: "\n".join(
        [f"{'alert':<52}{'to':<12}{'drafted':<27}subject"]
        + [f"{r['alert_id']:<52}{r.get('to') or '':<12}{r.get('at') or '':<27}{r.get('subject') or ''}" for r in rows]
        + [f"({len(rows)} draft(s) waiting; `fednode tickets confirm DIR ALERT_ID` issues one)"]))
    return 0


@command("tickets confirm")
def cmd_confirm(args: argparse.Namespace) -> int:
    result, via = confirm_draft(open_home(args), args.auth, args.alert_id)
    result["via"] = via
    emit(args, result, f"{result['ticket']} (to {result['to']}, for alert {args.alert_id})")
    return 0


@command("tickets drop")
def cmd_drop(args: argparse.Namespace) -> int:
    result, via = drop_draft(open_home(args), args.auth, args.alert_id, args.note)
    result["via"] = via
    emit(args, result, f"draft for {args.alert_id} dropped by {result['by']['name']} at {result['at']}")
    return 0


def _cmd_act(args: argparse.Namespace) -> int:
    home = open_home(args)
    given = {**vars(args), "responsible_unit": getattr(args, "unit", None),
             "responsible_person": getattr(args, "person", None)}
    if getattr(args, "attach", None):
        given["attachments"] = [attachment_of_file(f) for f in args.attach]
    result, via = act(home, args.tickets_command, args.ticket, given, args.auth)
    result["via"] = via
    emit(args, result, f"{result['ticket']}: {result['event'].removeprefix('ticket.')} recorded at "
         f"{result['node']} ({result['at']})")
    return 0


for _verb in VERBS:
    command(f"tickets {_verb}")(_cmd_act)


@command("tickets list")
def cmd_list(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, _via = run_request(home, {"action": "list", "state": args.state, "auth": args.auth})
    if args.rejected:
        rows = result["rejected"]
        emit(args, rows, "\n".join(f"REFUSED {r['kind']} {r['ticket'] or '?'} from {r['writer']}: "
                                   f"[{r['code']}] {r['error']}" for r in rows) or "(nothing refused here)")
        return 0
    if args.json:
        emit(args, result["tickets"])
        return 0

    def human() -> str:
        lines = [f"{'ticket':<18}{'state':<12}{'issuer':<11}{'to':<11}{'reply by':<27}subject"]
        for r in result["tickets"]:
            lines.append(f"{r['ticket']:<18}{r['state']:<12}{r['issuer']:<11}{r['to']:<11}"
                         f"{r['reply_deadline']:<27}{r['subject']}")
        if not result["tickets"]:
            lines.append("(no tickets held here)")
        for r in result["rejected"]:
            lines.append(f"REFUSED {r['kind']} {r['ticket'] or '?'} from {r['writer']}: [{r['code']}] {r['error']}")
        return "\n".join(lines)

    emit(args, result, human)
    return 0


@command("tickets show")
def cmd_show(args: argparse.Namespace) -> int:
    home = open_home(args)
    d, _via = run_request(home, {"action": "show", "ticket": args.ticket, "auth": args.auth})
    emit(args, d, lambda: show_text(d))
    return 0


def show_text(d: dict[str, Any]) -> str:
    if d.get("state") is None:
        lines = [f"ticket {d['ticket']}: refused here"]
    else:
        lines = [
            f"ticket {d['ticket']}  {d['subject']}",
            f"  issuer {d['issuer']} → to {d['to']}    state: {d['state']}",
            f"  sign for by {d['deadlines']['sign']}    reply by {d['deadlines']['reply']}",
            f"  where: {d['waits']}  (as seen from {d['here']})",
            "",
            f"  {'when':<27}{'node':<11}{'who':<14}what",
        ]
        for e in d["timeline"]:
            detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items()
                               if v not in ("", [], None) and k != "attachments")
            who = f"{e['by']['name']}({e['by']['role_label']})" if e.get("by") else e["actor"]
            lines.append(f"  {e['at']:<27}{e['node']:<11}{who:<14}{e['event']}"
                         + (f"  ({detail})" if detail and e["event"] != "issue" else ""))
            for a in e["detail"].get("attachments") or []:
                lines.append(f"  {'':<27}{'':<11}{'':<14}  attachment {a['name']} ({a['size']} bytes, "
                             f"{a['media_type']}) sha256 {a['sha256']}")
        if d.get("verdict"):
            lines.append(f"  conclusion: {d['verdict']} (score {d['score']}) {d.get('conclusion') or ''}")
        for a in d.get("alerts") or []:
            lines.append(f"  alert {a['alert_id']} [{a['state_label']}] {a['message'] or '(not held here)'}")
    for r in d.get("rejected", []):
        lines.append(f"  REFUSED {r['kind']} from {r['writer']}: [{r['code']}] {r['error']}")
    return "\n".join(lines)


@command("complaints register")
def cmd_complaint_register(args: argparse.Namespace) -> int:
    home = open_home(args)
    complaint: dict[str, Any] = {
        "complainant": args.complainant, "respondent_unit": args.respondent_unit,
        "respondent_person": args.respondent_person, "content": args.content, "source": args.source,
    }
    if args.no:
        complaint["complaint_no"] = args.no
    if args.division:
        complaint["division"] = args.division
    if args.case:
        complaint["case_no"] = args.case
    req: dict[str, Any] = {"action": "complaint", "complaint": complaint, "to": args.to, "auth": args.auth}
    if args.due:
        complaint["due_at"] = args.due
    else:
        req["due_days"] = args.due_days
    result, via = run_request(home, req)
    result["via"] = via
    emit(args, result, f"complaint {result['complaint_no']} registered; ticket {result['ticket']} to {result['to']}")
    return 0


@command("complaints list")
def cmd_complaint_list(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, _via = run_request(home, {"action": "complaints", "auth": args.auth})
    rows = result["complaints"]
    if args.json:
        emit(args, rows)
        return 0
    lines = [f"{'complaint':<22}{'ticket':<18}{'state':<12}{'satisfaction':<13}respondent"]
    for c in rows:
        lines.append(f"{c['complaint_no']:<22}{c['ticket'] or '-':<18}{c['state'] or '-':<12}"
                     f"{c['satisfaction'] or '-':<13}{c['respondent_unit']} {c.get('respondent_person') or ''}")
    emit(args, rows, "\n".join(lines) if rows else "(no complaints held here)")
    return 0


@command("complaints show")
def cmd_complaint_show(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, _via = run_request(home, {"action": "complaints", "no": args.no, "auth": args.auth})
    c = result["complaints"][0]
    ticket = None
    if c.get("ticket"):
        ticket, _ = run_request(home, {"action": "show", "ticket": c["ticket"], "auth": args.auth})
    data = {**c, "ticket_detail": ticket}

    def human() -> str:
        head = [f"complaint {c['complaint_no']} from {c['complainant']} ({c['source']}), registered "
                f"{c['registered_at']} at {c['node']}, due {c['due_at']}",
                f"  respondent: {c['respondent_unit']} {c.get('respondent_person') or ''}",
                f"  content: {c['content']}",
                f"  satisfaction: {c['satisfaction'] or '-'}", ""]
        return "\n".join(head) + (show_text(ticket) if ticket else "  (its ticket is not held here)")

    emit(args, data, human)
    return 0
