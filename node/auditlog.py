"""The supervisor work log (监察日志): operator actions as ``audit.action`` records, and the rules that
watch the supervisors themselves.

Records (control channel, so they are signed and travel up the tree like every other log):

- ``audit.action`` {actor, action, target, detail, at} — one per operator action through the CLI or
  the admin API (``record_action``). ``actor`` is the operator (``FEDNODE_ACTOR``, else the OS user).
- ``audit.remind`` {rule, subject, due, at, message} — a reminder to a supervisor (rule below).
- an ``alert`` (monitor) with ``object = "supervisor"`` — the escalation to the supervisor's leader.

Supervisor rules (thresholds in ``[stats.supervisors]``, ``node.stats.config.SupervisorRules``):

| rule            | subject       | due (reminder)                                  | done when                             |
|-----------------|---------------|-------------------------------------------------|---------------------------------------|
| login           | actor         | last action + login_days                        | any later action by that actor        |
| alert_unhandled | alert_id      | alert ``at`` + alert_days                       | an action targets the alert, or a     |
|                 |               |                                                 | ticket names it in ``alert_ids``      |
| ticket_inactive | ticket number | issue + ticket_days (ticket sent to this node)  | signed for (sign) and replied (reply) |

Per (rule, subject, due) at most one reminder, written when ``now >= due``; then at most one
escalation alert, written when the subject is still not done ``escalate_after_days`` after the
reminder. ``supervisor_actions`` is pure: facts in, records to write out; ``audit_facts`` and the
Service read the store and write them.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from node.errors import FednodeError

CST = timezone(timedelta(hours=8))
NEVER = datetime(1970, 1, 1, tzinfo=CST)
ACTION = "audit.action"
REMIND = "audit.remind"
RULES = {
    "login": "长期未登录",
    "alert_unhandled": "预警逾期未处置",
    "ticket_inactive": "上级督办单未办理",
}


class AuditError(FednodeError):
    code = "audit_invalid"
    exit_status = 2


def current_actor() -> str:
    name = os.environ.get("FEDNODE_ACTOR", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def fmt(t: datetime) -> str:
    return t.astimezone(CST).isoformat(timespec="seconds")


def action_payload(actor: str, action: str, target: str, detail: Any, at: datetime | None = None) -> dict[str, Any]:
    if not isinstance(actor, str) or not actor.strip():
        raise AuditError("the actor of an audit action is empty", fix="set FEDNODE_ACTOR to the operator's name")
    if not isinstance(action, str) or not action.strip():
        raise AuditError("the action of an audit record is empty", fix="name the command, e.g. 'tickets issue'")
    return {"actor": actor.strip(), "action": action.strip(), "target": str(target or ""),
            "detail": detail if detail is not None else {}, "at": fmt(at or datetime.now(CST))}


def record_action(ledger_or_home: Any, actor: str, action: str, target: str = "", detail: Any = None,
                  *, at: datetime | None = None) -> dict[str, Any]:
    """Append one ``audit.action``. Given a Home, a running node appends it (admin op ``audit``) so
    the links forward it at once; otherwise it is appended to the store directly."""
    from node.ledger import Ledger, NewRecord

    payload = action_payload(actor, action, target, detail, at)
    ledger = ledger_or_home
    if not isinstance(ledger_or_home, Ledger):
        from node import admin

        home = ledger_or_home
        if admin.call(home, {"op": "audit", "payload": payload}, timeout=30.0) is not None:
            return payload
        # The node is stopped. Writing its log now could fork it: a node restored from a backup must first
        # take back its own logs from its parent, which happens only when it runs. So the action waits in
        # a spool file, and the running node appends it once its logs are current (drain_spool).
        spool(home.dir, payload)
        return payload
    ledger.append([NewRecord(ACTION, payload)])
    return payload


SPOOL = "audit-spool.jsonl"


def spool(directory: Any, payload: dict[str, Any]) -> None:
    import json
    import os
    from pathlib import Path

    path = Path(directory) / SPOOL
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(payload, ensure_ascii=False) + "\n")


def drain_spool(directory: Any, ledger: Any) -> int:
    """Append the actions spooled while the node was stopped (runs in the node, after recovery)."""
    import json
    import time
    from pathlib import Path

    from node.ledger import NewRecord

    path = Path(directory) / SPOOL
    if not path.exists():
        return 0
    draining = path.with_name(f"{SPOOL}.{time.time_ns()}.draining")
    path.rename(draining)  # new actions spooled meanwhile go to a fresh file
    payloads = []
    for line in draining.read_text(encoding="utf-8").splitlines():
        try:
            payloads.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a crash: the rest still counts
    if payloads:
        ledger.append([NewRecord(ACTION, p) for p in payloads])
    draining.unlink()
    return len(payloads)


# commands that are not an operator's supervisory action, or cannot write to an enrolled node's log
CLI_SKIP = frozenset({"run", "demo", "bench", "init", "proof", "pki init-root", "pki request", "pki install",
                      "pki sign", "worklog"})
_ARG_SKIP = frozenset({"dir", "command", "json", "csv", "func"})


def audit_command(args: Any, name: str, rc: int) -> dict[str, Any] | None:
    """Log one finished CLI command (node/cli.py main calls this). Never fails the command: a node that
    is not enrolled yet, or a store that cannot be written, only gets a warning on stderr."""
    import sys

    if rc != 0 or name in CLI_SKIP or not getattr(args, "dir", None):
        return None
    try:
        from node.home import Home, resolve_dir

        home = Home(resolve_dir(args.dir))
        if not home.enrolled:
            return None
        detail = {k: v for k, v in sorted(vars(args).items())
                  if k not in _ARG_SKIP and not k.endswith("_command") and v not in (None, False, [], "")}
        target = str(detail.pop("ticket", "") or detail.pop("alert_id", "") or "")
        try:
            return record_action(home, current_actor(), name, target, _jsonable(detail))
        finally:
            home.close()
    except (FednodeError, OSError, ValueError) as e:
        print(f"fednode {name}: not written to the work log: {e}", file=sys.stderr)
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


# ---- the supervisor rules (pure) ----------------------------------------------------------------------


@dataclass
class Facts:
    """What the rules look at, read from the store by ``audit_facts``."""

    node: str
    last_action: dict[str, datetime] = field(default_factory=dict)  # actor -> latest action
    acted_targets: set[str] = field(default_factory=set)  # targets of any action
    alerts: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # alert_id -> (at, division)
    ticketed_alerts: set[str] = field(default_factory=set)
    tickets: dict[str, tuple[datetime, bool]] = field(default_factory=dict)  # to this node: issued, done?
    reminders: dict[tuple[str, str, str], datetime] = field(default_factory=dict)  # (rule, subject, due) -> at
    escalated: set[str] = field(default_factory=set)  # alert_ids of escalations written


@dataclass(frozen=True)
class Due:
    kind: str  # audit.remind | alert
    payload: dict[str, Any]


def _open_items(f: Facts, rules: Any, names: Iterable[str], now: datetime) -> list[tuple[str, str, datetime, str]]:
    """(rule, subject, due, message) of every subject not done by its due time."""
    out = []
    for actor in sorted(set(f.last_action) | set(names)):
        last = f.last_action.get(actor)
        # a named supervisor never seen is due at once, with a fixed due so the reminder is written once
        due = NEVER if last is None else last + timedelta(days=rules.login_days)
        out.append(("login", actor, due, f"{actor} 已超过 {rules.login_days:g} 天未登录监察系统"))
    # unhandled alerts are reminded per day, not per alert: one reminder (and at most one escalation)
    # lists every alert that fell due that day, so a backlog of old alerts cannot flood the control log
    by_day: dict[str, list[tuple[datetime, str]]] = {}
    for alert_id, (at, _div) in sorted(f.alerts.items()):
        if alert_id in f.acted_targets or alert_id in f.ticketed_alerts:
            continue
        due = at + timedelta(days=rules.alert_days)
        by_day.setdefault(due.date().isoformat(), []).append((due, alert_id))
    for day, items in sorted(by_day.items()):
        due = max(d for d, _ in items).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        ids = [a for _, a in sorted(items)]
        shown = "、".join(ids[:10]) + (f" 等 {len(ids)} 条" if len(ids) > 10 else "")
        out.append(("alert_unhandled", f"alerts@{day}", due,
                    f"{len(ids)} 条预警超过 {rules.alert_days:g} 天未处置（{day} 到期）：{shown}"))
    for ticket, (issued, done) in sorted(f.tickets.items()):
        if not done:
            out.append(("ticket_inactive", ticket, issued + timedelta(days=rules.ticket_days),
                        f"上级督办单 {ticket} 超过 {rules.ticket_days:g} 天未办理"))
    return out


def supervisor_actions(f: Facts, rules: Any, now: datetime, names: Iterable[str] = ()) -> list[Due]:
    """The reminders and escalations due at ``now`` (idempotent over the facts)."""
    out: list[Due] = []
    for rule, subject, due, message in _open_items(f, rules, tuple(names), now):
        if now < due:
            continue
        key = (rule, subject, fmt(due))
        reminded = f.reminders.get(key)
        if reminded is None:
            out.append(Due(REMIND, {"rule": rule, "subject": subject, "due": fmt(due), "at": fmt(now),
                                    "message": message}))
        elif (escalation_id(f.node, rule, subject, fmt(due)) not in f.escalated
              and now >= reminded + timedelta(days=rules.escalate_after_days)):
            out.append(Due("alert", escalation_alert(f.node, rule, subject, fmt(due), now, message)))
    return out


def escalation_id(node: str, rule: str, subject: str, due: str) -> str:
    return f"supervisor_{rule}:{node}:{subject}:{due}"[:200]


def escalation_alert(node: str, rule: str, subject: str, due: str, now: datetime, message: str) -> dict[str, Any]:
    division = node.split("-", 1)[0]
    return {"alert_id": escalation_id(node, rule, subject, due), "rule_id": f"supervisor_{rule}",
            "category": "01", "level": 2, "object": "supervisor", "division": division,
            **({"dept": node} if "-" in node else {}),
            "message": f"{message}，提醒后仍未处理，报告其领导", "at": fmt(now), "source": "local"}


def _time(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return d.replace(tzinfo=CST) if d.tzinfo is None else d


def facts_from_records(node: str, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> Facts:
    """Facts from (kind, writer, payload) of audit.*, alert and ticket.* records held here (pure)."""
    from node import codes
    from node.tickets import lifecycle

    f = Facts(node)
    ticket_events = []
    for kind, writer, p in records:
        if kind == ACTION and writer == node:
            at = _time(p.get("at"))
            actor = str(p.get("actor", ""))
            if at and actor:
                f.last_action[actor] = max(at, f.last_action.get(actor, at))
            if p.get("target"):
                f.acted_targets.add(str(p["target"]))
        elif kind == REMIND and writer == node:
            at = _time(p.get("at"))
            if at:
                f.reminders[(str(p.get("rule")), str(p.get("subject")), str(p.get("due")))] = at
        elif kind == "alert":
            if p.get("object") == "supervisor":
                if writer == node:
                    f.escalated.add(str(p.get("alert_id", "")))
                continue  # escalations about supervisors are not themselves watched
            at = _time(p.get("at"))
            division = str(p.get("division", ""))
            if at and (codes.within(division, node) or codes.within(str(p.get("dept") or ""), node)):
                f.alerts[str(p.get("alert_id"))] = (at, division)
        elif kind.startswith("ticket.") and isinstance(p, dict):
            ticket_events.append((kind, dict(p), writer))
            if kind == "ticket.issue":
                f.ticketed_alerts.update(str(a) for a in p.get("alert_ids", []) or [])
    for st in lifecycle.project(ticket_events).values():
        if st.to == node and st.issuer != node:
            issued = _time(st.issued_at)
            if issued:
                f.tickets[st.ticket] = (issued, st.signed_at is not None and st.first_reply_at is not None)
    return f
