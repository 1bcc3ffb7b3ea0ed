"""Use cases of alerts and the calendar: one function per thing a person does (DESIGN §7, §10).

Rules of this module:
- Called by the CLI handlers (node/interfaces/cli/alerts.py), the admin op ``alerts`` and the desk;
  they parse, call one function here, and render. Nothing here parses arguments or prints.
- Reads (list_alerts, list_alert_rows, find_alert, show_alert, calendar_info) append nothing to any
  log; they bring the case index (node/features/cases/index.py) up to date before they read it.
  ``show_alert`` also lists who was told (the ``alert.notified`` records, node/runtime/services/alerts.py).
- Acts: ``dispose_alert`` (处置: 已纠正, 误报核销 with a reason, 已转督办) and ``reopen_alert`` (a 监察员 or
  监察领导 reopens a disposed alert). Each is authorized on the alert (``may()``: its division, never by
  a handler of its case, whose login or name is any ``case.accept``/``case.step`` handler of the case)
  and appends, in one transaction, the signed ``alert.dispose`` / ``alert.reopen`` record (monitor
  channel: it travels up, and down to the alert's node when an ancestor disposes of it) and the work
  log's ``audit.action``. ``execute`` carries the act out on a ledger (the running node's store
  thread, op ``alerts``, or the CLI on a stopped node), deciding from the disposal state of the
  records held at that moment, so one alert is never disposed of twice.
- ``handle_alert`` (`alerts handle`) is kept as the alias of ``dispose_alert(..., "corrected", note)``.
- import_calendar stores the overrides and asks the running node to reload.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from node.app import people
from node.app.remote import via_node_or_store
from node.core import admin_client as admin
from node.core.calendar import LIBRARY_YEARS
from node.core.codes import strictly_within
from node.core.errors import FednodeError, NotFound, UsageError
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.records import channel_name
from node.core.store import Store
from node.features import worklog
from node.features.alerts import disposal as dsp
from node.features.cases import index as cix
from node.features.people.accounts import LoginPolicy
from node.features.people.roles import Person, Target, may
from node.features.rules.alerts import StoredAlert, filter_alerts, read_alerts
from node.features.rules.overrides import import_overrides, load_calendar, overrides_path, special_days
from node.features.rules.settings import RulesSettings

DISPOSE_ACTION = "alerts dispose"  # the work log's action of a disposal (also through `alerts handle`)
REOPEN_ACTION = "alerts reopen"
STATE_FILTERS = ("open", "disposed", *dsp.RESULTS)
REOPEN_ROLES = frozenset({"supervisor", "leader"})  # "reopened by a supervisor" (issue 25)


def _open_store(home: Home) -> Store:
    return home.store()


_THREAD = threading.local()


def fold_on_read_at_most(records: int | None) -> None:
    """On this thread, ``catch_up`` folds only when at most ``records`` of the feed wait to be folded
    (None: always). The desk's reader threads in a running node set it (node/interfaces/desk/backend.py):
    the node's services fold a drain's records gently beside the links, and a page must not fold them at
    full speed in their place (a case search during a 150k-record drain took 9 s folding them, and the
    drain slowed); a page after a person's own act still sees it, folding those few records."""
    _THREAD.fold_limit = records


def catch_up(home: Home, store: Store) -> None:
    """Bring the projections a read uses up to the change feed: the case index and the statistics tables
    (their copy of the ticket records, indexed by ticket). Each moves its cursor with its rows; a
    concurrent fold (the running node) is detected and retried. Bounded on a thread that asked for it
    (``fold_on_read_at_most``)."""
    from node.app.stats import build_calendar, fold
    from node.features.stats import projection
    from node.features.stats.config import StatsConfig

    limit = getattr(_THREAD, "fold_limit", None)
    behind = int(store.get_meta("local_seq", "0") or 0) - min(cix.cursor(store), projection.cursor(store))
    if behind <= 0 or (limit is not None and behind > limit):
        return
    cix.fold_all(store)
    fold(store, home.code, build_calendar(home), StatsConfig.of_home(home))


