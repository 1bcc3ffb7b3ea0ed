"""The supervisor work log (监察日志): what operators *do*, as ``audit.action`` records, and the rules
that watch the supervisors themselves.

Rules of this module:

- Reads are never records. A command that only looks (``READS``: status, health, metrics, verify,
  proof, quarantine list|show, calendar show, adapters list, pki keys, check, and the supervisor's
  desk reads in ``VISIT_READS``) appends nothing to any log, however often it runs, on a running or a
  stopped node. A monitoring system polling ``fednode status --json`` leaves the evidence chain alone.
- Presence, not polling: the first desk read of a calendar day (``VISIT_READS``: alerts, tickets,
  complaints list|show, stats, worklog) by a person writes ONE ``audit.action`` with action ``visit``
  ("was here", DESIGN §10); every later read that day writes nothing. The ``login`` rule needs it: a
  supervisor who only reads is still present. The day already visited is kept in store meta
  ``audit.visit:<actor>``, written in the same transaction as the visit (``append_visit``), so the
  log itself is the authority; the running node also caches it (admin op ``audit.visit``).
- Acts are records: every other command (``ACTIONS``) appends one ``audit.action`` after it succeeds
  (``audit_command``, called by node/interfaces/cli/main.py). Commands whose own transaction already writes the
  attributed ``audit.action`` (``SELF_RECORDED``: every ticket act, complaint registration, alert
  handling) get no second one. ``NOT_LOGGED``: commands that run the node or build its home before it
  has a log to write to. Every command is in exactly one of these sets (tests/test_reads_pure.py).
- ``actor`` is the person's login (``--as``, node/app/people.py), ``os:<user>`` for the OS operator,
  and ``by`` names them (login, name, role, scope); ``current_actor`` (``FEDNODE_ACTOR``, else the OS
  user) only for a command that has no person (it runs before the node has people).
- A stopped node is never written to by the CLI: actions (and the day's first visit) wait in
  ``audit-spool.jsonl`` and the running node appends them once its own logs are current
  (``drain_spool``, which also keeps visits to one per person per day).

Records (control channel, so they are signed and travel up the tree like every other log):

- ``audit.action`` {actor, action, target, detail, at} — one per operator act (``record_action``);
  action ``visit`` (target "", detail {via}) at most once per person per day.
- ``audit.remind`` {rule, subject, due, at, message} — a reminder to a supervisor (rule below).
- an ``alert`` (monitor) with ``object = "supervisor"`` — the escalation to the supervisor's leader.

Supervisor rules (thresholds in ``[stats.supervisors]``, ``node.stats.config.SupervisorRules``):

| rule            | subject       | due (reminder)                                  | done when                             |
|-----------------|---------------|-------------------------------------------------|---------------------------------------|
| login           | actor         | last action + login_days                        | any later action or visit by that     |
|                 |               |                                                 | actor                                 |
| alert_unhandled | alert_id      | alert ``at`` (or its reopening) + alert_days    | it is disposed of (``alert.dispose``, |
|                 |               |                                                 | or a ticket names it in               |
|                 |               |                                                 | ``alert_ids``: `alerts dispose`,      |
|                 |               |                                                 | `tickets issue --alert`); a reopened  |
|                 |               |                                                 | one is open again; looking at it      |
|                 |               |                                                 | (`alerts show`) is not handling it    |
| ticket_inactive | ticket number | issue + ticket_days (ticket sent to this node)  | signed for (sign) and replied (reply) |

Per (rule, subject, due) at most one reminder, written when ``now >= due``; then at most one
escalation alert, written when the subject is still not done ``escalate_after_days`` after the
reminder. ``facts_from_records`` and ``supervisor_actions`` are pure: records in, records to write
out; node/app/stats.py (``check_supervisors``, the StatsService tick, `worklog --check`) reads the
store and writes them.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from node.core.errors import FednodeError

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
                  *, at: datetime | None = None, by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one ``audit.action``. Given a Home, a running node appends it (admin op ``audit``) so
    the links forward it at once; otherwise it is appended to the store directly. ``by``: the person
    (node/app/people.py ``stamp``), whose login is ``actor``."""
    from node.core.ledger import Ledger, NewRecord

    payload = action_payload(actor, action, target, detail, at)
    if by:
        payload["by"] = dict(by)
    ledger = ledger_or_home
    if not isinstance(ledger_or_home, Ledger):
        from node.core import admin_client as admin

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
VISIT = "visit"  # the action of the daily "was here" record


