"""One case seen whole (流程监控: 受理、承办、审核、批准、办结), and the 办理状态 of a case. Pure.

Rules of this module:
- ``case_view`` assembles what the records held here say about one case: application, acceptance,
  every step (who, post, opinion, started/ended, working time used against the step's limit),
  special procedures, corrections, completion, collection, evaluation, and the promised and statutory
  limits with the working time used against them, on the node's calendar. Records with the same
  natural key (a re-sent step) are merged: the one with an end wins, then the later one.
- Working time: from acceptance to completion (or ``now`` while open), less special procedures and
  correction windows (a window still open stops the clock until ``now``); items whose unit is
  ``day`` count natural minutes. A calendar year the calendar lacks leaves the figure None.
- ``state`` is one of ``STATES`` (办理状态), the same rule for `cases show`, `cases list` and its filter:
  不予受理 (refused at acceptance) › 办结 / 超期办结 (completed, past the promised limit or not) ›
  退回补正 (a correction notice not yet answered) › 超期在办 (open past the promised limit) › 在办.
- No I/O: node/app/cases.py reads the records (node/features/cases/index.py) and the calendar.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from node.core.calendar import CalendarYearMissing
from node.features.stats.projection import parse_time

CST = timezone(timedelta(hours=8))
STATES = ("在办", "办结", "超期在办", "超期办结", "不予受理", "退回补正")
IN_PROGRESS, DONE, OVERDUE_OPEN, OVERDUE_DONE, REFUSED, CORRECTION = STATES


class Clock(Protocol):
    minutes_per_day: int

    def working_minutes_between(self, start: datetime, end: datetime) -> int: ...


def _merged(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out


def used_minutes(clock: Clock, start: datetime, end: datetime, pauses: Iterable[tuple[datetime | None, datetime | None]],
                 *, natural: bool = False) -> int | None:
    """Minutes in [start, end) less the pauses (an open pause runs to ``end``); None if the calendar lacks
    a year."""
    if end <= start:
        return 0
    spans = _merged((max(s, start), min(e or end, end)) for s, e in pauses if s is not None)

    def between(a: datetime, b: datetime) -> int:
        return int((b - a).total_seconds() // 60) if natural else clock.working_minutes_between(a, b)

    try:
        return max(between(start, end) - sum(between(s, e) for s, e in spans), 0)
    except CalendarYearMissing:
        return None


def pauses_of(pauses_json: str | Mapping[str, Any]) -> tuple[list[tuple[datetime | None, datetime | None]], bool]:
    """The pauses of a stats row (``{"s:1": [start, end|null], "c:1": [...]}``) and whether a correction
    notice is still unanswered."""
    raw = json.loads(pauses_json) if isinstance(pauses_json, str) else dict(pauses_json)
    spans: list[tuple[datetime | None, datetime | None]] = []
    correction_open = False
    for key, (a, b) in sorted(raw.items()):
        spans.append((parse_time(a), parse_time(b)))
        if key.startswith("c:") and a and not b:
            correction_open = True
    return spans, correction_open


def classify(*, accepted: int | None, completed: bool, over_promised: bool | None, correction_open: bool) -> str:
    """The 办理状态 (rule at the top)."""
    if accepted == 0:
        return REFUSED
    if completed:
        return OVERDUE_DONE if over_promised else DONE
    if correction_open:
        return CORRECTION
    return OVERDUE_OPEN if over_promised else IN_PROGRESS


def limit_minutes(days: Any, unit: str, clock: Clock) -> float | None:
    if not isinstance(days, int | float) or isinstance(days, bool):
        return None
    return float(days) * (1440 if unit == "day" else clock.minutes_per_day)


def row_state(row: Mapping[str, Any], item: Mapping[str, Any] | None, clock: Clock, now: datetime) -> tuple[str, int | None]:
    """(state, working minutes used) of a ``stats_cases`` row and its ``stats_items`` row."""
    completed = row.get("completed_at") is not None
    spans, corr = pauses_of(row.get("pauses") or "{}")
    natural = bool(item) and item.get("unit") == "day"  # type: ignore[union-attr]
    if completed:
        used = row.get("used_nat_min") if natural else row.get("used_work_min")
        over = bool(row.get("measured")) and not bool(row.get("on_time"))
        return classify(accepted=row.get("accepted"), completed=True, over_promised=over, correction_open=False), used
    start = parse_time(row.get("accepted_at"))
    used = None
    over = False
    if row.get("accepted") == 1 and start is not None:
        used = used_minutes(clock, start, max(now, start), spans, natural=natural)
        limit = limit_minutes(item.get("promised_days"), str(item.get("unit", "")), clock) if item else None
        over = used is not None and limit is not None and used > limit
    return classify(accepted=row.get("accepted"), completed=False, over_promised=over, correction_open=corr), used


# ---- one case, whole --------------------------------------------------------------------------------------

Rec = tuple[str, Mapping[str, Any], str, int]  # (kind, payload, origin, local_seq)


def _better(old: tuple[Mapping[str, Any], int] | None, new: tuple[Mapping[str, Any], int]) -> bool:
    if old is None:
        return True
    (op, oseq), (np_, nseq) = old, new
    if bool(np_.get("ended_at")) != bool(op.get("ended_at")):
        return bool(np_.get("ended_at"))
    return nseq > oseq


def case_view(case_no: str, records: Iterable[Rec], item: Mapping[str, Any] | None, clock: Clock,
              now: datetime) -> dict[str, Any]:
    """What the case records say (see the rules above); alerts, tickets and complaints are added by the caller."""
    single: dict[str, tuple[Mapping[str, Any], int]] = {}
    steps: dict[int, tuple[Mapping[str, Any], int]] = {}
    suspends: dict[int, dict[str, Any]] = {}
    notices: dict[int, dict[str, Any]] = {}
    origins: set[str] = set()
    for kind, p, origin, local_seq in records:
        if not kind.startswith("case.") or not isinstance(p, Mapping):
            continue
        origins.add(origin)
        ev = kind[len("case."):]
        if ev == "step":
            try:
                no = int(p.get("step_no", 0))
            except (TypeError, ValueError):
                continue
            if _better(steps.get(no), (p, local_seq)):
                steps[no] = (p, local_seq)
        elif ev in ("suspend", "resume"):
            s = suspends.setdefault(int(p.get("suspend_no", 0) or 0), {})
            s.update({k: v for k, v in p.items() if k not in ("case_no", "item_code", "division", "dept")})
        elif ev in ("correction_notice", "correction_accepted"):
            n = notices.setdefault(int(p.get("notice_no", 0) or 0), {})
            if ev == "correction_notice":
                n.update(notice_no=p.get("notice_no"), materials=list(p.get("materials") or []),
                         issuer=p.get("issuer", ""), at=p.get("time"))
            else:
                n["accepted_at"] = p.get("time")
        elif _better(single.get(ev), (p, local_seq)):
            single[ev] = (p, local_seq)
    base = next((p for p, _ in (*single.values(), *steps.values())), {})
    accept = dict(single["accept"][0]) if "accept" in single else None
    complete = dict(single["complete"][0]) if "complete" in single else None
    unit = str((item or {}).get("unit", "workday"))
    natural = unit == "day"
    accepted_at = parse_time(accept.get("time")) if accept else None
    end = parse_time(complete.get("time")) if complete else now
    pauses: list[tuple[datetime | None, datetime | None]] = []
    for s in suspends.values():
        pauses.append((parse_time(s.get("started_at") or s.get("time")), parse_time(s.get("ended_at"))))
    for n in notices.values():
        pauses.append((parse_time(n.get("at")), parse_time(n.get("accepted_at"))))
    used = used_minutes(clock, accepted_at, max(end or now, accepted_at), pauses, natural=natural) \
        if accepted_at and accept and accept.get("accepted", True) else None
    promised = limit_minutes((item or {}).get("promised_days"), unit, clock)
    statutory = limit_minutes((item or {}).get("statutory_days"), unit, clock)
    per_day = 1440 if natural else clock.minutes_per_day
    step_defs = {str(d.get("step_code")): d for d in (item or {}).get("steps") or [] if isinstance(d, Mapping)}
    step_rows = []
    for no in sorted(steps):
        p = dict(steps[no][0])
        started, ended = parse_time(p.get("started_at")), parse_time(p.get("ended_at"))
        d = step_defs.get(str(p.get("step_code")))
        limit = limit_minutes(d.get("limit_days"), unit, clock) if d else None
        s_used = used_minutes(clock, started, max(ended or now, started), pauses, natural=natural) if started else None
        step_rows.append({"step_no": no, "step_code": p.get("step_code"), "step_name": p.get("step_name"),
                          "handler": p.get("handler"), "post": p.get("post"), "opinion": p.get("opinion", ""),
                          "action": p.get("action"), "started_at": p.get("started_at"), "ended_at": p.get("ended_at"),
                          "used_min": s_used, "limit_min": limit, "limit_days": d.get("limit_days") if d else None,
                          "used_days": None if s_used is None else round(s_used / per_day, 2),
                          "over_limit": None if s_used is None or limit is None else s_used > limit,
                          "amount": p.get("amount"), "evidence": list(p.get("evidence") or [])})
    corr_open = any(n.get("at") and not n.get("accepted_at") for n in notices.values())
    over = None if used is None or promised is None else used > promised
    state = classify(accepted=None if accept is None else (1 if accept.get("accepted", True) else 0),
                     completed=complete is not None, over_promised=over, correction_open=corr_open)

    def plain(ev: str) -> dict[str, Any] | None:
        if ev not in single:
            return None
        return {k: v for k, v in single[ev][0].items() if k not in ("case_no", "item_code", "division", "dept")}

    return {
        "case_no": case_no, "division": base.get("division"), "dept": base.get("dept"),
        "item_code": base.get("item_code"), "item_name": (item or {}).get("name"),
        "item_type": (item or {}).get("item_type"), "held_from": sorted(origins),
        "state": state, "application": plain("apply"), "acceptance": plain("accept"), "steps": step_rows,
        "suspensions": [suspends[k] for k in sorted(suspends)], "corrections": [notices[k] for k in sorted(notices)],
        "completion": plain("complete"), "collection": plain("collect"), "evaluation": plain("evaluate"),
        "limits": {"unit": unit, "promised_days": (item or {}).get("promised_days"),
                   "statutory_days": (item or {}).get("statutory_days"),
                   "promised_at": accept.get("promised_at") if accept else None,
                   "used_min": used, "used_days": None if used is None else round(used / per_day, 2),
                   "promised_min": promised, "statutory_min": statutory,
                   "over_promised": over, "over_statutory": None if used is None or statutory is None else used > statutory,
                   "counted_until": (complete or {}).get("time") or now.isoformat(timespec="seconds")},
    }
