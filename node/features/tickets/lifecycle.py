"""The supervision-ticket (督办单) lifecycle: one table-driven state machine, pure logic.

No I/O, no clock, no store: records go in as ``(kind, payload, writer_code)`` triples, states and
"records that are due" come out. Signing, storing, routing and scheduling are shells around this
module (DESIGN.md §5, §8).

Rules of this module
====================

1. Every transition is one record of kind ``ticket.*`` in the writer's ``control`` log. The state of a
   ticket at any node is the projection (``project``) of the ticket records that node holds.
2. ``TRANSITIONS`` below is the whole lifecycle: ``(state, event) -> new state``. A pair that is not in
   the table is refused with ``TransitionRefused`` (code ``ticket_out_of_order``); an event for a ticket
   never issued is refused with ``UnknownTicket`` (a ``TransitionRefused``: nothing comes before the
   issue). Some events leave the main state unchanged (extension, reminder, escalation, 认定): they are
   in the table with ``new state == state`` and carry extra guards, listed next to ``GUARDS``.
3. ``WHO`` says who may write each event, checked against ``writer_code`` (the authenticated origin
   of the record, never a payload field); a wrong writer is ``NotAuthorised``
   (code ``ticket_not_authorised``). Authorisation is checked before the transition, so a node outside
   the ticket learns nothing about its state.

   - **issuer** — the issuing node itself, and only it: ``issue``, ``conclude``, ``return``,
     ``extend_grant``, ``remind``, ``escalate``. Not its ancestors: the ticket lives in the issuer's log,
     and a single writer is what makes "one conclusion" and "at most one reminder per deadline" hold
     without coordination between nodes. An ancestor that wants to intervene issues its own ticket.
     The issuer is the code before the last ``-`` of the ticket number
     (``320300-GA-000007`` → ``320300-GA``).
   - **target** — exactly the node the ticket was sent to (``to``): ``delivered``, the receipt that node
     writes automatically when it stores the ticket.
   - **target subtree** — ``to`` or any node inside its subtree (``node.codes.within``): ``sign``,
     ``reply``, ``extend_request``, ``assign`` (认定), ``assign_result``.

   A ticket may only be issued to a node strictly inside the issuer's subtree. The payload's ``node``
   must equal ``writer_code``.
4. ``returned`` (退回重办) does not need a new sign-for: the target replies again → ``replied``.
   ``concluded`` is terminal except for ``assign_result``: an internal accountability finding may be
   reported after the ticket is closed; it is a report and changes nothing else.
5. Extension (延期) is a side state that never blocks the main flow. The target may request one while a
   reply is due (``delivered``, ``signed_for``, ``returned``), before the reply deadline in force, one at
   a time. The issuer grants it with a later ``reply_deadline``, which becomes a new deadline instance.
   A pending request lapses when the target replies. There is no "deny" kind: an ungranted request
   simply stays pending (and blocks further requests) until the reply.
6. Reminders (催办) and escalations (上报) do not change the main state. A *deadline instance* is
   ``(deadline kind, due)`` with kind ``"sign"`` or ``"reply"``. Per instance at most one ``remind``,
   then at most one ``escalate``, which needs the ``remind`` first. ``due`` must be the deadline in force
   (a stale instance is refused) and a reminder must be written after ``due``. They are facts written by
   the issuer, so they are accepted even if the target has meanwhile signed or replied (the issuer
   may not have received that yet); ``due_actions`` is the policy that decides when to write them.
7. Applying the very same record twice is a no-op (``apply`` remembers a fingerprint of every record it
   applied). ``project`` drops duplicates, orders records deterministically by ``at`` (written with
   microseconds), then by the lifecycle rank of the kind, the writer, the record's seq in the writer's log
   when the caller gives it (``SeqEvent``: two records of one kind by one writer in the same instant keep
   their write order, e.g. two replies around a return written within one second), and the canonical
   payload, and applies them. Clocks of
   different nodes disagree, so a record refused as out of order is kept aside and retried after each
   later success: the outcome depends only on the set of records, never on their arrival order.
   Records still refused at the end are returned as ``Rejection``s, never raised: a node's projection
   must not break on one bad record it holds.
8. Times are ISO-8601 with an offset (``2025-10-09T09:30:00+08:00``) and compared as instants.
   Deadlines are computed by a ``DeadlineFn(start, days) -> datetime``; ``calendar_days`` is only the
   pure default: the node counts working days (``desk.working_days`` over ``node.calendar.Calendar``).

Records
=======

Common payload fields of every ``ticket.*`` record: ``ticket`` (issuer code + ``-`` + sequence
zero-padded to 6 digits, ``320000-000012``), ``actor`` (the person's login, or ``system`` for automatic
records), ``at`` (ISO-8601, +08:00), ``node`` (code of the writing node); ``by`` (optional: the person
as node/app/people.py ``stamp`` names them, ``{login, name, role, role_label, scope}``; its login is
``actor``; the writing node's signature vouches for it).

==========================  ===============  ==================================================================
kind                        who              per-event fields
==========================  ===============  ==================================================================
``ticket.issue``            issuer           ``to`` (node code), ``subject``, ``sign_deadline``,
                                             ``reply_deadline`` (required); ``body``, ``basis``, ``rule_id``
                                             (str), ``case_nos``, ``alert_ids`` ([str]), ``complaint_no``
                                             (complaint-originated tickets) — optional.
                                             ``at < sign_deadline <= reply_deadline``.
``ticket.delivered``        target           — (the receipt, written automatically on storing the ticket)
``ticket.sign``             target subtree   — (签收)
``ticket.reply``            target subtree   ``text``; ``attachments`` (optional): the metadata of the files
                                             the reply rests on, ``[{name, size, sha256, media_type}]``
                                             (``ATTACHMENT_FIELDS``; at most ``MAX_ATTACHMENTS``). The files
                                             stay in the department's own system: the record carries only
                                             what identifies them, so a supervisor can ask for a file and
                                             check that what he is given is the one the reply cited.
``ticket.conclude``         issuer           ``verdict`` (``satisfactory`` 满意 | ``basically`` 基本满意 |
                                             ``unsatisfactory`` 不满意), ``text``; ``score`` (int 0..100,
                                             optional, default by verdict: 100 / 70 / 40; it feeds the
                                             target's performance evaluation); ``satisfaction`` ("1".."5",
                                             the DOMAIN 满意度 codes) — required iff the ticket has a
                                             ``complaint_no``, refused otherwise.
``ticket.return``           issuer           ``reason``; ``reply_deadline`` (optional, recommended: the new
                                             deadline for the redo; without it the old one stands)
``ticket.extend_request``   target subtree   ``days`` (number > 0), ``reason``
``ticket.extend_grant``     issuer           ``reply_deadline`` (later than the one in force)
``ticket.remind``           issuer           ``deadline`` (``sign`` | ``reply``), ``due`` (that deadline)
``ticket.escalate``         issuer           ``deadline`` (``sign`` | ``reply``), ``due``
``ticket.assign``           target subtree   ``assign_no`` (int ≥ 1, per ticket), ``responsible_unit``,
                                             ``responsible_person``, ``finding`` (认定 inside the department)
``ticket.assign_result``    target subtree   ``assign_no``, ``result`` (text); ``disputed`` (bool, the case
                                             went to the supervision office), ``responsible_unit``,
                                             ``responsible_person`` (final, optional) — reported back up
==========================  ===============  ==================================================================
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from node.core.codes import is_code, strictly_within, within
from node.core.errors import FednodeError

# ---- events and states ------------------------------------------------------------------------------

ISSUE = "ticket.issue"
DELIVERED = "ticket.delivered"
SIGN = "ticket.sign"
REPLY = "ticket.reply"
CONCLUDE = "ticket.conclude"
RETURN = "ticket.return"
EXTEND_REQUEST = "ticket.extend_request"
EXTEND_GRANT = "ticket.extend_grant"
REMIND = "ticket.remind"
ESCALATE = "ticket.escalate"
ASSIGN = "ticket.assign"
ASSIGN_RESULT = "ticket.assign_result"

# The order of this tuple is the tie-break rank for records with the same ``at``: the causal order
# of the lifecycle, so that e.g. a receipt and a sign-for written in the same second apply in order.
EVENTS: tuple[str, ...] = (
    ISSUE,
    DELIVERED,
    SIGN,
    EXTEND_REQUEST,
    EXTEND_GRANT,
    ASSIGN,
    REPLY,
    ASSIGN_RESULT,
    REMIND,
    ESCALATE,
    RETURN,
    CONCLUDE,
)
_RANK = {kind: i for i, kind in enumerate(EVENTS)}

ISSUED = "issued"
DELIVERED_STATE = "delivered"
SIGNED_FOR = "signed_for"
REPLIED = "replied"
RETURNED = "returned"
CONCLUDED = "concluded"
STATES: tuple[str, ...] = (ISSUED, DELIVERED_STATE, SIGNED_FOR, REPLIED, RETURNED, CONCLUDED)

# ---- the table ---------------------------------------------------------------------------------------

TRANSITIONS: dict[tuple[str | None, str], str] = {
    # main flow
    (None, ISSUE): ISSUED,
    (ISSUED, DELIVERED): DELIVERED_STATE,
    (DELIVERED_STATE, SIGN): SIGNED_FOR,
    (SIGNED_FOR, REPLY): REPLIED,
    (REPLIED, CONCLUDE): CONCLUDED,
    (REPLIED, RETURN): RETURNED,
    (RETURNED, REPLY): REPLIED,
    # extension: while a reply is due (rule 5)
    (DELIVERED_STATE, EXTEND_REQUEST): DELIVERED_STATE,
    (SIGNED_FOR, EXTEND_REQUEST): SIGNED_FOR,
    (RETURNED, EXTEND_REQUEST): RETURNED,
    (DELIVERED_STATE, EXTEND_GRANT): DELIVERED_STATE,
    (SIGNED_FOR, EXTEND_GRANT): SIGNED_FOR,
    (RETURNED, EXTEND_GRANT): RETURNED,
    # reminders and escalations: any open ticket (rule 6)
    (ISSUED, REMIND): ISSUED,
    (DELIVERED_STATE, REMIND): DELIVERED_STATE,
    (SIGNED_FOR, REMIND): SIGNED_FOR,
    (REPLIED, REMIND): REPLIED,
    (RETURNED, REMIND): RETURNED,
    (ISSUED, ESCALATE): ISSUED,
    (DELIVERED_STATE, ESCALATE): DELIVERED_STATE,
    (SIGNED_FOR, ESCALATE): SIGNED_FOR,
    (REPLIED, ESCALATE): REPLIED,
    (RETURNED, ESCALATE): RETURNED,
    # 认定 inside the target: once signed for; its result may come after the conclusion (rule 4)
    (SIGNED_FOR, ASSIGN): SIGNED_FOR,
    (REPLIED, ASSIGN): REPLIED,
    (RETURNED, ASSIGN): RETURNED,
    (SIGNED_FOR, ASSIGN_RESULT): SIGNED_FOR,
    (REPLIED, ASSIGN_RESULT): REPLIED,
    (RETURNED, ASSIGN_RESULT): RETURNED,
    (CONCLUDED, ASSIGN_RESULT): CONCLUDED,
}

ISSUER, TARGET, TARGET_SUBTREE = "issuer", "target", "target subtree"

WHO: dict[str, str] = {
    ISSUE: ISSUER,
    CONCLUDE: ISSUER,
    RETURN: ISSUER,
    EXTEND_GRANT: ISSUER,
    REMIND: ISSUER,
    ESCALATE: ISSUER,
    DELIVERED: TARGET,
    SIGN: TARGET_SUBTREE,
    REPLY: TARGET_SUBTREE,
    EXTEND_REQUEST: TARGET_SUBTREE,
    ASSIGN: TARGET_SUBTREE,
    ASSIGN_RESULT: TARGET_SUBTREE,
}

# Guards on top of the table (checked in ``_check_guards``):
#   delivered       — once (the table already says so: only from ``issued``)
#   extend_request  — no request pending; ``at`` before the reply deadline in force
#   extend_grant    — a request pending; new ``reply_deadline`` later than the one in force
#   remind          — ``due`` is the deadline in force of that kind; ``at`` after ``due``; not yet reminded
#   escalate        — ``due`` in force; reminded for that instance; not yet escalated; ``at`` ≥ reminder
#   assign          — ``assign_no`` not used yet
#   assign_result   — ``assign_no`` assigned and not yet reported

# States in which a deadline is still waiting to be met: the policy of ``due_actions``.
SIGN_PENDING = frozenset({ISSUED, DELIVERED_STATE})
REPLY_PENDING = frozenset({ISSUED, DELIVERED_STATE, SIGNED_FOR, RETURNED})

VERDICTS: dict[str, int] = {"satisfactory": 100, "basically": 70, "unsatisfactory": 40}  # → default score
SATISFACTION_CODES = ("1", "2", "3", "4", "5")  # 非常满意 满意 基本满意 不满意 非常不满意
DEADLINE_KINDS = ("sign", "reply")
COMMON_FIELDS = ("ticket", "actor", "at", "node", "by")

ATTACHMENT_FIELDS = ("name", "size", "sha256", "media_type")
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_NAME = 255
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")

DEFAULT_SIGN_DAYS = 1.0
DEFAULT_REPLY_DAYS = 10.0
DEFAULT_ESCALATE_AFTER_DAYS = 1.0
SYSTEM_ACTOR = "system"

_TICKET_RE = re.compile(r"^(?P<issuer>.+)-(?P<seq>\d{6,})$")

DeadlineFn = Callable[[datetime, float], datetime]
Event = tuple[str, dict[str, Any], str]  # (kind, payload, writer_code)
SeqEvent = tuple[str, dict[str, Any], str, int]  # the same + the record's seq in the writer's log (rule 7)


def calendar_days(start: datetime, days: float) -> datetime:
    """Stand-in DeadlineFn until the working-day calendar exists: plain calendar days."""
    return start + timedelta(days=days)


# ---- errors --------------------------------------------------------------------------------------------


class TicketError(FednodeError):
    code = "ticket"

    def __init__(self, message: str, *, ticket: str = "", fix: str = "") -> None:
        super().__init__(message, fix=fix)
        self.ticket = ticket


class MalformedTicketEvent(TicketError):
    """A payload misses a field, has a wrong type, or is inconsistent (e.g. deadlines in the past)."""

    code = "ticket_malformed"


class NotAuthorised(TicketError):
    """The writing node may not perform this event on this ticket."""

    code = "ticket_not_authorised"


class TransitionRefused(TicketError):
    """The event is not allowed in the ticket's current state (or a guard of rule 6/5 fails)."""

    code = "ticket_out_of_order"

    def __init__(
        self,
        message: str,
        *,
        ticket: str = "",
        state: str | None = None,
        event: str = "",
        allowed: tuple[str, ...] = (),
        fix: str = "",
    ) -> None:
        super().__init__(message, ticket=ticket, fix=fix)
        self.state = state
        self.event = event
        self.allowed = allowed


