"""`cases list`: the cases this node holds, filtered and paged, on the statistics tables (stats_cases,
stats_items) and the case index (handlers). Queries only.

Rules of this module:
- The 办理状态 filter is the rule of node/features/cases/view.py (``row_state``), computed in SQL where
  it can be: a case open without any pause is past its promised limit exactly when it was accepted
  before the instant ``limit`` working minutes before ``now`` (one threshold per distinct limit, from the
  calendar), so 100,000 cases are filtered without reading them; the few open cases with a pause
  (special procedure, correction) are judged one by one in Python.
- Order: case number, descending (numbers carry the date of the case). Paging: ``offset``, ``limit``;
  ``total`` counts every match, or up to ``count_limit`` (the desk: a page over a million cases reads
  the newest matches only, never all of them to count).
- Scope: ``scope`` (a person's jurisdiction) keeps the cases whose division or department lies in it;
  ``only_cases`` (a 承办人: his own cases) keeps those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, false, func, literal, not_, or_, select, true, tuple_

from node.core.calendar import CalendarYearMissing
from node.core.codes import is_code, parse_code
from node.core.schema import cases as ci
from node.core.schema import stats as st
from node.features.cases.view import (
    CORRECTION,
    DONE,
    IN_PROGRESS,
    OVERDUE_DONE,
    OVERDUE_OPEN,
    REFUSED,
    STATES,
    Clock,
    pauses_of,
    row_state,
)


@dataclass(frozen=True)
class Filters:
    dept: str = ""
    item: str = ""
    state: str = ""
    handler: str = ""
    since: str = ""  # ISO text: accepted (else applied) at or after
    scope: str = ""
    only_handlers: tuple[str, ...] = ()  # a 承办人 sees the cases he handles (login or name)


def within_sql(col: Any, code: str) -> Any:
    """``col`` lies in the subtree of ``code`` (node/core/codes.py ``within``), as SQL."""
    if not is_code(code):
        return col == code
    c = parse_code(code)
    if c.suffixes or c.level == "county":
        return or_(col == code, col.startswith(code + "-"))
    return col.startswith(c.base[:2] if c.level == "province" else c.base[:4])


def _thresholds(conn: Any, clock: Clock, now: datetime) -> dict[tuple[str, float], str]:
    """(unit, promised_days) -> the instant (ISO text) before which an open case accepted then is past the
    limit now (no pauses). Missing: the calendar cannot say (that limit is never judged overdue in SQL)."""
    out: dict[tuple[str, float], str] = {}
    pairs = conn.execute(select(st.items.c.unit, st.items.c.promised_days).distinct()).all()
    for unit, days in pairs:
        if days is None:
            continue
        if unit == "day":
            out[(unit, float(days))] = (now - timedelta(minutes=float(days) * 1440)).isoformat()
            continue
        try:
            # used > L (minutes, maybe fractional) <=> used > floor(L): the same rule as row_state
            k = clock.working_minute_index(now) - math.floor(float(days) * clock.minutes_per_day)  # type: ignore[attr-defined]
            out[(unit, float(days))] = clock.instant_of_index(k).isoformat()  # type: ignore[attr-defined]
        except (CalendarYearMissing, ValueError, IndexError, KeyError):
            continue
    return out


def _base(f: Filters) -> list[Any]:
    c = st.cases.c
    conds: list[Any] = []
    if f.dept:
        conds.append(within_sql(c.dept, f.dept))
    if f.item:
        conds.append(c.item_code == f.item)
    if f.since:
        conds.append(func.coalesce(c.accepted_at, c.applied_at, c.completed_at) >= f.since)
    if f.scope:
        conds.append(or_(within_sql(c.division, f.scope), within_sql(c.dept, f.scope)))
    if f.handler:
        conds.append(c.case_no.in_(select(ci.index.c.case_no).where(ci.index.c.handler == f.handler[:128])))
    if f.only_handlers:
        conds.append(c.case_no.in_(select(ci.index.c.case_no).where(
            ci.index.c.handler.in_([h[:128] for h in f.only_handlers if h]))))
    return conds


def _open() -> Any:
    c = st.cases.c
    return and_(c.completed_at.is_(None), or_(c.accepted.is_(None), c.accepted == 1))


def _overdue_sql(th: Mapping[tuple[str, float], str]) -> Any:
    """Open, accepted, no pause, accepted before its limit's threshold."""
    c, i = st.cases.c, st.items.c
    if not th:
        return literal(False)
    whens = [(and_(i.unit == unit, i.promised_days == days), literal(text)) for (unit, days), text in th.items()]
    return and_(c.accepted == 1, c.accepted_at < case(*whens, else_=literal("")))


