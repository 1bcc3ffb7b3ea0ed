"""Use cases of alerts and the calendar: one function per thing a person does (DESIGN §7, §10).

Rules of this module:
- Called by the CLI handlers (node/interfaces/cli/alerts.py) and later by the desk; they parse, call one
  function here, and render. Nothing here parses arguments or prints.
- Reads (list_alerts, find_alert, calendar_info) write nothing; handle_alert is the act: it appends one
  attributed ``audit.action`` (node/features/worklog.py) and nothing else; import_calendar stores the
  overrides and asks the running node to reload. (Permission checks, ``may()``, arrive here with turn 2.)
"""

from __future__ import annotations

from typing import Any

from node.app import people
from node.core import admin_client as admin
from node.core.calendar import LIBRARY_YEARS
from node.core.errors import FednodeError, NotFound, UsageError
from node.core.home import Home
from node.core.store import Store
from node.features import worklog
from node.features.people.roles import Person, Target, may
from node.features.rules.alerts import StoredAlert, filter_alerts, read_alerts
from node.features.rules.overrides import import_overrides, load_calendar, overrides_path, special_days
from node.features.rules.settings import RulesSettings


def _open_store(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def _reload_running(home: Home) -> str:
    try:
        resp = admin.call(home, {"op": "rules.reload"}, timeout=120)
    except FednodeError as e:
        return f"the running node could not reload: {e.message}"
    except OSError:
        return "not running"
    return "not running" if resp is None else "reloaded"


def alert_target(a: StoredAlert) -> Target:
    """What an alert is about, for may(): its division (and the node that raised it), its case's handler."""
    p = a.payload
    codes = tuple(c for c in (str(p.get("division") or ""), a.origin) if c)
    return Target(codes=codes, handler=str(p.get("handler") or ""), what=f"预警 {p.get('alert_id', '')}")


def list_alerts(home: Home, *, level: int | None = None, rule: str | None = None, division: str | None = None,
                case: str | None = None, limit: int = 0, person: Person | None = None) -> list[StoredAlert]:
    """Alerts held here (raised here or forwarded from the subtree), oldest first; the last ``limit``.
    With ``person``, only those they may read (their scope)."""
    store = _open_store(home)
    try:
        alerts = filter_alerts(read_alerts(store), level=level, rule=rule, division=division, case=case)
    finally:
        store.close()
    if person is not None:
        alerts = [a for a in alerts if may(person, "alerts.read", alert_target(a))]
    return alerts[-limit:] if limit and limit > 0 else alerts


def find_alert(home: Home, alert_id: str, person: Person | None = None) -> list[StoredAlert]:
    """Every copy of one alert held here (the same id may come from two nodes); NotFound when none,
    Refused when ``person`` may not read it."""
    store = _open_store(home)
    try:
        found = [a for a in read_alerts(store) if a.payload.get("alert_id") == alert_id]
    finally:
        store.close()
    if not found:
        raise NotFound(f"no alert {alert_id!r} is held by {home.code}",
                       fix="list them with `fednode alerts list DIR`; an alert raised below may not have arrived yet")
    if person is not None:
        decision = may(person, "alerts.read", alert_target(found[0]))
        if not decision:
            raise people.Refused(decision.reason, fix="ask someone whose jurisdiction holds the alert")
    return found


def handle_alert(home: Home, auth: dict[str, Any], alert_id: str, note: str) -> dict[str, Any]:
    """The act 处置: one ``audit.action`` "alerts handle" targeting the alert, in the name of the person
    ``auth`` names (authorized on the alert's division; never its own handler), what closes it for the
    supervisor rule alert_unhandled. Looking at an alert does not."""
    if not note.strip():
        raise UsageError("--note is empty", fix="say what was done, e.g. --note 已核实并督促整改")
    a = find_alert(home, alert_id)[0]
    by = people.authorize_target(home, auth, "alerts.handle", alert_target(a), command="alerts handle")
    return worklog.record_action(home, by["login"], "alerts handle", alert_id,
                                 {"note": note.strip(), "record": f"{a.origin}/monitor/{a.seq}"}, by=by)


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
