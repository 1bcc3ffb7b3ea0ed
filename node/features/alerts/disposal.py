"""The disposal (处置) of an alert: a table-driven state machine and its projection. Pure logic.

Records go in as ``(kind, payload, writer_code)`` triples (the writer is the record's authenticated
origin, never a payload field); the state of every alert comes out. Reading the records and
appending new ones is node/app/alerts.py and node/runtime/services/alerts.py.

Rules of this module
====================

1. An alert is 待处置 (``open``) until a disposal. ``TRANSITIONS`` is the whole lifecycle::

       open        --alert.dispose result=corrected-->    corrected    (已纠正)
       open        --alert.dispose result=false-alarm-->  false-alarm  (误报核销, with a reason)
       open        --alert.dispose result=ticket-->       ticket       (已转督办, naming the ticket if any)
       open        --ticket.issue citing it-->            ticket       (a 督办单 with the alert in alert_ids)
       corrected | false-alarm | ticket --alert.reopen--> open         (a supervisor reopens it)

   Any other pair is refused for an act (``check_dispose``, ``check_reopen``: ``DisposalRefused``, exit
   1) and, for a record that arrives anyway (two nodes disposed of one alert before they saw each
   other), kept in the history as not applied: the first in time wins at every node.
2. A note is required for every disposal and reopening; a false-alarm note is the reason and has at
   least ``MIN_REASON`` characters.
3. Who writes: the node whose log holds the alert or one of its ancestors (``within(origin, writer)``).
   A record from elsewhere is kept as not applied (``foreign``). Who *acts* (the person, ``may()``) is
   decided before the record is written (node/app/alerts.py); its ``by`` names the person.
4. Order: records are applied by their ``at`` (as instants; acts write microseconds), then the writer,
   then, for one writer's records of one instant, their position in its monitor log (``seq``, when the
   caller gives it; a ``ticket.issue`` of that instant first), the rank of their kind and the canonical
   payload: the outcome depends only on the set of records, never on the order they arrived in. The
   very same record twice is applied once.
5. Drafts (``[tickets] auto_from_red = "draft"``): ``alert.draft`` holds the 督办单 the node prepared for a
   red card; it is ``pending`` until a ticket cites the alert (``confirmed``) or ``alert.draft_drop``
   (``dropped``). At most one draft per alert: a second one is kept as not applied.

Records (monitor channel: kinds starting with ``alert`` travel there, signed, up the tree)
==========================================================================================

Common fields: ``alert_id``, ``actor`` (the person's login; ``system`` for the node's own records),
``by`` ({login, name, role, role_label, scope}, node/app/people.py ``stamp``), ``at`` (ISO-8601 +08:00),
``node`` (the writing node), ``case_no`` (when the alert names a case), ``alert`` (``ORIGIN/monitor/SEQ``
of the alert record).

- ``alert.dispose``: ``result`` (``corrected`` | ``false-alarm`` | ``ticket``), ``note``; ``ticket`` (the
  督办单 number, result ``ticket``).
- ``alert.reopen``: ``note``.
- ``alert.draft``: ``to``, ``subject``, ``body``, ``basis``, ``rule_id``, ``case_nos`` — the ticket a red card
  drafted (``auto_from_red = "draft"``), waiting for ``tickets confirm`` or ``tickets drop``.
- ``alert.draft_drop``: ``note``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from node.core.codes import is_code, natural_parent, strictly_within, within
from node.core.errors import FednodeError, UsageError

CST = timezone(timedelta(hours=8))

DISPOSE = "alert.dispose"
REOPEN = "alert.reopen"
DRAFT = "alert.draft"
DRAFT_DROP = "alert.draft_drop"
TICKET_ISSUE = "ticket.issue"
KINDS = (DISPOSE, REOPEN, DRAFT, DRAFT_DROP)

OPEN, TICKET, CORRECTED, FALSE_ALARM = "open", "ticket", "corrected", "false-alarm"
STATES = (OPEN, TICKET, CORRECTED, FALSE_ALARM)
STATE_LABELS = {OPEN: "待处置", TICKET: "已转督办", CORRECTED: "已纠正", FALSE_ALARM: "误报核销"}
RESULTS = (CORRECTED, FALSE_ALARM, TICKET)
DISPOSED = frozenset({TICKET, CORRECTED, FALSE_ALARM})
MIN_REASON = 4  # characters of a false-alarm reason (误报核销须说明理由)
SYSTEM = "system"

# (state, event) -> new state; "result" = the disposal's own result. Everything else is refused.
TRANSITIONS: Mapping[tuple[str, str], str] = {
    (OPEN, DISPOSE): "result",
    (OPEN, TICKET_ISSUE): TICKET,
    (CORRECTED, REOPEN): OPEN,
    (FALSE_ALARM, REOPEN): OPEN,
    (TICKET, REOPEN): OPEN,
}
_RANK = {DRAFT: 0, TICKET_ISSUE: 1, DISPOSE: 2, DRAFT_DROP: 3, REOPEN: 4}

# What each rule is, for the subject and basis of a ticket that cites its alert (DOMAIN 预警纠错).
RULE_TEXT: Mapping[str, str] = {
    "case_time": "办件超时", "step_time": "环节超时", "special_time": "特别程序超期", "complaint_time": "投诉办理超期",
    "permission": "超越权限", "workflow": "流程异常", "discretion": "自由裁量偏离",
    "refusal_reason": "不予受理未说明理由", "risk_evidence": "风险点未采取预控措施", "major": "重大事项",
}
LEVEL_TEXT = {1: "预警", 2: "黄牌", 3: "红牌", 4: "严重违规"}


class DisposalRefused(FednodeError):
    """The act is not allowed in the alert's current state (rule 1)."""

    code = "alert_disposal_refused"