def _joined(cols: list[Any]) -> Any:
    c, i = st.cases.c, st.items.c
    return select(*cols).select_from(st.cases.outerjoin(st.items, and_(i.division == c.division,
                                                                       i.item_code == c.item_code)))


def list_cases(conn: Any, clock: Clock, now: datetime, f: Filters, offset: int = 0, limit: int = 50,
               count_limit: int | None = None) -> tuple[list[dict[str, Any]], int, bool]:
    """(the page of rows, each with its ``state`` and ``used_min``, the number of matches, whether that
    number is exact). With ``count_limit`` the matches are counted up to it only, newest first as the
    pages read them (a person's page over a million cases need not read them all to say "more than
    N"); the number is then ``count_limit`` and not exact when there are more."""
    if f.state and f.state not in STATES:
        raise ValueError(f"unknown state {f.state!r}; one of {', '.join(STATES)}")
    c = st.cases.c
    base = _base(f)
    sql_part: list[Any] | None = None  # conditions of the SQL-decided part (None: nothing from SQL)
    # conditions the SQL-decided part shares with the cases judged in Python (open, in the filters): kept
    # outside the OR of the two, so the index of the open cases serves both (inside it, SQLite walks
    # every case by its number)
    common: list[Any] = []
    py_states: set[str] = set()  # states taken from the open cases with a pause, judged in Python
    nopause = c.pauses == "{}"
    th = _thresholds(conn, clock, now) if f.state in ("", IN_PROGRESS, OVERDUE_OPEN) else {}
    if not f.state:
        sql_part = base
    elif f.state == REFUSED:
        sql_part = [*base, c.accepted == 0]
    elif f.state == DONE:
        sql_part = [*base, c.completed_at.isnot(None), or_(c.accepted.is_(None), c.accepted == 1),
                    not_(and_(c.measured == 1, c.on_time == 0))]
    elif f.state == OVERDUE_DONE:
        sql_part = [*base, c.completed_at.isnot(None), c.measured == 1, c.on_time == 0]
    elif f.state == OVERDUE_OPEN:
        common, sql_part, py_states = [*base, _open()], [nopause, _overdue_sql(th)], {OVERDUE_OPEN}
    elif f.state == IN_PROGRESS:
        not_overdue = or_(c.accepted.is_(None), c.accepted != 1, c.accepted_at.is_(None), not_(_overdue_sql(th)))
        common, sql_part, py_states = [*base, _open()], [nopause, not_overdue], {IN_PROGRESS}
    elif f.state == CORRECTION:
        py_states = {CORRECTION}
    joined = f.state in (IN_PROGRESS, OVERDUE_OPEN)  # only the thresholds read the items

    def sel(cols: list[Any]) -> Any:
        return _joined(cols) if joined else select(*cols).select_from(st.cases)

    def judged(down_to: str | None = None) -> list[str]:
        """The open cases with a pause (from the newest down to ``down_to``, or all) whose state, judged
        by the rule itself, is one asked for: few, and each needs the working-day clock."""
        if not py_states:
            return []
        cond = [*base, _open(), c.pauses != "{}"]
        if py_states == {OVERDUE_OPEN}:  # a pause only lowers the time used: not past the limit without it,
            cond.append(_overdue_sql(th))  # not past it with it (the same threshold as the cases without)
        elif py_states == {CORRECTION}:  # an unanswered correction notice is an open "c:N" pause
            cond.append(c.pauses.like('%"c:%'))
        if down_to is not None:
            cond.append(c.case_no >= down_to)
        q = _joined([c.case_no, c.accepted, c.accepted_at, c.completed_at, c.pauses, st.items.c.unit,
                     st.items.c.promised_days]).where(and_(true(), *cond))
        out = []
        for r in conn.execute(q):
            row = dict(r._mapping)
            if py_states == {CORRECTION}:  # open and not refused (above): the notice alone decides (classify)
                if pauses_of(row["pauses"])[1]:
                    out.append(row["case_no"])
                continue
            item = {"unit": row["unit"], "promised_days": row["promised_days"]} if row["unit"] else None
            if row_state(row, item, clock, now)[0] in py_states:
                out.append(row["case_no"])
        return out

    newest_first = c.case_no.desc()
    if count_limit is not None and not py_states:  # counted and read in the store alone
        newest = sel([c.case_no]).where(and_(true(), *common, *(sql_part or []))).order_by(newest_first)
        counted = int(conn.execute(select(func.count()).select_from(newest.limit(count_limit + 1).subquery())).scalar() or 0)
        page = [r[0] for r in conn.execute(newest.offset(offset).limit(limit))]
        return rows_of(conn, page, clock, now), min(counted, count_limit), counted <= count_limit
    if count_limit is not None:
        # the newest ``count_limit + 1`` matches of the SQL-decided part; of the judged part only those
        # that could rank among them (newer than the last of them, when there are that many): the work
        # of a page is bounded by the count, not by the store. Both merged in the store's own order.
        k = count_limit + 1
        sql_nos = [] if sql_part is None else [r[0] for r in conn.execute(
            sel([c.case_no]).where(and_(true(), *common, *sql_part)).order_by(newest_first).limit(k))]
        py_nos = judged(sql_nos[-1] if len(sql_nos) == k else None)
        nos = sql_nos if not py_nos else [r[0] for r in conn.execute(
            select(c.case_no).where(c.case_no.in_(sql_nos + py_nos)).order_by(newest_first).limit(k))]
        page = nos[offset:offset + limit]
        return rows_of(conn, page, clock, now), min(len(nos), count_limit), len(nos) <= count_limit
    py_nos = judged()
    where: Any
    if sql_part is None:
        where = c.case_no.in_(py_nos) if py_nos else false()
    elif py_nos:  # each of them open and within the filters: ``common`` holds for them too
        where = and_(true(), *common, or_(and_(true(), *sql_part), c.case_no.in_(py_nos)))
    else:
        where = and_(true(), *common, *sql_part)
    total = int(conn.execute(sel([func.count()]).where(where)).scalar() or 0)
    page = [r[0] for r in conn.execute(sel([c.case_no]).where(where).order_by(newest_first).offset(offset).limit(limit))]
    return rows_of(conn, page, clock, now), total, True