def _reload_running(home: Home) -> str:
    try:
        resp = admin.call(home, {"op": "rules.reload"}, timeout=120)
    except FednodeError as e:
        return f"the running node could not reload: {e.message}"
    except OSError:
        return "not running"
    return "not running" if resp is None else "reloaded"


def alert_target(a: StoredAlert, handler: str = "") -> Target:
    """What an alert is about, for may(): its division (and the node that raised it), its case's handler."""
    p = a.payload
    codes = tuple(c for c in (str(p.get("division") or ""), a.origin) if c)
    return Target(codes=codes, handler=handler or str(p.get("handler") or ""), what=f"预警 {p.get('alert_id', '')}")


# ---- reading: alerts and their disposal ---------------------------------------------------------------------


def _stored(h: cix.Held) -> StoredAlert | None:
    return StoredAlert(h.origin, h.seq, h.local_seq, h.time_us, h.payload) if isinstance(h.payload, dict) else None


def disposals(conn: Any, alert_ids: Iterable[str], origins: Mapping[str, str] | None = None) -> dict[str, dsp.Disposal]:
    """The disposal state of these alerts, from the ``alert.*`` records and the tickets citing them held here
    (the case index must be current)."""
    ids = [a for a in dict.fromkeys(alert_ids) if a]
    if not ids:
        return {}
    held = cix.fetch(conn, cix.seqs_of(conn, refs=ids, kinds=("alert.", "ticket.issue")))
    events = [(h.kind, h.payload, h.origin, h.seq) for h in held if isinstance(h.payload, dict)]
    wanted = set(ids)
    return {k: v for k, v in dsp.project(events, origins).items() if k in wanted}


def all_disposals(conn: Any) -> dict[str, dsp.Disposal]:
    """The disposal state of every alert something was done about (the others are 待处置)."""
    held = cix.fetch(conn, cix.seqs_of_kinds(conn, ("alert.", "ticket.issue")))
    return dsp.project((h.kind, h.payload, h.origin, h.seq) for h in held if isinstance(h.payload, dict))


def _state_of(d: dsp.Disposal | None) -> dict[str, Any]:
    d = d or dsp.Disposal("")
    return {"state": d.state, "state_label": d.label, "disposed_by": d.by if d.state in dsp.DISPOSED else None,
            "disposed_at": d.at if d.state in dsp.DISPOSED else None, "tickets": list(d.tickets)}


def _matches(state: str | None, d: dsp.Disposal | None) -> bool:
    s = d.state if d else dsp.OPEN
    if not state:
        return True
    if state == "disposed":
        return s in dsp.DISPOSED
    return s == state


def list_alerts(home: Home, *, level: int | None = None, rule: str | None = None, division: str | None = None,
                case: str | None = None, limit: int = 0, person: Person | None = None,
                state: str | None = None) -> list[StoredAlert]:
    """Alerts held here (raised here or forwarded from the subtree), oldest first; the last ``limit``.
    With ``person``, only those they may read (their scope); with ``state`` (open, disposed, corrected,
    false-alarm, ticket), only those in it."""
    return [a for a, _d in _listed(home, level, rule, division, case, limit, person, state)]


def list_alert_rows(home: Home, *, level: int | None = None, rule: str | None = None, division: str | None = None,
                    case: str | None = None, limit: int = 0, person: Person | None = None,
                    state: str | None = None) -> list[dict[str, Any]]:
    """``list_alerts`` as rows: the alert's fields with ``state``, ``disposed_by``, ``disposed_at``, ``tickets``."""
    return [{**a.as_dict(), **_state_of(d)} for a, d in _listed(home, level, rule, division, case, limit, person,
                                                                 state)]


