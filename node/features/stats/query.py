"""Aggregate the statistics tables into ``Totals`` per (division, dept, item_type, month), then into
the breakdowns of ``fednode stats`` (by division / dept / item_type / period, with 环比 and 同比,
scores, grades and rankings).

The heavy part is one GROUP BY per table, run by the database; everything after it works on the few
thousand groups in Python with the pure functions of ``indicators``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from node.core import codes
from node.core import indicators as ind
from node.core.store import Store
from node.features.stats.config import StatsConfig
from node.features.stats.projection import month_of, parse_time
from node.features.tickets import lifecycle

GroupKey = tuple[str, str, str, str]  # division, dept, item_type, month
BY = ("division", "dept", "item_type", "period")
ITEM_TYPES = {"01": "许可", "02": "处罚", "03": "强制", "04": "征收", "05": "给付", "06": "检查", "07": "确认",
              "08": "奖励", "09": "裁决", "10": "其他", "20": "公共服务"}

_CASES_SQL = """
SELECT division, dept, item_code, period, COUNT(*), SUM(accepted), SUM(done), SUM(measured), SUM(on_time),
  SUM(early), SUM(p_min), SUM(p_used), SUM(s_min), SUM(s_used), SUM(evaluated), SUM(satisfied)
FROM stats_cases GROUP BY division, dept, item_code, period
"""

_ALERTS_SQL = """
SELECT division, dept, item_code, period, COUNT(*), SUM(CASE WHEN level = 1 THEN 1 ELSE 0 END),
  SUM(CASE WHEN level = 2 THEN 1 ELSE 0 END), SUM(CASE WHEN level = 3 THEN 1 ELSE 0 END)
