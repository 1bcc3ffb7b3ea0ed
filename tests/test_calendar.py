"""The working-day calendar on real 2025-2026 dates (expected values worked out by hand from the
State Council notices, and cross-checked against chinese_calendar where it applies)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import chinese_calendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.calendar import CST, Calendar, CalendarYearMissing, OfficeHours, load_overrides
from node.core.errors import ConfigError, FednodeError


def t(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00")


CAL = Calendar()


# ---- working days --------------------------------------------------------------------------------

DAYS = [
    # (date, working?, why)
    (date(2025, 9, 26), True, "Friday before National Day"),
    (date(2025, 9, 27), False, "Saturday, ordinary weekend"),
    (date(2025, 9, 28), True, "Sunday, 调休 make-up working day"),
    (date(2025, 10, 1), False, "National Day"),
    (date(2025, 10, 6), False, "National Day holiday on a Monday"),
    (date(2025, 10, 8), False, "last day of the holiday (Wednesday)"),
    (date(2025, 10, 9), True, "first working day after the holiday"),
    (date(2025, 10, 11), True, "Saturday, 调休 make-up working day"),
    (date(2025, 10, 12), False, "Sunday"),
    (date(2026, 1, 1), False, "New Year 2026"),
    (date(2026, 1, 4), True, "Sunday 2026-01-04, 调休"),
    (date(2026, 2, 14), True, "Saturday before Spring Festival 2026, 调休"),
    (date(2026, 2, 17), False, "Spring Festival 2026"),
]


@pytest.mark.parametrize(("day", "working", "why"), DAYS)
def test_working_days(day: date, working: bool, why: str) -> None:
    assert CAL.is_working_day(day) is working, why
    # the package is the source of truth for official days; the calendar must agree with it
    assert chinese_calendar.is_workday(day) is working


def test_a_weekend_rule_alone_would_be_wrong() -> None:
    # the two make-up days are weekend days and the holiday has weekdays: guards against a
    # regression to `weekday() < 5`
    assert date(2025, 9, 28).weekday() == 6 and CAL.is_working_day(date(2025, 9, 28))
    assert date(2025, 10, 8).weekday() == 2 and not CAL.is_working_day(date(2025, 10, 8))


def test_covered_years_come_from_the_package() -> None:
    years = CAL.covered_years()
    assert 2025 in years and 2026 in years
    assert 2027 not in years


# ---- working minutes (default office hours 08:30-12:00, 13:30-17:30 = 450 minutes) ---------------

BETWEEN = [
    # (start, end, minutes, why)
    ("2025-09-30T09:00", "2025-10-09T09:00", 450, "the whole National Day holiday counts nothing"),
    ("2025-09-26T17:00", "2025-09-29T08:30", 30 + 450, "Saturday off, make-up Sunday counts"),
    ("2025-10-10T17:00", "2025-10-13T09:00", 30 + 450 + 30, "make-up Saturday 10-11 counts"),
    ("2025-10-09T11:00", "2025-10-09T14:00", 60 + 30, "lunch break does not count"),
    ("2025-10-09T18:00", "2025-10-10T08:00", 0, "night is outside office hours"),
    ("2025-10-09T12:10", "2025-10-09T13:20", 0, "inside the lunch break"),
    ("2025-12-31T17:00", "2026-01-05T09:00", 30 + 450 + 30, "New Year off, Sunday 2026-01-04 works"),
    ("2025-10-10T09:00", "2025-10-09T09:00", 0, "end before start"),
]


@pytest.mark.parametrize(("start", "end", "minutes", "why"), BETWEEN)
def test_working_minutes_between(start: str, end: str, minutes: int, why: str) -> None:
    assert CAL.working_minutes_between(t(start), t(end)) == minutes, why


def test_other_time_zones_are_converted_to_china_time() -> None:
    utc = datetime(2025, 10, 9, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
    assert CAL.working_minutes_between(utc, t("2025-10-09T10:00")) == 60


ADD = [
    # (start, minutes, expected, why)
    ("2025-09-30T17:00", 30, "2025-09-30T17:30", "a deadline that ends the day lands at 17:30"),
    ("2025-09-30T17:00", 31, "2025-10-09T08:31", "the next minute is after the holiday"),
    ("2025-10-10T17:00", 60, "2025-10-11T09:00", "make-up Saturday"),
    ("2025-10-09T11:50", 20, "2025-10-09T13:40", "over the lunch break"),
    ("2025-09-30T20:00", 1, "2025-10-09T08:31", "start outside office hours"),
    ("2025-10-09T09:00", 0, "2025-10-09T09:00", "zero is the start itself"),
]


@pytest.mark.parametrize(("start", "minutes", "expected", "why"), ADD)
def test_add_working_minutes(start: str, minutes: int, expected: str, why: str) -> None:
    assert CAL.add_working_minutes(t(start), minutes) == t(expected), why


def test_add_working_days_across_national_day() -> None:
    start = t("2025-09-26T09:00")
    assert CAL.add_working_days(start, 1) == t("2025-09-28T09:00")  # make-up Sunday
    assert CAL.add_working_days(start, 4) == t("2025-10-09T09:00")
    assert CAL.add_working_days(start, 6) == t("2025-10-11T09:00")  # make-up Saturday
    assert CAL.add_working_days(start, 10) == t("2025-10-16T09:00")
    assert CAL.add_working_days(start, 0.5) == t("2025-09-26T14:15")  # 225 minutes


def test_naive_times_stay_naive() -> None:
    assert CAL.add_working_minutes(datetime(2025, 9, 30, 17, 0), 31) == datetime(2025, 10, 9, 8, 31)


def test_negative_minutes_are_refused() -> None:
    with pytest.raises(ValueError):
        CAL.add_working_minutes(t("2025-10-09T09:00"), -1)


# up to 2026-10-15: start + 20,000 working minutes (44 working days) must stay inside the covered years
_instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 10, 15)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=CST)
)


@settings(max_examples=200, deadline=None)
@given(start=_instants, minutes=st.integers(min_value=0, max_value=20_000))
def test_add_then_measure_round_trips(start: datetime, minutes: int) -> None:
    end = CAL.add_working_minutes(start, minutes)
    assert CAL.working_minutes_between(start, end) == minutes
    # the fast path for record timestamps agrees with the datetime path
    for instant in (start, end):
        assert CAL.index_of_iso(instant.isoformat()) == CAL.working_minute_index(instant)
        assert CAL.index_of_iso(instant.replace(tzinfo=None).isoformat()) == CAL.working_minute_index(instant)
    if minutes > 0:  # earliest instant: one minute earlier, the time is not yet used up
        assert CAL.working_minutes_between(start, end - timedelta(minutes=1)) == minutes - 1


@settings(max_examples=100, deadline=None)
@given(a=_instants, b=_instants, c=_instants)
def test_between_is_additive(a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    assert CAL.working_minutes_between(a, c) == CAL.working_minutes_between(
        a, b
    ) + CAL.working_minutes_between(b, c)


def test_custom_office_hours() -> None:
    cal = Calendar(OfficeHours.parse("09:00-12:00,14:00-18:00"))
    assert cal.minutes_per_day == 420
    assert cal.working_minutes_between(t("2025-10-09T08:00"), t("2025-10-09T20:00")) == 420
    with pytest.raises(ConfigError):
        OfficeHours.parse("13:00-12:00")


# ---- an uncovered year fails loudly --------------------------------------------------------------


def test_missing_year_2027_raises() -> None:
    with pytest.raises(CalendarYearMissing) as info:
        CAL.is_working_day(date(2027, 1, 4))
    err = info.value
    assert isinstance(err, FednodeError)
    assert err.year == 2027 and err.code == "calendar_year_missing"
    assert "2027" in err.message and "`fednode calendar import`" in err.fix and "2027" in err.fix
    with pytest.raises(CalendarYearMissing):
        CAL.working_minutes_between(t("2026-12-31T09:00"), t("2027-01-04T09:00"))
    with pytest.raises(CalendarYearMissing):
        CAL.add_working_days(t("2026-12-30T09:00"), 5)


CSV_2027 = """\
date,kind,name
# the operator's import of the 2027 notice (example data)
2027,year,2027年节假日安排
2027-01-01,holiday,元旦
2027-02-06,work,春节调休
2027-02-08,holiday,春节
"""

TOML_2027 = """\
years = [2027]
[[days]]
date = 2027-01-01
kind = "holiday"
name = "元旦"
[[days]]
date = "2027-02-06"
kind = "work"
"""


@pytest.mark.parametrize(("name", "text"), [("cal2027.csv", CSV_2027), ("cal2027.toml", TOML_2027)])
def test_operator_overrides_make_2027_usable(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    cal = CAL.with_overrides(load_overrides(path))
    assert 2027 in cal.covered_years()
    assert cal.is_working_day(date(2027, 1, 1)) is False  # listed holiday (a Friday)
    assert cal.is_working_day(date(2027, 1, 4)) is True  # ordinary Monday
    assert cal.is_working_day(date(2027, 1, 2)) is False  # ordinary Saturday
    assert cal.is_working_day(date(2027, 2, 6)) is True  # make-up Saturday
    # Thursday 17:00 -> Monday 09:00: Friday 2027-01-01 is the holiday
    assert cal.working_minutes_between(t("2026-12-31T17:00"), t("2027-01-04T09:00")) == 30 + 30
    assert cal.add_working_days(t("2026-12-31T09:00"), 1) == t("2027-01-04T09:00")


def test_overrides_without_the_year_line_only_fix_their_dates(tmp_path: Path) -> None:
    path = tmp_path / "some.csv"
    path.write_text("2027-01-01,holiday,元旦\n", encoding="utf-8")
    cal = CAL.with_overrides(load_overrides(path))
    assert cal.is_working_day(date(2027, 1, 1)) is False
    with pytest.raises(CalendarYearMissing):
        cal.is_working_day(date(2027, 1, 4))


def test_local_override_beats_the_official_list(tmp_path: Path) -> None:
    path = tmp_path / "local.csv"
    path.write_text("2025-10-08,work,本地加班\n2025-10-09,holiday,本地假日\n", encoding="utf-8")
    cal = CAL.with_overrides(load_overrides(path))
    assert cal.is_working_day(date(2025, 10, 8)) and not cal.is_working_day(date(2025, 10, 9))
    assert cal.add_working_minutes(t("2025-09-30T17:00"), 31) == t("2025-10-08T08:31")
    assert CAL.add_working_minutes(t("2025-09-30T17:00"), 31) == t("2025-10-09T08:31")  # unchanged


@pytest.mark.parametrize(
    "text",
    [
        "2027-13-01,holiday\n",  # not a date
        "2027-01-01,party\n",  # unknown kind
        "2027-01-01\n",  # no kind
        "2027-01-01,holiday\n2027-01-01,work\n",  # contradiction
        "20x7,year\n",  # not a year
    ],
)
def test_bad_override_files_name_the_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_overrides(path)
    assert str(path) in info.value.message
