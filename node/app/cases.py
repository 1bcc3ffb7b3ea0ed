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
- ``verify_case`` (the desk's 已验证 badge, /api/v1/cases/NO/verify) checks the case's records held here back to
  the node that wrote them: each record's stored body must chain, through the following bodies of its
  log, to a checkpoint signed by its origin's key, that key chaining to this tree's root (and the
  record's own signature on a signed channel). The checks are node/core/integrity.py's proofs
  (``export_proof`` + ``verify_proof``), one proof per run of records up to a checkpoint; when a run
  fails each record of it is proved alone, so the failure names the record.
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
from node.core import integrity
from node.core.codes import is_code, within
from node.core.crypto import chain_step
from node.core.errors import FednodeError, NotFound, UsageError
from node.core.home import Home
from node.core.records import SIGNED_CHANNELS
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
               now: datetime | None = None, count_beyond: int | None = None) -> dict[str, Any]:
    """`cases list`: the page ``offset``..``offset+limit`` of the matching cases (newest case number first),
    each with its 办理状态, and ``total``. With ``count_beyond`` the matches are counted only up to that
    many past the page (``total_exact`` false when there are more): the desk's pages over a large store."""
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
        rows, total, exact = query.list_cases(conn, clock, now, f, offset, limit,
                                              None if count_beyond is None else offset + limit + count_beyond)
    return {"here": home.code, "total": total, "total_exact": exact, "offset": offset, "limit": limit,
            "counted_at": now.isoformat(
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
        _may_read(person, case_no, division, dept, handlers)
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


def _may_read(person: Person | None, case_no: str, division: str, dept: str, handlers: list[str]) -> None:
    if person is None:
        return
    decision = may(person, "cases.read", Target(codes=(division, dept), owners=frozenset(handlers),
                                                what=f"办件 {case_no}"))
    if not decision:
        raise people.Refused(decision.reason, fix="ask someone whose jurisdiction holds the case")


VERIFIED_KINDS = ("case.", "alert")  # the case's own events and the alerts raised on it


def verify_case(home: Home, case_no: str, person: Person | None = None) -> dict[str, Any]:
    """`cases verify`: every record of the case held here (its ``case.*`` events and the alerts on it)
    proved back to the node that wrote it (module rules). Reads only.

    Returns ``{"case_no", "here", "ok", "checked", "failed", "origins": [...], "records": [{"record",
    "kind", "origin", "ok", "signer", "checkpoint_seq", "reason", "code"}]}``; a record not yet covered
    by a checkpoint of its origin is ``ok: false`` with ``code: "missing_checkpoint"``."""
    case_no = case_no.strip()
    if not case_no:
        raise UsageError("no case number", fix="fednode cases verify DIR CASE_NO")
    store = home.store()
    catch_up(home, store)
    with store.read() as conn:
        held = cix.fetch(conn, cix.seqs_of(conn, case_no=case_no))
        case_recs = [h for h in held if h.kind.startswith("case.") and isinstance(h.payload, dict)]
        if not case_recs:
            raise _not_held(home, case_no, {str(h.payload.get("alert_id")): (h.payload, h.origin, h) for h in held
                                            if h.kind == "alert" and isinstance(h.payload, dict)})
        base = case_recs[0].payload
        _may_read(person, case_no, str(base.get("division") or ""), str(base.get("dept") or ""),
                  cix.handlers_of(conn, case_no))
    root = home.root()
    if root is None:
        raise UsageError(f"{home.code} is not enrolled: there is no root to verify against",
                         fix="install the node's bundle first (`fednode pki install`)")
    keyring = home.ledger().keyring
    wanted = [h for h in held if h.kind.startswith(VERIFIED_KINDS) and not h.down]
    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    by_log: dict[tuple[str, int], list[cix.Held]] = {}
    for h in wanted:
        by_log.setdefault((h.origin, h.channel), []).append(h)
    for (origin, channel), hs in sorted(by_log.items()):
        todo = sorted(hs, key=lambda x: x.seq)
        while todo:
            first, rest = todo[0], todo[1:]
            r = _prove_one(store, keyring, root, first)
            results[(origin, channel, first.seq)] = r
            if r["ok"] and channel not in SIGNED_CHANNELS:
                # the proof of ``first`` carried the stored bodies of the records after it up to the checkpoint
                # and chained them to the origin's signature: those of the case are proved by it too
                for h in rest:
                    if h.seq <= r["checkpoint_seq"]:
                        results[(origin, channel, h.seq)] = dict(r)
            todo = [h for h in rest if (origin, channel, h.seq) not in results]
    rows = []
    for h in wanted:
        r = results[(h.origin, h.channel, h.seq)]
        rows.append({"record": h.ref, "kind": h.kind, "origin": h.origin, **r})
    failed = sum(1 for r in rows if not r["ok"])
    return {"case_no": case_no, "here": home.code, "ok": failed == 0 and bool(rows), "checked": len(rows),
            "failed": failed, "origins": sorted({r["origin"] for r in rows}), "records": rows}


def _failure(e: FednodeError) -> dict[str, Any]:
    return {"ok": False, "signer": None, "checkpoint_seq": None, "reason": e.message, "code": e.code}


def _prove_one(store: Any, keyring: Any, root: Any, h: cix.Held) -> dict[str, Any]:
    try:
        done = integrity.verify_proof(integrity.export_proof(store, keyring, root, h.origin, h.channel, h.seq), root)
    except FednodeError as e:
        out = _failure(e)
        chains = store.chains_at(h.origin, h.channel, [h.seq - 1, h.seq])
        body = next((bytes(r.body) for r in store.records(h.origin, h.channel, h.seq, h.seq)), None)
        if body is not None and len(chains) == 2 and chain_step(chains[h.seq - 1], body) != chains[h.seq]:
            out.update(code="altered", reason=f"{h.ref}: the stored record does not hash to its chain value: "
                                              "it was altered at rest (" + e.message + ")")
        return out
    return {"ok": True, "signer": done["signer"], "checkpoint_seq": done["checkpoint_seq"], "reason": "", "code": ""}


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
