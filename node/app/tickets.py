"""Tickets and complaints use cases: the one place a request is carried out (execute), and run_request
(through the running node, else on the store).
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.app import people
from node.app.remote import via_node_or_store
from node.core.errors import UsageError
from node.core.home import Home
from node.features.people.accounts import LoginPolicy
from node.features.people.roles import Target, may
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import (
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
    from node.core.ledger import Ledger

WRITE_ACTIONS = frozenset({"issue", "act", "complaint", "confirm", "drop"})


# ---- the one place a request is carried out ----------------------------------------------------------------


def execute(ledger: Ledger, cfg: TicketsConfig, req: dict[str, Any], *, clock: Clock,
            status: dict[str, Any] | None, index: HeldIndex | None = None,
            policy: LoginPolicy | None = None) -> Any:
    """Carry out one request on a ledger (store thread of the running node, or the CLI itself), as the
    person ``req["auth"]`` names: every act is authorized on its target (people.authorize) and its
    records carry ``by``; reads are filtered by the person's scope."""
    desk = TicketDesk(ledger, cfg, clock, index)
    action = req.get("action")
    for name in ("sign_days", "reply_days", "due_days"):
        _positive(name, req.get(name))
        _positive(name, (req.get("fields") or {}).get(name))
    person = None
    if req.get("auth") is not None:
        person = people.resolve(ledger, policy or LoginPolicy(), req["auth"], desk.clock())
    elif action in WRITE_ACTIONS:
        raise UsageError("nobody is named as acting on the ticket", fix="give --as LOGIN (a 监察员 or 部门监察)")

    def allow(permission: str, target: Target) -> dict[str, Any]:
        assert person is not None
        d = people.authorize(ledger, person, permission, target, desk.clock(), command=f"tickets {action}")
        return people.stamp(person, d.role)

    if action == "issue":
        by = allow("tickets.issue", Target(codes=(str(req["to"]),), what=f"督办单（致 {req['to']}）"))
        p = desk.issue(to=req["to"], subject=req["subject"], body=req.get("body", ""),
                       actor=by["login"], by=by, case_nos=req.get("case_nos") or [],
                       alert_ids=req.get("alert_ids") or [], basis=str(req.get("basis") or ""),
                       rule_id=str(req.get("rule_id") or ""),
                       sign_days=req.get("sign_days"), reply_days=req.get("reply_days"))
        return {"ticket": p["ticket"], "to": p["to"], "sign_deadline": p["sign_deadline"],
                "reply_deadline": p["reply_deadline"], "at": p["at"], "by": by, "subject": p["subject"],
                "alert_ids": p.get("alert_ids") or [], "case_nos": p.get("case_nos") or []}
    if action == "act":
        kind = VERBS[req["verb"]]
        acted_on = desk._state(desk.projection(), req["ticket"])
        by = allow(people.command_permission(f"tickets {req['verb']}"), ticket_target(acted_on, req["verb"]))
        fields = dict(req.get("fields") or {})
        for name in ("reply_days",):  # relative deadlines are resolved here, on the node's calendar
            if name in fields:
                days = fields.pop(name)
                fields["reply_deadline"] = lc.format_time(desk.deadline_fn(desk.clock(), float(days)))
        p = desk.act(req["ticket"], kind, fields, actor=by["login"], by=by)
        return {"ticket": p["ticket"], "event": kind, "at": p["at"], "node": p["node"], "by": by}
    if action in ("confirm", "drop"):
        return _draft_act(ledger, desk, req, allow)
    if action == "complaint":
        complaint = dict(req["complaint"])
        if "due_days" in req:
            complaint["due_at"] = lc.format_time(desk.deadline_fn(desk.clock(), float(req["due_days"])))
        complaint.setdefault("registered_at", lc.format_time(desk.clock()))
        complaint.setdefault("division", ledger.code)
        to = req.get("to") or complaint["division"]
        by = allow("complaints.register", Target(codes=(str(to), str(complaint["division"])),
                                                 what=f"投诉（{complaint['division']}）"))
        c, p = desk.register_complaint(complaint, actor=by["login"], by=by, to=req.get("to"))
        return {"complaint_no": c["complaint_no"], "ticket": p["ticket"], "to": p["to"],
                "reply_deadline": p["reply_deadline"], "by": by}
    proj, held = project_store(ledger.store, desk.index)

    def visible(st: lc.TicketState) -> bool:
        return person is None or bool(may(person, "tickets.read", ticket_target(st, "")))

    if action == "list":
        rows = [summary(st) for st in sorted(proj.tickets.values(), key=lambda s: s.issued_at) if visible(st)]
        if req.get("state"):
            rows = [r for r in rows if r["state"] == req["state"]]
        rejected = [rejection_dict(r) for r in proj.rejected] if person is None or person.kind == "os" \
            or may(person, "node.read") else []
        return {"tickets": rows, "rejected": rejected}
    if action == "show":
        ticket = req["ticket"]
        st = proj.tickets.get(ticket)
        rejected = [rejection_dict(r) for r in proj.rejected
                    if isinstance(r.payload, dict) and r.payload.get("ticket") == ticket]
        if st is None:
            if rejected and (person is None or person.kind == "os"):
                return {"ticket": ticket, "state": None, "rejected": rejected, "timeline": [],
                        "waits": "refused here"}
            desk._state(proj, ticket)  # raises UnknownTicket
        assert st is not None
        if not visible(st):
            assert person is not None
            raise people.Refused(may(person, "tickets.read", ticket_target(st, "")).reason,
                                 fix="ask someone whose jurisdiction holds the ticket")
        issue_seq = next((h.seq for h in held if h.kind == lc.ISSUE and isinstance(h.payload, dict)
                          and h.payload.get("ticket") == ticket and h.origin == st.issuer), 0)
        data = st.as_dict()
        data.update(timeline=timeline_rows(st), rejected=rejected, here=ledger.code,
                    waits=where_waits(st, issue_seq, ledger.code, status), alerts=_alert_states(ledger, st.alert_ids))
        return data
    if action == "complaints":
        out = []
        for h in desk.index.of_kind("complaint."):
            if h.kind != "complaint.register" or not isinstance(h.payload, dict):
                continue
            codes = tuple(str(h.payload.get(k) or "") for k in ("division", "respondent_unit")) + (h.origin,)
            if person is not None and not may(person, "complaints.read", Target(codes=codes)):
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