class UnknownTicket(TransitionRefused):
    """An event for a ticket whose ``ticket.issue`` has not been seen (here, or yet)."""

    code = "ticket_unknown"


# ---- state ---------------------------------------------------------------------------------------------


@dataclass
class TicketState:
    ticket: str
    issuer: str
    to: str
    subject: str
    state: str
    deadlines: dict[str, str]  # {"sign": at, "reply": at}: the instances in force
    body: str = ""
    basis: str = ""
    rule_id: str = ""
    case_nos: list[str] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    complaint_no: str | None = None
    issued_at: str = ""
    delivered_at: str | None = None
    signed_at: str | None = None
    replied_at: str | None = None  # the latest reply
    reply_text: str | None = None
    reply_attachments: list[dict[str, Any]] = field(default_factory=list)  # of the latest reply
    first_reply_at: str | None = None
    replied_on_time: bool | None = None  # first reply against the reply deadline then in force
    returns: int = 0
    return_reason: str | None = None
    concluded_at: str | None = None
    verdict: str | None = None
    score: int | None = None
    conclusion: str | None = None
    satisfaction: str | None = None
    extension: dict[str, Any] | None = None  # the latest request: status requested|granted|lapsed
    extensions_granted: int = 0
    reminders: list[dict[str, Any]] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by str(assign_no)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # fingerprints of applied records (idempotence)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--json``); the fingerprints are an internal detail."""
        d = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "seen"}
        return d

    def reminded(self, deadline: str, due: str) -> dict[str, Any] | None:
        return _find_instance(self.reminders, deadline, due)

    def escalated(self, deadline: str, due: str) -> dict[str, Any] | None:
        return _find_instance(self.escalations, deadline, due)