def _listed(home: Home, level: int | None, rule: str | None, division: str | None, case: str | None, limit: int,
            person: Person | None, state: str | None) -> list[tuple[StoredAlert, dsp.Disposal | None]]:
    if state and state not in STATE_FILTERS:
        raise UsageError(f"--state {state!r} is not a state", fix="--state " + " | ".join(STATE_FILTERS))
    store = _open_store(home)
    alerts = filter_alerts(read_alerts(store), level=level, rule=rule, division=division, case=case)
    cix.fold_all(store)
    with store.read() as conn:
        states = all_disposals(conn)
    if person is not None:
        alerts = [a for a in alerts if may(person, "alerts.read", alert_target(a))]
    out = [(a, states.get(str(a.payload.get("alert_id")))) for a in alerts]
    out = [(a, d) for a, d in out if _matches(state, d)]
    return out[-limit:] if limit and limit > 0 else out


def _copies(store: Store, alert_id: str) -> list[StoredAlert]:
    cix.fold_all(store)
    with store.read() as conn:
        held = cix.fetch(conn, cix.seqs_of(conn, refs=[alert_id], kinds=("alert",)))
    return [a for a in (_stored(h) for h in held if h.kind == "alert") if a is not None
            and a.payload.get("alert_id") == alert_id]


def find_alert(home: Home, alert_id: str, person: Person | None = None) -> list[StoredAlert]:
    """Every copy of one alert held here (the same id may come from two nodes); NotFound when none,
    Refused when ``person`` may not read it."""
    found = _copies(_open_store(home), alert_id)
    if not found:
        raise NotFound(f"no alert {alert_id!r} is held by {home.code}",
                       fix="list them with `fednode alerts list DIR`; an alert raised below may not have arrived yet")
    if person is not None:
        decision = may(person, "alerts.read", alert_target(found[0]))
        if not decision:
            raise people.Refused(decision.reason, fix="ask someone whose jurisdiction holds the alert")
    return found


def show_alert(home: Home, alert_id: str, person: Person | None = None) -> dict[str, Any]:
    """`alerts show`: the alert, the signed record that holds it, its disposal (state, who, when, the
    history), the tickets that cite it (with their state), a draft waiting for confirmation."""
    found = find_alert(home, alert_id, person)
    a = found[0]
    store = _open_store(home)
    catch_up(home, store)
    with store.read() as conn:
        d = disposals(conn, [alert_id], {alert_id: a.origin}).get(alert_id) or dsp.Disposal(alert_id)
        tickets = _ticket_rows(conn, d.tickets)
        told = [{**t, "node": h.origin} for h in cix.fetch(conn, cix.seqs_of(conn, refs=[alert_id],
                                                                            kinds=("alert.notified",)))
                if isinstance(h.payload, dict) for t in h.payload.get("attempts") or []]
    data = {**a.as_dict(), **_state_of(d), "record": f"{a.origin}/monitor/{a.seq}", "note": d.note,
            "result": d.result, "history": d.history, "draft": d.draft, "ticket_states": tickets, "notified": told}
    if len(found) > 1:  # the same id raised by two nodes (e.g. a child and, before it was known, here)
        data["also_in"] = [{"origin": x.origin, "seq": x.seq} for x in found[1:]]
    return data


def _ticket_rows(conn: Any, tickets: list[str]) -> list[dict[str, Any]]:
    """The state of these tickets as held here (from the statistics' copy of ticket records, indexed by ticket)."""
    if not tickets:
        return []
    import json

    from sqlalchemy import select

    from node.core.schema import stats as st
    from node.features.tickets import lifecycle as lc

    rows = conn.execute(select(st.ticket_events.c.kind, st.ticket_events.c.payload, st.ticket_events.c.writer)
                        .where(st.ticket_events.c.ticket.in_(tickets))).all()
    proj = lc.project_all([(k, json.loads(p), w) for k, p, w in rows if k in lc.EVENTS])
    out = []
    for t in tickets:
        s = proj.tickets.get(t)
        out.append({"ticket": t, "state": s.state if s else None, "to": s.to if s else None,
                    "subject": s.subject if s else None, "reply_deadline": s.deadlines["reply"] if s else None,
                    "verdict": s.verdict if s else None})
    return out