def spool(directory: Any, payload: dict[str, Any]) -> None:
    import json
    import os
    from pathlib import Path

    path = Path(directory) / SPOOL
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(payload, ensure_ascii=False) + "\n")


def _read_spool(path: Any) -> list[dict[str, Any]]:
    import json
    from pathlib import Path

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            p = json.loads(line)
        except ValueError:
            continue  # a torn last line from a crash: the rest still counts
        if isinstance(p, dict):
            out.append(p)
    return out


def drain_spool(directory: Any, ledger: Any) -> int:
    """Append the actions spooled while the node was stopped (runs in the node, after recovery).
    Visits stay one per person per day: a visit of a day already visited is dropped."""
    import time
    from pathlib import Path

    from node.core.ledger import NewRecord

    path = Path(directory) / SPOOL
    if not path.exists():
        return 0
    draining = path.with_name(f"{SPOOL}.{time.time_ns()}.draining")
    path.rename(draining)  # new actions spooled meanwhile go to a fresh file
    payloads: list[dict[str, Any]] = []
    visited: dict[str, str] = {}
    for p in _read_spool(draining):
        if p.get("action") == VISIT:
            actor, day = str(p.get("actor", "")), _day(p)
            if day <= max(visited.get(actor, ""), visited_day(ledger.store, actor)):
                continue
            visited[actor] = day
        payloads.append(p)
    if payloads:
        def mark(tx: Any) -> None:
            for actor, day in visited.items():
                tx.set_meta(visit_key(actor), day)

        ledger.append([NewRecord(ACTION, p) for p in payloads], also=mark)
    draining.unlink()
    return len(payloads)


# ---- what a command leaves in the work log ----------------------------------------------------------------

# Reads: nothing, ever (DESIGN §10: reads are never records).
READS = frozenset({"users list", "users roles", "whoami",
                   "status", "health", "metrics", "verify", "proof", "quarantine list", "quarantine show",
                   "calendar show", "adapters list", "pki keys", "check", "directory list", "directory show",
                   "notify dead-letters"})
# The supervisor's desk reads: nothing either, except the first of the day per person (one `visit`).
VISIT_READS = frozenset({"alerts list", "alerts show", "tickets list", "tickets show", "complaints list",
                         "complaints show", "stats", "worklog", "cases show", "cases list", "tickets drafts"})
# Acts whose own transaction writes the attributed audit.action (node/features/tickets/desk.py, `alerts handle`).
SELF_RECORDED = frozenset({"tickets issue", "tickets sign", "tickets reply", "tickets conclude", "tickets return",
                           "tickets extend-request", "tickets extend-grant", "tickets assign",
                           "tickets assign-result", "complaints register", "alerts handle", "alerts dispose",
                           "alerts reopen", "tickets confirm", "tickets drop",
                           "users add", "users lock", "users unlock", "users disable", "users enable", "users passwd",
                           "login", "logout"})
# Running the node, or building its home before it has a log of its own to write to.
NOT_LOGGED = frozenset({"run", "demo", "bench", "completion", "init", "pki init-root", "pki request", "pki install"})
# Acts recorded by audit_command after they succeed: one audit.action each.
ACTIONS = frozenset({"ingest", "reconcile", "store copy", "migrate", "export", "quarantine replay", "adapters reset",
                     "adapters push-token", "calendar import", "pki sign", "pki rotate", "pki revoke",
                     "directory import", "notify retry"})
DISPOSAL_ACTIONS = frozenset({"alerts dispose", "alerts reopen"})  # the alert.* records decide, not these
CLI_SKIP = READS | VISIT_READS | SELF_RECORDED | NOT_LOGGED  # kept for callers of the old name
_ARG_SKIP = frozenset({"dir", "command", "json", "csv", "func", "actor", "auth", "by", "acting", "person_kind",
                       "as_login", "password_file", "new_password_file"})


