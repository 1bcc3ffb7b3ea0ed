"""Use cases of cases (办件): one case seen whole, and the list of cases held here. Reads only.

Rules of this module:
- ``show_case`` (`cases show`) and ``list_cases`` (`cases list`) read what the node holds: the case
  records (found through the case index, node/features/cases/index.py), the statistics tables
  (stats_cases, stats_items, the ticket records by ticket) and the records of the alerts, tickets and
  complaints about the case. They append nothing to any log; before reading they bring the
  projections up to the change feed (``alerts.catch_up``), as `stats` does.
- A person sees the cases of their scope (``cases.read``: the case's division or department inside it),
  a 承办人 only the cases he handles. A case not held here is answered "not held here" (``NotHeld``),
  naming the node whose subtree it belongs to when the case number or an alert tells.
- Times are counted on the node's calendar (``stats.build_calendar``: office hours and the imported
  holidays); ``now`` closes the working time of an open case.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select

from node.app import people
from node.app.alerts import catch_up, disposals
from node.app.stats import build_calendar
from node.core.codes import is_code, within
from node.core.errors import NotFound, UsageError
from node.core.home import Home
from node.core.schema import stats as st
from node.features.cases import index as cix
from node.features.cases import query, view
from node.features.people.roles import Person, Target, may
from node.features.tickets import lifecycle as lc

MAX_PAGE = 1000


class NotHeld(NotFound):
    code = "case_not_held"


def _person_filters(person: Person | None) -> tuple[str, tuple[str, ...]]:
    """(scope, handlers): what a person may list. A 承办人 (own cases only) lists the cases he handles."""
    if person is None or person.kind == "os":
        return "", ()
    held = [r for r in person.roles if r in ("supervisor", "leader", "dept_supervisor", "auditor", "handler")]
    if any(r != "handler" for r in held):
        return person.scope, ()
    return person.scope, (person.login, person.name)


def _since(text: str) -> str:
    if not text:
        return ""
    try:
        d = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not a date or time", fix="--since 2025-06-01 or 2025-06-01T08:30") from None
    return (d.replace(tzinfo=view.CST) if d.tzinfo is None else d).astimezone(view.CST).isoformat()


def list_cases(home: Home, *, dept: str = "", item: str = "", state: str = "", handler: str = "", since: str = "",
               offset: int = 0, limit: int = 50, person: Person | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """`cases list`: the page ``offset``..``offset+limit`` of the matching cases (newest case number first),
    each with its 办理状态, and ``total``."""
    if state and state not in view.STATES:
        raise UsageError(f"--state {state!r} is not a 办理状态", fix="--state " + "|".join(view.STATES))
    if limit < 1 or limit > MAX_PAGE or offset < 0:
        raise UsageError(f"--limit {limit} / --offset {offset} out of range", fix=f"--limit 1..{MAX_PAGE}, --offset >= 0")
    now = now or people.now_cst()
    scope, own = _person_filters(person)
    f = query.Filters(dept=dept.strip().upper() if is_code(dept.strip().upper()) else dept.strip(), item=item.strip(),
                      state=state, handler=handler.strip(), since=_since(since), scope=scope, only_handlers=own)
    store = home.store()
    catch_up(home, store)
    clock = build_calendar(home)
    with store.read() as conn:
        rows, total = query.list_cases(conn, clock, now, f, offset, limit)
    return {"here": home.code, "total": total, "offset": offset, "limit": limit, "counted_at": now.isoformat(
        timespec="seconds"), "filters": {k: v for k, v in f.__dict__.items() if v}, "cases": rows}


def show_case(home: Home, case_no: str, person: Person | None = None, now: datetime | None = None) -> dict[str, Any]:
    """`cases show`: the case seen whole (node/features/cases/view.py) with every alert on it and its
    disposal, every ticket citing it or its alerts, every complaint about it, the 认定 results."""
    case_no = case_no.strip()
    if not case_no:
        raise UsageError("no case number", fix="fednode cases show DIR CASE_NO")
    now = now or people.now_cst()
    store = home.store()
    catch_up(home, store)
    clock = build_calendar(home)
    with store.read() as conn:
        held = cix.fetch(conn, cix.seqs_of(conn, case_no=case_no))
        recs = [(h.kind, h.payload, h.origin, h.local_seq) for h in held if isinstance(h.payload, dict)]
        case_recs = [r for r in recs if r[0].startswith("case.")]
        alerts = {str(h.payload["alert_id"]): (h.payload, h.origin, h) for h in held
                  if h.kind == "alert" and isinstance(h.payload, dict) and h.payload.get("alert_id")}
        if not case_recs:
            raise _not_held(home, case_no, alerts)
        base = case_recs[0][1]
        division, dept = str(base.get("division") or ""), str(base.get("dept") or "")
        handlers = cix.handlers_of(conn, case_no)
        if person is not None:
            decision = may(person, "cases.read", Target(codes=(division, dept), owners=frozenset(handlers),
                                                        what=f"办件 {case_no}"))
            if not decision:
                raise people.Refused(decision.reason, fix="ask someone whose jurisdiction holds the case")
        item = _item(conn, division, str(base.get("item_code") or ""))
        data = view.case_view(case_no, case_recs, item, clock, now)
        states = disposals(conn, list(alerts), {a: o for a, (_p, o, _h) in alerts.items()})
        by_alert = cix.fetch(conn, cix.seqs_of(conn, refs=list(alerts), kinds=("ticket.issue",)))
        ticket_nos = {str(p.get("ticket")) for k, p, _o, _s in recs if k == "ticket.issue" and p.get("ticket")}
        ticket_nos |= {str(h.payload.get("ticket")) for h in by_alert if isinstance(h.payload, dict)
                       and h.payload.get("ticket")}
        for disp in states.values():
            ticket_nos |= set(disp.tickets)
        tickets = _tickets(conn, sorted(ticket_nos))
        complaint_nos = {str(p.get("complaint_no")) for k, p, _o, _s in recs
                         if k == "complaint.register" and p.get("complaint_no")}
        complaint_nos |= {t.complaint_no for t in tickets.values() if t.complaint_no}
        complaints = [h.payload for h in cix.fetch(conn, cix.seqs_of(
            conn, refs=[cix.COMPLAINT_REF + n for n in complaint_nos], kinds=("complaint.register",)))
            if isinstance(h.payload, dict)]
    alert_rows = []
    for alert_id, (p, origin, h) in sorted(alerts.items(), key=lambda x: str(x[1][0].get("at", ""))):
        d = states.get(alert_id)
        alert_rows.append({**{k: p.get(k) for k in ("alert_id", "rule_id", "level", "object", "step_no", "message",
                                                    "at")},
                           "record": f"{origin}/monitor/{h.seq}", "state": d.state if d else "open",
                           "state_label": d.label if d else "待处置", "disposed_by": d.by if d and d.result else None,
                           "disposed_at": d.at if d and d.result else None, "note": d.note if d and d.result else "",
                           "tickets": list(d.tickets) if d else []})
    findings = []
    ticket_rows = []
    for t in sorted(tickets.values(), key=lambda s: s.issued_at):
        ticket_rows.append({"ticket": t.ticket, "state": t.state, "issuer": t.issuer, "to": t.to,
                            "subject": t.subject, "issued_at": t.issued_at, "reply_deadline": t.deadlines["reply"],
                            "replied_at": t.replied_at, "reply": t.reply_text, "verdict": t.verdict,
                            "conclusion": t.conclusion, "alert_ids": list(t.alert_ids),
                            "complaint_no": t.complaint_no})
        for no, a in sorted(t.assignments.items()):
            findings.append({"ticket": t.ticket, "assign_no": no, **{k: v for k, v in a.items() if k != "by"}})
    data.update(here=home.code, handlers=handlers, alerts=alert_rows, tickets=ticket_rows,
                complaints=[{**c, "ticket": next((t.ticket for t in tickets.values()
                                                  if t.complaint_no == c.get("complaint_no")), None)}
                            for c in complaints],
                findings=findings)
    return data


def _item(conn: Any, division: str, item_code: str) -> dict[str, Any] | None:
    held = cix.fetch(conn, cix.seqs_of(conn, refs=[f"{cix.ITEM_REF}{division}/{item_code}"], kinds=("item",)))
    items = [h.payload for h in held if isinstance(h.payload, dict)]
    if items:
        return dict(items[-1])  # the latest version of the item held here
    row = conn.execute(select(st.items).where(st.items.c.division == division,
                                              st.items.c.item_code == item_code)).first()
    return dict(row._mapping) if row is not None else None


def _tickets(conn: Any, tickets: list[str]) -> dict[str, lc.TicketState]:
    if not tickets:
        return {}
    te = st.ticket_events
    rows = conn.execute(select(te.c.kind, te.c.payload, te.c.writer, te.c.id).where(te.c.ticket.in_(tickets))).all()
    # the row id is the arrival order here, which for one writer's records is their order in its log (rule 7)
    return lc.project_all([(k, json.loads(p), w, int(i)) for k, p, w, i in rows if k in lc.EVENTS]).tickets


def _not_held(home: Home, case_no: str, alerts: dict[str, Any]) -> NotHeld:
    holder = next((o for _p, o, _h in alerts.values()), "")
    if not holder and len(case_no) >= 6 and is_code(case_no[:6]):
        holder = case_no[:6]
    if holder and holder != home.code and within(holder, home.code):
        return NotHeld(f"case {case_no} is not held here ({home.code}): its records are at {holder}, below this "
                       "node, and have not reached it (or that node sends only summaries)",
                       fix=f"look at {holder}: `fednode cases show DIR_OF_{holder} {case_no}`, or wait for its "
                           "records to arrive (`fednode status DIR --tree` shows the links)")
    if holder and not within(holder, home.code):
        return NotHeld(f"case {case_no} is not held here ({home.code}): it belongs to {holder}, outside this "
                       "node's subtree", fix=f"ask the node whose subtree holds {holder}")
    return NotHeld(f"case {case_no} is not held here ({home.code})",
                   fix="check the number; `fednode cases list DIR` lists the cases held here")