def _find_instance(entries: list[dict[str, Any]], deadline: str, due: str) -> dict[str, Any] | None:
    # ``due`` is compared as an instant: "+08:00" and "Z" spellings of one moment are one instance.
    want = parse_time(due)
    for e in entries:
        if e["deadline"] == deadline and parse_time(e["due"]) == want:
            return e
    return None


# ---- helpers -------------------------------------------------------------------------------------------


def ticket_number(issuer: str, seq: int) -> str:
    """``320000`` + 12 → ``320000-000012``."""
    if not is_code(issuer) or seq < 1:
        raise MalformedTicketEvent(
            f"cannot number a ticket for issuer {issuer!r}, sequence {seq}",
            fix="use the issuing node's code and a sequence from 1",
        )
    return f"{issuer}-{seq:06d}"


def parse_ticket_number(ticket: str) -> tuple[str, int]:
    """``320300-GA-000007`` → (``320300-GA``, 7)."""
    m = _TICKET_RE.match(ticket) if isinstance(ticket, str) else None
    if not m or not is_code(m.group("issuer")):
        raise MalformedTicketEvent(
            f"{ticket!r} is not a ticket number",
            ticket=str(ticket),
            fix="a ticket number is the issuer's code, '-', and a 6-digit sequence: 320000-000012",
        )
    return m.group("issuer"), int(m.group("seq"))


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise MalformedTicketEvent(
            f"{text!r} is not an ISO-8601 time", fix="write times like 2025-10-09T09:30:00+08:00"
        ) from None
    if t.tzinfo is None:
        raise MalformedTicketEvent(
            f"time {text!r} has no UTC offset", fix="write times like 2025-10-09T09:30:00+08:00"
        )
    return t