def classify(name: str) -> str:
    """read | visit | self | skip | action. A command in no set is taken for an act (recorded)."""
    if name in READS:
        return "read"
    if name in VISIT_READS:
        return "visit"
    if name in SELF_RECORDED:
        return "self"
    if name in NOT_LOGGED:
        return "skip"
    return "action"


def actor_of(args: Any) -> str:
    """The login of the person the CLI acts as (``args.by``, set by node/interfaces/cli/main.py), else the
    OS operator."""
    by = getattr(args, "by", None)
    if isinstance(by, dict) and by.get("login"):
        return str(by["login"])
    return current_actor()


def audit_command(args: Any, name: str, rc: int) -> dict[str, Any] | None:
    """Log one finished CLI command (node/interfaces/cli/main.py main calls this): an act's ``audit.action``, or the
    day's first visit for a desk read, or nothing. Never fails the command: a node that is not
    enrolled yet, or a store that cannot be written, only gets a warning on stderr."""
    import sys

    kind = classify(name)
    if rc != 0 or kind not in ("visit", "action") or not getattr(args, "dir", None):
        return None
    try:
        from node.core.home import Home, resolve_dir

        home = Home(resolve_dir(args.dir))
        try:
            if not home.enrolled:
                return None
            by = getattr(args, "by", None)
            if kind == "visit":
                return record_visit(home, actor_of(args), name, by=by)
            detail = {k: v for k, v in sorted(vars(args).items())
                      if k not in _ARG_SKIP and not k.endswith("_command") and v not in (None, False, [], "")}
            target = str(detail.pop("ticket", "") or detail.pop("alert_id", "") or "")
            return record_action(home, actor_of(args), name, target, _jsonable(detail), by=by)
        finally:
            home.close()
    except (FednodeError, OSError, ValueError) as e:
        print(f"fednode {name}: not written to the work log: {e}", file=sys.stderr)
        return None


# ---- the daily visit ----------------------------------------------------------------------------------------


def visit_key(actor: str) -> str:
    return f"audit.visit:{actor}"


def visited_day(store: Any, actor: str) -> str:
    """The last day (YYYY-MM-DD, CST) a visit of ``actor`` is in this node's log ('' if none)."""
    return store.get_meta(visit_key(actor), "") or ""


def _day(payload: Mapping[str, Any]) -> str:
    at = _time(payload.get("at"))
    return at.astimezone(CST).date().isoformat() if at else ""


def append_visit(ledger: Any, payload: dict[str, Any]) -> bool:
    """Append the visit unless its person's day is already visited (store work, in the running node).
    The day goes to store meta in the same transaction as the record."""
    from node.core.ledger import NewRecord

    actor, day = payload["actor"], _day(payload)
    if not day or day <= visited_day(ledger.store, actor):
        return False
    ledger.append([NewRecord(ACTION, payload)], also=lambda tx: tx.set_meta(visit_key(actor), day))
    return True


