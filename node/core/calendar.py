"""The working-day calendar: which days are working days, office hours, and working time arithmetic.

Rules of this module:
- a day is a working day by, in order of precedence:
  1. a local override (``Overrides.days``: the operator forces a date to ``work`` or ``holiday``);
  2. the official State Council list shipped in ``chinese-calendar`` (holidays and 调休 make-up
     working days), for the years that package covers;
  3. for a year the operator imported as a whole (``Overrides.years``: the file says it lists every
     holiday and make-up day of that year), Monday-Friday work and Saturday/Sunday rest;
  4. otherwise the year is not covered and ``CalendarYearMissing`` is raised. There is deliberately
     no silent weekend fallback: a weekend rule alone puts every deadline around the Spring
     Festival and National Day off by days.
- working time is counted in whole minutes inside office hours (default 08:30-12:00 and 13:30-17:30,
  450 minutes a day); one working day is the office-hours minutes of one day.
- every instant maps to a *working-minute index*: the number of working minutes between a fixed
  anchor (the start of ``ANCHOR_YEAR``) and that instant. The index is constant outside office
  hours, so ``working_minutes_between`` is a subtraction. Per year the calendar caches one prefix
  sum of working minutes per day, so an index costs a dict lookup, a list lookup and an addition.
- the inverse (``instant_of_index``) returns the *earliest* instant with that index, so a deadline
  that ends a working day lands at 17:30 of that day, not at 08:30 of the next one.
- times are China Standard Time (UTC+08:00, no daylight saving). Aware datetimes are converted to it
  and results are aware; naive datetimes are taken as local time and results are naive.

Overrides file formats (``load_overrides``), one entry per line / table:

CSV (``#`` starts a comment)::

    date,kind[,name]
    2027,year,2027年节假日安排 (国办发明电〔2026〕X号)   # this file covers the whole year 2027
    2027-01-01,holiday,元旦
    2027-02-06,work,春节调休

TOML::

    years = [2027]
    [[days]]
    date = 2027-01-01      # a TOML date or a "YYYY-MM-DD" string
    kind = "holiday"
    name = "元旦"

``kind`` is ``work`` (also ``workday``, ``班``) or ``holiday`` (also ``rest``, ``休``).
"""

from __future__ import annotations

import csv
import functools
import tomllib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import chinese_calendar

from node.core.errors import ConfigError, FednodeError


@functools.lru_cache(maxsize=4096)
def _library_workday(day: date) -> bool:
    """chinese_calendar's answer for a day, kept: a calendar is built per read (node/app/stats.py
    build_calendar) and each year it touches asked the library 365 times (~40 ms per desk page)."""
    return bool(chinese_calendar.is_workday(day))


CST = timezone(timedelta(hours=8), "CST")
_CST_OFFSET = timedelta(hours=8)
ANCHOR_YEAR = 2025  # index 0 is 2025-01-01 00:00; earlier years get negative indexes
_MINUTES_PER_DAY = 24 * 60

WORK = "work"
HOLIDAY = "holiday"
_KIND_ALIASES = {
    "work": WORK,
    "workday": WORK,
    "班": WORK,
    "holiday": HOLIDAY,
    "rest": HOLIDAY,
    "休": HOLIDAY,
}


class CalendarYearMissing(FednodeError):
    """A date falls in a year for which neither the official data nor an operator import exists."""

    code = "calendar_year_missing"

    def __init__(self, year: int) -> None:
        super().__init__(
            f"the working-day calendar does not cover the year {year}: its holidays and make-up "
            f"working days (调休) are unknown",
            fix=f"import the official holiday list for {year} with `fednode calendar import`",
        )
        self.year = year

    def as_dict(self) -> dict[str, str]:
        d = super().as_dict()
        d["year"] = str(self.year)
        return d


def _library_years() -> frozenset[int]:
    """The years chinese-calendar has official data for (it raises NotImplementedError otherwise)."""
    years = set()
    for y in range(1990, 2101):
        try:
            chinese_calendar.is_workday(date(y, 6, 1))
        except NotImplementedError:
            continue
        years.add(y)
    return frozenset(years)


LIBRARY_YEARS = _library_years()


