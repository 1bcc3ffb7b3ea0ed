"""Statistics and work-log use cases: fold, compute, worklog, check_supervisors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from node.core.calendar import Calendar, OfficeHours, Overrides
from node.core.errors import ConfigError, FednodeError
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.store import Store
from node.features import worklog as auditlog
from node.features.people import users
from node.features.stats import projection, query
from node.features.stats.config import StatsConfig


class StatsError(FednodeError):
    code = "stats_invalid"
    exit_status = 2


def build_calendar(home: Home) -> Calendar:
    """The working-day calendar the rules engine uses: [calendar] office_hours + imported overrides."""
    section = home.config.sections.get("calendar", {}) or {}
    hours_text = section.get("office_hours") if isinstance(section, dict) else None
    if hours_text is not None and not isinstance(hours_text, str):
        raise ConfigError(f"{home.config.path}: calendar.office_hours must be a string", fix='"08:30-12:00,13:30-17:30"')
    overrides = Overrides()
    try:
        from node.features.rules.overrides import stored_overrides

        overrides = stored_overrides(home.dir)
    except ImportError:  # the rules feature is absent: the library's calendar alone
        pass
    return Calendar(OfficeHours.parse(hours_text) if hours_text else OfficeHours(), overrides)


def fold(store: Store, code: str, clock: Calendar, cfg: StatsConfig) -> projection.FoldResult:
    return projection.fold_all(store, code, clock, timely_hours=cfg.timely_hours, limit=cfg.batch)


def compute(store: Store, code: str, clock: Calendar, cfg: StatsConfig, q: query.Query) -> dict[str, Any]:
    """Fold what is new, then the breakdown for ``q`` (store work: the store thread or the CLI)."""
    res = fold(store, code, clock, cfg)
    gs = query.groups(store, code)
    try:
        data = query.breakdown(gs, q, cfg)
    except ValueError as e:
        raise StatsError(str(e), fix="see `fednode stats --help`") from None
    data.update(scope=code, cursor=res.cursor, skipped=res.skipped)
    return data


# ---- supervisor rules: facts from the store, records written --------------------------------------------

_WATCHED = ("audit.", "alert", "ticket.")


def audit_records(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, writer, payload) of every audit.*, alert and ticket.* record held here."""
    return [(kind, origin, p) for _seq, kind, origin, p in watched_changes(store)]


def watched_changes(store: Store, after: int = 0) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(local_seq, kind, writer, payload) of the audit.*, alert and ticket.* records after ``after``."""
    while True:
        batch = store.changes(after, 5000, kinds=_WATCHED)
        if not batch:
            return
        for c in batch:
            try:
                p = c.payload()
            except Exception:  # noqa: BLE001 — a bad body is skipped, never fatal
                continue
            if isinstance(p, dict):
                yield c.local_seq, c.kind, c.origin, p
        after = batch[-1].local_seq


def check_supervisors(ledger: Ledger, cfg: StatsConfig, now: datetime,
                      fold: auditlog.FactsFold | None = None) -> list[dict[str, Any]]:
    """Run the supervisor rules once and write what is due; returns what was written. With ``fold`` (the
    running node's, kept between ticks) only the records after the ones it holds are read."""
    fold = fold or auditlog.FactsFold(ledger.code)

    def new_records() -> Iterator[tuple[str, str, dict[str, Any]]]:
        for seq, kind, origin, p in watched_changes(ledger.store, fold.after):
            fold.after = seq
            yield kind, origin, p

    fold.add(new_records())
    due = fold.due(cfg.supervisors, now, cfg.supervisors.names, watched_people(ledger.store))
    if due:
        ledger.append([NewRecord(d.kind, d.payload) for d in due])
    return [{"kind": d.kind, **d.payload} for d in due]


def watched_people(store: Store) -> list[auditlog.Watched]:
    """The active people of this node, as the supervisor rules see them."""
    with store.read() as conn:
        return [auditlog.Watched(u.login, u.name, u.roles, u.scope) for u in users.all_users(conn)
                if u.state == "active"]


def worklog(store: Store, actor: str | None, limit: int) -> list[dict[str, Any]]:
    rows = [{"kind": k, "node": w, **p} for k, w, p in audit_records(store)
            if k.startswith("audit.") and (actor is None or p.get("actor") == actor)]
    rows.sort(key=lambda r: str(r.get("at", "")))
    return rows[-limit:] if limit else rows


def worklog_by_person(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The work log grouped by person (监察日志 per supervisor): acts, visits, refusals, first and last."""
    people: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") != auditlog.ACTION:
            continue
        login = str(r.get("actor", ""))
        by: dict[str, Any] = r["by"] if isinstance(r.get("by"), dict) else {}
        p = people.setdefault(login, {"login": login, "name": by.get("name", login), "role": by.get("role_label", ""),
                                      "scope": by.get("scope", ""), "acts": 0, "visits": 0, "refused": 0,
                                      "first": r.get("at"), "last": r.get("at"), "actions": {}})
        if by:
            p.update(name=by.get("name", login), role=by.get("role_label", ""), scope=by.get("scope", ""))
        action = str(r.get("action", ""))
        p["visits" if action == auditlog.VISIT else "refused" if action == "refused" else "acts"] += 1
        p["actions"][action] = p["actions"].get(action, 0) + 1
        p["last"] = max(str(p["last"]), str(r.get("at", "")))
    return sorted(people.values(), key=lambda p: (str(p["last"])), reverse=True)