def record_visit(home: Any, actor: str, via: str, *, at: datetime | None = None,
                 by: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The day's first desk read by ``actor``: one ``visit``; later ones: nothing (returns None).
    Running node: admin op ``audit.visit`` decides (cached there, so a poll costs no store work).
    Stopped node: spooled unless the day is already in the log or the spool."""
    from node.core import admin_client as admin

    payload = action_payload(actor, VISIT, "", {"via": via}, at)
    if by:
        payload["by"] = dict(by)
    resp = admin.call(home, {"op": "audit.visit", "payload": payload}, timeout=30.0)
    if resp is not None:
        return payload if resp["result"].get("written") else None
    day = _day(payload)
    if day <= visited_day(home.store(), payload["actor"]):
        return None
    if any(p.get("action") == VISIT and p.get("actor") == payload["actor"] and _day(p) >= day
           for p in _read_spool(home.dir / SPOOL)):
        return None
    spool(home.dir, payload)
    return payload


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


# ---- the supervisor rules (pure) ----------------------------------------------------------------------


@dataclass
class Facts:
    """What the rules look at, built from the records held here by ``facts_from_records``."""

    node: str
    last_action: dict[str, datetime] = field(default_factory=dict)  # actor -> latest action or visit
    acted_targets: set[str] = field(default_factory=set)  # targets of any act (reads excluded)
    alerts: dict[str, datetime] = field(default_factory=dict)  # alert_id -> at (of this subtree's alerts)
    ticketed_alerts: set[str] = field(default_factory=set)
    tickets: dict[str, tuple[datetime, bool]] = field(default_factory=dict)  # to this node: issued, done?
    reminders: dict[tuple[str, str, str], datetime] = field(default_factory=dict)  # (rule, subject, due) -> at
    escalated: set[str] = field(default_factory=set)  # alert_ids of escalations written
    # disposal (node/features/alerts/disposal.py): disposed alerts are handled; a reopened one is open again,
    # its time counted from the reopening, whatever was done before
    disposed_alerts: set[str] = field(default_factory=set)
    reopened_alerts: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Due:
    kind: str  # audit.remind | alert
    payload: dict[str, Any]


@dataclass(frozen=True)
class Watched:
    """A person of this node the rules watch or tell (node/app/stats.py builds these from the users)."""

    login: str
    name: str
    roles: tuple[str, ...]
    scope: str


SUPERVISING = frozenset({"supervisor", "leader", "dept_supervisor"})  # people the login rule watches


def _open_items(f: Facts, rules: Any, names: Iterable[str],
                watched: tuple[Watched, ...] = ()) -> list[tuple[str, str, datetime, str]]:
    """(rule, subject, due, message) of every subject not done by its due time. With ``watched`` (the
    node has people), the login rule watches each supervising person, not whoever happened to act."""
    out = []
    subjects = set(names) | ({w.login for w in watched if SUPERVISING & set(w.roles)} if watched else set(f.last_action))
    display = {w.login: w.name for w in watched}
    for actor in sorted(subjects):
        last = f.last_action.get(actor)
        # a named supervisor never seen is due at once, with a fixed due so the reminder is written once
        due = NEVER if last is None else last + timedelta(days=rules.login_days)
        who = f"{display[actor]}（{actor}）" if actor in display else actor
        out.append(("login", actor, due, f"{who} 已超过 {rules.login_days:g} 天未登录监察系统"))
    # unhandled alerts are reminded per day, not per alert: one reminder (and at most one escalation)
    # lists every alert that fell due that day, so a backlog of old alerts cannot flood the control log
    by_day: dict[str, list[tuple[datetime, str]]] = {}
    for alert_id, at in sorted(f.alerts.items()):
        if alert_id in f.disposed_alerts:
            continue
        if alert_id in f.reopened_alerts:
            at = max(at, f.reopened_alerts[alert_id])
        elif alert_id in f.acted_targets or alert_id in f.ticketed_alerts:
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


def supervisor_actions(f: Facts, rules: Any, now: datetime, names: Iterable[str] = (),
                       watched: Iterable[Watched] = (),
                       items: list[tuple[str, str, datetime, str]] | None = None) -> list[Due]:
    """The reminders and escalations due at ``now`` (idempotent over the facts). With people: a reminder
    names who it is for (``to``: the person, or the node's supervisors), an escalation the node's leaders
    (监察领导). ``items``: the facts' open items when already known (``FactsFold.due``)."""
    people = tuple(watched)
    supervisors = sorted(w.login for w in people if {"supervisor", "leader"} & set(w.roles))
    leaders = sorted(w.login for w in people if "leader" in w.roles)
    out: list[Due] = []
    for rule, subject, due, message in (_open_items(f, rules, tuple(names), people) if items is None else items):
        if now < due:
            continue
        key = (rule, subject, fmt(due))
        reminded = f.reminders.get(key)
        if reminded is None:
            payload: dict[str, Any] = {"rule": rule, "subject": subject, "due": fmt(due), "at": fmt(now), "message": message}
            if people:
                payload["to"] = [subject] if rule == "login" else supervisors
            out.append(Due(REMIND, payload))
        elif (escalation_id(f.node, rule, subject, fmt(due)) not in f.escalated
              and now >= reminded + timedelta(days=rules.escalate_after_days)):
            alert = escalation_alert(f.node, rule, subject, fmt(due), now, message)
            if people:
                alert["to"] = leaders
            out.append(Due("alert", alert))
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
    fold = FactsFold(node)
    fold.add(records)
    return fold.facts()


class FactsFold:
    """``facts_from_records`` folded as the records arrive (pure): ``add`` the new ones, ``facts()``
    the facts of everything added so far. The running node keeps one, so each tick of the supervisor
    rules reads only what arrived since the last (a province holds hundreds of thousands of alerts:
    re-reading them every tick cost most of a core). What it keeps grows with the alerts (their id and
    time) and with people's acts (ticket and disposal events, projected again on each ``facts()``)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.after = 0  # the last local_seq added (node/app/stats.py reads the store past it)
        self._f = Facts(node)
        self._version = 0  # records added so far: what the kept facts and open items were computed at
        self._facts: tuple[int, Facts] | None = None
        self._items: tuple[Any, list[tuple[str, str, datetime, str]]] | None = None
        self._ticket_events: list[tuple[str, dict[str, Any], str]] = []
        self._disposal_events: list[tuple[str, Mapping[str, Any], str]] = []

    def add(self, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        from node.core import codes

        f, node = self._f, self.node
        for kind, writer, p in records:
            self._version += 1
            if kind == ACTION and writer == node:
                at = _time(p.get("at"))
                actor = str(p.get("actor", ""))
                if at and actor:
                    f.last_action[actor] = max(at, f.last_action.get(actor, at))
                # looking is not handling: a read recorded by an older version (`alerts show` with its target)
                # does not close an alert; its time still counts as presence above
                if p.get("target") and str(p.get("action", "")) not in READS | VISIT_READS | DISPOSAL_ACTIONS:
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
                if at and (codes.within(str(p.get("division", "")), node) or codes.within(str(p.get("dept") or ""), node)):
                    f.alerts[str(p.get("alert_id"))] = at
            elif kind.startswith("ticket.") and isinstance(p, dict):
                self._ticket_events.append((kind, dict(p), writer))
                if kind == "ticket.issue":
                    f.ticketed_alerts.update(str(a) for a in p.get("alert_ids", []) or [])
                    self._disposal_events.append((kind, p, writer))
            elif kind.startswith("alert."):
                self._disposal_events.append((kind, p, writer))

    def due(self, rules: Any, now: datetime, names: Iterable[str] = (), watched: Iterable[Watched] = ()) -> list[Due]:
        """``supervisor_actions`` of the facts so far; their open items (every unhandled alert held, sorted
        and grouped by day) are worked out again only when records were added or the rules changed."""
        people, facts = tuple(watched), self.facts()
        key = (self._version, rules, tuple(names), people)
        if self._items is None or self._items[0] != key:
            self._items = (key, _open_items(facts, rules, tuple(names), people))
        return supervisor_actions(facts, rules, now, names, people, items=self._items[1])

    def facts(self) -> Facts:
        """The facts so far: the folded parts shared (read them, never change them), the tickets and
        the disposals projected from their events (again only when records were added)."""
        if self._facts is None or self._facts[0] != self._version:
            self._facts = (self._version, self._project())
        return self._facts[1]

    def _project(self) -> Facts:
        from node.features.alerts import disposal
        from node.features.tickets import lifecycle

        tickets: dict[str, tuple[datetime, bool]] = {}
        for st in lifecycle.project(self._ticket_events).values():
            if st.to == self.node and st.issuer != self.node:
                issued = _time(st.issued_at)
                if issued:
                    tickets[st.ticket] = (issued, st.signed_at is not None and st.first_reply_at is not None)
        disposed: set[str] = set()
        reopened: dict[str, datetime] = {}
        for alert_id, d in disposal.project(self._disposal_events).items():
            if d.state in disposal.DISPOSED:
                disposed.add(alert_id)
            elif d.at and any(h.get("reopened") for h in d.history):
                at = _time(d.at)
                if at:
                    reopened[alert_id] = at
        return replace(self._f, tickets=tickets, disposed_alerts=disposed, reopened_alerts=reopened)
