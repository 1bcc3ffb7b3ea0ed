"""Statistics (node/stats), the supervisor work log (node/auditlog.py) and `fednode stats`/`worklog`.

The fixture below is computed BY HAND (working day = 450 minutes, 08:30-12:00 + 13:30-17:30;
2025-11-10 is a Monday, no holiday that week):

division 320303, dept 320303-SC; item I1 (type 01, promised 3 wd = 1350 min, statutory 5 wd = 2250);
item I2 (type 02, unit "day": promised 1 d = 1440 min, statutory 2 d = 2880).

| case | item | accepted          | completed         | pauses            | used  | on time | early |
|------|------|-------------------|-------------------|-------------------|-------|---------|-------|
| C1   | I1   | Mon 11-10 09:00   | Wed 11-12 09:00   |                   | 900   | yes     | yes   |
| C2   | I1   | Mon 11-10 09:00   | Thu 11-13 09:00   |                   | 1350  | yes     | no    |
| C3   | I1   | Mon 11-10 09:00   | Mon 11-17 09:00   |                   | 2250  | no      | no    |
| C4   | I1   | Mon 11-10 09:00   | Fri 11-14 09:00   | 11-11..11-13 09:00| 900   | yes     | yes   |
| C5   | I1   | Tue 11-11 09:00   | —                 |                   |       |         |       |
| C6   | I1   | refused 11-11     |                   |                   |       |         |       |
| C7   | I2   | Mon 11-10 09:00   | Tue 11-11 21:00   |                   | 2160 (natural) | no | no |

accepted 6, completed 5 → 办结率 5/6; measured 5: 按时 3/5, 提前 2/5;
承诺提速率 = (4×1350 + 1440 − 7560) / 6840 = −720/6840; 法定提速率 = (4×2250 + 2880 − 7560) / 11880 = 4320/11880;
evaluations C1 "1", C2 "2", C3 "4" → 满意度 2/3; cards: a 黄牌 on a case and a 预警 on a step count, a
严重违规 and a complaint card do not → 2 × 100 / 6; tickets to 320303: on time, late, unanswered → 1/3;
17 case events, all written in 2025 and stored now → 数据报送完成率 0/17.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import node.core.schema.stats  # noqa: F401 — the tables on node.schema.metadata
from node.app import stats as stats_cmd
from node.core import indicators as ind
from node.core import schema
from node.core.calendar import Calendar
from node.core.errors import ConfigError
from node.core.records import build_body, channel_of_kind, encode_payload, now_us
from node.core.store import Row, Store
from node.features import worklog as auditlog
from node.features.stats import projection, query
from node.features.stats.config import StatsConfig, SupervisorRules

CFG = StatsConfig()
CAL = Calendar()
SC = "320303-SC"


def put(store: Store, origin: str, kind: str, payload: Any, *, raw: bytes | None = None) -> None:
    """Append one record to ``origin``'s log in ``store`` (as if it had arrived from that node)."""
    channel = channel_of_kind(kind)
    with store.write() as tx:
        head = tx.head(origin, channel)
        seq = head.seq + 1
        body = build_body(origin=origin, channel=channel, seq=seq, kind=kind,
                          payload=raw if raw is not None else encode_payload(payload))
        tx.append(origin, channel, [Row(seq, body, b"", b"", kind, "", now_us())])


def item(code: str, item_type: str, promised: float, statutory: float, unit: str = "workday",
         division: str = "320303", dept: str = SC) -> dict[str, Any]:
    return {"item_code": code, "name": code, "item_type": item_type, "dept": dept, "division": division,
            "case_kind": "2", "statutory_days": statutory, "promised_days": promised, "unit": unit, "steps": []}


def ev(kind: str, case_no: str, time: str, item_code: str = "I1", division: str = "320303", dept: str = SC,
       **extra: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"case_no": case_no, "item_code": item_code, "division": division, "dept": dept,
                  "time": time, **extra}


