"""Use cases of the supervision desk (监察工作台) that no other module of node/app offers for a person:
who is signed in, the overview, statistics, the work log and the link health, each filtered by the
person's scope and role.

Rules of this module:
- ``may()`` (node/features/people/roles.py) is the one decision: every function here asks it for the
  person and the target, and filters or refuses (``people.Refused``) with its reason. Nothing here
  re-states a rule of the table.
- Reads write nothing (they run on the desk's reader threads). The one act here,
  ``replay_quarantine``, is authorized and recorded by node/app/people.py (``authorize``, ``stamp``)
  like every act, and runs where the node writes (the store thread).
- The desk's other acts (tickets, sign-in, alert handling) are node/app/tickets.py, people.py and
  alerts.py: the desk calls them, it does not copy them.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from node.app import people
from node.app import stats as app_stats
from node.app.alerts import alert_target
from node.app.quarantine import quarantine_request
from node.app.tickets import ticket_target
from node.core.calendar import CST
from node.core.codes import is_code, strictly_within, within
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.store import Store
from node.features.people.accounts import LoginPolicy
from node.features.people.roles import Person, Target, may
from node.features.rules.alerts import read_alerts
from node.features.stats import query
from node.features.stats.config import StatsConfig
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import HeldIndex, project_store, summary
from node.features.worklog import ACTION, REMIND, action_payload

OPEN = (lc.ISSUED, lc.DELIVERED_STATE, lc.SIGNED_FOR, lc.REPLIED, lc.RETURNED)


# ---- who is signed in ----------------------------------------------------------------------------------------


def signed_in(ledger: Ledger, policy: LoginPolicy, login: str, token: str, now: datetime | None = None) -> Person:
    """The person of a desk session (login + session token), active; SignInFailed / Refused otherwise.
    The desk never takes ``os_user``: a browser is nobody's shell."""
    return people.resolve(ledger, policy, {"login": login, "token": token}, now or people.now_cst())


def require(person: Person, permission: str, codes: tuple[str, ...] = (), what: str = "") -> str:
    """``may()`` or Refused with its reason; the role that allowed it."""
    d = may(person, permission, Target(codes=codes, what=what) if codes else None)
    if not d:
        raise people.Refused(d.reason, fix="请由具有此权限的人员办理，或请系统管理员调整您的角色或辖区")
    return d.role


# ---- the overview (总览) ---------------------------------------------------------------------------------------


def _day_of_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, CST).date().isoformat() if us else ""