FROM stats_alerts WHERE level IN (1, 2, 3) AND object IN ('case', 'step', 'special')
GROUP BY division, dept, item_code, period
"""

_REPORTING_SQL = """
SELECT division, dept, item_code, period, SUM(events), SUM(timely)
FROM stats_reporting GROUP BY division, dept, item_code, period
"""


def _add(groups: dict[GroupKey, ind.Totals], key: GroupKey, **values: Any) -> None:
    tot = groups.setdefault(key, ind.Totals())
    for k, v in values.items():
        cur = getattr(tot, k)  # PostgreSQL sums are Decimal: back to the field's own type
        setattr(tot, k, cur + (float(v or 0) if isinstance(cur, float) else int(v or 0)))


def ticket_groups(store: Store, scope: str) -> dict[GroupKey, ind.Totals]:
    """Tickets issued to units of ``scope`` (by target and month of issue), and complaint satisfaction."""
    events = []
    with store.read() as conn:
        for kind, writer, payload in conn.execute(text(
                "SELECT kind, writer, payload FROM stats_ticket_events ORDER BY id")):
            try:
                events.append((kind, json.loads(payload), writer))
            except ValueError:
                continue
    out: dict[GroupKey, ind.Totals] = {}
    for state in lifecycle.project(events).values():
        if not codes.within(state.to, scope):
            continue
        base = state.to.split("-", 1)[0]
        dept = state.to if "-" in state.to else ""
        month = month_of(state.issued_at) or "0000-00"
        sat = state.satisfaction
        _add(out, (base, dept, "", month), tickets=1, tickets_on_time=1 if state.replied_on_time else 0,
             evaluations=1 if sat else 0, satisfied=1 if sat in ("1", "2") else 0)
    return out


def groups(store: Store, scope: str) -> dict[GroupKey, ind.Totals]:
    """Totals per (division, dept, item_type, month) for this node's subtree. The database groups by
    item code; the item type comes from the (small) item table here, '' while the item is not held."""
    out: dict[GroupKey, ind.Totals] = {}
    with store.read() as conn:
        types = {(r[0], r[1]): r[2] for r in conn.execute(text(
            "SELECT division, item_code, item_type FROM stats_items"))}

        def key(r: Any) -> GroupKey:
            return (r[0], r[1], types.get((r[0], r[2]), ""), r[3])

        for r in conn.execute(text(_CASES_SQL)):
            _add(out, key(r), cases=r[4], accepted=r[5], completed=r[6], measured=r[7],
                 on_time=r[8], early=r[9], promised_min=float(r[10] or 0), used_promised_min=float(r[11] or 0),
                 statutory_min=float(r[12] or 0), used_statutory_min=float(r[13] or 0),
                 evaluations=r[14], satisfied=r[15])
        for r in conn.execute(text(_ALERTS_SQL)):
            _add(out, key(r), cards=r[4], warn_cards=r[5], yellow_cards=r[6], red_cards=r[7])
        for r in conn.execute(text(_REPORTING_SQL)):
            _add(out, key(r), events=r[4], timely_events=r[5])
    for k, v in ticket_groups(store, scope).items():
        out[k] = out.get(k, ind.Totals()) + v
    return {k: v for k, v in out.items() if codes.within(k[0], scope) or (k[1] and codes.within(k[1], scope))}


# ---- breakdowns -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    by: str = "division"  # division | dept | item_type | period
    period: str = "quarter"  # month | quarter | year: the granularity of --by period and of --at
    at: str | None = None  # one period (2025, 2025-Q3, 2025-07): rows for it, with 环比/同比
    subtree: str | None = None  # only this part of the scope (the province looking at one city)


def _key(g: GroupKey, by: str, period_kind: str) -> str:
    division, dept, item_type, month = g
    if by == "division":
        return division
    if by == "dept":
        return dept or "(无部门)"
    if by == "item_type":
        return item_type or "(无事项)"
    return ind.period_of(month, period_kind)


def _label(key: str, by: str) -> str:
    if by == "item_type":
        return f"{key} {ITEM_TYPES.get(key, '')}".strip()
    return key


def _row(key: str, by: str, tot: ind.Totals, cfg: StatsConfig) -> dict[str, Any]:
    values = ind.indicators(tot)
    # the 100% of "nothing accepted" is shown, but does not earn a unit points in the ranking
    scored = values if tot.accepted else {**values, "done_rate": None}
    s = ind.score(scored, cfg.weights, cfg.cards_zero_at)
    return {"key": key, "label": _label(key, by), "totals": tot.as_dict(), "indicators": values,
            "score": s, "grade": ind.grade(s, cfg.bands), "rank": None, "mom": None, "yoy": None}


def _changes(now: dict[str, float | None], before: dict[str, float | None] | None) -> dict[str, float | None] | None:
    if before is None:
        return None
    return {k: ind.change(now[k], before[k], rate=k in ind.RATES) for k in now}


def breakdown(gs: Mapping[GroupKey, ind.Totals], q: Query, cfg: StatsConfig) -> dict[str, Any]:
    """The table of ``fednode stats``: rows per key, the total, ranks, grades, 环比 and 同比."""
    if q.by not in BY:
        raise ValueError(f"--by {q.by!r}: use one of {', '.join(BY)}")
    if q.period not in ind.PERIOD_KINDS:
        raise ValueError(f"--period {q.period!r}: use one of {', '.join(ind.PERIOD_KINDS)}")
    if q.subtree:
        gs = {k: v for k, v in gs.items()
              if codes.within(k[0], q.subtree) or (k[1] and codes.within(k[1], q.subtree))}

    def totals_for(months: set[str] | None) -> dict[str, ind.Totals]:
        acc: dict[str, ind.Totals] = {}
        for g, tot in gs.items():
            if months is not None and g[3] not in months:
                continue
            k = _key(g, q.by, q.period)
            acc[k] = acc.get(k, ind.Totals()) + tot
        return acc

    at = q.at
    if at is not None:
        kind, _, _ = ind.parse_period(at)  # raises ValueError with the fix
        months = set(ind.months_of(at))
        now, prev, last = (totals_for(months), totals_for(set(ind.months_of(ind.previous_period(at)))),
                           totals_for(set(ind.months_of(ind.same_period_last_year(at)))))
    else:
        now, prev, last = totals_for(None), {}, {}
    rows = [_row(k, q.by, tot, cfg) for k, tot in sorted(now.items())]
    if q.by == "period":
        everything = totals_for(None)
        for r in rows:
            p = r["key"]
            if p[:4].isdigit() and p != "0000":
                for name, ref in (("mom", ind.previous_period(p)), ("yoy", ind.same_period_last_year(p))):
                    before = everything.get(ref)
                    r[name] = _changes(r["indicators"], ind.indicators(before) if before else None)
    else:
        for r in rows:
            if at is not None:
                for name, ref_totals in (("mom", prev), ("yoy", last)):
                    before = ref_totals.get(r["key"])
                    r[name] = _changes(r["indicators"], ind.indicators(before) if before else None)
        ranks = ind.rank({r["key"]: r["score"] for r in rows})
        for r in rows:
            r["rank"] = ranks[r["key"]]
    overall = ind.total(now.values())
    return {"by": q.by, "period": q.period, "at": at, "subtree": q.subtree,
            "total": _row("合计", q.by, overall, cfg), "rows": rows}


__all__ = ["BY", "Query", "breakdown", "groups", "ticket_groups", "parse_time"]
