"""Supervision tickets (督办) and complaints in the node: CLI, admin operations and the TicketService.

Rules of this module:
- Every verb works whether the node runs or not: the CLI asks the running node over the admin socket
  (op ``tickets``), and when it is not running works on the store directly; the records go out when
  the node runs. Both paths call the same ``execute`` (node/tickets/desk.py does the work).
- ``TicketService`` follows ``Store.changes`` with a persisted cursor and writes the receipt
  (``ticket.delivered``) for tickets addressed to this node; an APScheduler interval job (persisted in
  the node's job store, id ``tickets.deadlines``) writes reminders and escalations from
  ``lifecycle.due_actions``. Both decide from the projection of the store at the moment they write,
  on the single database thread, so nothing is written twice, across restarts too.
- The work log (监察日志): each act's own transaction holds its ``audit.action`` (desk.py ``audit``), named
  for ``--actor`` or else the operator (``FEDNODE_ACTOR``, the OS user), so node/auditlog.py adds none;
  ``tickets issue --alert ID`` names the alerts a ticket deals with (they count as handled). ``list``
  and ``show`` (and ``complaints list|show``) are reads: nothing but the day's first visit.
- Output contract: ``tickets issue`` prints the ticket number (``--json``: an object with ``ticket``);
  ``tickets list --json`` prints objects with ``ticket``, ``state``, ``to``, ``issuer``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from node import admin, auditlog
from node.cli import command, emit, open_home
from node.errors import UsageError
from node.home import Home
from node.services import Service
from node.tickets import lifecycle as lc
from node.tickets.desk import (
    VERBS,
    Clock,
    HeldIndex,
    TicketDesk,
    TicketsConfig,
    project_store,
    rejection_dict,
    summary,
    system_clock,
    timeline_rows,
    where_waits,
)

if TYPE_CHECKING:
    from node.ledger import Ledger
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)

# The clock of the running node's automatic records; tests replace it (the only mock allowed: the clock).
CLOCK: Clock = system_clock
JOB_ID = "tickets.deadlines"
_ACTIVE: dict[str, TicketService] = {}  # code -> the running service (the persisted job names the code)

WRITE_ACTIONS = frozenset({"issue", "act", "complaint"})


# ---- the one place a request is carried out ----------------------------------------------------------------


def execute(ledger: Ledger, cfg: TicketsConfig, req: dict[str, Any], *, clock: Clock,
            status: dict[str, Any] | None, index: HeldIndex | None = None) -> Any:
    """Carry out one CLI request on a ledger (store thread of the running node, or the CLI itself)."""
    desk = TicketDesk(ledger, cfg, clock, index)
    action = req.get("action")
    for name in ("sign_days", "reply_days", "due_days"):
        _positive(name, req.get(name))
        _positive(name, (req.get("fields") or {}).get(name))
    if action == "issue":
        p = desk.issue(to=req["to"], subject=req["subject"], body=req.get("body", ""),
                       actor=req.get("actor", "operator"), case_nos=req.get("case_nos") or [],
                       alert_ids=req.get("alert_ids") or [],
                       sign_days=req.get("sign_days"), reply_days=req.get("reply_days"))
        return {"ticket": p["ticket"], "to": p["to"], "sign_deadline": p["sign_deadline"],
                "reply_deadline": p["reply_deadline"], "at": p["at"]}
    if action == "act":
        kind = VERBS[req["verb"]]
        fields = dict(req.get("fields") or {})
        for name in ("reply_days",):  # relative deadlines are resolved here, on the node's calendar
            if name in fields:
                days = fields.pop(name)
                fields["reply_deadline"] = lc.format_time(desk.deadline_fn(desk.clock(), float(days)))
        p = desk.act(req["ticket"], kind, fields, actor=req.get("actor", "operator"))
        return {"ticket": p["ticket"], "event": kind, "at": p["at"], "node": p["node"]}
    if action == "complaint":
        complaint = dict(req["complaint"])
        if "due_days" in req:
            complaint["due_at"] = lc.format_time(desk.deadline_fn(desk.clock(), float(req["due_days"])))
        complaint.setdefault("registered_at", lc.format_time(desk.clock()))
        complaint.setdefault("division", ledger.code)
        c, p = desk.register_complaint(complaint, actor=req.get("actor", "operator"), to=req.get("to"))
        return {"complaint_no": c["complaint_no"], "ticket": p["ticket"], "to": p["to"],
                "reply_deadline": p["reply_deadline"]}
    proj, held = project_store(ledger.store, desk.index)
    if action == "list":
        rows = [summary(st) for st in sorted(proj.tickets.values(), key=lambda s: s.issued_at)]
        if req.get("state"):
            rows = [r for r in rows if r["state"] == req["state"]]
        return {"tickets": rows, "rejected": [rejection_dict(r) for r in proj.rejected]}
    if action == "show":
        ticket = req["ticket"]
        st = proj.tickets.get(ticket)
        rejected = [rejection_dict(r) for r in proj.rejected
                    if isinstance(r.payload, dict) and r.payload.get("ticket") == ticket]
        if st is None:
            if rejected:
                return {"ticket": ticket, "state": None, "rejected": rejected, "timeline": [],
                        "waits": "refused here"}
            desk._state(proj, ticket)  # raises UnknownTicket
        assert st is not None
        issue_seq = next((h.seq for h in held if h.kind == lc.ISSUE and isinstance(h.payload, dict)
                          and h.payload.get("ticket") == ticket and h.origin == st.issuer), 0)
        data = st.as_dict()
        data.update(timeline=timeline_rows(st), rejected=rejected, here=ledger.code,
                    waits=where_waits(st, issue_seq, ledger.code, status))
        return data
    if action == "complaints":
        out = []
        for h in desk.index.of_kind("complaint."):
            if h.kind != "complaint.register" or not isinstance(h.payload, dict):
                continue
            c = dict(h.payload)
            st = next((s for s in proj.tickets.values() if s.complaint_no == c.get("complaint_no")), None)
            c.update(node=h.origin, ticket=st.ticket if st else None, state=st.state if st else None,
                     satisfaction=st.satisfaction if st else None)
            if not req.get("no") or c.get("complaint_no") == req["no"]:
                out.append(c)
        if req.get("no") and not out:
            raise UsageError(f"complaint {req['no']} is not held at {ledger.code}",
                             fix="`fednode complaints list DIR` shows the complaints held here")
        return {"complaints": out}
    raise UsageError(f"unknown tickets action {action!r}", fix="a CLI bug")


def _positive(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise UsageError(f"--{name.replace('_', '-')} {value!r} is not a positive number of working days",
                         fix="give a number of working days greater than 0, e.g. 1 or 0.5")


def run_request(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    """Through the running node when it runs, else directly on the store."""
    resp = admin.call(home, {"op": "tickets", **req})
    if resp is not None:
        return resp["result"], "admin"
    cfg = TicketsConfig.of_home(home)
    return execute(home.ledger(), cfg, req, clock=system_clock, status=None), "store"


@admin.op("tickets")
async def _op_tickets(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = _ACTIVE.get(rt.code)
    cfg = svc.cfg if svc is not None else TicketsConfig.of_home(rt.home)
    status = None
    if req.get("action") == "show":
        status = await rt.status()
    if req.get("action") in WRITE_ACTIONS:
        await rt.wait_recovered()
    index = svc.index if svc is not None else None
    result = await rt.db(execute, rt.ledger, cfg, req, clock=CLOCK, status=status, index=index)
    if req.get("action") in WRITE_ACTIONS:
        rt.notify()
    return result


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
            "node.commands.tickets:deadline_job", "interval", seconds=self.cfg.check_interval_s,
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


# ---- CLI ----------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    tp = sub.add_parser("tickets", help="supervision tickets (督办): issue, list, show, sign, reply, conclude, return")
    ts = tp.add_subparsers(dest="tickets_command", required=True)
    sp = add("issue", "issue a ticket to a descendant jurisdiction; prints its number", ts)
    sp.add_argument("--to", required=True, help="target node code, inside this node's subtree")
    sp.add_argument("--subject", required=True)
    sp.add_argument("--body", required=True)
    sp.add_argument("--case", action="append", default=[], dest="cases", help="related case number (repeatable)")
    sp.add_argument("--alert", action="append", default=[], dest="alerts",
                    help="the alert this ticket deals with (repeatable; it counts as handled in the work log)")
    sp.add_argument("--sign-days", type=float, help="working days to sign for it (default [tickets] sign_days)")
    sp.add_argument("--reply-days", type=float, help="working days to reply (default [tickets] reply_days)")
    _actor(sp)
    sp = add("list", "the tickets this node holds, and the records it refused", ts)
    sp.add_argument("--state", choices=list(lc.STATES))
    sp.add_argument("--rejected", action="store_true", help="only the ticket records refused here")
    sp = add("show", "one ticket: its timeline (who, what, when, where) and where it waits", ts)
    sp.add_argument("ticket")
    sp = add("sign", "sign for a ticket (签收), at the target or inside its subtree", ts)
    sp.add_argument("ticket")
    _actor(sp)
    sp = add("reply", "reply to a ticket (答复)", ts)
    sp.add_argument("ticket")
    sp.add_argument("text")
    _actor(sp)
    sp = add("conclude", "conclude a replied ticket (办结) with a verdict; issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("verdict", choices=list(lc.VERDICTS))
    sp.add_argument("--text", default="", help="the conclusion (督办结论)")
    sp.add_argument("--score", type=int, help="0..100 (default by verdict: 100 / 70 / 40)")
    sp.add_argument("--satisfaction", choices=list(lc.SATISFACTION_CODES),
                    help="complaint tickets: the complainant's 满意度 code")
    _actor(sp)
    sp = add("return", "return a replied ticket for redo (退回重办); issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("reason")
    sp.add_argument("--reply-days", type=float, help="new reply deadline, working days from now")
    _actor(sp)
    sp = add("extend-request", "ask the issuer for more time (延期)", ts)
    sp.add_argument("ticket")
    sp.add_argument("days", type=float)
    sp.add_argument("reason")
    _actor(sp)
    sp = add("extend-grant", "grant a pending extension request; issuer only", ts)
    sp.add_argument("ticket")
    sp.add_argument("--reply-days", type=float, required=True, help="new reply deadline, working days from now")
    _actor(sp)
    sp = add("assign", "assign responsibility inside the department (认定), at the target", ts)
    sp.add_argument("ticket")
    sp.add_argument("--unit", required=True, help="responsible unit")
    sp.add_argument("--person", required=True, help="responsible person")
    sp.add_argument("--finding", default="")
    _actor(sp)
    sp = add("assign-result", "report the result of an assignment back up", ts)
    sp.add_argument("ticket")
    sp.add_argument("assign_no", type=int)
    sp.add_argument("result")
    sp.add_argument("--disputed", action="store_true", help="the case went to the supervision office")
    sp.add_argument("--unit", default="", help="final responsible unit")
    sp.add_argument("--person", default="", help="final responsible person")
    _actor(sp)

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
    _actor(sp)
    add("list", "complaints held here, with their ticket, state and satisfaction", cs)
    sp = add("show", "one complaint and its ticket's timeline", cs)
    sp.add_argument("no")


def _actor(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--actor", default=None,
                    help="who does it (recorded in the timeline and the work log; default: $FEDNODE_ACTOR, else "
                    "the OS user)")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    verb = args.tickets_command
    if verb == "reply":
        return {"text": args.text}
    if verb == "conclude":
        f: dict[str, Any] = {"verdict": args.verdict, "text": args.text}
        if args.score is not None:
            f["score"] = args.score
        if args.satisfaction is not None:
            f["satisfaction"] = args.satisfaction
        return f
    if verb == "return":
        f = {"reason": args.reason}
        if args.reply_days is not None:
            f["reply_days"] = args.reply_days
        return f
    if verb == "extend-request":
        return {"days": args.days, "reason": args.reason}
    if verb == "extend-grant":
        return {"reply_days": args.reply_days}
    if verb == "assign":
        return {"responsible_unit": args.unit, "responsible_person": args.person, "finding": args.finding}
    if verb == "assign-result":
        f = {"assign_no": args.assign_no, "result": args.result, "disputed": args.disputed}
        if args.unit:
            f["responsible_unit"] = args.unit
        if args.person:
            f["responsible_person"] = args.person
        return f
    return {}


@command("tickets issue")
def cmd_issue(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, via = run_request(home, {
        "action": "issue", "to": args.to, "subject": args.subject, "body": args.body, "case_nos": args.cases,
        "sign_days": args.sign_days, "reply_days": args.reply_days, "actor": auditlog.actor_of(args),
        "alert_ids": args.alerts})
    result["via"] = via
    emit(args, result, result["ticket"])
    return 0


def _cmd_act(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, via = run_request(home, {"action": "act", "verb": args.tickets_command, "ticket": args.ticket,
                                     "fields": _fields(args), "actor": auditlog.actor_of(args)})
    result["via"] = via
    emit(args, result, f"{result['ticket']}: {result['event'].removeprefix('ticket.')} recorded at "
         f"{result['node']} ({result['at']})")
    return 0


for _verb in VERBS:
    command(f"tickets {_verb}")(_cmd_act)


@command("tickets list")
def cmd_list(args: argparse.Namespace) -> int:
    home = open_home(args)
    result, _via = run_request(home, {"action": "list", "state": args.state})
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
    d, _via = run_request(home, {"action": "show", "ticket": args.ticket})
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
            detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if v not in ("", [], None))
            lines.append(f"  {e['at']:<27}{e['node']:<11}{e['actor']:<14}{e['event']}"
                         + (f"  ({detail})" if detail and e["event"] != "issue" else ""))
        if d.get("verdict"):
            lines.append(f"  conclusion: {d['verdict']} (score {d['score']}) {d.get('conclusion') or ''}")
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
    req: dict[str, Any] = {"action": "complaint", "complaint": complaint, "to": args.to,
                           "actor": auditlog.actor_of(args)}
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
    result, _via = run_request(home, {"action": "complaints"})
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
    result, _via = run_request(home, {"action": "complaints", "no": args.no})
    c = result["complaints"][0]
    ticket = None
    if c.get("ticket"):
        ticket, _ = run_request(home, {"action": "show", "ticket": c["ticket"]})
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