# ---- office hours ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfficeHours:
    """Office periods of a working day as (start, end) minutes after midnight, sorted, disjoint."""

    periods: tuple[tuple[int, int], ...] = ((8 * 60 + 30, 12 * 60), (13 * 60 + 30, 17 * 60 + 30))

    def __post_init__(self) -> None:
        last = 0
        for start, end in self.periods:
            if not (last <= start < end <= _MINUTES_PER_DAY):
                raise ConfigError(
                    f"office hours {self.periods!r} are not sorted, disjoint periods within a day",
                    fix="give periods such as 08:30-12:00,13:30-17:30",
                )
            last = end
        if not self.periods:
            raise ConfigError("office hours are empty", fix="give at least one period, e.g. 08:30-17:30")

    @classmethod
    def parse(cls, text: str) -> OfficeHours:
        """Parse ``"08:30-12:00,13:30-17:30"``."""
        periods = []
        try:
            for part in text.split(","):
                a, b = part.strip().split("-")
                periods.append((_parse_hhmm(a), _parse_hhmm(b)))
        except ValueError as e:
            raise ConfigError(
                f"office hours {text!r} cannot be read", fix="write them as 08:30-12:00,13:30-17:30"
            ) from e
        return cls(tuple(periods))

    @property
    def minutes_per_day(self) -> int:
        return sum(end - start for start, end in self.periods)


def _parse_hhmm(text: str) -> int:
    h, m = text.strip().split(":")
    value = int(h) * 60 + int(m)
    if not 0 <= value <= _MINUTES_PER_DAY:
        raise ValueError(text)
    return value


# ---- overrides ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayOverride:
    day: date
    kind: str  # WORK | HOLIDAY
    name: str = ""


@dataclass(frozen=True, slots=True)
class Overrides:
    """Operator data: dates forced to work/holiday, and whole years the operator vouches for."""

    days: Mapping[date, DayOverride] = field(default_factory=lambda: MappingProxyType({}))
    years: frozenset[int] = frozenset()

    def merged(self, other: Overrides) -> Overrides:
        """``other`` wins on a date both name."""
        return Overrides(MappingProxyType({**self.days, **other.days}), self.years | other.years)


def _kind(text: str, where: str) -> str:
    kind = _KIND_ALIASES.get(text.strip().lower())
    if kind is None:
        raise ConfigError(f"{where}: unknown kind {text!r}", fix="use `work` or `holiday`")
    return kind