def t(day: int, hour: int = 9, month: int = 11, year: int = 2025) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:00:00+08:00"


def county_records(division: str = "320303", dept: str = SC) -> list[tuple[str, dict[str, Any]]]:
    d = {"division": division, "dept": dept}
    p = division  # case numbers unique per division
    return [
        ("item", item("I1", "01", 3, 5, division=division, dept=dept)),
        ("item", item("I2", "02", 1, 2, unit="day", division=division, dept=dept)),
        ev("case.accept", f"{p}C1", t(10), accepted=True, **d), ev("case.complete", f"{p}C1", t(12), result_code="0", **d),
        ev("case.evaluate", f"{p}C1", t(12, 10), satisfaction="1", **d),
        ev("case.accept", f"{p}C2", t(10), accepted=True, **d), ev("case.complete", f"{p}C2", t(13), result_code="6", **d),
        ev("case.evaluate", f"{p}C2", t(13, 10), satisfaction="2", **d),
        ev("case.accept", f"{p}C3", t(10), accepted=True, **d), ev("case.complete", f"{p}C3", t(17), result_code="0", **d),
        ev("case.evaluate", f"{p}C3", t(17, 10), satisfaction="4", **d),
        ev("case.accept", f"{p}C4", t(10), accepted=True, **d),
        ev("case.suspend", f"{p}C4", t(11), suspend_no=1, suspend_kind="1", reason="r", approver="a",
           started_at=t(11), approved_days=2, **d),
        ev("case.resume", f"{p}C4", t(13), suspend_no=1, ended_at=t(13), **d),
        ev("case.complete", f"{p}C4", t(14), result_code="0", **d),
        ev("case.accept", f"{p}C5", t(11), accepted=True, **d),
        ev("case.accept", f"{p}C6", t(11), accepted=False, refuse_reason="材料不全", **d),
        ev("case.accept", f"{p}C7", t(10), item_code="I2", accepted=True, **d),
        ev("case.complete", f"{p}C7", t(11, 21), item_code="I2", result_code="0", **d),
        ("alert", _alert(f"{p}-a1", 2, "case", division, dept)),
        ("alert", _alert(f"{p}-a2", 1, "step", division, dept)),
        ("alert", _alert(f"{p}-a3", 4, "case", division, dept)),
        ("alert", _alert(f"{p}-a4", 3, "complaint", division, dept)),
    ]


def _alert(alert_id: str, level: int, obj: str, division: str, dept: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "rule_id": "case_time", "category": "01", "level": level, "object": obj,
            "division": division, "dept": dept, "item_code": "I1", "message": "m", "at": t(20), "source": "engine"}


