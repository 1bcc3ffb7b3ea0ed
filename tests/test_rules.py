"""The rules engine on real 2025-2027 calendar cases.

Expected instants were worked out by hand. Accepting at Friday 2025-09-26 09:00, the following
working days are: 9-28 (Sunday, 调休), 9-29, 9-30, [10-1..10-8 National Day], 10-9, 10-10, 10-11
(Saturday, 调休), 10-13, 10-14, 10-15, 10-16, 10-17, 10-20, ... 10-31 (the 21st). One working day
is 450 minutes (08:30-12:00, 13:30-17:30).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.core.calendar import Calendar, load_overrides
from node.features.rules import RulesConfig, RulesEngine, Thresholds

Record = tuple[str, dict[str, Any]]


def t(text: str) -> datetime:
    return datetime.fromisoformat(text + ":00+08:00")


def iso(text: str) -> str:
    return text + ":00+08:00"


ITEM: dict[str, Any] = {
    "item_code": "320300-ZJ-001",
    "name": "建筑工程施工许可",
    "item_type": "01",
    "dept": "320300-ZJ",
    "division": "320300",
    "case_kind": "2",
    "statutory_days": 20,
    "promised_days": 10,
    "unit": "workday",
    "steps": [
        {"step_code": "S1", "name": "受理", "limit_days": 1, "posts": ["窗口"]},
        {"step_code": "S2", "name": "审核", "limit_days": 3, "posts": ["科员", "科长"]},
        {"step_code": "S3", "name": "批准", "limit_days": 2, "posts": ["局长"]},
    ],
    "discretion": [
        {"circumstance": "一般", "min_amount": 1000, "max_amount": 5000},
        {"circumstance": "严重", "min_amount": 5000, "max_amount": 20000},
    ],
    "risk_points": [{"step_code": "S3", "evidence": "集体讨论记录"}],
    "major_threshold": 1_000_000,
}
COMMON = {"case_no": "C1", "division": "320303", "dept": "320300-ZJ", "item_code": "320300-ZJ-001"}
ACCEPT: Record = ("case.accept", {**COMMON, "time": iso("2025-09-26T09:00"), "accepted": True, "handler": "张三"})


def engine(*records: Record, calendar: Calendar | None = None, config: RulesConfig | None = None) -> RulesEngine:
    e = RulesEngine(calendar, config)
    e.feed("item", ITEM)
    for kind, payload in records:
        e.feed(kind, payload)
    return e


def step(no: int, code: str, post: str, *, action: str = "pass", start: str = "2025-09-26T09:00",
         end: str | None = "2025-09-26T10:00", **extra: Any) -> Record:  # fmt: skip
    return (
        "case.step",
        {**COMMON, "step_no": no, "step_code": code, "step_name": code, "handler": f"h{no}", "post": post,
         "action": action, "started_at": iso(start), "ended_at": iso(end) if end else None, **extra},
    )  # fmt: skip


def levels(alerts: Iterable[Mapping[str, Any]], rule: str) -> list[int]:
    return [a["level"] for a in alerts if a["rule_id"] == rule]


# ---- case cards on the exact working minute --------------------------------------------------------

SUSPEND: list[Record] = [
    ("case.suspend", {**COMMON, "suspend_no": "1", "suspend_kind": "2", "reason": "专家评审",
                      "approver": "局长", "started_at": iso("2025-10-09T09:00"), "approved_days": 5}),
    ("case.resume", {**COMMON, "suspend_no": "1", "ended_at": iso("2025-10-13T09:00")}),
]  # fmt: skip  # pauses exactly 3 working days (10-9, 10-10, 10-11)
CORRECTION: list[Record] = [
    ("case.correction_notice", {**COMMON, "notice_no": "1", "materials": ["图纸"], "issuer": "李四",
                                "time": iso("2025-09-29T10:00")}),
    ("case.correction_accepted", {**COMMON, "notice_no": "1", "time": iso("2025-09-30T10:00")}),
]  # fmt: skip  # pauses exactly 1 working day

CASE_CARDS = [
    # (name, extra records, level, first instant of the card)
    ("预警 promised-2d across National Day", [], 1, "2025-10-14T09:00"),
    ("黄牌 >promised+1d", [], 2, "2025-10-17T09:01"),
    ("红牌 >statutory+1d", [], 3, "2025-10-31T09:01"),
    ("预警 after a 3-day suspension", SUSPEND, 1, "2025-10-17T09:00"),
    ("黄牌 after a 3-day suspension", SUSPEND, 2, "2025-10-22T09:01"),
    ("预警 after a 1-day correction", CORRECTION, 1, "2025-10-15T09:00"),
    ("黄牌 after a 1-day correction", CORRECTION, 2, "2025-10-20T09:01"),
]


@pytest.mark.parametrize(("name", "extra", "level", "at"), CASE_CARDS, ids=[c[0] for c in CASE_CARDS])
def test_case_card_fires_on_the_exact_minute(name: str, extra: list[Record], level: int, at: str) -> None:
    before = engine(ACCEPT, *extra).scan(t(at) - timedelta(minutes=1))
    assert all(lv < level for lv in levels(before, "case_time")), name
    fired = engine(ACCEPT, *extra).scan(t(at))
    cards = [a for a in fired if a["rule_id"] == "case_time"]
    assert [a["level"] for a in cards] == [level], name
    assert cards[0]["at"] == iso(at)
    assert cards[0]["alert_id"] == f"case_time:320303:C1:{level}"
    assert cards[0]["object"] == "case" and cards[0]["category"] == "01" and cards[0]["case_no"] == "C1"


def test_cards_escalate_and_never_repeat() -> None:
    e = engine(ACCEPT)
    scans = ["2025-10-13T09:00", "2025-10-14T09:00", "2025-10-15T09:00", "2025-10-17T09:01",
             "2025-10-20T09:00", "2025-10-31T09:01", "2025-12-01T09:00"]  # fmt: skip
    got = [levels(e.scan(t(s)), "case_time") for s in scans]
    assert got == [[], [1], [], [2], [], [3], []]


def test_a_late_first_scan_emits_only_the_highest_level() -> None:
    e = engine(ACCEPT)
    assert levels(e.scan(t("2025-10-20T09:00")), "case_time") == [2]
    assert levels(e.scan(t("2025-10-21T09:00")), "case_time") == []


def test_an_open_correction_stops_the_clock() -> None:
    notice = CORRECTION[0]
    e = engine(ACCEPT, notice)
    assert e.scan(t("2026-06-01T09:00")) == []


# ---- completion ------------------------------------------------------------------------------------


def complete(at: str) -> Record:
    return ("case.complete", {**COMMON, "result_code": "6", "time": iso(at)})


def test_completion_one_minute_before_yellow_stops_it() -> None:
    e = engine(ACCEPT)
    assert levels(e.scan(t("2025-10-14T09:00")), "case_time") == [1]
    e.feed(*complete("2025-10-17T09:00"))
    assert e.scan(t("2025-10-17T09:01")) == []
    assert e.scan(t("2025-12-31T17:00")) == []
    assert e.open_case_count() == 0


def test_completion_stops_monitoring_even_when_a_threshold_was_passed_unseen() -> None:
    # no scan happened between the yellow crossing and completion: monitoring has stopped anyway
    e = engine(ACCEPT, step(2, "S2", "科员", start="2025-09-30T09:00", end=None), complete("2025-10-20T10:00"))
    assert [a for a in e.scan(t("2025-10-21T09:00")) if a["rule_id"].endswith("_time")] == []


def test_refused_case_is_not_monitored_and_needs_a_reason() -> None:
    refused = ("case.accept", {**COMMON, "time": iso("2025-09-26T09:00"), "accepted": False, "handler": "张三"})
    e = RulesEngine()
    e.feed("item", ITEM)
    out = e.feed(*refused)
    assert [a["rule_id"] for a in out] == ["refusal_reason"]
    assert e.scan(t("2025-12-01T09:00")) == []
    with_reason = ("case.accept", {**refused[1], "refuse_reason": "不属于本机关职权范围"})
    assert engine(with_reason).feed(*with_reason) == []


# ---- single step and special procedure --------------------------------------------------------------

STEP_CARDS = [
    # step S2 (limit 3 working days) started 2025-09-30 09:00
    ("80% = 1080 min, a deadline ending a morning", None, 1, "2025-10-10T12:00"),
    ("past the limit on the make-up Saturday", None, 2, "2025-10-11T09:01"),
    ("past twice the limit", None, 3, "2025-10-15T09:01"),
]


@pytest.mark.parametrize(("name", "end", "level", "at"), STEP_CARDS, ids=[c[0] for c in STEP_CARDS])
def test_step_card_fires_on_the_exact_minute(name: str, end: str | None, level: int, at: str) -> None:
    rec = step(2, "S2", "科员", start="2025-09-30T09:00", end=end)
    before = engine(ACCEPT, rec).scan(t(at) - timedelta(minutes=1))
    assert all(lv < level for lv in levels(before, "step_time")), name
    cards = [a for a in engine(ACCEPT, rec).scan(t(at)) if a["rule_id"] == "step_time"]
    assert [(a["level"], a["at"], a["step_no"]) for a in cards] == [(level, iso(at), 2)]


def test_a_step_that_ended_keeps_the_level_it_reached() -> None:
    rec = step(2, "S2", "科员", start="2025-09-30T09:00", end="2025-10-11T10:00")
    e = engine(ACCEPT, rec)
    assert levels(e.scan(t("2025-11-20T09:00")), "step_time") == [2]


def special(resume: str | None) -> list[Record]:
    recs: list[Record] = [SUSPEND[0]]
    if resume:
        recs.append(("case.resume", {**COMMON, "suspend_no": "1", "ended_at": iso(resume)}))
    return recs


SPECIAL_CARDS = [
    # 5 approved working days from 2025-10-09 09:00
    ("2 days before the approved end", 1, "2025-10-13T09:00"),
    ("past the approved end", 2, "2025-10-15T09:01"),
    ("more than 1 day past", 3, "2025-10-16T09:01"),
]


@pytest.mark.parametrize(("name", "level", "at"), SPECIAL_CARDS, ids=[c[0] for c in SPECIAL_CARDS])
def test_special_procedure_card_fires_on_the_exact_minute(name: str, level: int, at: str) -> None:
    before = engine(ACCEPT, *special(None)).scan(t(at) - timedelta(minutes=1))
    assert all(lv < level for lv in levels(before, "special_time")), name
    cards = [a for a in engine(ACCEPT, *special(None)).scan(t(at)) if a["rule_id"] == "special_time"]
    assert [(a["level"], a["at"], a["suspend_no"]) for a in cards] == [(level, iso(at), "1")]


def test_resuming_stops_the_special_procedure_clock() -> None:
    e = engine(ACCEPT, *special("2025-10-15T09:30"))
    assert levels(e.scan(t("2025-11-20T09:00")), "special_time") == [2]


# ---- complaints ------------------------------------------------------------------------------------

COMPLAINT = {"complaint_no": "TS-1", "complainant": "王五", "respondent_unit": "320300-ZJ",
             "content": "办理拖延", "source": "12345", "registered_at": iso("2025-10-09T09:00"),
             "due_at": iso("2025-10-15T17:30"), "division": "320300"}  # fmt: skip
COMPLAINT_CARDS = [
    ("2 days before due", 1, "2025-10-13T17:30"),
    ("more than 1 day past due", 2, "2025-10-17T08:31"),
    ("more than 2 days past due (over the weekend)", 3, "2025-10-20T08:31"),
]


@pytest.mark.parametrize(("name", "level", "at"), COMPLAINT_CARDS, ids=[c[0] for c in COMPLAINT_CARDS])
def test_complaint_card_fires_on_the_exact_minute(name: str, level: int, at: str) -> None:
    e = RulesEngine()
    e.feed("complaint.register", COMPLAINT)
    assert all(lv < level for lv in levels(e.scan(t(at) - timedelta(minutes=1)), "complaint_time"))
    e = RulesEngine()
    e.feed("complaint.register", COMPLAINT)
    cards = e.scan(t(at))
    assert [(a["level"], a["at"], a["complaint_no"], a["object"]) for a in cards] == [
        (level, iso(at), "TS-1", "complaint")
    ]


def test_closed_complaint_is_not_monitored() -> None:
    e = RulesEngine()
    e.feed("complaint.register", COMPLAINT)
    e.close_complaint("TS-1", "320300")
    assert e.scan(t("2025-12-01T09:00")) == []


# ---- event rules -----------------------------------------------------------------------------------

EVENT_CASES: list[tuple[str, list[Record], list[tuple[str, int, int | None]]]] = [
    # (name, records, expected [(rule_id, level, step_no)])
    ("clean flow", [step(1, "S1", "窗口"), step(2, "S2", "科员"),
                    step(3, "S3", "局长", evidence=["集体讨论记录"])], []),
    ("post not allowed for the step", [step(1, "S1", "科员")], [("permission", 4, 1)]),
    ("step skipped", [step(1, "S1", "窗口"), step(2, "S3", "局长", evidence=["集体讨论记录"])],
     [("workflow", 1, 2)]),
    ("first step skipped", [step(1, "S2", "科员")], [("workflow", 1, 1)]),
    ("unknown step", [step(1, "S9", "窗口")], [("workflow", 1, 1)]),
    ("backwards without a return", [step(1, "S1", "窗口"), step(2, "S2", "科员"), step(3, "S1", "窗口")],
     [("workflow", 1, 3)]),
    ("backwards after a return is fine", [step(1, "S1", "窗口"), step(2, "S2", "科员", action="return"),
                                          step(3, "S1", "窗口")], []),
    ("penalty above its band", [step(1, "S1", "窗口", amount=6000, circumstance="一般")],
     [("discretion", 4, 1)]),
    ("penalty inside its band", [step(1, "S1", "窗口", amount=6000, circumstance="严重")], []),
    ("penalty for an unknown circumstance", [step(1, "S1", "窗口", amount=100, circumstance="轻微")],
     [("discretion", 4, 1)]),
    ("risk point without evidence", [step(1, "S1", "窗口"), step(2, "S2", "科员"), step(3, "S3", "局长")],
     [("risk_evidence", 1, 3)]),
    ("risk point still open: not yet", [step(1, "S1", "窗口"), step(2, "S2", "科员"),
                                        step(3, "S3", "局长", end=None)], []),
    ("major by amount", [("case.apply", {**COMMON, "time": iso("2025-09-26T08:50"), "amount": 2_000_000})],
     [("major", 1, None)]),
    ("not major", [("case.apply", {**COMMON, "time": iso("2025-09-26T08:50"), "amount": 900_000})], []),
    ("assigned by the city government", [("case.apply", {**COMMON, "time": iso("2025-09-26T08:50"),
                                                         "assigned": True})], [("major", 1, None)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "records", "expected"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event_rules(name: str, records: list[Record], expected: list[tuple[str, int, int | None]]) -> None:
    e = RulesEngine()
    e.feed("item", ITEM)
    got = e.feed_many([ACCEPT, *records])
    assert sorted((a["rule_id"], a["level"], a["step_no"]) for a in got) == sorted(expected), name
    # and the same when the item arrives last
    late = RulesEngine()
    got_late = late.feed_many([ACCEPT, *records, ("item", ITEM)])
    assert sorted((a["rule_id"], a["level"], a["step_no"]) for a in got_late) == sorted(expected), name


def test_thresholds_are_configurable_per_item_type() -> None:
    fast = Thresholds(case_warn_before_days=5, disabled_rules=frozenset({"permission"}))
    config = RulesConfig(by_item_type={"01": fast})
    e = engine(ACCEPT, config=config)
    # promised 10 - 5 = 5 working days after 2025-09-26 09:00 is 2025-10-10 09:00
    assert levels(e.scan(t("2025-10-10T08:59")), "case_time") == []
    assert levels(e.scan(t("2025-10-10T09:00")), "case_time") == [1]
    assert engine(config=config).feed(*step(1, "S1", "科员")) == []
    other = RulesConfig.from_dict({"item_types": {"02": {"case_warn_before_days": 5}}})
    assert levels(engine(ACCEPT, config=other).scan(t("2025-10-10T09:00")), "case_time") == []


# ---- restarts, replay, missing years -------------------------------------------------------------


def test_state_survives_a_restart_without_repeats() -> None:
    e = engine(ACCEPT, step(1, "S1", "科员"))
    first = e.scan(t("2025-10-14T09:00"))
    assert levels(first, "case_time") == [1]
    state = json.loads(json.dumps(e.state_dict(), ensure_ascii=False))
    again = RulesEngine.from_state(state)
    assert again.feed(*step(1, "S1", "科员")) == []  # permission already reported
    assert again.scan(t("2025-10-14T10:00")) == []
    assert levels(again.scan(t("2025-10-17T09:01")), "case_time") == [2]


def test_replaying_alert_records_rebuilds_the_emitted_set() -> None:
    e = engine(ACCEPT)
    alerts = e.scan(t("2025-10-17T09:01"))
    fresh = RulesEngine()
    fresh.feed("item", ITEM)
    fresh.feed_many([ACCEPT, *(("alert", a) for a in alerts)])
    assert fresh.scan(t("2025-10-17T10:00")) == []
    assert levels(fresh.scan(t("2025-10-31T09:01")), "case_time") == [3]


def test_missing_year_raises_an_operator_alert_once() -> None:
    acc = ("case.accept", {**COMMON, "time": iso("2026-12-30T09:00"), "accepted": True})
    e = engine(acc)
    out = e.scan(t("2027-01-06T10:00"))
    assert [(a["rule_id"], a["level"], a["year"]) for a in out] == [("calendar_year_missing", 4, 2027)]
    assert "fednode calendar import" in out[0]["message"]
    assert e.missing_years == {2027}
    assert e.scan(t("2027-01-07T10:00")) == []


def test_operator_overrides_make_2027_usable(tmp_path: Path) -> None:
    path = tmp_path / "2027.csv"
    path.write_text("2027,year\n2027-01-01,holiday,元旦\n", encoding="utf-8")
    cal = Calendar().with_overrides(load_overrides(path))
    short = {**ITEM, "promised_days": 3, "statutory_days": 5}
    e = RulesEngine(cal)
    e.feed("item", short)
    e.feed("case.accept", {**COMMON, "time": iso("2026-12-30T09:00"), "accepted": True})
    # 3 + 1 working days: 12-31, [1-1 holiday, weekend], 1-4, 1-5, 1-6
    assert levels(e.scan(t("2027-01-06T09:00")), "case_time") == [1]
    cards = e.scan(t("2027-01-06T09:01"))
    assert [(a["level"], a["at"]) for a in cards] == [(2, iso("2027-01-06T09:01"))]


# ---- property: order and repetition do not change the set of alerts ------------------------------

SCANS = [t("2025-10-10T12:00"), t("2025-10-20T09:00"), t("2025-11-30T09:00")]
_CODES = ["S1", "S2", "S3", "S9"]
_POSTS = ["窗口", "科员", "局长"]


@st.composite
def case_records(draw: st.DrawFn, case_no: str) -> list[Record]:
    common = {**COMMON, "case_no": case_no}
    day = draw(st.integers(0, 6))
    base = datetime(2025, 9, 24, 9, 0) + timedelta(days=day)
    stamp = lambda hours: (base + timedelta(hours=hours)).isoformat() + "+08:00"  # noqa: E731
    recs: list[Record] = [
        ("case.apply", {**common, "time": stamp(-1), "amount": draw(st.sampled_from([None, 10, 2e6])),
                        "assigned": draw(st.booleans())}),
        ("case.accept", {**common, "time": stamp(0), "accepted": draw(st.booleans() | st.just(True)),
                         "refuse_reason": "", "handler": "x"}),
    ]  # fmt: skip
    hours = 0
    for no in range(1, draw(st.integers(0, 4)) + 1):
        start = hours + draw(st.integers(0, 30))
        hours = start + draw(st.integers(1, 200))
        ended = draw(st.booleans())
        recs.append(("case.step", {**common, "step_no": no, "step_code": draw(st.sampled_from(_CODES)),
                                   "post": draw(st.sampled_from(_POSTS)), "handler": "h",
                                   "action": draw(st.sampled_from(["pass", "return"])),
                                   "started_at": stamp(start), "ended_at": stamp(hours) if ended else None,
                                   "amount": draw(st.sampled_from([None, 3000, 9000])), "circumstance": "一般",
                                   "evidence": draw(st.sampled_from([[], ["集体讨论记录"]]))}))  # fmt: skip
    if draw(st.booleans()):
        s = draw(st.integers(0, 150))
        recs.append(("case.suspend", {**common, "suspend_no": "1", "suspend_kind": "1",
                                      "started_at": stamp(s), "approved_days": draw(st.integers(1, 6))}))  # fmt: skip
        if draw(st.booleans()):
            recs.append(("case.resume", {**common, "suspend_no": "1", "ended_at": stamp(s + draw(st.integers(1, 200)))}))
    if draw(st.booleans()):
        s = draw(st.integers(0, 150))
        recs.append(("case.correction_notice", {**common, "notice_no": "1", "time": stamp(s)}))
        if draw(st.booleans()):
            recs.append(("case.correction_accepted", {**common, "notice_no": "1", "time": stamp(s + 30)}))
    if draw(st.booleans()):
        recs.append(("case.complete", {**common, "time": stamp(draw(st.integers(1, 800))), "result_code": "6"}))
    return recs


@st.composite
def record_sets(draw: st.DrawFn) -> list[Record]:
    recs: list[Record] = [("item", ITEM)]
    for i in range(draw(st.integers(1, 4))):
        recs.extend(draw(case_records(f"C{i}")))
    if draw(st.booleans()):
        recs.append(("complaint.register", COMPLAINT))
    return recs


def run(records: Iterable[Record], scans: Iterable[datetime] = SCANS) -> set[str]:
    e = RulesEngine()
    out = e.feed_many(records)
    for now in scans:
        out.extend(e.scan(now))
    ids = [a["alert_id"] for a in out]
    assert len(ids) == len(set(ids)), "an alert was emitted twice"
    return {json.dumps(a, sort_keys=True, ensure_ascii=False) for a in out}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), records=record_sets())
def test_same_records_any_order_any_repetition_same_alerts(data: st.DataObject, records: list[Record]) -> None:
    reference = run(records)
    shuffled = data.draw(st.permutations(records))
    repeats = data.draw(st.integers(1, 3))
    assert run(shuffled * repeats) == reference
    # a restart half-way (state saved and restored) changes nothing either
    half = data.draw(st.integers(0, len(shuffled)))
    first = RulesEngine()
    out = first.feed_many(shuffled[:half])
    second = RulesEngine.from_state(json.loads(json.dumps(first.state_dict())))
    out.extend(second.feed_many(shuffled[half:]))
    for now in SCANS:
        out.extend(second.scan(now))
    assert {json.dumps(a, sort_keys=True, ensure_ascii=False) for a in out} == reference


def test_the_property_test_can_see_a_difference() -> None:
    # guard against a vacuous property: dropping one record does change the alerts
    records: list[Record] = [("item", ITEM), ACCEPT, step(1, "S1", "科员")]
    assert run(records) != run(records[:-1])


# ---- bounded memory: cases that leave memory and come back give the same alerts ----------------------


def run_bounded(records: list[Record], cuts: list[int], scans: Iterable[datetime] = SCANS) -> tuple[set[str], int]:
    """What the rules service does, with a dict for its archive: bring back the cases a batch names,
    feed it, let go of what can leave, and bring back the cases waiting for an item when it arrives.
    Returns the alerts and the most cases held at once."""
    e = RulesEngine(bounded=True)
    kept: dict[str, tuple[str, bool, str]] = {}  # case -> (item_code, waits for it, JSON state)
    out: list[dict[str, Any]] = []
    most = 0

    def let_go() -> None:
        for key, item_code, waits, state in e.evict():
            kept[key] = (item_code, waits, json.dumps(state, ensure_ascii=False))

    def bring_back(keys: Iterable[str]) -> None:
        for key in keys:
            if not e.has_case(key) and key in kept:
                e.restore_case(json.loads(kept[key][2]))

    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        batch = records[lo:hi]
        bring_back({k for kind, p in batch if (k := e.case_key(kind, p)) is not None})
        for kind, payload in batch:
            out.extend(e.feed(kind, payload, settle=False))
        most = max(most, e.held_case_count())
        let_go()
        for code in {p["item_code"] for kind, p in batch if kind == "item"}:
            waiting = [k for k, (item, waits, _) in kept.items() if waits and item == code and not e.has_case(k)]
            bring_back(waiting)
            for key in waiting:
                out.extend(e.revisit(key))
            let_go()
    for now in scans:
        out.extend(e.scan(now))
        let_go()
    ids = [a["alert_id"] for a in out]
    assert len(ids) == len(set(ids)), "an alert was emitted twice"
    return {json.dumps(a, sort_keys=True, ensure_ascii=False) for a in out}, most


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), records=record_sets())
def test_cases_leaving_memory_and_coming_back_change_no_alert(data: st.DataObject, records: list[Record]) -> None:
    reference = run(records)
    shuffled = data.draw(st.permutations(records))  # the item may come after the cases that need it
    repeated = shuffled * data.draw(st.integers(1, 2))
    cuts = data.draw(st.lists(st.integers(0, len(repeated)), max_size=8))
    assert run_bounded(repeated, cuts)[0] == reference


def test_closed_cases_leave_memory_and_the_archive_state_round_trips() -> None:
    records: list[Record] = [("item", ITEM)]
    for i in range(50):
        no = {"case_no": f"K{i}"}
        records += [
            ("case.accept", {**ACCEPT[1], **no}),
            ("case.step", {**step(1, "S1", "科员")[1], **no}),  # 科员 may not do S1: a permission alert
            ("case.complete", {**COMMON, **no, "time": iso("2025-09-30T10:00"), "result_code": "6"}),
        ]
    alerts, most = run_bounded(records, list(range(0, len(records), 30)))
    assert len([a for a in alerts if '"permission"' in a]) == 50  # one per case, none repeated
    assert most <= 30  # at most a batch's cases: closed ones do not stay
    e = RulesEngine(bounded=True)
    assert e.feed_many(records[:4])  # the item, then case K0 from acceptance to completion
    ((key, item_code, waits, state),) = e.evict()
    assert (key, item_code, waits) == ("320303/K0", ITEM["item_code"], False) and e.held_case_count() == 0
    again = RulesEngine(bounded=True)
    again.restore_case(json.loads(json.dumps(state)))
    assert json.dumps(again.case_state(again._cases[key])) == json.dumps(state)
    assert again.feed(*records[2]) == []  # the permission alert it raised came back with it
