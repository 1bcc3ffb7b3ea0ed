"""Complaints (投诉): registered at a node, turned into a ticket to the responsible unit.

Rules of this module:
- A complaint is a ``complaint.register`` record (monitor channel, docs/records.md): complaint_no,
  complainant, respondent_unit, respondent_person, content, source, registered_at, due_at, division.
- It becomes an ordinary ticket (``ticket_from_complaint`` builds the ``ticket.issue`` payload) issued
  by the registering node to the responsible unit and carrying ``complaint_no``; from there it follows
  the ticket lifecycle of ``lifecycle.py`` unchanged.
- The complaint's time limit (``due_at``) is the ticket's reply deadline.
- Satisfaction is **a field of the ticket's ``ticket.conclude``** (``satisfaction``, the DOMAIN 满意度
  code "1".."5"), required exactly when the ticket carries a ``complaint_no``. Not a separate
  ``complaint.satisfaction`` record: the conclusion is the end of the flow, one record is one signature
  and one place to look, and a complaint ticket can never be concluded without it.
- The responsible unit is ``respondent_unit`` when that is a node code (``320300-GA``), else the
  complaint's ``division``; a caller that knows better passes ``to``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from node.core.codes import is_code
from node.features.tickets.lifecycle import (
    DEFAULT_SIGN_DAYS,
    DeadlineFn,
    TicketError,
    TicketState,
    calendar_days,
    make_issue,
    parse_time,
)

REGISTER = "complaint.register"
COMPLAINT_FIELDS = (
    "complaint_no",
    "complainant",
    "respondent_unit",
    "respondent_person",
    "content",
    "source",
    "registered_at",
    "due_at",
    "division",
)
_OPTIONAL_EMPTY = frozenset({"respondent_person"})  # a complaint may name a unit only
SATISFIED = frozenset({"1", "2"})  # 非常满意, 满意: the numerator of 满意度 (DOMAIN.md)


class MalformedComplaint(TicketError):
    code = "complaint_malformed"


def validate_complaint(complaint: Mapping[str, Any]) -> None:
    """Raise ``MalformedComplaint`` naming the field when a ``complaint.register`` payload is wrong."""
    no = complaint.get("complaint_no", "?")
    for name in COMPLAINT_FIELDS:
        v = complaint.get(name)
        if not isinstance(v, str) or (name not in _OPTIONAL_EMPTY and not v.strip()):
            raise MalformedComplaint(
                f"complaint {no}: field {name!r} must be a non-empty string, got {v!r}",
                fix=f"set {name!r}",
            )
    try:
        registered, due = parse_time(complaint["registered_at"]), parse_time(complaint["due_at"])
    except TicketError as e:
        raise MalformedComplaint(f"complaint {no}: {e.message}", fix=e.fix) from None
    if due <= registered:
        raise MalformedComplaint(f"complaint {no}: due_at is not after registered_at", fix="fix due_at")
    if not is_code(complaint["division"]):
        raise MalformedComplaint(
            f"complaint {no}: division {complaint['division']!r} is not a node code", fix="fix division"
        )


def responsible_unit(complaint: Mapping[str, Any]) -> str:
    unit = complaint["respondent_unit"]
    return unit if is_code(unit) else complaint["division"]


def ticket_from_complaint(
    complaint: Mapping[str, Any],
    *,
    issuer: str,
    seq: int,
    actor: str,
    at: datetime,
    to: str | None = None,
    sign_days: float = DEFAULT_SIGN_DAYS,
    deadline_fn: DeadlineFn = calendar_days,
) -> dict[str, Any]:
    """The ``ticket.issue`` payload that turns a registered complaint into a ticket.

    The reply deadline is the complaint's ``due_at``; the sign-for deadline ``sign_days`` after ``at``
    (never after the reply deadline).
    """
    validate_complaint(complaint)
    no = complaint["complaint_no"]
    due = parse_time(complaint["due_at"])
    if due <= at:
        raise MalformedComplaint(
            f"complaint {no} is already past its time limit {complaint['due_at']}",
            fix="issue the ticket with an explicit later reply deadline (make_issue)",
        )
    respondent = complaint["respondent_unit"]
    if complaint.get("respondent_person"):
        respondent = f"{respondent} {complaint['respondent_person']}"
    return make_issue(
        issuer,
        seq,
        to=to or responsible_unit(complaint),
        subject=f"投诉 {no}: {respondent}",
        actor=actor,
        at=at,
        body=complaint["content"],
        basis=f"投诉 {no} (来源 {complaint['source']}, 投诉人 {complaint['complainant']})",
        sign_days=sign_days,
        reply_deadline=due,
        complaint_no=no,
        case_nos=[str(complaint["case_no"])] if complaint.get("case_no") else [],
        deadline_fn=deadline_fn,
    )


def complaint_ticket(states: Iterable[TicketState], complaint_no: str) -> TicketState | None:
    """The ticket a complaint became, if this node holds it."""
    for st in states:
        if st.complaint_no == complaint_no:
            return st
    return None


def satisfaction_rate(states: Iterable[TicketState]) -> float | None:
    """满意度 = (codes 1+2) / evaluations over concluded complaint tickets; None when none is evaluated."""
    codes = [st.satisfaction for st in states if st.satisfaction is not None]
    if not codes:
        return None
    return sum(1 for c in codes if c in SATISFIED) / len(codes)