# ---- acting: dispose, reopen ----------------------------------------------------------------------------------


def _facts(home: Home, alert_id: str) -> dict[str, Any]:
    """What the act needs to know of the alert, read here (the caller's process): where it is, what it is
    about, the handlers of its case (none may dispose of it)."""
    store = _open_store(home)
    copies = _copies(store, alert_id)
    if not copies:
        raise NotFound(f"no alert {alert_id!r} is held by {home.code}",
                       fix="list them with `fednode alerts list DIR`; an alert raised below may not have arrived yet")
    a = copies[0]
    p = a.payload
    case_no = str(p.get("case_no") or "")
    handlers: list[str] = []
    if case_no:
        with store.read() as conn:
            handlers = cix.handlers_of(conn, case_no)
    return {"alert_id": alert_id, "origin": a.origin, "record": f"{a.origin}/{channel_name(2)}/{a.seq}",
            "codes": list(alert_target(a).codes), "case_no": case_no, "handlers": handlers,
            "level": p.get("level"), "rule_id": p.get("rule_id")}


def dispose_alert(home: Home, auth: dict[str, Any], alert_id: str, result: str, note: str, *, ticket: str = "",
                  command: str = "alerts dispose") -> dict[str, Any]:
    """`alerts dispose`: 处置 an alert (corrected | false-alarm | ticket) in the name of the person ``auth`` names.
    Returns the ``alert.dispose`` payload (``via``: admin | store)."""
    dsp.check_note(note, result)
    if result not in dsp.RESULTS:
        raise UsageError(f"--result {result!r} is not a disposal", fix="--result corrected | false-alarm | ticket")
    req = {"action": "dispose", "auth": auth, "result": result, "note": note, "ticket": ticket, "command": command,
           **_facts(home, alert_id)}
    out, via = run_request(home, req)
    return {**out, "via": via}


def handle_alert(home: Home, auth: dict[str, Any], alert_id: str, note: str) -> dict[str, Any]:
    """`alerts handle` (kept): the disposal 已纠正 with this note."""
    return dispose_alert(home, auth, alert_id, dsp.CORRECTED, note, command="alerts handle")


def reopen_alert(home: Home, auth: dict[str, Any], alert_id: str, note: str) -> dict[str, Any]:
    """`alerts reopen`: a 监察员 or 监察领导 reopens a disposed alert (it is 待处置 again)."""
    dsp.check_note(note)
    out, via = run_request(home, {"action": "reopen", "auth": auth, "note": note, "command": "alerts reopen",
                                  **_facts(home, alert_id)})
    return {**out, "via": via}