def ticket_records(to: str = "320303") -> list[tuple[str, str, dict[str, Any]]]:
    """(writer, kind, payload): three tickets from 320300 to ``to``: replied on time, late, unanswered."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    base = 0 if to == "320303" else 10  # ticket numbers are unique per issuer
    for n, reply_day in ((base + 1, 12), (base + 2, 25), (base + 3, None)):
        no = f"320300-{n:06d}"
        out.append(("320300", "ticket.issue", {"ticket": no, "actor": "王", "at": t(10), "node": "320300", "to": to,
                                               "subject": "督办", "sign_deadline": t(11), "reply_deadline": t(20)}))
        out.append((to, "ticket.delivered", {"ticket": no, "actor": "system", "at": t(10, 10), "node": to}))
        if reply_day is not None:
            out.append((to, "ticket.sign", {"ticket": no, "actor": "李", "at": t(10, 11), "node": to}))
            out.append((to, "ticket.reply", {"ticket": no, "actor": "李", "at": t(reply_day), "node": to,
                                              "text": "已整改"}))
    return out


def load(store: Store, division: str = "320303", with_tickets: bool = True) -> None:
    for kind, p in county_records(division, f"{division}-SC"):
        put(store, division, kind, p)
    if with_tickets:
        for writer, kind, p in ticket_records(division):
            put(store, writer, kind, p)


def totals_of(store: Store, scope: str, q: query.Query | None = None) -> dict[str, Any]:
    projection.fold_all(store, scope, CAL)
    return query.breakdown(query.groups(store, scope), q or query.Query(), CFG)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    yield s
    s.close()


# ---- the pure arithmetic ----------------------------------------------------------------------------------


def test_empty_totals_give_100_percent_done_and_nothing_else() -> None:
    values = ind.indicators(ind.Totals())
    assert values["done_rate"] == 1.0
    assert all(values[k] is None for k in values if k != "done_rate")
    assert ind.score(values) == 100.0  # only 办结率 is defined
    assert ind.grade(ind.score(values)) == "优秀"


def test_indicator_arithmetic_by_hand() -> None:
    tot = ind.Totals(cases=10, accepted=8, completed=6, measured=5, on_time=4, early=1, promised_min=1000,
                     used_promised_min=800, statutory_min=2000, used_statutory_min=800, events=10, timely_events=9,
                     cards=2, tickets=4, tickets_on_time=3, evaluations=5, satisfied=4)
    v = ind.indicators(tot)
    assert v == {"done_rate": 0.75, "on_time_rate": 0.8, "early_rate": 0.2, "promised_speedup": 0.2,
                 "statutory_speedup": 0.6, "report_rate": 0.9, "cards_per_100": 25.0, "ticket_on_time_rate": 0.75,
                 "satisfaction_rate": 0.8}
    # weights 20,20,5,10,5,10,10,10,10: cards 25/100 → component 1 − 25/20 → 0
    expected = (20 * .75 + 20 * .8 + 5 * .2 + 10 * .2 + 5 * .6 + 10 * .9 + 10 * 0 + 10 * .75 + 10 * .8) / 100 * 100
    assert ind.score(v) == pytest.approx(expected)
    assert ind.grade(expected) == "合格"  # 64.5
    assert ind.change(0.8, 0.75, rate=True) == pytest.approx(0.05)
    assert ind.change(30.0, 20.0, rate=False) == pytest.approx(0.5)
    assert ind.change(None, 0.5, rate=True) is None and ind.change(1.0, 0.0, rate=False) is None


def test_grades_ranks_and_periods() -> None:
    bands = {"excellent": 95.0, "good": 85.0, "pass": 70.0}
    assert [ind.grade(s, bands) for s in (95, 94.9, 85, 70, 69.9, None)] == ["优秀", "良好", "良好", "合格", "不合格", None]
    assert ind.rank({"a": 90.0, "b": 95.0, "c": 90.0, "d": None, "e": 50.0}) == {"b": 1, "a": 2, "c": 2, "e": 4, "d": None}
    assert ind.period_of("2025-11", "quarter") == "2025-Q4" and ind.period_of("2025-01", "year") == "2025"
    assert ind.previous_period("2025-01") == "2024-12" and ind.previous_period("2025-Q1") == "2024-Q4"
    assert ind.previous_period("2025") == "2024" and ind.same_period_last_year("2025-Q3") == "2024-Q3"
    assert ind.months_of("2025-Q4") == ["2025-10", "2025-11", "2025-12"]
    with pytest.raises(ValueError):
        ind.parse_period("2025-13")


def test_used_minutes_exclude_pauses_and_count_natural_time() -> None:
    row = projection.new_case({"case_no": "X", "division": "320303", "item_code": "I1"})
    for kind, p in [ev("case.accept", "X", t(10), accepted=True)[0:2],
                    ev("case.correction_notice", "X", t(10, 14), notice_no=1, materials=["a"], issuer="i"),
                    ev("case.correction_accepted", "X", t(11, 14), notice_no=1),
                    ev("case.complete", "X", t(12), result_code="0")]:
        projection.fold_case(row, kind, p)
    # accept 11-10 09:00 → complete 11-12 09:00 = 900 working minutes; correction 11-10 14:00..11-11 14:00 = 450
    assert projection.used_minutes(row, CAL) == (450, 2 * 1440 - 1440)
    assert row["period"] == "2025-11"


def test_config_validation() -> None:
    cfg = StatsConfig.from_section({"bands": {"excellent": 95}, "weights": {"cards_per_100": 0},
                                    "supervisors": {"login_days": 3, "names": ["张三"]}})
    assert cfg.bands["excellent"] == 95 and cfg.weights["cards_per_100"] == 0
    assert cfg.supervisors == SupervisorRules(login_days=3.0, names=("张三",))
    for bad in ({"bands": {"excellent": 70, "good": 80}}, {"weights": {"nope": 1}}, {"timely_hours": "x"},
                {"colour": 1}, {"supervisors": {"login_days": 0}}, {"batch": 0},
                {"weights": dict.fromkeys(ind.INDICATORS, 0)}):
        with pytest.raises(ConfigError) as e:
            StatsConfig.from_section(bad)
        assert e.value.fix


# ---- the projection and the breakdowns, on SQLite and PostgreSQL -------------------------------------------


def test_indicators_of_the_hand_fixture(store: Store) -> None:
    load(store)
    data = totals_of(store, "320303")
    tot, v = data["total"]["totals"], data["total"]["indicators"]
    assert (tot["accepted"], tot["completed"], tot["measured"], tot["on_time"], tot["early"]) == (6, 5, 5, 3, 2)
    assert v["done_rate"] == pytest.approx(5 / 6)
    assert v["on_time_rate"] == pytest.approx(3 / 5) and v["early_rate"] == pytest.approx(2 / 5)
    assert v["promised_speedup"] == pytest.approx(-720 / 6840)
    assert v["statutory_speedup"] == pytest.approx(4320 / 11880)
    assert v["satisfaction_rate"] == pytest.approx(2 / 3)
    assert v["cards_per_100"] == pytest.approx(200 / 6)
    assert v["ticket_on_time_rate"] == pytest.approx(1 / 3)
    assert (tot["events"], tot["timely_events"], v["report_rate"]) == (17, 0, 0.0)
    # by item type: I2 (type 02) is the single natural-time case
    by_type = {r["key"]: r for r in totals_of(store, "320303", query.Query(by="item_type"))["rows"]}
    assert by_type["02"]["totals"]["completed"] == 1 and by_type["02"]["indicators"]["on_time_rate"] == 0.0
    assert by_type["01"]["indicators"]["on_time_rate"] == pytest.approx(3 / 4)


def test_fold_is_incremental_idempotent_and_skips_bad_records(store: Store) -> None:
    load(store, with_tickets=False)
    first = projection.fold_all(store, "320303", CAL)
    again = projection.fold_all(store, "320303", CAL)
    assert again.folded == 0 and again.cursor == first.cursor
    put(store, "320303", "case.accept", None, raw=b"\xff not json")
    put(store, "320303", "case.complete", ev("case.complete", "320303C5", t(12), result_code="0")[1])
    put(store, "320303", "case.accept", {"case_no": "Z"})  # no division: skipped, not fatal
    more = projection.fold_all(store, "320303", CAL)
    assert more.skipped == 2 and more.folded == 3
    data = totals_of(store, "320303")
    assert data["total"]["totals"]["completed"] == 6 and data["total"]["totals"]["events"] == 18
    # a case of another subtree held here is not counted by this node
    put(store, "320311", "case.accept", ev("case.accept", "Y1", t(10), division="320311", dept="320311-SC",
                                           accepted=True)[1])
    assert totals_of(store, "320303")["total"]["totals"]["accepted"] == 6


def test_concurrent_folds_count_every_record_once(store: Store, store_url: str) -> None:
    """The running node and a CLI fold at the same time (two engines; on PostgreSQL nothing else
    serialises them): the cursor's compare-and-set makes the loser re-read, so nothing counts twice."""
    import threading

    load(store)
    other = Store.open(store_url)
    errors: list[BaseException] = []

    def run(s: Store) -> None:
        try:
            projection.fold_all(s, "320303", CAL, limit=2)
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=run, args=(s,)) for s in (store, other)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    finally:
        other.close()
    assert errors == []
    tot = totals_of(store, "320303")["total"]["totals"]
    assert (tot["events"], tot["accepted"], tot["cards"], tot["tickets"]) == (17, 6, 2, 3)


