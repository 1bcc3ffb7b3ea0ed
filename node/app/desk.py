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

import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select

from node.app import people
from node.app import stats as app_stats
from node.app.quarantine import quarantine_request
from node.app.tickets import ticket_target
from node.core import schema as t
from node.core.calendar import CST
from node.core.codes import is_code, strictly_within, within
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.schema import cases as ci
from node.core.schema import stats as sts
from node.core.store import Store
from node.features.people.accounts import LoginPolicy
from node.features.people.roles import GRANTS, Person, Target, may
from node.features.stats import query
from node.features.stats.config import StatsConfig
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import HeldIndex, project_store, summary
from node.features.worklog import ACTION, REMIND, action_payload

T = TypeVar("T")
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
             now: datetime | None = None, index: HeldIndex | None = None,
             shared: Shared | None = None) -> dict[str, Any]:
    """总览: alerts by unit and level (today's and all), open and overdue tickets (the first
    ``OVERDUE_LIMIT`` overdue, oldest first, and ``overdue_total``), the subtree's links; each part only
    when the person may read it, and only inside their scope.

    Bounded work per request, whatever the number of alerts held: the alerts are the counters the
    statistics projection keeps (stats_alert_counts: one row per day, division and level, and per
    division and level in all), read for today and in all, plus the alerts of the person's own cases
    (the case index by handler), for ``may()``'s rule that nobody reads their own case's alert unless the
    table grants it as their own. The tickets are the desk's HeldIndex, projected again only when a
    ticket record arrived.

    With ``shared`` (the desk's), the aggregated parts are computed once and shared for its ``ttl_s``: the
    alert counters by everyone, the tickets' figures by everyone of the same scope and roles (what
    ``may()`` lets them read depends on nothing else); ``as_of`` says when the oldest part was counted,
    the status's ``as_of_us`` included (the page shows it)."""
    now = now or people.now_cst()
    today = now.astimezone(CST).date().isoformat()
    shared = shared or Shared(ttl_s=0.0)
    out: dict[str, Any] = {"node": code, "today": today, "person": people.stamp(person)}
    counted: list[datetime] = [now]
    if may(person, "alerts.read"):
        counts, at = shared.get(("alerts", today), lambda: _alert_counts(store, today), now)
        counted.append(at)
        out["alerts"] = _alerts_by_unit(store, person, today, counts)
    if may(person, "tickets.read"):
        # what may() lets a person read of the tickets: their scope and roles, and their name where a
        # role grants only their own (an ``O`` of the table)
        own = any(GRANTS["tickets.read"].get(r) == "O" for r in person.roles)
        key = ("tickets", person.kind, person.state, person.scope, tuple(sorted(person.roles)),
               (person.login, person.name) if own else ())
        tickets, at = shared.get(key, lambda: _tickets_overview(store, person, now, index), now)
        counted.append(at)
        out["tickets"] = tickets
    if may(person, "node.read"):
        out["links"] = [r for r in links_of(status) if within(r["node"], person.scope) or within(person.scope, r["node"])]
        if status and status.get("as_of_us"):  # the desk's status is shared, fetched again in the background
            counted.append(datetime.fromtimestamp(int(status["as_of_us"]) / 1e6, UTC))
    out["as_of"] = min(counted).astimezone(CST).strftime("%H:%M:%S")
    return out