ISSUER_VERBS = frozenset({"conclude", "return", "extend-grant"})  # the others are the target's (lifecycle.py)


def ticket_target(st: lc.TicketState, verb: str) -> Target:
    """What a verb on ``st`` is about, for may(): the issuer's jurisdiction for the issuer's verbs, the
    target's for the target's, either for reading; owners are the persons it was assigned to (认定)."""
    owners = frozenset(str(a.get("responsible_person") or "") for a in st.assignments.values()) - {""}
    codes = (st.issuer,) if verb in ISSUER_VERBS else (st.to,) if verb else (st.issuer, st.to)
    return Target(codes=codes, owners=owners, what=f"督办单 {st.ticket}")


def _positive(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        raise UsageError(f"--{name.replace('_', '-')} {value!r} is not a positive number of working days",
                         fix="give a number of working days greater than 0, e.g. 1 or 0.5")


# the fields of each verb's record, by name; a field marked "?" is left out when not given (None or "")
VERB_FIELDS: dict[str, tuple[str, ...]] = {
    "reply": ("text", "attachments?"),
    "conclude": ("verdict", "text", "score?", "satisfaction?"),
    "return": ("reason", "reply_days?"),
    "extend-request": ("days", "reason"),
    "extend-grant": ("reply_days",),
    "assign": ("responsible_unit", "responsible_person", "finding"),
    "assign-result": ("assign_no", "result", "disputed", "responsible_unit?", "responsible_person?"),
}


def act_fields(verb: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``verb``'s record picked from ``given`` (VERB_FIELDS)."""
    out: dict[str, Any] = {}
    for field in VERB_FIELDS.get(verb, ()):
        name = field.rstrip("?")
        value = given.get(name)
        if field.endswith("?") and (value is None or value == ""):
            continue
        out[name] = value
    return out


def attachment_of_file(path: str | Path) -> dict[str, Any]:
    """A reply's attachment (``tickets reply --attach FILE``): its name, size, SHA-256 and media type, read from
    the file, which stays where it is (only this metadata goes into the signed ticket.reply record)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--attach {path}: no such file", fix="give the path of a file the reply rests on")
    h = hashlib.sha256()
    size = 0
    try:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise UsageError(f"--attach {path}: cannot read it ({e.strerror})", fix="check the file's permissions") from None
    media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    a = {"name": p.name, "size": size, "sha256": h.hexdigest(), "media_type": media}
    problem = lc.check_attachment(a)
    if problem:
        raise UsageError(f"--attach {path}: {problem}", fix="rename the file")
    return a


def act(home: Home, verb: str, ticket: str, given: Mapping[str, Any], auth: dict[str, Any]) -> tuple[Any, str]:
    """`fednode tickets VERB TICKET ...`: one act on a ticket (its fields picked from ``given``)."""
    return run_request(home, {"action": "act", "verb": verb, "ticket": ticket, "fields": act_fields(verb, given),
                              "auth": auth})


def run_request(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    """Through the running node when it runs, else directly on the store."""
    return via_node_or_store(home, {"op": "tickets", **req}, lambda: execute(
        home.ledger(), TicketsConfig.of_home(home), req, clock=system_clock, status=None,
        policy=people.policy_of(home)))


# ---- tickets and alerts: prefilled from the alerts they cite, drafted from red cards --------------------------


def _alert_states(ledger: Ledger, alert_ids: list[str]) -> list[dict[str, Any]]:
    """The alerts a ticket cites, with their disposal state as held here."""
    if not alert_ids:
        return []
    from node.app.alerts import disposals
    from node.features.cases import index as cix

    cix.fold_all(ledger.store)
    with ledger.store.read() as conn:
        states = disposals(conn, alert_ids)
        held = {str(h.payload.get("alert_id")): h for h in cix.fetch(conn, cix.seqs_of(conn, refs=alert_ids,
                                                                                       kinds=("alert",)))
                if isinstance(h.payload, dict)}
    out = []
    for a in alert_ids:
        d, h = states.get(a), held.get(a)
        out.append({"alert_id": a, "held": h is not None, "level": h.payload.get("level") if h else None,
                    "message": h.payload.get("message") if h else None, "record": h.ref if h else None,
                    "state": d.state if d else "open", "state_label": d.label if d else "待处置"})
    return out


def issue(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    """`tickets issue`: with ``alert_ids``, what the person left out (to, subject, body, case numbers, basis,
    rule) is filled in from the first alert cited (node/features/alerts/disposal.py ``prefill``)."""
    req = dict(req)
    if req.get("alert_ids"):
        from node.app.alerts import find_alert
        from node.core.errors import NotFound
        from node.features.alerts.disposal import prefill

        alerts = []
        for a in req["alert_ids"]:  # an alert not held here may still be cited; it fills nothing in
            try:
                alerts.append(find_alert(home, a)[0].payload)
            except NotFound:
                if not all(req.get(k) for k in ("to", "subject", "body")):
                    raise
        if alerts:
            fill = prefill(alerts[0], home.code)
            for k in ("to", "subject", "body"):
                if not req.get(k):
                    req[k] = fill[k]
            cases = list(req.get("case_nos") or [])
            for a in alerts:
                if a.get("case_no") and a["case_no"] not in cases:
                    cases.append(str(a["case_no"]))
            req.update(case_nos=cases, basis=req.get("basis") or fill["basis"],
                       rule_id=req.get("rule_id") or fill["rule_id"])
    missing = [k for k in ("to", "subject", "body") if not req.get(k)]
    if missing:
        raise UsageError(f"--{missing[0]} is missing" + (" (the alert's unit is not below this node)"
                                                           if req.get("alert_ids") and missing[0] == "to" else ""),
                         fix="give --to, --subject and --body, or --alert ALERT_ID to fill them in from the alert")
    return run_request(home, req)


def list_drafts(home: Home, person: Any = None, *, pending_only: bool = True) -> list[dict[str, Any]]:
    """`tickets drafts`: the 督办单 drafted from red cards here (``[tickets] auto_from_red = "draft"``), waiting for a
    监察员 to confirm or drop them (all of them with ``pending_only=False``)."""
    from node.app.alerts import all_disposals, catch_up

    store = home.store()
    catch_up(home, store)
    with store.read() as conn:
        states = all_disposals(conn)
    out = []
    for alert_id, d in sorted(states.items(), key=lambda kv: str((kv[1].draft or {}).get("at", ""))):
        dr = d.draft
        if dr is None or (pending_only and dr["state"] != "pending"):
            continue
        if person is not None and not may(person, "tickets.read", Target(codes=(str(dr.get("to") or ""),
                                                                              str(dr.get("node") or "")))):
            continue
        out.append({"alert_id": alert_id, "alert_state": d.state, **dr})
    return out


def confirm_draft(home: Home, auth: dict[str, Any], alert_id: str) -> tuple[Any, str]:
    """`tickets confirm`: issue the drafted 督办单 of ``alert_id`` in the name of the person (tickets.issue)."""
    return run_request(home, {"action": "confirm", "alert_id": alert_id, "auth": auth})


def drop_draft(home: Home, auth: dict[str, Any], alert_id: str, note: str) -> tuple[Any, str]:
    """`tickets drop`: the drafted 督办单 of ``alert_id`` is not issued (the alert stays 待处置)."""
    if not note.strip():
        raise UsageError("--note is empty", fix="say why no ticket is issued, e.g. --note 已电话督促，无需督办")
    return run_request(home, {"action": "drop", "alert_id": alert_id, "note": note.strip(), "auth": auth})


def _draft_act(ledger: Ledger, desk: TicketDesk, req: dict[str, Any], allow: Any) -> dict[str, Any]:
    from node.app.alerts import disposals
    from node.core.ledger import NewRecord
    from node.features.alerts import disposal as dsp
    from node.features.cases import index as cix
    from node.features.worklog import ACTION, action_payload

    alert_id = str(req.get("alert_id") or "")
    cix.fold_all(ledger.store)  # what this node wrote a moment ago counts (one confirmation, never two)
    with ledger.store.read() as conn:
        d = disposals(conn, [alert_id]).get(alert_id)
    dr = d.draft if d else None
    if dr is None or dr["state"] != "pending" or dr.get("node") != ledger.code:
        what = "no draft" if dr is None else f"its draft is {dr['state']}" if dr["state"] != "pending" \
            else f"its draft is {dr.get('node')}'s"
        raise dsp.DisposalRefused(f"alert {alert_id}: {what} at {ledger.code}",
                                  fix="`fednode tickets drafts DIR` lists the drafts waiting here")
    target = Target(codes=(str(dr["to"]),), what=f"督办单草稿（预警 {alert_id}，致 {dr['to']}）")
    by = allow("tickets.issue", target)
    if req["action"] == "confirm":
        p = desk.issue(to=str(dr["to"]), subject=str(dr["subject"]), body=str(dr.get("body") or ""), actor=by["login"],
                       by=by, case_nos=list(dr.get("case_nos") or []), alert_ids=[alert_id],
                       basis=str(dr.get("basis") or ""), rule_id=str(dr.get("rule_id") or ""))
        return {"ticket": p["ticket"], "to": p["to"], "alert_id": alert_id, "reply_deadline": p["reply_deadline"],
                "at": p["at"], "by": by}
    at = lc.format_time(desk.clock())
    payload = {"alert_id": alert_id, "note": req["note"], "actor": by["login"], "by": by, "at": at,
               "node": ledger.code, **({"case_no": d.case_no} if d and d.case_no else {})}
    audit = action_payload(by["login"], "tickets drop", alert_id, {"note": req["note"], "to": dr["to"]},
                           desk.clock())
    audit["by"] = by
    ledger.append([NewRecord(dsp.DRAFT_DROP, payload), NewRecord(ACTION, audit)])
    return {**payload, "dropped": True}
