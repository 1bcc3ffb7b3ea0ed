"""Fold this node's change feed into the statistics tables (node/core/schema/stats.py).

Rules of this module:
- CURSOR. The last ``local_seq`` folded in is kept in the meta table (``stats.cursor``) and moves in
  the same transaction as the rows it produced: a crash repeats nothing and skips nothing.
- SCOPE. A node counts its own subtree: case events and alerts are kept when their division (or
  department) lies within the node's code; tickets are filtered at query time by their target.
- MERGING. A case row is a fold of its events in arrival order, where each event only sets the fields
  it owns (accept sets accepted/accepted_at, complete sets completed_at/result_code, …), so a re-sent
  record changes nothing and the order of different events does not matter.
- BAD INPUT. A record whose payload cannot be read, or lacks a field we need, is skipped and counted
  (``skipped``); it never stops the projection (the record itself stays in the store).
- WORKING TIME is recomputed whenever a case row changes: minutes from acceptance to completion on the
  calendar (and on natural time), minus special procedures and correction windows; a calendar year
  that is missing leaves it NULL (the case then is not "measured").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from node.core import codes
from node.core import schema as t
from node.core.calendar import CalendarYearMissing
from node.core.schema import stats as st
from node.core.store import Change, Store

CST = timezone(timedelta(hours=8))
KINDS = ("case.", "item", "alert", "ticket.")
US_PER_HOUR = 3_600_000_000


class Clock(Protocol):
    minutes_per_day: int

    def working_minutes_between(self, start: datetime, end: datetime) -> int: ...


# ---- pure parts -----------------------------------------------------------------------------------------


def parse_time(text: Any) -> datetime | None:
    """ISO-8601 (naive = Asia/Shanghai) or the exchange format YYYYMMDDhhmmss; None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        if len(text) == 14 and text.isdigit():
            d = datetime.strptime(text, "%Y%m%d%H%M%S")
        else:
            d = datetime.fromisoformat(text)
    except ValueError:
        return None
    return d.replace(tzinfo=CST) if d.tzinfo is None else d


def month_of(text: Any) -> str | None:
    d = parse_time(text)
    return None if d is None else d.astimezone(CST).strftime("%Y-%m")


def in_scope(scope: str, division: str, dept: str = "") -> bool:
    return codes.within(division, scope) or bool(dept) and codes.within(dept, scope)


def new_case(p: dict[str, Any]) -> dict[str, Any]:
    return {"case_no": p["case_no"], "division": str(p["division"]), "dept": str(p.get("dept") or ""),
            "item_code": str(p.get("item_code") or ""), "period": "", "accepted": None, "applied_at": None,
            "accepted_at": None, "completed_at": None, "result_code": None, "pauses": "{}",
            "used_work_min": None, "used_nat_min": None, "satisfaction": None, **derive_empty()}


def fold_case(row: dict[str, Any], kind: str, p: dict[str, Any]) -> None:
    """Apply one case event to its row (in place). Each kind owns its fields (see MERGING)."""
    ev = kind[len("case."):]
    at = p.get("time")
    pauses = json.loads(row["pauses"])
    if ev == "apply":
        row["applied_at"] = at
    elif ev == "accept":
        row["accepted"] = 1 if p.get("accepted", True) else 0
        row["accepted_at"] = at
    elif ev == "complete":
        row["completed_at"] = at
        row["result_code"] = str(p.get("result_code", ""))
    elif ev == "evaluate":
        row["satisfaction"] = str(p.get("satisfaction", ""))[:1] or None
    elif ev == "suspend":
        key = f"s:{p.get('suspend_no')}"
        pauses[key] = [p.get("started_at") or at, (pauses.get(key) or [None, None])[1]]
    elif ev == "resume":
        key = f"s:{p.get('suspend_no')}"
        pauses[key] = [(pauses.get(key) or [None, None])[0], p.get("ended_at") or at]
    elif ev == "correction_notice":
        key = f"c:{p.get('notice_no')}"
        pauses[key] = [at, (pauses.get(key) or [None, None])[1]]
    elif ev == "correction_accepted":
        key = f"c:{p.get('notice_no')}"
        pauses[key] = [(pauses.get(key) or [None, None])[0], at]
    row["pauses"] = json.dumps(pauses, sort_keys=True)
    row["period"] = (month_of(row["accepted_at"]) or month_of(row["applied_at"])
                     or month_of(row["completed_at"]) or month_of(at) or row["period"] or "0000-00")


