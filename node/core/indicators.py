"""The indicators of DOMAIN.md as pure arithmetic over summed counts (``Totals``), plus periods,
period-on-period (环比) / year-on-year (同比) changes, scores, grades and rankings.

Rules of this module (each decision the requirements leave open is written here):

- A ratio whose denominator is zero is ``None`` (shown "—"), except 办结率, which is 100% when nothing
  was accepted (DOMAIN.md).
- 办结率 = completed / accepted. A case counts in the period (month) it was accepted in; it counts as
  completed once a ``case.complete`` is held, whenever that came.
- 按时办结率 = completed with working time used <= the promised limit / completed cases that could be
  measured (item known, times readable, calendar year present). 提前办结率 likewise with used
  strictly < the promised limit.
- 承诺提速率 = (Σ promised − Σ used) / Σ promised over measured completed cases with a promised
  limit > 0 (即办件 with limit 0 do not count); 法定提速率 likewise with statutory limits. Either can
  be negative (slower than promised).
- 数据报送完成率 = case events that reached THIS node within ``timely_hours`` (24) of happening
  (the event's own ``time`` against the local ``stored_us``) / case events held; by the month of the event.
- 每百件亮牌数 = cards (alerts of level 预警/黄牌/红牌 about a case, step or special procedure)
  × 100 / accepted cases; cards count in the month of the alert.
- 督办按时答复率 = tickets whose first reply met the reply deadline then in force / tickets issued to
  units of the scope, by the month of issue (an unanswered ticket counts as not on time).
- 满意度 = evaluations with code 1 or 2 / evaluations (case.evaluate, and the satisfaction of
  concluded complaint tickets).
- Changes (环比/同比) of a rate are differences in percentage points; of a count, the relative change.
- Score = Σ weight × component / Σ weight over components that are defined (0..100); each rate is
  clipped to 0..1, cards map to 1 − per100 / cards_zero_at (clipped). In breakdowns a group that
  accepted nothing is scored without 办结率 (its 100% is a display convention, not a merit). Grades from the bands:
  score >= excellent → 优秀, >= good → 良好, >= pass → 合格, else 不合格.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# indicator key -> Chinese label; the order is the display order
INDICATORS: dict[str, str] = {
    "done_rate": "办结率",
    "on_time_rate": "按时办结率",
    "early_rate": "提前办结率",
    "promised_speedup": "承诺提速率",
    "statutory_speedup": "法定提速率",
    "report_rate": "数据报送完成率",
    "cards_per_100": "每百件亮牌数",
    "ticket_on_time_rate": "督办按时答复率",
    "satisfaction_rate": "满意度",
}
RATES = frozenset(INDICATORS) - {"cards_per_100"}

GRADES = ("优秀", "良好", "合格", "不合格")
PERIOD_KINDS = ("month", "quarter", "year")
_PERIOD_RE = re.compile(r"^(?P<y>\d{4})(?:-(?:(?P<m>\d{2})|Q(?P<q>[1-4])))?$")


@dataclass
class Totals:
    """Summed counts of one group; ``+`` merges groups (all fields are additive)."""

    cases: int = 0
    accepted: int = 0
    completed: int = 0
    measured: int = 0  # completed and measurable (item known, times readable)
    on_time: int = 0
    early: int = 0
    promised_min: float = 0.0
    used_promised_min: float = 0.0
    statutory_min: float = 0.0
    used_statutory_min: float = 0.0
    events: int = 0
    timely_events: int = 0
    cards: int = 0
    warn_cards: int = 0
    yellow_cards: int = 0
    red_cards: int = 0
    tickets: int = 0
    tickets_on_time: int = 0
    evaluations: int = 0
    satisfied: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def indicators(t: Totals) -> dict[str, float | None]:
    """Every indicator of one group (rates as fractions 0..1; cards per 100 cases)."""
    return {
        "done_rate": 1.0 if t.accepted == 0 else t.completed / t.accepted,
        "on_time_rate": ratio(t.on_time, t.measured),
        "early_rate": ratio(t.early, t.measured),
        "promised_speedup": ratio(t.promised_min - t.used_promised_min, t.promised_min),
        "statutory_speedup": ratio(t.statutory_min - t.used_statutory_min, t.statutory_min),
        "report_rate": ratio(t.timely_events, t.events),
        "cards_per_100": ratio(t.cards * 100, t.accepted),
        "ticket_on_time_rate": ratio(t.tickets_on_time, t.tickets),
        "satisfaction_rate": ratio(t.satisfied, t.evaluations),
    }


def change(now: float | None, before: float | None, *, rate: bool) -> float | None:
    """环比/同比: points for rates (0.05 = +5 points), relative change otherwise."""
    if now is None or before is None:
        return None
    if rate:
        return now - before
    return None if before == 0 else (now - before) / before


# ---- scores and grades --------------------------------------------------------------------------------

DEFAULT_WEIGHTS: dict[str, float] = {
    "done_rate": 20, "on_time_rate": 20, "early_rate": 5, "promised_speedup": 10, "statutory_speedup": 5,
    "report_rate": 10, "cards_per_100": 10, "ticket_on_time_rate": 10, "satisfaction_rate": 10,
}
DEFAULT_BANDS: dict[str, float] = {"excellent": 90.0, "good": 80.0, "pass": 60.0}
DEFAULT_CARDS_ZERO_AT = 20.0  # cards per 100 cases at which the cards component reaches 0


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def score(values: Mapping[str, float | None], weights: Mapping[str, float] = DEFAULT_WEIGHTS,
          cards_zero_at: float = DEFAULT_CARDS_ZERO_AT) -> float | None:
    """0..100, over the indicators that are defined; None when none is."""
    num = den = 0.0
    for key, w in weights.items():
        v = values.get(key)
        if v is None or w == 0:
            continue
        comp = _clip(1 - v / cards_zero_at) if key == "cards_per_100" else _clip(v)
        num += w * comp
        den += w
    return None if den == 0 else 100 * num / den


def grade(s: float | None, bands: Mapping[str, float] = DEFAULT_BANDS) -> str | None:
    if s is None:
        return None
    if s >= bands["excellent"]:
        return GRADES[0]
    if s >= bands["good"]:
        return GRADES[1]
    if s >= bands["pass"]:
        return GRADES[2]
    return GRADES[3]


def rank(scores: Mapping[str, float | None]) -> dict[str, int | None]:
    """Competition ranking (1, 2, 2, 4) by score, highest first; groups without a score get None."""
    ordered = sorted((s, k) for k, s in scores.items() if s is not None)
    ordered.reverse()
    out: dict[str, int | None] = {k: None for k in scores}
    prev: float | None = None
    place = 0
    for i, (s, k) in enumerate(ordered, 1):
        if s != prev:
            place, prev = i, s
        out[k] = place
    return out


# ---- periods ------------------------------------------------------------------------------------------


def period_of(month: str, kind: str) -> str:
    """'2025-10' → '2025-10' (month), '2025-Q4' (quarter), '2025' (year)."""
    y, m = month[:4], int(month[5:7])
    if kind == "month":
        return month
    if kind == "quarter":
        return f"{y}-Q{(m - 1) // 3 + 1}"
    if kind == "year":
        return y
    raise ValueError(f"unknown period kind {kind!r}")


def parse_period(text: str) -> tuple[str, int, int]:
    """'2025' | '2025-Q3' | '2025-07' → (kind, year, number)."""
    m = _PERIOD_RE.match(text)
    if not m or (m["m"] and not 1 <= int(m["m"]) <= 12):
        raise ValueError(f"{text!r} is not a period: write 2025, 2025-Q3 or 2025-07")
    if m["m"]:
        return "month", int(m["y"]), int(m["m"])
    if m["q"]:
        return "quarter", int(m["y"]), int(m["q"])
    return "year", int(m["y"]), 1


def _fmt(kind: str, y: int, n: int) -> str:
    return {"month": f"{y:04d}-{n:02d}", "quarter": f"{y:04d}-Q{n}", "year": f"{y:04d}"}[kind]


def previous_period(text: str) -> str:
    """环比's reference: the period just before."""
    kind, y, n = parse_period(text)
    per_year = {"month": 12, "quarter": 4, "year": 1}[kind]
    if kind == "year":
        return _fmt(kind, y - 1, 1)
    return _fmt(kind, y, n - 1) if n > 1 else _fmt(kind, y - 1, per_year)


def same_period_last_year(text: str) -> str:
    """同比's reference."""
    kind, y, n = parse_period(text)
    return _fmt(kind, y - 1, n)


def months_of(text: str) -> list[str]:
    kind, y, n = parse_period(text)
    if kind == "month":
        return [_fmt("month", y, n)]
    if kind == "quarter":
        return [_fmt("month", y, m) for m in range(3 * n - 2, 3 * n + 1)]
    return [_fmt("month", y, m) for m in range(1, 13)]


def total(parts: Iterable[Totals]) -> Totals:
    out = Totals()
    for p in parts:
        out = out + p
    return out