def run_request(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    """Through the running node (op ``alerts``), else on the store."""
    return via_node_or_store(home, {"op": "alerts", **req},
                             lambda: execute(home.ledger(), people.policy_of(home), req))


def execute(ledger: Ledger, policy: LoginPolicy, req: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Carry out one disposal act on a ledger, as the person ``req["auth"]`` names (see the module rules)."""
    now = now or people.now_cst()
    action = req.get("action")
    if action not in ("dispose", "reopen"):
        raise UsageError(f"unknown alerts action {action!r}", fix="a CLI bug")
    person = people.resolve(ledger, policy, req.get("auth"), now)
    alert_id = str(req["alert_id"])
    handlers = [str(h) for h in req.get("handlers") or []]
    # the handler the rule "never on his own case" looks at: this person if they handle the case
    handler = next((h for h in handlers if h in (person.login, person.name)), handlers[0] if handlers else "")
    target = Target(codes=tuple(req.get("codes") or ()), handler=handler, what=f"预警 {alert_id}")
    command = str(req.get("command") or f"alerts {action}")
    decision = people.authorize(ledger, person, "alerts.handle", target, now, command=command)
    by = people.stamp(person, decision.role)
    if action == "reopen" and not REOPEN_ROLES & set(person.roles):
        reason = f"{person.name}（{by['role_label']}）不能重新打开已处置的预警；只有监察员、监察领导可以"
        worklog.record_action(ledger, person.login, "refused", target.what,
                              {"permission": "alerts.handle", "command": command, "reason": reason}, at=now, by=by)
        raise people.Refused(reason, fix="请由监察员或监察领导重新打开")
    cix.fold_all(ledger.store)  # what this node wrote a moment ago counts (one disposal, never two)
    with ledger.store.read() as conn:
        current = disposals(conn, [alert_id], {alert_id: str(req["origin"])}).get(alert_id) or dsp.Disposal(alert_id)
    at = now.astimezone(dsp.CST).isoformat(timespec="microseconds")
    case_no, record = str(req.get("case_no") or ""), str(req.get("record") or "")
    if action == "dispose":
        result = str(req["result"])
        note = dsp.check_dispose(current, result, str(req.get("note") or ""))
        ticket = str(req.get("ticket") or "")
        if ticket:
            _check_ticket(ledger, ticket)
        payload = dsp.dispose_payload(alert_id, result, note, by=by, at=at, node=ledger.code, case_no=case_no,
                                      record=record, ticket=ticket)
        kind, wl_action, detail = dsp.DISPOSE, DISPOSE_ACTION, {"result": result, "note": note, "record": record}
        if command != DISPOSE_ACTION:
            detail["via"] = command
    else:
        note = dsp.check_reopen(current, str(req.get("note") or ""))
        payload = {"alert_id": alert_id, "note": note, "actor": by["login"], "by": by, "at": at, "node": ledger.code,
                   **({"case_no": case_no} if case_no else {}), **({"alert": record} if record else {}),
                   "was": current.state}
        kind, wl_action, detail = dsp.REOPEN, REOPEN_ACTION, {"note": note, "was": current.state, "record": record}
    origin = str(req.get("origin") or "")
    dest = origin if strictly_within(origin, ledger.code) else ""  # an ancestor's act travels down to the alert
    audit = worklog.action_payload(by["login"], wl_action, alert_id, detail, now)
    audit["by"] = by
    ledger.append([NewRecord(kind, payload, dest=dest), NewRecord(worklog.ACTION, audit)])
    return payload


def _check_ticket(ledger: Ledger, ticket: str) -> None:
    from node.features.tickets.desk import project_store

    if ticket not in project_store(ledger.store)[0].tickets:
        raise UsageError(f"ticket {ticket} is not held at {ledger.code}",
                         fix="`fednode tickets list DIR` shows the tickets held here; or issue one citing the alert: "
                             "`fednode tickets issue DIR --alert ALERT_ID`")


# ---- the calendar ---------------------------------------------------------------------------------------------


def import_calendar(home: Home, file: str) -> dict[str, Any]:
    """Merge FILE into the stored overrides; the running node (if any) reloads its calendar at once."""
    result = import_overrides(home.dir, file)
    result["node"] = _reload_running(home)
    return result


def calendar_info(home: Home, year: int | None = None) -> tuple[dict[str, Any], int]:
    """Office hours, covered years and overrides; with ``year``, its special days. Status 1 when ``year``
    is not covered (the fix says which import covers it)."""
    settings = RulesSettings.from_sections(home.config.sections, where=str(home.config.path))
    cal = load_calendar(home.dir, settings)
    data: dict[str, Any] = {
        "office_hours": [f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in settings.office_hours.periods],
        "official_years": sorted(LIBRARY_YEARS),
        "operator_years": sorted(cal.overrides.years),
        "overrides": [{"date": d.isoformat(), "kind": o.kind, "name": o.name} for d, o in sorted(cal.overrides.days.items())],
        "overrides_file": str(overrides_path(home.dir)),
    }  # fmt: skip
    status = 0
    if year is not None:
        data["year"] = year
        data["covered"] = cal.is_covered(year)
        if data["covered"]:
            data["special_days"] = special_days(cal, year)
        else:
            status = 1
            data["fix"] = f"import the official holiday list for {year} with `fednode calendar import DIR FILE`"
    return data, status