def _merged(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def used_minutes(row: dict[str, Any], clock: Clock) -> tuple[int | None, int | None]:
    """(working, natural) minutes from acceptance to completion without pauses; None if not measurable."""
    start, end = parse_time(row["accepted_at"]), parse_time(row["completed_at"])
    if start is None or end is None or row["accepted"] != 1:
        return None, None
    if end < start:
        return 0, 0
    pauses = []
    for a, b in json.loads(row["pauses"]).values():
        ps, pe = parse_time(a), parse_time(b) or end  # a pause still open stops the clock to the end
        if ps is None:
            continue
        ps, pe = max(ps, start), min(pe, end)
        if pe > ps:
            pauses.append((ps, pe))
    spans = _merged(pauses)
    nat = int((end - start).total_seconds() // 60) - sum(int((e - s).total_seconds() // 60) for s, e in spans)
    try:
        work = clock.working_minutes_between(start, end) - sum(clock.working_minutes_between(s, e) for s, e in spans)
    except CalendarYearMissing:
        return None, max(nat, 0)
    return max(work, 0), max(nat, 0)


_DERIVED = ("done", "measured", "on_time", "early", "p_min", "p_used", "s_min", "s_used", "evaluated", "satisfied")


def derive_empty() -> dict[str, Any]:
    return {"done": 0, "measured": 0, "on_time": 0, "early": 0, "p_min": None, "p_used": None, "s_min": None,
            "s_used": None, "evaluated": 0, "satisfied": 0}


def derive(row: dict[str, Any], item: dict[str, Any] | None, minutes_per_day: int) -> dict[str, Any]:
    """The per-case indicator columns from the row and its item (None: item not held yet)."""
    out = derive_empty()
    sat = row.get("satisfaction")
    out["evaluated"] = 1 if sat else 0
    out["satisfied"] = 1 if sat in ("1", "2") else 0
    done = row["accepted"] == 1 and row["completed_at"] is not None
    out["done"] = 1 if done else 0
    if not done or item is None:
        return out
    natural = item["unit"] == "day"
    used = row["used_nat_min"] if natural else row["used_work_min"]
    if used is None:
        return out
    per_day = 1440 if natural else minutes_per_day
    plim = None if item["promised_days"] is None else item["promised_days"] * per_day
    slim = None if item["statutory_days"] is None else item["statutory_days"] * per_day
    if plim is not None:
        out.update(measured=1, on_time=1 if used <= plim else 0, early=1 if used < plim else 0)
        if plim > 0:
            out.update(p_min=plim, p_used=used)
    if slim is not None and slim > 0:
        out.update(s_min=slim, s_used=used)
    return out


# ---- the fold (I/O) ---------------------------------------------------------------------------------------


class Raced(Exception):
    """The cursor moved between reading the batch and writing it (a concurrent fold)."""


@dataclass
class FoldResult:
    folded: int = 0
    skipped: int = 0
    cursor: int = 0


def _stored_us(store: Store, lo: int, hi: int) -> dict[int, int]:
    out: dict[int, int] = {}
    with store.read() as conn:
        for table in (t.records, t.down_records):
            q = select(table.c.local_seq, table.c.stored_us).where(
                and_(table.c.local_seq >= lo, table.c.local_seq <= hi, table.c.kind.startswith("case.")))
            out.update({r[0]: r[1] for r in conn.execute(q)})
    return out


def cursor(store: Store) -> int:
    return int(store.get_meta(st.CURSOR_KEY, "0") or 0)


def fold_once(store: Store, scope: str, clock: Clock, *, timely_hours: float = 24.0,
              limit: int = 5000) -> FoldResult:
    """Fold the next batch of the change feed; ``folded == 0`` when there was nothing new."""
    after = cursor(store)
    changes = store.changes(after, limit, kinds=KINDS)
    res = FoldResult(cursor=after)
    if not changes:
        return res
    stored = _stored_us(store, changes[0].local_seq, changes[-1].local_seq)
    parsed: list[tuple[Change, dict[str, Any]]] = []
    for c in changes:
        try:
            p = c.payload()
        except Exception:  # noqa: BLE001 — any unreadable body is skipped, never fatal
            res.skipped += 1
            continue
        if not isinstance(p, dict):
            res.skipped += 1
            continue
        parsed.append((c, p))

    items: dict[tuple[str, str], dict[str, Any]] = {}
    alerts: dict[str, dict[str, Any]] = {}
    alert_days: dict[str, str] = {}  # alert_id -> day of its record (stats_alert_counts)
    tickets: list[dict[str, Any]] = []
    reporting: dict[tuple[str, str, str, str], list[int]] = {}
    case_events: list[tuple[str, dict[str, Any]]] = []
    limit_us = int(timely_hours * US_PER_HOUR)
    for c, p in parsed:
        try:
            if c.kind == "item":
                items[(str(p["division"]), str(p["item_code"]))] = {
                    "division": str(p["division"]), "item_code": str(p["item_code"]),
                    "item_type": str(p.get("item_type", "")), "dept": str(p.get("dept") or ""),
                    "unit": "day" if p.get("unit") == "day" else "workday",
                    "promised_days": _num(p.get("promised_days")), "statutory_days": _num(p.get("statutory_days"))}
            elif c.kind.startswith("case."):
                division, dept = str(p["division"]), str(p.get("dept") or "")
                if not isinstance(p.get("case_no"), str) or not in_scope(scope, division, dept):
                    continue
                case_events.append((c.kind, p))
                happened = parse_time(p.get("time"))
                happened_us = int(happened.timestamp() * 1e6) if happened else c.time_us
                month = (happened.astimezone(CST) if happened else
                         datetime.fromtimestamp(c.time_us / 1e6, CST)).strftime("%Y-%m")
                acc = reporting.setdefault((division, dept, str(p.get("item_code") or ""), month), [0, 0])
                acc[0] += 1
                if stored.get(c.local_seq, c.time_us) - happened_us <= limit_us:
                    acc[1] += 1
            elif c.kind == "alert":
                division, dept = str(p["division"]), str(p.get("dept") or "")
                if not in_scope(scope, division, dept):
                    continue
                alerts[str(p["alert_id"])] = {
                    "alert_id": str(p["alert_id"])[:256], "division": division, "dept": dept,
                    "item_code": str(p.get("item_code") or ""), "object": str(p.get("object", ""))[:16],
                    "level": int(p["level"]), "period": month_of(p.get("at")) or "0000-00"}
                alert_days.setdefault(str(p["alert_id"])[:256],
                                      datetime.fromtimestamp(c.time_us / 1e6, CST).date().isoformat())
            elif c.kind.startswith("ticket.") and isinstance(p.get("ticket"), str):
                tickets.append({"ticket": p["ticket"][:128], "kind": c.kind, "writer": c.origin,
                                "payload": json.dumps(p, ensure_ascii=False, sort_keys=True)})
        except (KeyError, TypeError, ValueError):
            res.skipped += 1

    with store.write() as tx:
        conn = tx.conn
        _claim(conn, after, changes[-1].local_seq)
        if items:
            keys = list(items)
            have = set()
            for chunk in _chunks(keys, 400):
                have |= {(r[0], r[1]) for r in conn.execute(
                    select(st.items.c.division, st.items.c.item_code).where(
                        tuple_(st.items.c.division, st.items.c.item_code).in_(chunk)))}
            for k in keys:
                if k in have:
                    conn.execute(st.items.update().where(and_(st.items.c.division == k[0],
                                                              st.items.c.item_code == k[1])).values(**items[k]))
                else:
                    conn.execute(st.items.insert().values(**items[k]))
        if case_events:
            _fold_cases(conn, case_events, clock)
        for (division, item_code), it in items.items():  # an item (re)defined: its cases' limits change
            _rederive_item(conn, division, item_code, it, clock.minutes_per_day)
        if alerts:
            have_ids: set[str] = set()
            for chunk in _chunks(list(alerts), 400):
                have_ids |= {r[0] for r in conn.execute(select(st.alerts.c.alert_id).where(
                    st.alerts.c.alert_id.in_(chunk)))}
            fresh = [a for k, a in alerts.items() if k not in have_ids]
            if fresh:
                conn.execute(st.alerts.insert(), fresh)
                _count_alerts(conn, fresh, alert_days)
        if tickets:
            conn.execute(st.ticket_events.insert(), tickets)
        if reporting:
            _add_counts(conn, st.reporting, [{"division": d, "dept": dp, "item_code": i, "period": m, "events": n,
                                              "timely": ok} for (d, dp, i, m), (n, ok) in reporting.items()],
                        ("events", "timely"))
    res.folded = len(changes)
    res.cursor = changes[-1].local_seq
    return res


def _add_counts(conn: Any, table: Any, rows: list[dict[str, Any]], counts: tuple[str, ...]) -> None:
    """Add ``rows``' ``counts`` to the rows of ``table`` with the same primary key (inserted where there
    is none), all in one upsert: an UPDATE (and an INSERT) built per group cost a relay's fold most of
    its time once its children's divisions made hundreds of groups a fold (a city with 50 children)."""
    postgres = conn.dialect.name == "postgresql"
    ins = (postgresql.insert if postgres else sqlite.insert)(table)
    conn.execute(ins.on_conflict_do_update(index_elements=[c.name for c in table.primary_key.columns],
                                           set_={k: table.c[k] + ins.excluded[k] for k in counts}), rows)


def _count_alerts(conn: Any, fresh: list[dict[str, Any]], days: dict[str, str]) -> None:
    """Add alerts new here to stats_alert_counts: per (day, division, level) and in all (day "")."""
    add: dict[tuple[str, str, int], int] = {}
    for a in fresh:
        for day in {"", days.get(a["alert_id"], "")}:
            key = (day, a["division"], a["level"])
            add[key] = add.get(key, 0) + 1
    _add_counts(conn, st.alert_counts, [{"day": day, "division": division, "level": level, "n": n}
                                        for (day, division, level), n in add.items()], ("n",))


def _claim(conn: Any, after: int, new: int) -> None:
    """Move the cursor from ``after`` to ``new`` first thing in the transaction, as a compare-and-set:
    a concurrent fold (the running node and the CLI; PostgreSQL has no store-wide write lock) blocks on
    the row, then finds the value moved, and gives up its batch (``Raced``) instead of counting it twice."""
    from sqlalchemy.exc import IntegrityError

    moved = conn.execute(t.meta.update().where(and_(t.meta.c.key == st.CURSOR_KEY, t.meta.c.value == str(after)))
                         .values(value=str(new))).rowcount
    if moved == 1:
        return
    if after == 0 and conn.execute(select(t.meta.c.value).where(t.meta.c.key == st.CURSOR_KEY)).scalar() is None:
        try:
            conn.execute(t.meta.insert().values(key=st.CURSOR_KEY, value=str(new)))
            return
        except IntegrityError:
            pass
    raise Raced()


def _fold_cases(conn: Any, events: list[tuple[str, dict[str, Any]]], clock: Clock) -> None:
    nos = sorted({p["case_no"] for _, p in events})
    rows: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(nos, 400):
        for r in conn.execute(select(st.cases).where(st.cases.c.case_no.in_(chunk))):
            rows[r.case_no] = dict(r._mapping)
    existing = set(rows)
    for kind, p in events:
        row = rows.get(p["case_no"])
        if row is None:
            row = rows[p["case_no"]] = new_case(p)
        fold_case(row, kind, p)
    item_keys = sorted({(r["division"], r["item_code"]) for r in rows.values()})
    item_rows: dict[tuple[str, str], dict[str, Any]] = {}
    for chunk in _chunks(item_keys, 400):
        for r in conn.execute(select(st.items).where(tuple_(st.items.c.division, st.items.c.item_code).in_(chunk))):
            item_rows[(r.division, r.item_code)] = dict(r._mapping)
    for row in rows.values():
        row["used_work_min"], row["used_nat_min"] = used_minutes(row, clock)
        row.update(derive(row, item_rows.get((row["division"], row["item_code"])), clock.minutes_per_day))
    changed = [{"k": no, **row} for no, row in rows.items() if no in existing]
    if changed:  # one statement for all (built per case it cost more than the fold itself)
        cols = [c.name for c in st.cases.columns if c.name != "case_no"]
        conn.execute(st.cases.update().where(st.cases.c.case_no == bindparam("k"))
                     .values(**{c: bindparam(c) for c in cols}), changed)
    fresh = [row for no, row in rows.items() if no not in existing]
    if fresh:
        conn.execute(st.cases.insert(), fresh)


def _rederive_item(conn: Any, division: str, item_code: str, item: dict[str, Any], minutes_per_day: int) -> None:
    cond = and_(st.cases.c.division == division, st.cases.c.item_code == item_code)
    updates = []
    for r in conn.execute(select(st.cases).where(cond)):
        row = dict(r._mapping)
        new = derive(row, item, minutes_per_day)
        if any(row[k] != new[k] for k in _DERIVED):
            updates.append({"k": row["case_no"], **new})
    if updates:
        conn.execute(st.cases.update().where(st.cases.c.case_no == bindparam("k"))
                     .values(**{k: bindparam(k) for k in _DERIVED}), updates)


def fold_all(store: Store, scope: str, clock: Clock, *, timely_hours: float = 24.0,
             limit: int = 5000) -> FoldResult:
    """Fold until the feed is exhausted (CLI: the node may not be running)."""
    total = FoldResult(cursor=cursor(store))
    while True:
        try:
            r = fold_once(store, scope, clock, timely_hours=timely_hours, limit=limit)
        except Raced:
            continue
        total.skipped += r.skipped
        total.cursor = r.cursor
        if r.folded == 0:
            return total
        total.folded += r.folded


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _chunks(xs: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]