def test_report_rate_counts_events_that_arrived_within_24_hours(sqlite_store: Store) -> None:
    now = datetime.now(projection.CST)
    for i, age_h in enumerate((1, 23, 25, 72)):
        at = (now - timedelta(hours=age_h)).isoformat(timespec="seconds")
        put(sqlite_store, "320303", "case.apply", ev("case.apply", f"R{i}", at, applicant_type="1",
                                                     applicant_name="n", applicant_id="i", channel_code="1")[1])
    v = totals_of(sqlite_store, "320303")["total"]
    assert (v["totals"]["events"], v["totals"]["timely_events"]) == (4, 2)
    assert v["indicators"]["report_rate"] == 0.5


def test_empty_store_gives_100_percent(sqlite_store: Store) -> None:
    data = totals_of(sqlite_store, "320303")
    assert data["rows"] == [] and data["total"]["indicators"]["done_rate"] == 1.0
    assert data["total"]["score"] is None and data["total"]["grade"] is None  # nothing to grade


def test_province_figures_for_a_subtree_equal_the_subtree_nodes_own(store: Store, sqlite_store: Store) -> None:
    """The province (``store``, SQLite and PostgreSQL) holds 320303's and 320311's records; the county
    (``sqlite_store``) holds 320303's. Same figures for 320303, whichever node computes them."""
    load(store, "320303")
    load(store, "320311")
    put(store, "320311", "case.accept", ev("case.accept", "X9", t(3, month=10), division="320311",
                                           dept="320311-SC", accepted=True)[1])
    load(sqlite_store, "320303")
    for q in (query.Query(by="division"), query.Query(by="dept"), query.Query(by="item_type"),
              query.Query(by="period", period="month"), query.Query(by="division", at="2025-Q4")):
        province = totals_of(store, "320000", replace(q, subtree="320303"))
        county = totals_of(sqlite_store, "320303", q)
        assert province["total"] == county["total"], q
        assert province["rows"] == county["rows"], q
    whole = totals_of(store, "320000")
    assert whole["total"]["totals"]["accepted"] == 13
    assert [r["key"] for r in whole["rows"]] == ["320303", "320311"]
    assert whole["total"]["totals"]["tickets"] == 6 and whole["total"]["totals"]["tickets_on_time"] == 2
    assert [r["rank"] for r in whole["rows"]] == [1, 2]  # 320311 has one more open case