def format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware (Asia/Shanghai, +08:00)")
    return t.isoformat()


def canonical(payload: dict[str, Any]) -> str:
    # The same serialisation as records' payloads (compact, sorted keys), so equal records compare equal.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def fingerprint(kind: str, payload: dict[str, Any], writer_code: str) -> str:
    return hashlib.sha256(f"{kind}\0{writer_code}\0{canonical(payload)}".encode()).hexdigest()


def allowed_events(state: str | None) -> tuple[str, ...]:
    return tuple(ev for ev in EVENTS if (state, ev) in TRANSITIONS)


def make_issue(
    issuer: str,
    seq: int,
    *,
    to: str,
    subject: str,
    actor: str,
    at: datetime,
    body: str = "",
    basis: str = "",
    rule_id: str = "",
    case_nos: Iterable[str] = (),
    alert_ids: Iterable[str] = (),
    sign_days: float = DEFAULT_SIGN_DAYS,
    reply_days: float = DEFAULT_REPLY_DAYS,
    reply_deadline: datetime | None = None,
    complaint_no: str | None = None,
    deadline_fn: DeadlineFn = calendar_days,
) -> dict[str, Any]:
    """The payload of a ``ticket.issue`` record, deadlines computed with ``deadline_fn``."""
    sign_due = deadline_fn(at, sign_days)
    reply_due = reply_deadline if reply_deadline is not None else deadline_fn(at, reply_days)
    payload: dict[str, Any] = {
        "ticket": ticket_number(issuer, seq),
        "actor": actor,
        "at": format_time(at),
        "node": issuer,
        "to": to,
        "subject": subject,
        "body": body,
        "basis": basis,
        "rule_id": rule_id,
        "case_nos": list(case_nos),
        "alert_ids": list(alert_ids),
        "sign_deadline": format_time(min(sign_due, reply_due)),
        "reply_deadline": format_time(reply_due),
    }
    if complaint_no is not None:
        payload["complaint_no"] = complaint_no
    return payload


# ---- validation ----------------------------------------------------------------------------------------


def _malformed(kind: str, payload: dict[str, Any], what: str, fix: str) -> MalformedTicketEvent:
    ticket = payload.get("ticket", "") if isinstance(payload, dict) else ""
    return MalformedTicketEvent(f"{kind} for ticket {ticket or '?'}: {what}", ticket=str(ticket), fix=fix)


def _need_str(kind: str, p: dict[str, Any], name: str, *, required: bool = True, empty: bool = False) -> None:
    if name not in p:
        if required:
            raise _malformed(kind, p, f"field {name!r} is missing", f"add {name!r} (a string)")
        return
    v = p[name]
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise _malformed(kind, p, f"field {name!r} must be a non-empty string, got {v!r}", f"fix {name!r}")


def _need_time(kind: str, p: dict[str, Any], name: str, *, required: bool = True) -> datetime | None:
    if name not in p:
        if required:
            raise _malformed(
                kind, p, f"field {name!r} is missing", f"add {name!r} (ISO-8601 time with offset)"
            )
        return None
    try:
        return parse_time(p[name])
    except MalformedTicketEvent as e:
        raise _malformed(kind, p, f"field {name!r}: {e.message}", e.fix) from None