def rows_of(conn: Any, case_nos: list[str], clock: Clock, now: datetime) -> list[dict[str, Any]]:
    """The listed rows of these cases, in this order, with their state and working time used."""
    if not case_nos:
        return []
    c, i = st.cases.c, st.items.c
    cases = [dict(r._mapping) for r in conn.execute(select(st.cases).where(c.case_no.in_(case_nos)))]
    keys = sorted({(r["division"], r["item_code"]) for r in cases})
    items = {(r.division, r.item_code): dict(r._mapping) for r in conn.execute(
        select(i.division, i.item_code, i.unit, i.promised_days, i.statutory_days).where(
            tuple_(i.division, i.item_code).in_(keys)))} if keys else {}
    by_no = {}
    for row in cases:
        it = items.get((row["division"], row["item_code"]))
        row.update(unit=it["unit"] if it else None, promised_days=it["promised_days"] if it else None,
                   statutory_days=it["statutory_days"] if it else None)
        item = {"unit": row["unit"], "promised_days": row["promised_days"]} if row["unit"] else None
        state, used = row_state(row, item, clock, now)
        _spans, corr = pauses_of(row["pauses"])
        by_no[row["case_no"]] = {
            "case_no": row["case_no"], "division": row["division"], "dept": row["dept"], "item_code": row["item_code"],
            "state": state, "applied_at": row["applied_at"], "accepted_at": row["accepted_at"],
            "completed_at": row["completed_at"], "result_code": row["result_code"], "used_min": used,
            "promised_days": row["promised_days"], "statutory_days": row["statutory_days"],
            "satisfaction": row["satisfaction"], "correction_open": corr}
    handlers: dict[str, set[str]] = {}
    hq = select(ci.index.c.case_no, ci.index.c.handler).where(and_(ci.index.c.case_no.in_(case_nos),
                                                                   ci.index.c.handler != ""))
    for no, h in conn.execute(hq):
        handlers.setdefault(no, set()).add(h)
    out = []
    for no in case_nos:
        if no in by_no:
            out.append({**by_no[no], "handlers": sorted(handlers.get(no, ()))})
    return out