def test_period_breakdown_with_mom_and_yoy(sqlite_store: Store) -> None:
    # 2024-11: 2 accepted, 2 completed; 2025-10: 1 accepted, 0 completed; 2025-11: 2 accepted, 1 completed
    for no, acc, done in (("P1", t(4, year=2024), t(5, year=2024)), ("P2", t(4, year=2024), t(6, year=2024)),
                          ("P3", t(13, month=10), None), ("P4", t(10), t(11)), ("P5", t(10), None)):
        put(sqlite_store, "320303", "case.accept", ev("case.accept", no, acc, accepted=True)[1])
        if done:
            put(sqlite_store, "320303", "case.complete", ev("case.complete", no, done, result_code="0")[1])
    data = totals_of(sqlite_store, "320303", query.Query(by="period", period="month"))
    rows = {r["key"]: r for r in data["rows"]}
    assert list(rows) == ["2024-11", "2025-10", "2025-11"]
    nov = rows["2025-11"]
    assert nov["indicators"]["done_rate"] == 0.5
    assert nov["mom"]["done_rate"] == pytest.approx(0.5 - 0.0)
    assert nov["yoy"]["done_rate"] == pytest.approx(0.5 - 1.0)
    assert rows["2024-11"]["mom"] is None
    q4 = totals_of(sqlite_store, "320303", query.Query(by="division", at="2025-Q4"))
    assert q4["rows"][0]["totals"]["accepted"] == 3 and q4["rows"][0]["yoy"]["done_rate"] == pytest.approx(1 / 3 - 1)
    assert q4["rows"][0]["rank"] == 1 and q4["rows"][0]["grade"] in ind.GRADES