# ---- state -----------------------------------------------------------------------------------------------


@dataclass
class Disposal:
    """Where one alert stands, as the records held here say."""

    alert_id: str
    state: str = OPEN
    result: str | None = None  # of the disposal in force
    by: dict[str, Any] | None = None  # who disposed of it (the disposal in force)
    actor: str = ""
    at: str | None = None
    note: str = ""
    node: str = ""
    case_no: str = ""
    tickets: list[str] = field(default_factory=list)  # tickets that cite it or that a disposal names
    draft: dict[str, Any] | None = None  # the 督办单 drafted for it: state pending | confirmed | dropped
    history: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return STATE_LABELS.get(self.state, self.state)

    def as_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "state": self.state, "state_label": self.label, "result": self.result,
                "disposed_by": self.by if self.state in DISPOSED else None,
                "disposed_at": self.at if self.state in DISPOSED else None,
                "note": self.note, "node": self.node, "tickets": list(self.tickets), "draft": self.draft,
                "history": [dict(h) for h in self.history]}


def open_state(alert_id: str) -> Disposal:
    return Disposal(alert_id)


# ---- the projection --------------------------------------------------------------------------------------

Event = tuple[Any, ...]  # (kind, payload, writer_code) or (kind, payload, writer_code, seq in the writer's log)


def _instant(text: Any) -> datetime:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.min.replace(tzinfo=CST)
    return t.replace(tzinfo=CST) if t.tzinfo is None else t