def links_of(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every link of the node and of the subtree its children report: one row each (联网状态)."""
    rows: list[dict[str, Any]] = []
    if not status:
        return rows

    def add(node: str, links: list[dict[str, Any]], reported_us: int | None) -> None:
        for ln in links:
            backlog = sum(int(b.get("records", 0)) for b in (ln.get("backlog") or {}).values())
            oldest = max((float(b.get("oldest_age_s", 0)) for b in (ln.get("backlog") or {}).values()), default=0.0)
            rows.append({"node": node, "peer": ln.get("peer", ""), "direction": ln.get("direction", ""),
                         "state": ln.get("state", ""), "backlog": backlog, "lag_s": oldest,
                         "rtt_ms": ln.get("rtt_ms"), "last_error": ln.get("last_error", ""),
                         "reported_us": reported_us})

    code = str((status.get("node") or {}).get("code", ""))
    add(code, list(status.get("links") or []), None)

    def walk(tree: dict[str, Any]) -> None:
        for child, rep in sorted(tree.items()):
            if isinstance(rep, dict):
                add(child, [ln for ln in rep.get("links") or [] if ln.get("direction") == "down"],
                    int(rep.get("time_us") or 0))
                walk(rep.get("children") or {})

    walk(status.get("tree") or {})
    return rows


def _overdue(st: lc.TicketState, now: datetime) -> str:
    """Which deadline of an open ticket has passed ("sign" | "reply" | "")."""
    try:
        if st.state in (lc.ISSUED, lc.DELIVERED_STATE) and lc.parse_time(st.deadlines["sign"]) < now:
            return "sign"
        if st.state in (lc.ISSUED, lc.DELIVERED_STATE, lc.SIGNED_FOR, lc.RETURNED) \
                and lc.parse_time(st.deadlines["reply"]) < now:
            return "reply"
    except (lc.TicketError, KeyError):
        return ""
    return ""


def overview(store: Store, code: str, person: Person, status: dict[str, Any] | None,
             now: datetime | None = None, index: HeldIndex | None = None) -> dict[str, Any]:
    """总览: alerts by unit and level (today's and all), open and overdue tickets, the subtree's links;
    each part only when the person may read it, and only inside their scope."""
    now = now or people.now_cst()
    today = now.astimezone(CST).date().isoformat()
    out: dict[str, Any] = {"node": code, "today": today, "person": people.stamp(person)}
    if may(person, "alerts.read"):
        units: dict[str, dict[str, Any]] = defaultdict(lambda: {"today": [0, 0, 0, 0], "all": [0, 0, 0, 0]})
        for a in read_alerts(store):
            if not may(person, "alerts.read", alert_target(a)):
                continue
            level = int(a.payload.get("level", 0) or 0)
            if not 1 <= level <= 4:
                continue
            u = units[str(a.payload.get("division") or a.origin)]
            u["all"][level - 1] += 1
            if _day_of_us(a.time_us) == today:
                u["today"][level - 1] += 1
        out["alerts"] = [{"division": d, **v} for d, v in sorted(units.items())]
    if may(person, "tickets.read"):
        proj, _held = project_store(store, index)
        visible = [st for st in proj.tickets.values() if may(person, "tickets.read", ticket_target(st, ""))]
        overdue = []
        for st in sorted(visible, key=lambda s: s.issued_at):
            which = _overdue(st, now)
            if which:
                overdue.append({**summary(st), "overdue": which})
        out["tickets"] = {
            "open": sum(1 for st in visible if st.state in OPEN),
            "inbox": sum(1 for st in visible if st.state in OPEN and within(st.to, person.scope)
                         and not within(st.issuer, person.scope)),
            "outbox": sum(1 for st in visible if st.state in OPEN and within(st.issuer, person.scope)),
            "overdue": overdue,
        }
    if may(person, "node.read"):
        out["links"] = [r for r in links_of(status) if within(r["node"], person.scope) or within(person.scope, r["node"])]
    return out


# ---- the units a ticket may go to ------------------------------------------------------------------------------


def units(store: Store, code: str, person: Person, status: dict[str, Any] | None = None) -> list[str]:
    """The units strictly below this node that the person's scope holds and this node knows of: the
    origins of the logs it holds and the nodes its children report (for the 督办 form)."""
    found = {origin for origin, _channel in store.heads()}
    if status:
        def walk(tree: dict[str, Any]) -> None:
            for child, rep in tree.items():
                found.add(child)
                if isinstance(rep, dict):
                    walk(rep.get("children") or {})
        walk(status.get("tree") or {})
        for ln in status.get("links") or []:
            found.add(str(ln.get("peer", "")))
    return sorted(c for c in found if is_code(c) and strictly_within(c, code) and within(c, person.scope))


# ---- statistics (统计与绩效) -------------------------------------------------------------------------------------


def stats(home: Home, store: Store, person: Person, *, by: str = "division", period: str = "quarter",
          at: str | None = None, subtree: str | None = None) -> dict[str, Any]:
    """``fednode stats`` for the person: their scope's subtree (or a part of it they name)."""
    part = (subtree or "").strip() or person.scope
    require(person, "stats.read", (part,), what=f"统计（{part}）")
    q = query.Query(by=by, period=period, at=at or None, subtree=None if part == home.code else part)
    return app_stats.compute(store, home.code, app_stats.build_calendar(home), StatsConfig.of_home(home), q)


# ---- the work log (监察日志) -------------------------------------------------------------------------------------


def worklog(store: Store, code: str, person: Person, *, actor: str | None = None, limit: int = 200) -> dict[str, Any]:
    """The acts of the people of the person's scope (their node's records), grouped by person, and the
    reminders of the supervisor rules (audit.remind) written for them."""
    require(person, "worklog.read", (person.scope,), what="监察日志")
    rows = [r for r in app_stats.worklog(store, actor or None, 0)
            if within(str(r.get("node", "")), person.scope) or _in_scope_by(r, person)]
    return {"people": app_stats.worklog_by_person(rows),
            "entries": [r for r in rows if r.get("kind") == ACTION][-limit:] if limit else rows,
            "reminders": [r for r in rows if r.get("kind") == REMIND][-limit:]}


def _in_scope_by(row: dict[str, Any], person: Person) -> bool:
    """A record of a node above the person's scope (a department's people at the city node), kept when
    its person acted for a scope inside the person's."""
    by = row.get("by")
    return isinstance(by, dict) and within(str(by.get("scope", "")), person.scope)


# ---- quarantine, from the desk (联网状态) ------------------------------------------------------------------------


def quarantine_list(store: Store, person: Person, limit: int = 100) -> dict[str, Any]:
    require(person, "node.read", (person.scope,), what="隔离区")
    return quarantine_request(_StoreOnly(store), {"action": "list", "limit": limit})


class _StoreOnly:
    def __init__(self, store: Store) -> None:
        self.store = store


def replay_quarantine(ledger: Ledger, policy: LoginPolicy, auth: dict[str, Any], ids: list[int],
                      now: datetime | None = None) -> dict[str, Any]:
    """Replay quarantined rows from the desk: the person signed in, authorized (node.operate, a refusal
    recorded), the replay, and the act recorded in their name (on the store thread)."""
    now = now or people.now_cst()
    person = people.resolve(ledger, policy, auth, now)
    d = people.authorize(ledger, person, "node.operate", Target(codes=(ledger.code,), what="隔离区重放"), now,
                         command="quarantine replay")
    result = quarantine_request(ledger, {"action": "replay", "ids": ids})
    payload = action_payload(person.login, "quarantine replay", ",".join(str(i) for i in ids),
                             {"via": "desk", "ids": ids}, now)
    payload["by"] = people.stamp(person, d.role)
    ledger.append([NewRecord(ACTION, payload)])
    return {"result": result, "by": payload["by"]}


# ---- what a person may do next on a ticket (the desk shows these forms; the act decides again) ------------------


def ticket_actions(data: dict[str, Any], person: Person, here: str) -> list[str]:
    """The verbs (node/features/tickets/desk.py VERBS) whose transition the ticket's state allows, that this
    node writes (the issuer's verbs at the issuer, the target's inside the target's subtree) and that
    ``may()`` grants the person on the ticket."""
    from node.app.tickets import ISSUER_VERBS
    from node.features.tickets.desk import VERBS

    state = data.get("state")
    if not state:
        return []
    owners = frozenset(str(a.get("responsible_person") or "")
                       for a in (data.get("assignments") or {}).values()) - {""}
    out = []
    for verb, kind in VERBS.items():
        if (state, kind) not in lc.TRANSITIONS:
            continue
        if lc.WHO[kind] == lc.ISSUER:
            if here != data.get("issuer"):
                continue
        elif not within(here, str(data.get("to", ""))):
            continue
        if kind == lc.ASSIGN_RESULT and not data.get("assignments"):
            continue
        codes = (str(data.get("issuer")),) if verb in ISSUER_VERBS else (str(data.get("to")),)
        if may(person, people.command_permission(f"tickets {verb}"), Target(codes=codes, owners=owners)):
            out.append(verb)
    return out