def _day(value: Any, where: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as e:
        raise ConfigError(f"{where}: {value!r} is not a date", fix="write dates as YYYY-MM-DD") from e


def _year(value: Any, where: str) -> int:
    try:
        year = int(str(value).strip())
    except ValueError as e:
        raise ConfigError(f"{where}: {value!r} is not a year", fix="write a year as 2027") from e
    if not 1900 <= year <= 2200:
        raise ConfigError(f"{where}: {year} is not a plausible year", fix="write a year as 2027")
    return year


def parse_overrides(rows: Iterable[Mapping[str, Any]], *, source: str = "<overrides>") -> Overrides:
    """Build Overrides from rows {date, kind, name?}; ``kind == "year"`` with ``date`` a year marks
    that year as covered by the operator."""
    days: dict[date, DayOverride] = {}
    years: set[int] = set()
    for n, row in enumerate(rows, 1):
        where = f"{source} entry {n}"
        raw_kind = str(row.get("kind", "")).strip().lower()
        if raw_kind == "year":
            years.add(_year(row.get("date"), where))
            continue
        day = _day(row.get("date"), where)
        entry = DayOverride(day, _kind(raw_kind, where), str(row.get("name") or "").strip())
        previous = days.get(day)
        if previous is not None and previous.kind != entry.kind:
            raise ConfigError(
                f"{where}: {day} is listed both as {previous.kind} and as {entry.kind}",
                fix="keep one line per date",
            )
        days[day] = entry
    return Overrides(MappingProxyType(days), frozenset(years))


def load_overrides(path: str | Path) -> Overrides:
    """Read an overrides file: ``.toml`` as TOML, anything else as CSV ``date,kind[,name]``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read calendar overrides {p}: {e.strerror}", fix="check the path") from e
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}", fix="see `fednode calendar import --help`") from e
        rows: list[Mapping[str, Any]] = [{"date": y, "kind": "year"} for y in doc.get("years", [])]
        days = doc.get("days", [])
        if not isinstance(days, list) or not all(isinstance(d, dict) for d in days):
            raise ConfigError(f"{p}: `days` must be an array of tables", fix="write [[days]] tables")
        rows.extend(days)
        return parse_overrides(rows, source=str(p))
    rows = []
    for lineno, fields in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in fields]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if lineno == 1 and cells[0].lower() == "date":
            continue  # header line
        if len(cells) < 2:
            raise ConfigError(f"{p} line {lineno}: expected date,kind[,name]", fix="add the kind")
        name = cells[2] if len(cells) > 2 else ""
        if "#" in name:
            name = name.split("#", 1)[0].strip()
        kind = cells[1].split("#", 1)[0].strip()
        rows.append({"date": cells[0], "kind": kind, "name": name})
    return parse_overrides(rows, source=str(p))


# ---- the calendar ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Year:
    year: int
    ordinal0: int  # date(year, 1, 1).toordinal()
    minutes: list[int]  # working minutes of each day of the year
    prefix: list[int]  # prefix[i] = working minutes before day i; len = days + 1

    @property
    def total(self) -> int:
        return self.prefix[-1]


@functools.lru_cache(maxsize=16)
def _day_tables(periods: tuple[tuple[int, int], ...], minutes_per_day: int) -> tuple[list[int], list[int]]:
    """(intraday, earliest) of a working day with these office periods, shared by the calendars built
    with them (read only): intraday[m] = working minutes between 00:00 and minute m (m = 0..1440);
    earliest[r] = the earliest minute at which r working minutes have elapsed (r = 0..minutes_per_day)."""
    intraday = [0] * (_MINUTES_PER_DAY + 1)
    acc = 0
    for m in range(1, _MINUTES_PER_DAY + 1):
        if any(start < m <= end for start, end in periods):
            acc += 1
        intraday[m] = acc
    earliest = [0] * (minutes_per_day + 1)
    for m in range(_MINUTES_PER_DAY, -1, -1):
        earliest[intraday[m]] = m
    return intraday, earliest


class Calendar:
    """Working days and working-time arithmetic. Immutable once built; caches are internal."""

    def __init__(self, hours: OfficeHours | None = None, overrides: Overrides | None = None) -> None:
        self.hours = hours or OfficeHours()
        self.overrides = overrides or Overrides()
        self.minutes_per_day = self.hours.minutes_per_day
        self._intraday, self._earliest = _day_tables(self.hours.periods, self.minutes_per_day)
        self._years: dict[int, _Year] = {}
        self._offsets: dict[int, int] = {ANCHOR_YEAR: 0}
        self._last_year = ANCHOR_YEAR
        self._day_base: dict[str, tuple[int, bool]] = {}  # "YYYY-MM-DD" -> (index at 00:00, working?)

    def with_overrides(self, overrides: Overrides) -> Calendar:
        """A new calendar with ``overrides`` applied on top of the current ones."""
        return Calendar(self.hours, self.overrides.merged(overrides))

    # -- days ---------------------------------------------------------------------------------------

    def covered_years(self) -> tuple[int, ...]:
        return tuple(sorted(LIBRARY_YEARS | self.overrides.years))

    def is_covered(self, year: int) -> bool:
        return year in LIBRARY_YEARS or year in self.overrides.years

    def is_working_day(self, day: date) -> bool:
        if isinstance(day, datetime):
            day = self._local(day).date()
        forced = self.overrides.days.get(day)
        if forced is not None:
            return forced.kind == WORK
        if day.year in LIBRARY_YEARS:
            return _library_workday(day)
        if day.year in self.overrides.years:
            return day.weekday() < 5
        raise CalendarYearMissing(day.year)

    def _year(self, year: int) -> _Year:
        table = self._years.get(year)
        if table is None:
            if not self.is_covered(year):
                raise CalendarYearMissing(year)
            first = date(year, 1, 1)
            n = (date(year + 1, 1, 1) - first).days
            per_day = self.minutes_per_day
            minutes = [per_day if self.is_working_day(first + timedelta(d)) else 0 for d in range(n)]
            prefix = [0] * (n + 1)
            for i, m in enumerate(minutes):
                prefix[i + 1] = prefix[i] + m
            table = self._years[year] = _Year(year, first.toordinal(), minutes, prefix)
        return table

    def _offset(self, year: int) -> int:
        """Working minutes between the anchor and 1 January of ``year`` (needs the years between)."""
        off = self._offsets.get(year)
        if off is None:
            if year > ANCHOR_YEAR:
                off = self._offset(year - 1) + self._year(year - 1).total
            else:
                off = self._offset(year + 1) - self._year(year).total
            self._offsets[year] = off
        return off

    # -- instants -----------------------------------------------------------------------------------

    @staticmethod
    def _local(t: datetime) -> datetime:
        if t.tzinfo is None:
            return t
        if t.utcoffset() == _CST_OFFSET:
            return t.replace(tzinfo=None)
        return t.astimezone(CST).replace(tzinfo=None)

    def _in_year(self, t: datetime) -> tuple[_Year, int]:
        """(year table, working minutes from 1 January 00:00 of that year to ``t``)."""
        # hot path: times in China Standard Time need no conversion (their fields are local time)
        if t.tzinfo is not None and t.utcoffset() != _CST_OFFSET:
            t = t.astimezone(CST)
        table = self._years.get(t.year) or self._year(t.year)
        d = t.toordinal() - table.ordinal0
        if table.minutes[d]:
            return table, table.prefix[d] + self._intraday[t.hour * 60 + t.minute]
        return table, table.prefix[d]

    def working_minute_index(self, t: datetime) -> int:
        """Working minutes from the anchor (2025-01-01 00:00) to ``t``; constant outside office hours."""
        table, within = self._in_year(t)
        off = self._offsets.get(table.year)
        return (self._offset(table.year) if off is None else off) + within

    def index_of_iso(self, text: str) -> int:
        """``working_minute_index`` of an ISO-8601 text, fast for records' own format.

        ``YYYY-MM-DDThh:mm:ss[.ffffff]+08:00`` (and the naive forms) skip datetime parsing: the day's base
        index is cached per date string, so a timestamp costs two small ``int()`` calls.
        """
        n = len(text)
        # with or without microseconds (seconds and below never change a minute index)
        if (
            (((n == 19 or n == 26) and text[-1].isdigit()) or ((n == 25 or n == 32) and text.endswith("+08:00")))
            and (n < 26 or text[19] == ".")
            and text[10] in "T "
        ):  # fmt: skip
            base = self._day_base.get(text[:10])
            if base is None:
                day = date.fromisoformat(text[:10])
                base = self._day_base[text[:10]] = self._base_of_day(day)
            if base[1]:
                return base[0] + self._intraday[int(text[11:13]) * 60 + int(text[14:16])]
            return base[0]
        return self.working_minute_index(datetime.fromisoformat(text))

    def _base_of_day(self, day: date) -> tuple[int, bool]:
        table = self._year(day.year)
        d = day.toordinal() - table.ordinal0
        return self._offset(day.year) + table.prefix[d], table.minutes[d] > 0

    def instant_of_index(self, index: int, *, aware: bool = True) -> datetime:
        """The earliest instant whose working-minute index is ``index``."""
        year = self._last_year  # consecutive calls nearly always land in the same year
        while index <= self._offset(year):
            year -= 1
        while index > self._offset(year + 1):
            year += 1
        self._last_year = year
        table = self._year(year)
        rel = index - self._offsets[year]  # 0 < rel <= total
        d = bisect_left(table.prefix, rel, 1) - 1  # the day where the rel-th minute ends
        minute = self._earliest[rel - table.prefix[d]]
        result = datetime.combine(date.fromordinal(table.ordinal0 + d), time()) + timedelta(minutes=minute)
        return result.replace(tzinfo=CST) if aware else result

    def working_minutes_between(self, start: datetime, end: datetime) -> int:
        """Working minutes in [start, end); 0 when end is not after start."""
        if end <= start:
            return 0
        y0, w0 = self._in_year(start)
        y1, w1 = self._in_year(end)
        if y0 is y1:
            return w1 - w0
        return (self._offset(y1.year) + w1) - (self._offset(y0.year) + w0)

    def add_working_minutes(self, start: datetime, minutes: int) -> datetime:
        """The earliest instant at which ``minutes`` working minutes have elapsed since ``start``."""
        if minutes < 0:
            raise ValueError("minutes must not be negative")
        if minutes == 0:
            return start
        target = self.working_minute_index(start) + minutes
        return self.instant_of_index(target, aware=start.tzinfo is not None)

    def add_working_days(self, start: datetime, days: float) -> datetime:
        """``start`` plus ``days`` working days, a working day being the office minutes of one day."""
        return self.add_working_minutes(start, round(days * self.minutes_per_day))

    def days_to_minutes(self, days: float) -> int:
        return round(days * self.minutes_per_day)


class NaturalClock:
    """Elapsed natural (calendar-day) time, for items whose limits are in plain days (unit "day").

    Same interface as Calendar's index functions so the rules engine treats both alike.
    """

    minutes_per_day = _MINUTES_PER_DAY
    _EPOCH = datetime(ANCHOR_YEAR, 1, 1)

    def working_minute_index(self, t: datetime) -> int:
        return int((Calendar._local(t) - self._EPOCH).total_seconds() // 60)

    def index_of_iso(self, text: str) -> int:
        return self.working_minute_index(datetime.fromisoformat(text))

    def instant_of_index(self, index: int, *, aware: bool = True) -> datetime:
        result = self._EPOCH + timedelta(minutes=index)
        return result.replace(tzinfo=CST) if aware else result

    def days_to_minutes(self, days: float) -> int:
        return round(days * _MINUTES_PER_DAY)


__all__ = [
    "ANCHOR_YEAR",
    "CST",
    "Calendar",
    "CalendarYearMissing",
    "DayOverride",
    "LIBRARY_YEARS",
    "NaturalClock",
    "OfficeHours",
    "Overrides",
    "load_overrides",
    "parse_overrides",
]