def test_stats_tables_match_their_migration(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(ctx, schema.metadata) if "stats_" in repr(d)]
    assert diff == []


# ---- the supervisor work log --------------------------------------------------------------------------------

RULES = SupervisorRules(login_days=7, alert_days=3, ticket_days=2, escalate_after_days=1)
T0 = datetime(2025, 11, 10, 9, 0, tzinfo=auditlog.CST)


def _facts(records: list[tuple[str, str, dict[str, Any]]]) -> auditlog.Facts:
    return auditlog.facts_from_records("320303", records)


def test_supervisor_rules_remind_then_escalate_once() -> None:
    fold, seen = auditlog.FactsFold("320303"), 0

    def _facts(records: list[tuple[str, str, dict[str, Any]]]) -> auditlog.Facts:
        """The facts as the running node keeps them (folded record by record as they came), checked
        against the facts of every record read whole."""
        nonlocal seen
        fold.add(records[seen:])
        seen = len(records)
        assert fold.facts() == auditlog.facts_from_records("320303", records)
        return fold.facts()

    def _due(records: list[tuple[str, str, dict[str, Any]]], now: datetime, names: tuple[str, ...] = ()) -> list[Any]:
        """What is due, as the running node works it out (its open items kept while no record came) and
        as read whole: the same."""
        whole = auditlog.supervisor_actions(_facts(records), RULES, now, names=names)
        assert fold.due(RULES, now, names) == whole
        return whole

    alert = _alert("a-1", 2, "case", "320303", SC) | {"at": T0.isoformat()}
    handled = _alert("a-2", 2, "case", "320303", SC) | {"at": T0.isoformat()}
    records: list[tuple[str, str, dict[str, Any]]] = [
        ("audit.action", "320303", auditlog.action_payload("张三", "stats", "", {}, T0)),
        ("audit.action", "320303", auditlog.action_payload("李四", "alerts handle", "a-2", {}, T0)),
        ("alert", "320303", alert), ("alert", "320303", handled),
    ]
    # the unanswered ticket from above (320300-000003); the two replied ones are done
    records += [(kind, writer, p) for writer, kind, p in ticket_records()]
    now = T0 + timedelta(days=1)
    assert _due(records, now) == []
    now = T0 + timedelta(days=8)
    due = _due(records, now, ("王五",))
    got = sorted((d.kind, d.payload["rule"], d.payload["subject"]) for d in due)
    # unhandled alerts are reminded per due day (a-1 fell due on 2025-11-13), never one reminder per alert
    assert got == [("audit.remind", "alert_unhandled", "alerts@2025-11-13"), ("audit.remind", "login", "张三"),
                   ("audit.remind", "login", "李四"), ("audit.remind", "login", "王五"),
                   ("audit.remind", "ticket_inactive", "320300-000003")]
    records += [(d.kind, "320303", d.payload) for d in due]
    # the same moment again: nothing new (idempotent); half a day later: still inside escalate_after_days
    assert _due(records, now, ("王五",)) == []
    assert _due(records, now + timedelta(hours=12), ("王五",)) == []
    # 张三 looks at the system again (the day's visit: reads write nothing else): his login reminder will not escalate
    records.append(("audit.action", "320303", auditlog.action_payload("张三", auditlog.VISIT, "", {"via": "stats"}, now)))
    later = now + timedelta(days=1)
    esc = _due(records, later, ("王五",))
    assert all(d.kind == "alert" for d in esc)
    assert sorted(d.payload["rule_id"] for d in esc) == ["supervisor_alert_unhandled", "supervisor_login",
                                                         "supervisor_login", "supervisor_ticket_inactive"]
    from node.core import domain

    for d in esc:
        domain.validate("alert", d.payload)
    records += [(d.kind, "320303", d.payload) for d in esc]
    assert _due(records, later + timedelta(days=3), ("王五",)) == []


