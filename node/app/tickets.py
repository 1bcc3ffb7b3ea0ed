"""Tickets and complaints use cases: the one place a request is carried out (execute), and run_request
(through the running node, else on the store).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from node.app.remote import via_node_or_store
from node.core.errors import UsageError
from node.core.home import Home
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


# the fields of each verb's record, by name; a field marked "?" is left out when not given (None or "")
VERB_FIELDS: dict[str, tuple[str, ...]] = {
    "reply": ("text",),
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


def act(home: Home, verb: str, ticket: str, given: Mapping[str, Any], actor: str) -> tuple[Any, str]:
    """`fednode tickets VERB TICKET ...`: one act on a ticket (its fields picked from ``given``)."""
    return run_request(home, {"action": "act", "verb": verb, "ticket": ticket, "fields": act_fields(verb, given),
                              "actor": actor})


def run_request(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    """Through the running node when it runs, else directly on the store."""
    return via_node_or_store(home, {"op": "tickets", **req}, lambda: execute(
        home.ledger(), TicketsConfig.of_home(home), req, clock=system_clock, status=None))