def _canonical(p: Mapping[str, Any]) -> str:
    return json.dumps(p, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def _alert_ids(kind: str, p: Mapping[str, Any]) -> list[str]:
    if kind == TICKET_ISSUE:
        ids = p.get("alert_ids") or []
        return [str(a) for a in ids] if isinstance(ids, list) else []
    a = p.get("alert_id")
    return [a] if isinstance(a, str) and a else []


def project(events: Iterable[Event], origins: Mapping[str, str] | None = None) -> dict[str, Disposal]:
    """The disposal state of every alert the events name (rule 4: the order they come in is irrelevant).
    ``origins``: alert_id -> the node whose log holds the alert (rule 3); an alert not in it is not checked."""
    items: list[tuple[datetime, str, int, int, int, str, str, Mapping[str, Any], str]] = []
    for e in events:
        kind, p, writer = e[0], e[1], e[2]
        seq = int(e[3]) if len(e) > 3 and kind != TICKET_ISSUE else 0
        if kind not in _RANK or not isinstance(p, Mapping):
            continue
        c = _canonical(p)
        for alert_id in _alert_ids(kind, p):
            items.append((_instant(p.get("at")), writer, 0 if kind == TICKET_ISSUE else 1, seq, _RANK[kind], c, kind,
                          p, alert_id))
    items.sort(key=lambda x: x[:6])
    out: dict[str, Disposal] = {}
    for _t, writer, _g, _s, _r, c, kind, p, alert_id in items:
        d = out.setdefault(alert_id, Disposal(alert_id))
        fp = f"{kind}|{writer}|{c}"
        if fp in d.seen:
            continue
        d.seen.add(fp)
        origin = (origins or {}).get(alert_id)
        _apply(d, kind, p, writer, foreign=origin is not None and not within(origin, writer))
    return out


def _entry(kind: str, p: Mapping[str, Any], writer: str) -> dict[str, Any]:
    e: dict[str, Any] = {"event": kind.removeprefix("alert."), "at": p.get("at"), "actor": p.get("actor", ""),
                         "by": p.get("by"), "node": writer}
    if kind == TICKET_ISSUE:
        e.update(event="ticket", ticket=p.get("ticket"), note=p.get("subject", ""))
    else:
        for k in ("result", "note", "ticket", "to", "subject"):
            if p.get(k):
                e[k] = p[k]
    return e


def _apply(d: Disposal, kind: str, p: Mapping[str, Any], writer: str, *, foreign: bool) -> None:
    e = _entry(kind, p, writer)
    d.history.append(e)
    if not d.case_no and p.get("case_no"):
        d.case_no = str(p["case_no"])
    if foreign:
        e.update(applied=False, why=f"{writer} 不是该预警所在节点或其上级，记录不生效")
        return
    if kind == TICKET_ISSUE and p.get("ticket") and p["ticket"] not in d.tickets:
        d.tickets.append(str(p["ticket"]))
    if kind in (DRAFT, DRAFT_DROP) or (kind == TICKET_ISSUE and d.draft and d.draft["state"] == "pending"):
        _apply_draft(d, kind, p, writer, e)
        if kind != TICKET_ISSUE:
            return
    problem = _malformed(kind, p)
    if problem:
        e.update(applied=False, why=problem)
        return
    new = TRANSITIONS.get((d.state, kind))
    if new is None:
        e.update(applied=False, why=f"当前状态为{d.label}，{_verb(kind)}不生效")
        return
    e["applied"] = True
    if kind == REOPEN:
        d.state, d.result, d.by, d.actor, d.at, d.note, d.node = OPEN, None, p.get("by"), str(p.get("actor", "")), \
            str(p.get("at", "")), str(p.get("note", "")), writer
        e["reopened"] = True
        return
    d.state = str(p["result"]) if new == "result" else new
    d.result = d.state
    d.by, d.actor, d.at, d.node = p.get("by"), str(p.get("actor", "")), str(p.get("at", "")), writer
    d.note = str(p.get("note") or p.get("subject") or "")
    ticket = p.get("ticket")
    if isinstance(ticket, str) and ticket and ticket not in d.tickets:
        d.tickets.append(ticket)


def _apply_draft(d: Disposal, kind: str, p: Mapping[str, Any], writer: str, e: dict[str, Any]) -> None:
    if kind == DRAFT:
        if d.draft is not None:
            e.update(applied=False, why="该预警已有督办单草稿")
            return
        d.draft = {"state": "pending", "at": p.get("at"), "node": writer, "by": p.get("by"),
                   **{k: p.get(k) for k in ("to", "subject", "body", "basis", "rule_id", "case_nos")}}
        e["applied"] = True
    elif kind == DRAFT_DROP:
        if d.draft is None or d.draft["state"] != "pending":
            e.update(applied=False, why="没有待确认的督办单草稿")
            return
        d.draft.update(state="dropped", dropped_at=p.get("at"), dropped_by=p.get("by"), note=p.get("note", ""))
        e["applied"] = True
    elif d.draft is not None:  # a ticket citing the alert confirms its pending draft
        d.draft.update(state="confirmed", ticket=p.get("ticket"), confirmed_at=p.get("at"), confirmed_by=p.get("by"))


def _verb(kind: str) -> str:
    return {DISPOSE: "处置", REOPEN: "重新打开", TICKET_ISSUE: "转督办"}.get(kind, kind)


def _malformed(kind: str, p: Mapping[str, Any]) -> str:
    if kind == DISPOSE:
        if p.get("result") not in RESULTS:
            return f"处置结果 {p.get('result')!r} 无效"
        if p.get("result") == FALSE_ALARM and len(str(p.get("note") or "").strip()) < MIN_REASON:
            return "误报核销未说明理由"
    return ""


# ---- the checks of an act (before anything is written) -------------------------------------------------------


def check_note(note: str, result: str = "") -> str:
    note = (note or "").strip()
    if not note:
        raise UsageError("--note is empty", fix="say what was done, e.g. --note 已督促承办人当日办结")
    if result == FALSE_ALARM and len(note) < MIN_REASON:
        raise UsageError(f"a false alarm needs its reason (at least {MIN_REASON} characters), got {note!r}",
                         fix="--note 说明为何是误报，例如 --note 系统时钟错误导致误报，已核实按时办结")
    return note


def check_dispose(current: Disposal, result: str, note: str) -> str:
    """The note to record, or UsageError/DisposalRefused (nothing is written)."""
    if result not in RESULTS:
        raise UsageError(f"--result {result!r} is not a disposal", fix="--result corrected | false-alarm | ticket")
    note = check_note(note, result)
    if (current.state, DISPOSE) not in TRANSITIONS:
        who = (current.by or {}).get("name") or current.actor or "?"
        raise DisposalRefused(f"alert {current.alert_id} is already disposed of: {current.label} by {who} at "
                              f"{current.at}",
                              fix="a 监察员 reopens it first: `fednode alerts reopen DIR ALERT_ID --note 理由`")
    return note


def check_reopen(current: Disposal, note: str) -> str:
    note = check_note(note)
    if (current.state, REOPEN) not in TRANSITIONS:
        raise DisposalRefused(f"alert {current.alert_id} is {current.label}: there is nothing to reopen",
                              fix="dispose of it: `fednode alerts dispose DIR ALERT_ID --result ... --note ...`")
    return note


# ---- red cards and the tickets that cite alerts ---------------------------------------------------------------


def is_red_card(alert: Mapping[str, Any]) -> bool:
    """A 红牌 (or 严重违规) about a case, a step, a special procedure or a complaint: what ``auto_from_red``
    turns into a 督办单. Escalations about supervisors and tickets, and operator alerts, are not."""
    try:
        level = int(alert.get("level", 0))
    except (TypeError, ValueError):
        return False
    rule = str(alert.get("rule_id", ""))
    return level >= 3 and alert.get("object") != "supervisor" and not rule.startswith(("supervisor_", "ticket.")) \
        and rule != "calendar_year_missing"


def responsible_unit(alert: Mapping[str, Any]) -> str:
    """Who answers for the alert: its department when that is a node code, else its division."""
    dept = str(alert.get("dept") or "")
    return dept if is_code(dept) else str(alert.get("division") or "")


def issuer_for(alert: Mapping[str, Any]) -> str | None:
    """The node that issues the automatic 督办单 for ``alert``: the natural parent of its responsible unit
    (a county for its departments, a city for its counties), so exactly one node in the tree does."""
    unit = responsible_unit(alert)
    if not is_code(unit):
        return None
    return natural_parent(unit)


def prefill(alert: Mapping[str, Any], here: str) -> dict[str, Any]:
    """What a 督办单 citing ``alert`` can say without a person: to, subject, body, basis, rule_id, case_nos.
    ``to`` is "" when the responsible unit is not below ``here`` (then the person names it)."""
    unit = responsible_unit(alert)
    rule = str(alert.get("rule_id", ""))
    level = LEVEL_TEXT.get(int(alert.get("level", 0) or 0), "")
    case = str(alert.get("case_no") or "")
    what = RULE_TEXT.get(rule, rule)
    subject = f"{level}督办：{what}" + (f"（办件 {case}）" if case else "")
    body = str(alert.get("message") or "") + "。请于答复期限内核查整改并答复。"
    return {"to": unit if strictly_within(unit, here) else "", "subject": subject, "body": body,
            "basis": f"预警 {alert.get('alert_id')}（{level}，规则 {rule} {what}，{alert.get('at', '')}）",
            "rule_id": rule, "case_nos": [case] if case else []}


def dispose_payload(alert_id: str, result: str, note: str, *, by: Mapping[str, Any], at: str, node: str,
                    case_no: str = "", record: str = "", ticket: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"alert_id": alert_id, "result": result, "note": note, "actor": str(by.get("login", "")),
                         "by": dict(by), "at": at, "node": node}
    if case_no:
        p["case_no"] = case_no
    if record:
        p["alert"] = record
    if ticket:
        p["ticket"] = ticket
    return p


def system_by(node: str) -> dict[str, Any]:
    """``by`` of what the node writes on its own (a drafted or issued 督办单, a red card linked to one)."""
    return {"login": SYSTEM, "name": "系统", "role": SYSTEM, "role_label": "系统自动", "scope": node}
