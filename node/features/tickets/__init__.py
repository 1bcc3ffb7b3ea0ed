"""Supervision tickets (督办单) and complaints: the pure lifecycle and its projection.

The rules are written at the top of ``lifecycle.py``; complaints in ``complaints.py``. ``desk.py`` is
the thin I/O shell that applies them to a node's ledger (issue, transitions, receipts, reminders and
escalations, where a ticket waits); node/app/tickets.py wires it into the CLI, the admin API and
the running node (TicketService).
"""

from __future__ import annotations

from node.features.tickets.complaints import (
    MalformedComplaint,
    complaint_ticket,
    satisfaction_rate,
    ticket_from_complaint,
    validate_complaint,
)
from node.features.tickets.lifecycle import (
    EVENTS,
    STATES,
    TRANSITIONS,
    VERDICTS,
    WHO,
    DeadlineFn,
    MalformedTicketEvent,
    NotAuthorised,
    Projection,
    Rejection,
    TicketError,
    TicketState,
    TransitionRefused,
    UnknownTicket,
    allowed_events,
    apply,
    calendar_days,
    due_actions,
    make_issue,
    parse_ticket_number,
    project,
    project_all,
    ticket_number,
)

__all__ = [
    "EVENTS",
    "STATES",
    "TRANSITIONS",
    "VERDICTS",
    "WHO",
    "DeadlineFn",
    "MalformedComplaint",
    "MalformedTicketEvent",
    "NotAuthorised",
    "Projection",
    "Rejection",
    "TicketError",
    "TicketState",
    "TransitionRefused",
    "UnknownTicket",
    "allowed_events",
    "apply",
    "calendar_days",
    "complaint_ticket",
    "due_actions",
    "make_issue",
    "parse_ticket_number",
    "project",
    "project_all",
    "satisfaction_rate",
    "ticket_from_complaint",
    "ticket_number",
    "validate_complaint",
]