class Shared:
    """Values computed once and shared for ``ttl_s`` seconds (the desk's overview: every session of a
    scope sees the same figures, counted at most ``ttl_s`` ago), each key computed by one thread at a time.
    While one thread computes a key again, the others get its previous value at once rather than wait
    (stale-while-revalidate): only the first computation of a key is waited for."""

    def __init__(self, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._values: dict[Any, tuple[float, datetime, Any]] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], T], now: datetime) -> tuple[T, datetime]:
        """(the value, when it was computed): the kept one while younger than ``ttl_s`` or while another
        thread computes it again, else ``make()``."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
            kept = self._values.get(key)
        if kept is not None and (self.clock() - kept[0] < self.ttl_s or not lock.acquire(blocking=False)):
            return kept[2], kept[1]
        if kept is None:
            lock.acquire()
        try:
            with self._lock:
                kept = self._values.get(key)
            if kept is not None and self.clock() - kept[0] < self.ttl_s:
                return kept[2], kept[1]
            value = make()
            if self.ttl_s > 0:
                with self._lock:
                    if len(self._values) > 1000:  # scopes x role sets: a few dozen; never grows without bound
                        self._values.clear()
                    self._values[key] = (self.clock(), now, value)
            return value, now
        finally:
            lock.release()


OVERDUE_LIMIT = 50  # overdue tickets listed on the overview (``overdue_total`` counts them all)
# 办件查询 counts the matches up to this many past the page ("超过 N 件" beyond): a search over a
# province's million cases reads the newest matches, not the whole table, for a page of 50
CASES_COUNTED_BEYOND = 1000


def _tickets_overview(store: Store, person: Person, now: datetime, index: HeldIndex | None) -> dict[str, Any]:
    proj = _projection(store, index)
    visible = [st for st in proj.tickets.values() if may(person, "tickets.read", ticket_target(st, ""))]
    overdue = []
    for st in visible:
        which = _overdue(st, now)
        if which:
            overdue.append((st, which))
    overdue.sort(key=lambda x: x[0].issued_at)
    return {
        "open": sum(1 for st in visible if st.state in OPEN),
        "inbox": sum(1 for st in visible if st.state in OPEN and within(st.to, person.scope)
                     and not within(st.issuer, person.scope)),
        "outbox": sum(1 for st in visible if st.state in OPEN and within(st.issuer, person.scope)),
        "overdue": [{**summary(st), "overdue": which} for st, which in overdue[:OVERDUE_LIMIT]],
        "overdue_total": len(overdue),
    }


def _alert_counts(store: Store, today: str) -> dict[str, dict[str, list[int]]]:
    """division -> {"today"|"all": [n per level]}: every alert held here (stats_alert_counts)."""
    ac = sts.alert_counts.c
    counts: dict[str, dict[str, list[int]]] = {}
    with store.read() as conn:
        for day, division, level, n in conn.execute(
                select(ac.day, ac.division, ac.level, ac.n).where(ac.day.in_(("", today)))):
            if 1 <= int(level) <= 4:
                _bump(counts, str(division), "all" if day == "" else "today", int(level), int(n))
    return counts


def _alerts_by_unit(store: Store, person: Person, today: str,
                    counts: dict[str, dict[str, list[int]]]) -> list[dict[str, Any]]:
    """[{division, today: [4 levels], all: [4 levels]}] of the alerts the person may read."""
    mine: dict[str, dict[str, list[int]]] = {}  # the same, of the alerts on the person's own cases
    handlers = [h[:128] for h in {person.login, person.name} if h]
    if handlers:
        with store.read() as conn:
            h, a, al = ci.index.alias("h"), ci.index.alias("a"), sts.alerts
            own_cases = select(h.c.case_no).where(h.c.handler.in_(handlers))  # ix_cases_index_handler
            q = (select(al.c.division, al.c.level, func.min(t.records.c.time_us))
                 .select_from(a.join(al, al.c.alert_id == a.c.ref)
                              .outerjoin(t.records, t.records.c.local_seq == a.c.local_seq))
                 # no condition on a.kind: SQLite would then walk every alert by ix_cases_index_kind; the
                 # join keeps the alerts (and alert.* records, the alert record being the earliest)
                 .where(a.c.case_no.in_(own_cases))
                 .group_by(al.c.alert_id, al.c.division, al.c.level))
            for division, level, time_us in conn.execute(q):
                if 1 <= int(level) <= 4:
                    _bump(mine, str(division), "all", int(level), 1)
                    if time_us is not None and _day_of_us(int(time_us)) == today:
                        _bump(mine, str(division), "today", int(level), 1)
    out = []
    for division in sorted(counts):
        others = may(person, "alerts.read", Target(codes=(division,), what=f"{division} 的预警"))
        own = may(person, "alerts.read", Target(codes=(division,), handler=person.login, what=f"{division} 的预警"))
        row: dict[str, Any] = {"division": division}
        for part in ("today", "all"):
            total = counts[division].get(part, [0, 0, 0, 0])
            m = mine.get(division, {}).get(part, [0, 0, 0, 0])
            row[part] = [(max(n - k, 0) if others else 0) + (min(k, n) if own else 0) for n, k in zip(total, m, strict=True)]
        if any(row["all"]) or any(row["today"]):
            out.append(row)
    return out


def _bump(into: dict[str, dict[str, list[int]]], division: str, part: str, level: int, n: int) -> None:
    into.setdefault(division, {}).setdefault(part, [0, 0, 0, 0])[level - 1] += n


_PROJECTED: weakref.WeakKeyDictionary[HeldIndex, tuple[int, lc.Projection]] = weakref.WeakKeyDictionary()


def _projection(store: Store, index: HeldIndex | None) -> lc.Projection:
    """The tickets held here, projected; with the desk's index, again only when a ticket record arrived
    (the caller holds the index's lock)."""
    if index is None:
        return project_store(store)[0]
    index.refresh(store)
    seen = len(index.held)
    cached = _PROJECTED.get(index)
    if cached is not None and cached[0] == seen:
        return cached[1]
    proj, _held = project_store(store, index)
    _PROJECTED[index] = (len(index.held), proj)
    return proj


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