def test_audit_payload_needs_actor_and_action() -> None:
    with pytest.raises(auditlog.AuditError):
        auditlog.action_payload(" ", "x", "", None)
    p = auditlog.action_payload("张三", "tickets issue", "320300-000001", {"to": "320303"}, T0)
    assert p == {"actor": "张三", "action": "tickets issue", "target": "320300-000001",
                 "detail": {"to": "320303"}, "at": "2025-11-10T09:00:00+08:00"}


def test_record_action_and_worklog_cli(tree: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from node.app import people
    from node.interfaces.cli.main import main
    from tests.conftest import add_person

    home = tree.county
    zhao = add_person(home, "zhao", "赵六", "监察员")  # the supervisor who reads the work log (`--as zhao`)
    auditlog.record_action(home, "张三", "tickets sign", "320300-000001", {"note": "签收"})
    auditlog.record_action(home.ledger(), "李四", "stats", "", None)
    # what node/cli.py main() does after each command
    import argparse

    # what cli/main.py _who_acts leaves on args: the person acting (here the OS operator, 系统管理员)
    operator = people.stamp(people.os_person(home.code, "ops"), "sysadmin")
    ns = argparse.Namespace(dir=str(home.dir), json=True, file="holidays.csv", command="calendar",
                            calendar_command="import", by=operator)
    assert auditlog.audit_command(ns, "calendar import", 1) is None  # failed: nothing logged
    assert auditlog.audit_command(ns, "run", 0) is None
    # a ticket act's own transaction holds its work-log entry (node/tickets/desk.py): the CLI adds none
    reply = argparse.Namespace(dir=str(home.dir), json=True, ticket="320300-000001", text="已整改", command="tickets",
                               tickets_command="reply")
    assert auditlog.audit_command(reply, "tickets reply", 0) is None
    assert auditlog.audit_command(argparse.Namespace(dir=str(home.dir), json=True, command="status"), "status", 0) is None
    logged = auditlog.audit_command(ns, "calendar import", 0)
    assert logged is not None and (logged["actor"], logged["action"], logged["detail"], logged["by"]) == (
        "os:ops", "calendar import", {"file": "holidays.csv"}, operator)
    # the node is stopped: actions through the home wait in the spool (writing the log now could fork a node
    # restored from backup); the running node appends them once its logs are current, as drain_spool does here
    # (reading the work log is 赵六's first desk read today: one visit waits in the spool too, and only one).
    # Adding a user is recorded at once, in the user's own transaction (node/app/people.py).
    assert main(["worklog", str(home.dir), "--json", *zhao]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [(e["action"], e["target"]) for e in entries if e["action"] == "users add"] == [("users add", "zhao")]
    assert [e["actor"] for e in entries if e["action"] != "users add"] == ["李四"]
    assert auditlog.drain_spool(home.dir, home.ledger()) == 3
    assert auditlog.drain_spool(home.dir, home.ledger()) == 0
    assert main(["worklog", str(home.dir), "--json", *zhao]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [(e["actor"], e["action"], e["node"]) for e in entries if e["action"] != "users add"] == [
        ("李四", "stats", "320303"), ("张三", "tickets sign", "320303"), ("os:ops", "calendar import", "320303"),
        ("zhao", "visit", "320303")]
    assert [e["by"]["name"] for e in entries if e["action"] == "visit"] == ["赵六"]
    assert auditlog.drain_spool(home.dir, home.ledger()) == 0  # the day is visited: later reads spool nothing
    assert main(["worklog", str(home.dir), "--actor", "李四", *zhao]) == 0
    assert "李四" in capsys.readouterr().out
    # the supervisor rules, once: a name configured but never seen gets a reminder written
    with home.config.path.open("a", encoding="utf-8") as f:
        f.write('\n[stats.supervisors]\nnames = ["王五"]\n')
    assert main(["worklog", str(home.dir), "--check", "--json", *zhao]) == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert [(w["kind"], w["subject"]) for w in written] == [("audit.remind", "王五")]
    assert main(["worklog", str(home.dir), "--check", "--json", *zhao]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == []
    # the running node's way: a fold kept between ticks reads only what came after it, its own reminders too
    cfg = StatsConfig.of_home(home)
    fold, now = auditlog.FactsFold(home.code), datetime.now(auditlog.CST)
    assert stats_cmd.check_supervisors(home.ledger(), cfg, now, fold) == []  # 王五's reminder is held
    held = fold.after
    assert held > 0
    more = replace(cfg, supervisors=replace(cfg.supervisors, names=("王五", "赵七")))
    written = stats_cmd.check_supervisors(home.ledger(), more, now, fold)
    assert [(w["kind"], w["subject"]) for w in written] == [("audit.remind", "赵七")] and fold.after == held
    assert stats_cmd.check_supervisors(home.ledger(), more, now, fold) == [] and fold.after > held
    assert stats_cmd.check_supervisors(home.ledger(), more, now) == []  # read whole: the same


# ---- the CLI ----------------------------------------------------------------------------------------------


def test_stats_cli_text_json_csv_html(tree: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.interfaces.cli.main import main

    home = tree.county
    load(home.store())
    d = str(home.dir)
    assert main(["stats", d, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scope"] == "320303" and data["total"]["totals"]["accepted"] == 6
    assert main(["stats", d]) == 0
    out = capsys.readouterr().out
    assert "办结率" in out and "83.3%" in out and "合计" in out
    assert main(["stats", d, "--by", "period", "--period", "month", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("period,cases,accepted") and lines[1].startswith("2025-11,")
    report = tmp_path / "r.html"
    assert main(["stats", d, "--by", "dept", "--html", str(report)]) == 0
    capsys.readouterr()
    page = report.read_text(encoding="utf-8")
    assert "<svg" in page and "83.3%" in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert main(["stats", d, "--at", "2025-13"]) == 2


# ---- the running node ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_running_node_folds_and_logs_operator_actions(tree: Any) -> None:
    """A real node process: the StatsService folds records stored behind its back (interval tick), and
    record_action goes through the admin op `audit` into the node's own control log."""
    import time as _time

    from bench import demo
    from node.core import admin_client as admin

    home = tree.province
    with home.config.path.open("a", encoding="utf-8") as f:
        f.write("\n[stats]\ninterval_s = 0.5\n")
    load(home.store(), "320303")
    home.close()
    proc = demo.start(home.dir)
    try:
        demo.wait_admin(home)
        payload = auditlog.record_action(home, "张三", "tickets issue", "320000-000001", {"to": "320303"})
        deadline = _time.monotonic() + 30
        status: dict[str, Any] = {}
        while _time.monotonic() < deadline:
            resp = admin.call(home, {"op": "status"}, timeout=10)
            status = (resp or {}).get("result", {}).get("stats") or {}
            if status.get("cursor", 0) >= 23:  # the 23 case/item/alert records (tickets add more)
                break
            _time.sleep(0.3)
        assert status.get("cursor", 0) >= 23, status
    finally:
        demo.stop_all({"320000": proc})
    store = Store.open(home.config.store_url, base_dir=home.dir)
    try:
        entries = [(k, w, p) for k, w, p in stats_cmd.audit_records(store) if k == auditlog.ACTION]
        assert [(w, p) for _k, w, p in entries] == [("320000", payload)]
        data = totals_of(store, "320000")
        assert data["total"]["totals"]["accepted"] == 6
    finally:
        store.close()
