"""The synthetic generator: reproducible, exact counts, valid records, and every anomaly present."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import chinese_calendar
import pytest

from adapters.synthetic import ITEMS, catalogue, generate, is_workday
from node.core.domain import KINDS, natural_key, validate
from node.core.errors import UsageError
from node.core.records import encode_payload

CST = timezone(timedelta(hours=8))
N = 30_000
CASE_KINDS = [k for k in KINDS if k.startswith("case.")]


@pytest.fixture(scope="module")
def records() -> list[tuple[str, dict[str, Any]]]:
    return list(generate(N, seed=7))


@pytest.fixture(scope="module")
def cases(records: list[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    by_case: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for kind, p in records:
        if kind.startswith("case."):
            by_case[p["case_no"]].append((kind, p))
    return by_case


@pytest.fixture(scope="module")
def items(records: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {p["item_code"]: p for kind, p in records if kind == "item"}


def _canon(p: dict[str, Any]) -> str:
    return json.dumps(p, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s)


def _moment(kind: str, p: dict[str, Any]) -> str:
    if kind == "market.transaction":
        return max(p["award_at"], p["contract_at"])
    return str(p.get("time") or p.get("at") or p.get("registered_at"))


def test_same_seed_same_output() -> None:
    a = [(k, encode_payload(p)) for k, p in generate(5000, seed=3)]
    b = [(k, encode_payload(p)) for k, p in generate(5000, seed=3)]
    assert a == b
    c = [(k, encode_payload(p)) for k, p in generate(5000, seed=4)]
    assert a[: len(ITEMS)] == c[: len(ITEMS)]  # the catalogue does not depend on the seed
    assert a[len(ITEMS) :] != c[len(ITEMS) :]


def test_same_output_in_another_process() -> None:
    """Nothing may depend on str hashing (PYTHONHASHSEED), or two nodes would disagree on a demo."""
    code = (
        "import hashlib, json; from adapters.synthetic import generate; h = hashlib.sha256()\n"
        "for k, p in generate(3000, seed=5): h.update(k.encode() + json.dumps(p, ensure_ascii=False).encode())\n"
        "print(h.hexdigest())"
    )
    root = Path(__file__).resolve().parent.parent
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    h = hashlib.sha256()
    for k, p in generate(3000, seed=5):
        h.update(k.encode() + json.dumps(p, ensure_ascii=False).encode())
    assert digests == {h.hexdigest() + "\n"}


@pytest.mark.parametrize("n", [0, 1, 5, len(ITEMS), len(ITEMS) + 1, 777, 4321])
def test_exact_count(n: int) -> None:
    out = list(generate(n, seed=1))
    assert len(out) == n
    assert [k for k, _ in out[: len(ITEMS)]] == ["item"] * min(n, len(ITEMS))


def test_counts_and_kinds(records: list[tuple[str, dict[str, Any]]]) -> None:
    assert len(records) == N
    counts = Counter(k for k, _ in records)
    assert set(counts) == set(KINDS) - {"alert"}  # alerts come from the rules engine, not from sources
    assert counts["item"] == len(ITEMS)
    for kind in CASE_KINDS:
        assert counts[kind] > 0, kind
    for kind in ("complaint.register", "market.transaction", "project.record"):
        assert counts[kind] >= 20, kind


def test_every_record_validates_unchanged(records: list[tuple[str, dict[str, Any]]]) -> None:
    keys = set()
    for kind, p in records:
        out = validate(kind, p)
        assert _canon(out) == _canon(p), (kind, p)  # nothing left to normalise
        keys.add(natural_key(kind, out))
    assert len(keys) == N  # no two records are the same source row


def test_case_numbers_unique_per_division_and_seed() -> None:
    def case_nos(division: str, seed: int) -> list[str]:
        return [p["case_no"] for k, p in generate(3000, seed=seed, division=division) if k == "case.apply"]

    a, b, c = case_nos("320303", 1), case_nos("320303", 2), case_nos("320311", 1)
    assert len(set(a)) == len(a)
    assert not set(a) & set(b) and not set(a) & set(c)
    assert all(n.startswith("320311") for n in c)
    assert {p["division"] for _, p in generate(500, division="320311")} == {"320311"}


def test_catalogue(items: dict[str, dict[str, Any]]) -> None:
    assert catalogue() == list(items.values())
    types = Counter(p["item_type"] for p in items.values())
    assert {"01", "02", "04", "20"} <= set(types) and types["02"] >= 2
    for p in items.values():
        codes = [s["step_code"] for s in p["steps"]]
        assert codes[0] == "SL" and codes[-1] == "BJ"
        if p["item_type"] == "02":
            assert p["discretion"] and p["risk_points"]
        assert p["dept_name"].startswith("云龙区")


def test_times_are_office_hours_on_working_days(records: list[tuple[str, dict[str, Any]]]) -> None:
    fields = ("time", "started_at", "ended_at", "at", "registered_at", "award_at", "contract_at")
    seen_years = set()
    for _, p in records[len(ITEMS) :]:
        for f in fields:
            if f in p:
                t = _dt(p[f])
                assert t.utcoffset() == timedelta(hours=8)
                assert chinese_calendar.is_workday(t.date()), (f, p)
                assert (8, 30) <= (t.hour, t.minute) < (17, 30), (f, p)
                seen_years.add(t.year)
    assert {2025, 2026} <= seen_years
    last = _dt(_moment(*records[-1]))
    assert date(2026, 11, 15) < last.date() <= date(2026, 12, 31)  # the run spans 2025-2026
    moments = [_moment(k, p) for k, p in records[len(ITEMS) :]]
    assert moments == sorted(moments), "records after the catalogue come in time order"


def test_fallback_calendar_beyond_known_years() -> None:
    assert not is_workday(date(2027, 1, 1)) and not is_workday(date(2027, 1, 2))
    assert is_workday(date(2027, 1, 4))
    assert not is_workday(date(2025, 10, 8)) and is_workday(date(2025, 9, 28))  # official 调休 data


def test_flows_straddle_the_holidays(cases: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    def straddling(first_day: date, last_day: date) -> int:
        n = 0
        for events in cases.values():
            days = [_dt(p["time"]).date() for _, p in events]
            n += min(days) < first_day and max(days) > last_day
        return n

    assert straddling(date(2025, 10, 1), date(2025, 10, 8)) >= 3  # National Day + Mid-Autumn
    assert straddling(date(2026, 2, 15), date(2026, 2, 23)) >= 3  # Spring Festival 2026


def test_case_flow_order(cases: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    for events in cases.values():
        kinds = [k for k, _ in events]
        assert kinds[0] == "case.apply"
        if len(kinds) > 1:
            assert kinds[1] == "case.accept"
        if "case.complete" in kinds:
            assert kinds.count("case.complete") == 1
            assert all(
                k in ("case.collect", "case.evaluate") for k in kinds[kinds.index("case.complete") + 1 :]
            )
        steps = [p["step_no"] for k, p in events if k == "case.step"]
        assert steps == list(range(1, len(steps) + 1))
        times = [p["time"] for _, p in events]
        assert times == sorted(times)


def _workdays_between(a: datetime, b: datetime) -> int:
    return len(chinese_calendar.get_workdays(a.date(), b.date())) - 1


def test_every_anomaly_is_present(
    records: list[tuple[str, dict[str, Any]]],
    cases: dict[str, list[tuple[str, dict[str, Any]]]],
    items: dict[str, dict[str, Any]],
) -> None:
    found: Counter[str] = Counter()
    for events in cases.values():
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for k, p in events:
            by_kind[k].append(p)
        apply = by_kind["case.apply"][0]
        item = items[apply["item_code"]]
        order = [s["step_code"] for s in item["steps"]]
        posts = {s["step_code"]: s["posts"] for s in item["steps"]}
        bands = {d["circumstance"]: d for d in item["discretion"]}
        risk = {r["step_code"]: r["evidence"] for r in item["risk_points"]}
        if item["major_threshold"] is not None and apply.get("amount", 0) > item["major_threshold"]:
            found["major"] += 1
        found["assigned"] += apply["assigned"]
        for acc in by_kind["case.accept"]:
            if not acc["accepted"]:
                found["refused_with_reason" if "refuse_reason" in acc else "refused_without_reason"] += 1
        codes = []
        for st in by_kind["case.step"]:
            codes.append(st["step_code"])
            if st["post"] not in posts[st["step_code"]]:
                found["unauthorised"] += 1
            if st["step_code"] in risk and risk[st["step_code"]] not in st["evidence"]:
                found["missing_evidence"] += 1
            if "amount" in st:
                band = bands[st["circumstance"]]
                if not band["min_amount"] <= st["amount"] <= band["max_amount"]:
                    found["outside_discretion"] += 1
            if st["action"] == "return":
                found["returned"] += 1
        complete = by_kind["case.complete"]
        if complete and complete[0]["result_code"] != "5" and len(set(codes)) < len(order):
            found["skipped"] += 1  # the flow ran to its end without one of the item's steps
        positions = [order.index(c) for c in codes]
        returned = any(st["action"] == "return" for st in by_kind["case.step"])
        if not returned and positions != sorted(positions):
            found["out_of_order"] += 1
        if complete:
            done = _dt(complete[0]["time"])
            acc = by_kind["case.accept"][0]
            if complete[0]["result_code"] == "5":
                found["correction_never_back"] += 1
            elif done > _dt(acc["promised_at"]) + timedelta(days=1):
                found["overdue"] += 1
                if _workdays_between(_dt(acc["time"]), done) > item["statutory_days"] + 1:
                    found["past_statutory"] += 1
        elif by_kind["case.accept"] and by_kind["case.accept"][0]["accepted"] and by_kind["case.step"]:
            found["open"] += 1
        for sus in by_kind["case.suspend"]:
            res = [r for r in by_kind["case.resume"] if r["suspend_no"] == sus["suspend_no"]]
            if (
                res
                and _workdays_between(_dt(sus["started_at"]), _dt(res[0]["ended_at"])) > sus["approved_days"]
            ):
                found["suspend_late"] += 1
            found["suspend_kind_" + sus["suspend_kind"]] += 1
        if by_kind["case.correction_accepted"]:
            found["corrected"] += 1
    for kind, p in records:
        if kind == "market.transaction":
            found["single_bidder"] += p["bidders"] == 1
            found["over_budget"] += p["amount"] > p["budget"]
            found["contract_before_award"] += p["contract_at"] < p["award_at"]
        elif kind == "project.record":
            found["overspent"] += p["spent"] > p["estimate"]
    expected = [
        "major", "assigned", "refused_with_reason", "refused_without_reason", "unauthorised", "missing_evidence",
        "outside_discretion", "returned", "skipped", "out_of_order", "correction_never_back", "overdue",
        "past_statutory", "open", "suspend_late", "suspend_kind_1", "suspend_kind_2", "corrected",
        "single_bidder", "over_budget", "contract_before_award", "overspent",
    ]  # fmt: skip
    missing = [name for name in expected if found[name] == 0]
    assert not missing, (missing, found)
    on_time = sum(
        1
        for events in cases.values()
        for k, p in events
        if k == "case.complete" and p["result_code"] != "5"
        for acc in [dict(events)["case.accept"]]
        if _dt(p["time"]) <= _dt(acc["promised_at"])
    )
    completed = sum(1 for events in cases.values() for k, _ in events if k == "case.complete")
    assert on_time / completed > 0.8  # most cases are done within the promised limit


def test_start_and_division_arguments() -> None:
    out = list(generate(len(ITEMS) + 1, start=datetime(2026, 3, 2, 10, 15)))
    assert out[-1][1]["time"] == "2026-03-02T10:15:00+08:00"
    out = list(generate(len(ITEMS) + 1, start=datetime(2025, 10, 1, 9, 0, tzinfo=CST)))  # a holiday
    assert out[-1][1]["time"] == "2025-10-09T08:30:00+08:00"
    with pytest.raises(UsageError):
        list(generate(10, division="3203"))
    with pytest.raises(UsageError):
        list(generate(-1))


def test_rate() -> None:
    n = 100_000
    best = 0.0
    for _ in range(2):
        t = time.process_time()
        for _ in generate(n, seed=11):
            pass
        best = max(best, n / (time.process_time() - t))
    print(f"synthetic generator: {best:,.0f} events/s (CPU time)")
    # a guard against regressions that tolerates a busy 2-core machine; unloaded it does > 100k/s
    assert best > 60_000