def _need_str_list(kind: str, p: dict[str, Any], name: str) -> None:
    v = p.get(name, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _malformed(kind, p, f"field {name!r} must be a list of strings, got {v!r}", f"fix {name!r}")


def _need_int(kind: str, p: dict[str, Any], name: str, lo: int, hi: int | None = None) -> None:
    v = p.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _malformed(kind, p, f"field {name!r} must be an integer {bound}, got {v!r}", f"fix {name!r}")


def check_attachment(a: Any) -> str:
    """What is wrong with one attachment's metadata, or "" (``ATTACHMENT_FIELDS``, exactly)."""
    if not isinstance(a, dict):
        return f"an attachment must be an object with {', '.join(ATTACHMENT_FIELDS)}, got {a!r}"
    if set(a) != set(ATTACHMENT_FIELDS):
        return f"an attachment has exactly the fields {', '.join(ATTACHMENT_FIELDS)}, got {', '.join(sorted(a))}"
    name = a["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_ATTACHMENT_NAME or "/" in name \
            or "\\" in name or any(ord(c) < 32 for c in name):
        return f"attachment name {name!r} must be a file name (1..{MAX_ATTACHMENT_NAME} characters, no path, " \
               "no control characters)"
    size = a["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"attachment {name}: size must be a whole number of bytes >= 0, got {size!r}"
    if not isinstance(a["sha256"], str) or not _SHA256_RE.match(a["sha256"]):
        return f"attachment {name}: sha256 must be 64 lowercase hex digits, got {a['sha256']!r}"
    if not isinstance(a["media_type"], str) or not _MEDIA_TYPE_RE.match(a["media_type"]):
        return f"attachment {name}: media_type must look like application/pdf, got {a['media_type']!r}"
    return ""


def _need_attachments(kind: str, p: dict[str, Any]) -> None:
    v = p["attachments"]
    if not isinstance(v, list) or len(v) > MAX_ATTACHMENTS:
        raise _malformed(kind, p, f"attachments must be a list of at most {MAX_ATTACHMENTS}, got {v!r}"[:300],
                         "fix 'attachments'")
    for a in v:
        problem = check_attachment(a)
        if problem:
            raise _malformed(kind, p, problem, "give name, size, sha256 and media_type of each file")


def _validate(kind: str, p: dict[str, Any]) -> datetime:
    """Shape checks that need no state. Returns ``at``."""
    if kind not in _RANK:
        raise _malformed(kind, p, f"unknown ticket event kind {kind!r}", f"use one of: {', '.join(EVENTS)}")
    if not isinstance(p, dict):
        raise MalformedTicketEvent(f"{kind}: payload must be a JSON object", fix="write a JSON object")
    for name in ("actor", "node"):
        _need_str(kind, p, name)
    by = p.get("by")
    if by is not None and (not isinstance(by, dict) or not all(isinstance(v, str) for v in by.values())
                           or not isinstance(by.get("login"), str) or by.get("login") != p["actor"]):
        raise _malformed(kind, p, f"field 'by' must name the actor (login {p['actor']!r}, name, role), got {by!r}",
                         "write by = {login, name, role, ...} of the person who acted")
    if "ticket" not in p:
        raise _malformed(kind, p, "field 'ticket' is missing", "add the ticket number")
    parse_ticket_number(p["ticket"])
    at = _need_time(kind, p, "at")
    assert at is not None
    if kind == ISSUE:
        _need_str(kind, p, "to")
        _need_str(kind, p, "subject")
        for name in ("body", "basis", "rule_id"):
            _need_str(kind, p, name, required=False, empty=True)
        _need_str(kind, p, "complaint_no", required=False)
        for name in ("case_nos", "alert_ids"):
            _need_str_list(kind, p, name)
        sign = _need_time(kind, p, "sign_deadline")
        reply = _need_time(kind, p, "reply_deadline")
        assert sign is not None and reply is not None
        if not (at < sign <= reply):
            raise _malformed(
                kind,
                p,
                "deadlines must satisfy at < sign_deadline <= reply_deadline",
                "compute the deadlines from the issue time",
            )
    elif kind == REPLY:
        _need_str(kind, p, "text")
        if "attachments" in p:
            _need_attachments(kind, p)
    elif kind == CONCLUDE:
        if p.get("verdict") not in VERDICTS:
            raise _malformed(
                kind, p, f"verdict {p.get('verdict')!r} is not one of {', '.join(VERDICTS)}", "fix 'verdict'"
            )
        _need_str(kind, p, "text", required=False, empty=True)
        if "score" in p:
            _need_int(kind, p, "score", 0, 100)
        if "satisfaction" in p and p["satisfaction"] not in SATISFACTION_CODES:
            raise _malformed(
                kind, p, f"satisfaction {p['satisfaction']!r} is not one of 1..5", "use the 满意度 code 1..5"
            )
    elif kind == RETURN:
        _need_str(kind, p, "reason")
        new = _need_time(kind, p, "reply_deadline", required=False)
        if new is not None and new <= at:
            raise _malformed(
                kind, p, "the new reply_deadline is not after the return", "give a later deadline"
            )
    elif kind == EXTEND_REQUEST:
        days = p.get("days")
        if not isinstance(days, int | float) or isinstance(days, bool) or days <= 0:
            raise _malformed(kind, p, f"days must be a positive number, got {days!r}", "fix 'days'")
        _need_str(kind, p, "reason")
    elif kind == EXTEND_GRANT:
        _need_time(kind, p, "reply_deadline")
    elif kind in (REMIND, ESCALATE):
        if p.get("deadline") not in DEADLINE_KINDS:
            raise _malformed(
                kind, p, f"deadline {p.get('deadline')!r} is not sign or reply", "fix 'deadline'"
            )
        _need_time(kind, p, "due")
    elif kind == ASSIGN:
        _need_int(kind, p, "assign_no", 1)
        for name in ("responsible_unit", "responsible_person", "finding"):
            _need_str(kind, p, name, empty=name != "finding")
    elif kind == ASSIGN_RESULT:
        _need_int(kind, p, "assign_no", 1)
        _need_str(kind, p, "result")
        if "disputed" in p and not isinstance(p["disputed"], bool):
            raise _malformed(kind, p, "disputed must be true or false", "fix 'disputed'")
        for name in ("responsible_unit", "responsible_person"):
            _need_str(kind, p, name, required=False, empty=True)
    return at


def _authorise(kind: str, p: dict[str, Any], writer: str, issuer: str, to: str) -> None:
    ticket = p["ticket"]
    if p["node"] != writer:
        raise NotAuthorised(
            f"{kind} for ticket {ticket} claims node {p['node']} but was written by {writer}",
            ticket=ticket,
            fix="a record's node field must be the node that signed it",
        )
    who = WHO[kind]
    if who == ISSUER:
        ok = writer == issuer
        expected = f"the issuer {issuer}"
    elif who == TARGET:
        ok = writer == to
        expected = f"the target {to}"
    else:
        ok = within(writer, to)
        expected = f"the target {to} or a node inside its subtree"
    if not ok:
        raise NotAuthorised(
            f"{writer} may not write {kind} for ticket {ticket}: only {expected} may",
            ticket=ticket,
            fix=f"write {kind} at {issuer if who == ISSUER else to}",
        )
    if kind == ISSUE and not strictly_within(to, issuer):
        raise NotAuthorised(
            f"ticket {ticket}: {issuer} may not issue a ticket to {to}, which is not inside its subtree",
            ticket=ticket,
            fix="issue tickets only to descendant jurisdictions",
        )


def _refuse(st: TicketState, kind: str, why: str) -> TransitionRefused:
    allowed = allowed_events(st.state)
    return TransitionRefused(
        f"ticket {st.ticket} is {st.state}: {kind} refused ({why}); allowed now: "
        f"{', '.join(allowed) if allowed else 'nothing'}",
        ticket=st.ticket,
        state=st.state,
        event=kind,
        allowed=allowed,
    )


def _check_guards(st: TicketState, kind: str, p: dict[str, Any], at: datetime) -> None:
    if kind == EXTEND_REQUEST:
        if st.extension is not None and st.extension["status"] == "requested":
            raise _refuse(st, kind, f"an extension requested at {st.extension['requested_at']} is pending")
        if at >= parse_time(st.deadlines["reply"]):
            raise _refuse(st, kind, f"the reply deadline {st.deadlines['reply']} has passed")
    elif kind == EXTEND_GRANT:
        if st.extension is None or st.extension["status"] != "requested":
            raise _refuse(st, kind, "no extension request is pending")
        if parse_time(p["reply_deadline"]) <= parse_time(st.deadlines["reply"]):
            raise _refuse(st, kind, f"the new reply deadline is not after {st.deadlines['reply']}")
    elif kind in (REMIND, ESCALATE):
        deadline, due = p["deadline"], p["due"]
        if parse_time(due) != parse_time(st.deadlines[deadline]):
            raise _refuse(
                st, kind, f"{deadline} deadline {due} is not the one in force ({st.deadlines[deadline]})"
            )
        reminder = st.reminded(deadline, due)
        if kind == REMIND:
            if reminder is not None:
                raise _refuse(st, kind, f"{deadline} deadline {due} was already reminded at {reminder['at']}")
            if at <= parse_time(due):
                raise _refuse(st, kind, f"the {deadline} deadline {due} is not overdue at {p['at']}")
        else:
            if reminder is None:
                raise _refuse(st, kind, f"{deadline} deadline {due} has had no reminder yet")
            done = st.escalated(deadline, due)
            if done is not None:
                raise _refuse(st, kind, f"{deadline} deadline {due} was already escalated at {done['at']}")
            if at < parse_time(reminder["at"]):
                raise _refuse(st, kind, "an escalation cannot precede its reminder")
    elif kind == ASSIGN:
        if str(p["assign_no"]) in st.assignments:
            raise _refuse(st, kind, f"assignment {p['assign_no']} already exists")
    elif kind == ASSIGN_RESULT:
        a = st.assignments.get(str(p["assign_no"]))
        if a is None:
            raise _refuse(st, kind, f"assignment {p['assign_no']} does not exist")
        if a["status"] == "reported":
            raise _refuse(st, kind, f"assignment {p['assign_no']} was already reported")
    elif kind == CONCLUDE:
        # Satisfaction belongs to complaints only; checked here because it needs the issue's fields.
        if st.complaint_no is not None and "satisfaction" not in p:
            raise MalformedTicketEvent(
                f"ticket {st.ticket} comes from complaint {st.complaint_no}: its conclusion needs satisfaction",
                ticket=st.ticket,
                fix="add satisfaction, the complainant's 满意度 code 1..5",
            )
        if st.complaint_no is None and "satisfaction" in p:
            raise MalformedTicketEvent(
                f"ticket {st.ticket} does not come from a complaint: satisfaction does not apply",
                ticket=st.ticket,
                fix="drop satisfaction",
            )


# ---- apply ---------------------------------------------------------------------------------------------


def _detail(p: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in p.items() if k not in COMMON_FIELDS}


def _from_issue(p: dict[str, Any]) -> TicketState:
    issuer, _ = parse_ticket_number(p["ticket"])
    return TicketState(
        ticket=p["ticket"],
        issuer=issuer,
        to=p["to"],
        subject=p["subject"],
        state=ISSUED,
        deadlines={"sign": p["sign_deadline"], "reply": p["reply_deadline"]},
        body=p.get("body", ""),
        basis=p.get("basis", ""),
        rule_id=p.get("rule_id", ""),
        case_nos=list(p.get("case_nos", [])),
        alert_ids=list(p.get("alert_ids", [])),
        complaint_no=p.get("complaint_no"),
        issued_at=p["at"],
    )


def _mutate(st: TicketState, kind: str, p: dict[str, Any], new_state: str) -> None:
    at = p["at"]
    entry = {"event": kind, "actor": p["actor"], "node": p["node"], "at": at}
    if isinstance(p.get("by"), dict):
        entry["by"] = dict(p["by"])
    if kind == DELIVERED:
        st.delivered_at = at
    elif kind == SIGN:
        st.signed_at = at
    elif kind == REPLY:
        st.replied_at = at
        st.reply_text = p["text"]
        st.reply_attachments = copy.deepcopy(p.get("attachments", []))
        if st.first_reply_at is None:
            st.first_reply_at = at
            st.replied_on_time = parse_time(at) <= parse_time(st.deadlines["reply"])
        if st.extension is not None and st.extension["status"] == "requested":
            st.extension["status"] = "lapsed"  # the reply makes the request moot (rule 5)
    elif kind == CONCLUDE:
        st.concluded_at = at
        st.verdict = p["verdict"]
        st.score = p.get("score", VERDICTS[p["verdict"]])
        st.conclusion = p.get("text", "")
        st.satisfaction = p.get("satisfaction")
    elif kind == RETURN:
        st.returns += 1
        st.return_reason = p["reason"]
        if "reply_deadline" in p:
            st.deadlines["reply"] = p["reply_deadline"]
    elif kind == EXTEND_REQUEST:
        st.extension = {
            "status": "requested",
            "days": p["days"],
            "reason": p["reason"],
            "requested_at": at,
            "requested_by": p["actor"],
            "node": p["node"],
        }
    elif kind == EXTEND_GRANT:
        assert st.extension is not None
        st.extension.update(status="granted", granted_at=at, reply_deadline=p["reply_deadline"])
        st.extensions_granted += 1
        st.deadlines["reply"] = p["reply_deadline"]
    elif kind in (REMIND, ESCALATE):
        rec = {"deadline": p["deadline"], "due": p["due"], "at": at, "actor": p["actor"], "node": p["node"]}
        (st.reminders if kind == REMIND else st.escalations).append(rec)
    elif kind == ASSIGN:
        st.assignments[str(p["assign_no"])] = {
            "assign_no": p["assign_no"],
            "responsible_unit": p["responsible_unit"],
            "responsible_person": p["responsible_person"],
            "finding": p["finding"],
            "assigned_at": at,
            "node": p["node"],
            "status": "assigned",
        }
    elif kind == ASSIGN_RESULT:
        a = st.assignments[str(p["assign_no"])]
        a.update(
            status="reported",
            result=p["result"],
            disputed=p.get("disputed", False),
            reported_at=at,
        )
        for name in ("responsible_unit", "responsible_person"):
            if p.get(name):
                a[name] = p[name]
    st.state = new_state
    entry["detail"] = _detail(p)
    st.timeline.append(entry)


def _apply_in_place(
    state: TicketState | None, kind: str, payload: dict[str, Any], writer_code: str, fp: str
) -> TicketState:
    """Check everything, then mutate ``state`` (or build a new one). On any error nothing changed.

    Duplicates are the callers' business (``apply`` checks ``seen``, ``project`` dedupes first).
    """
    at = _validate(kind, payload)
    ticket = payload["ticket"]
    if state is None:
        if kind != ISSUE:
            _authorise_node_only(kind, payload, writer_code)
            raise UnknownTicket(
                f"ticket {ticket} is unknown here: {kind} refused (allowed: {ISSUE} first)",
                ticket=ticket,
                state=None,
                event=kind,
                allowed=(ISSUE,),
                fix="the ticket's issue record has not arrived; it is applied when it does",
            )
        issuer, _ = parse_ticket_number(ticket)
        _authorise(kind, payload, writer_code, issuer, payload["to"])
        st = _from_issue(payload)
        _mutate(st, kind, payload, ISSUED)
        st.seen.add(fp)
        return st
    if ticket != state.ticket:
        raise MalformedTicketEvent(
            f"{kind} for ticket {ticket} applied to ticket {state.ticket}", ticket=ticket, fix="a caller bug"
        )
    _authorise(kind, payload, writer_code, state.issuer, state.to)
    if kind == ISSUE:
        raise _refuse(state, kind, "it was already issued")
    new_state = TRANSITIONS.get((state.state, kind))
    if new_state is None:
        raise _refuse(state, kind, "not allowed in this state")
    _check_guards(state, kind, payload, at)
    _mutate(state, kind, payload, new_state)
    state.seen.add(fp)
    return state


def _authorise_node_only(kind: str, p: dict[str, Any], writer: str) -> None:
    # Without the issue we cannot know the target, but a payload lying about its node is still refused.
    if p["node"] != writer:
        raise NotAuthorised(
            f"{kind} for ticket {p['ticket']} claims node {p['node']} but was written by {writer}",
            ticket=p["ticket"],
            fix="a record's node field must be the node that signed it",
        )


def apply(
    state: TicketState | None, event_kind: str, payload: dict[str, Any], *, writer_code: str
) -> TicketState:
    """The state after one record. Pure: ``state`` is never modified; raises a ``TicketError``."""
    fp = fingerprint(event_kind, payload, writer_code) if isinstance(payload, dict) else ""
    if state is not None and fp in state.seen:
        return state
    work = copy.deepcopy(state) if state is not None else None
    return _apply_in_place(work, event_kind, payload, writer_code, fp)


# ---- projection ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A record a node holds that the state machine refused (kept for ``tickets show``, never raised)."""

    kind: str
    payload: dict[str, Any]
    writer_code: str
    code: str
    message: str


@dataclass
class Projection:
    tickets: dict[str, TicketState]
    rejected: list[Rejection]


SortKey = tuple[datetime, int, str, int, str]


def _sort_key(kind: str, payload: dict[str, Any], writer: str, seq: int = 0) -> SortKey:
    return (parse_time(payload["at"]), _RANK[kind], writer, seq, canonical(payload))


def project_all(events: Iterable[Event | SeqEvent]) -> Projection:
    """Every ticket's state from the records held, plus the records refused (rule 7). An event may carry
    the record's seq in its writer's log as a fourth element: the tie-break of one writer's records of one
    kind at the same ``at``."""
    unique: dict[str, tuple[Event, int]] = {}
    rejected: list[Rejection] = []
    for ev in events:
        kind, payload, writer = ev[0], ev[1], ev[2]
        seq = int(ev[3]) if len(ev) > 3 else 0  # type: ignore[misc]
        try:
            fp = fingerprint(kind, payload, writer)
        except (TypeError, ValueError) as e:
            rejected.append(
                Rejection(kind, payload, writer, MalformedTicketEvent.code, f"unserialisable: {e}")
            )
            continue
        unique.setdefault(fp, ((kind, payload, writer), seq))

    by_ticket: dict[str, list[tuple[SortKey, str, Event]]] = {}
    for fp, ((kind, payload, writer), seq) in unique.items():
        try:
            _validate(kind, payload)
        except TicketError as e:
            rejected.append(Rejection(kind, payload, writer, e.code, e.message))
            continue
        by_ticket.setdefault(payload["ticket"], []).append(
            (_sort_key(kind, payload, writer, seq), fp, (kind, payload, writer))
        )

    tickets: dict[str, TicketState] = {}
    for ticket in sorted(by_ticket):
        ordered = sorted(by_ticket[ticket], key=lambda item: item[0])
        state: TicketState | None = None
        pending: list[tuple[str, Event, TransitionRefused]] = []
        for _, fp, ev in ordered:
            try:
                state = _apply_in_place(state, ev[0], ev[1], ev[2], fp)
            except TransitionRefused as e:
                pending.append((fp, ev, e))  # maybe its predecessor has a later ``at`` (clock skew)
                continue
            except TicketError as e:
                rejected.append(Rejection(ev[0], ev[1], ev[2], e.code, e.message))
                continue
            state, pending, late = _retry(state, pending)
            rejected.extend(late)
        for _, (kind, payload, writer), err in pending:
            rejected.append(Rejection(kind, payload, writer, err.code, err.message))
        if state is not None:
            tickets[ticket] = state
    return Projection(tickets, rejected)


def _retry(
    state: TicketState, pending: list[tuple[str, Event, TransitionRefused]]
) -> tuple[TicketState, list[tuple[str, Event, TransitionRefused]], list[Rejection]]:
    """Re-apply refused records, in their sorted order, until none more applies."""
    rejected: list[Rejection] = []
    progress = True
    while progress and pending:
        progress = False
        still: list[tuple[str, Event, TransitionRefused]] = []
        for fp, ev, _old in pending:
            if progress:
                still.append((fp, ev, _old))  # restart from the earliest after any success
                continue
            try:
                state = _apply_in_place(state, ev[0], ev[1], ev[2], fp)
                progress = True
            except TransitionRefused as e:
                still.append((fp, ev, e))
            except TicketError as e:
                rejected.append(Rejection(ev[0], ev[1], ev[2], e.code, e.message))
        pending = still
    return state, pending, rejected


def project(events: Iterable[Event]) -> dict[str, TicketState]:
    """Every ticket's state from the records a node holds, whatever their arrival order."""
    return project_all(events).tickets


# ---- deadlines: what is due --------------------------------------------------------------------------


def due_actions(
    state: TicketState,
    now: datetime,
    deadline_fn: DeadlineFn = calendar_days,
    *,
    escalate_after_days: float = DEFAULT_ESCALATE_AFTER_DAYS,
    actor: str = SYSTEM_ACTOR,
) -> list[tuple[str, dict[str, Any]]]:
    """The ``ticket.remind`` / ``ticket.escalate`` records the issuer should write at ``now``.

    A reminder when the sign-for or reply deadline in force is overdue and still unmet; an escalation
    ``escalate_after_days`` (counted by ``deadline_fn``) after that reminder if the deadline is still
    unmet. Never for an instance that already has one: the state is the memory, so re-projecting the
    records after a restart gives the same answer. An escalation is only proposed once its reminder has
    been recorded (applied), so one call never returns both for the same instance.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    out: list[tuple[str, dict[str, Any]]] = []
    for deadline, pending_states in (("sign", SIGN_PENDING), ("reply", REPLY_PENDING)):
        if state.state not in pending_states:
            continue
        due = state.deadlines[deadline]
        if now <= parse_time(due):
            continue
        base = {"ticket": state.ticket, "actor": actor, "at": format_time(now), "node": state.issuer}
        reminder = state.reminded(deadline, due)
        if reminder is None:
            out.append((REMIND, {**base, "deadline": deadline, "due": due}))
        elif state.escalated(deadline, due) is None and now >= deadline_fn(
            parse_time(reminder["at"]), escalate_after_days
        ):
            out.append((ESCALATE, {**base, "deadline": deadline, "due": due}))
    return out
