"""The case seen whole (issue 25, part 4): `cases show` and `cases list`, on real stores.

- `cases list --state` matches a hand count on a fixed fixture (every 办理状态, the SQL path and the
  Python path for cases with a pause), and, on a synthetic county, every filter agrees with the state
  each row is shown with;
- `cases show` at the province for a county case lists the steps, times, alerts (with their disposal),
  tickets and complaints; "not held here" names the holder; reads append nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.app import cases as app
from node.app import ingest
from node.core.calendar import CST
from node.core.home import Home
from node.features.cases.view import STATES
from node.features.people.roles import Person
from node.interfaces.cli import main as cli
from tests.conftest import Tree, add_person
from tests.test_alert_disposal import red_card_with_handler, reopened, run
from tests.test_alerts_cli import with_alerts
from tests.test_tickets_cli import sync

NOW = datetime(2026, 3, 16, 10, 0, tzinfo=CST)  # a Monday; March 2026 has no holiday
DIV, DEPT, ITEM = "320303", "320303-ZJ", "320303010001"


def T(day: int, hm: str = "09:00") -> str:
    return f"2026-03-{day:02d}T{hm}:00+08:00"


def base(no: str, time: str) -> dict[str, Any]:
    return {"case_no": no, "item_code": ITEM, "division": DIV, "dept": DEPT, "time": time}


def fixture_rows() -> list[tuple[str, dict[str, Any]]]:
    item = {"item_code": ITEM, "name": "建筑工程施工许可证核发", "item_type": "01", "dept": DEPT, "division": DIV,
            "case_kind": "2", "statutory_days": 10, "promised_days": 5,
            "steps": [{"step_code": "SL", "name": "受理", "limit_days": 1, "posts": ["窗口"]},
                      {"step_code": "CB", "name": "承办", "limit_days": 2, "posts": ["承办人"]}]}
    rows: list[tuple[str, dict[str, Any]]] = [("item", item)]

    def apply(no: str, day: int) -> None:
        rows.append(("case.apply", {**base(no, T(day, "08:45")), "applicant_type": "法人", "applicant_name": "某公司",
                                    "applicant_id": "91320300X", "channel_code": "1"}))

    def accept(no: str, day: int, ok: bool = True, handler: str = "王芳") -> None:
        apply(no, day)
        rows.append(("case.accept", {**base(no, T(day)), "handler": handler, "accepted": ok,
                                     **({} if ok else {"refuse_reason": "不属于本机关职权范围"})}))

    def step(no: str, n: int, code: str, handler: str, start: str, end: str | None) -> None:
        rows.append(("case.step", {**base(no, start), "step_no": n, "step_code": code, "step_name": code,
                                   "handler": handler, "post": "承办人", "action": "pass", "started_at": start,
                                   **({"ended_at": end} if end else {}), "opinion": "同意"}))

    def complete(no: str, day: int) -> None:
        rows.append(("case.complete", {**base(no, T(day)), "result_code": "6"}))

    accept("A", 2)  # 10 working days open: 超期在办
    step("A", 1, "CB", "李四", T(2, "09:30"), None)
    accept("B", 13)  # 在办
    accept("C", 2)  # done in 2 days: 办结
    complete("C", 4)
    accept("D", 2)  # done in 8 days: 超期办结
    step("D", 1, "CB", "李四", T(2, "09:30"), T(11))
    complete("D", 12)
    accept("E", 5, ok=False)  # 不予受理
    accept("F", 11)  # a correction notice not answered: 退回补正
    rows.append(("case.correction_notice", {**base("F", T(11, "10:00")), "notice_no": 1, "materials": ["营业执照"],
                                            "issuer": "王芳"}))
    accept("G", 2)  # suspended 03-02 09:30 → 03-12 09:00: 990 minutes used, 在办 (judged one by one)
    rows.append(("case.suspend", {**base("G", T(2, "09:30")), "suspend_no": 1, "suspend_kind": "2", "reason": "专家评审",
                                  "approver": "赵局长", "started_at": T(2, "09:30"), "approved_days": 10}))
    rows.append(("case.resume", {**base("G", T(12)), "suspend_no": 1, "ended_at": T(12)}))
    accept("H", 2)  # suspended one day only: still past 5 days: 超期在办 (judged one by one)
    rows.append(("case.suspend", {**base("H", T(3)), "suspend_no": 1, "suspend_kind": "1", "reason": "延长审批",
                                  "approver": "赵局长", "started_at": T(3), "approved_days": 1}))
    rows.append(("case.resume", {**base("H", T(4)), "suspend_no": 1, "ended_at": T(4)}))
    apply("I", 15)  # applied only: 在办
    return rows


HAND_COUNT = {"超期在办": {"A", "H"}, "在办": {"B", "G", "I"}, "办结": {"C"}, "超期办结": {"D"}, "不予受理": {"E"},
              "退回补正": {"F"}}


@pytest.fixture(params=["sqlite", "postgres"])
def fixed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Home]:
    db = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    t = Tree(tmp_path / "tree", county_db=db)
    rows = [{"position": f"f:{i}", "kind": k, "payload": p} for i, (k, p) in enumerate(fixture_rows())]
    out = ingest.run_request(t.county.ledger(), {"records": rows})
    assert out["accepted"] == len(rows), out
    yield t.county
    t.close()


def test_states_match_a_hand_count(fixed: Home) -> None:
    assert set(HAND_COUNT) == set(STATES)
    everything = app.list_cases(fixed, now=NOW, limit=100)
    assert everything["total"] == 9
    assert {r["case_no"]: r["state"] for r in everything["cases"]} == {
        no: s for s, nos in HAND_COUNT.items() for no in nos}
    for s, nos in HAND_COUNT.items():
        got = app.list_cases(fixed, state=s, now=NOW, limit=100)
        assert (got["total"], {r["case_no"] for r in got["cases"]}) == (len(nos), nos), s
    assert {r["case_no"] for r in app.list_cases(fixed, handler="李四", now=NOW)["cases"]} == {"A", "D"}
    assert app.list_cases(fixed, since="2026-03-11", now=NOW)["total"] == 3  # B, F, I
    assert app.list_cases(fixed, dept="320303-GA", now=NOW)["total"] == 0
    assert app.list_cases(fixed, dept=DEPT, item=ITEM, now=NOW)["total"] == 9
    page = app.list_cases(fixed, now=NOW, limit=4, offset=4)
    assert [r["case_no"] for r in page["cases"]] == ["E", "D", "C", "B"] and page["total"] == 9
    # the desk counts up to a bound past the page: the same page, "more than 7" instead of 9
    capped = app.list_cases(fixed, now=NOW, limit=4, offset=2, count_beyond=1)
    assert ([r["case_no"] for r in capped["cases"]], capped["total"], capped["total_exact"]) == (
        ["G", "F", "E", "D"], 7, False)
    assert app.list_cases(fixed, now=NOW, limit=4, offset=2, count_beyond=3)["total_exact"]  # 9 = 2 + 4 + 3
    for s, nos in HAND_COUNT.items():  # the state filters with a bound: the same cases, read through the open index
        got = app.list_cases(fixed, state=s, now=NOW, limit=100, count_beyond=0)
        assert (got["total"], got["total_exact"], {r["case_no"] for r in got["cases"]}) == (len(nos), True, nos), s
    # a 承办人 sees the cases he handles, nothing else
    li = Person(login="li", name="李四", roles=("handler",), scope=DIV)
    assert {r["case_no"] for r in app.list_cases(fixed, person=li, now=NOW)["cases"]} == {"A", "D"}


def test_one_case_whole_with_times_against_the_limits(fixed: Home) -> None:
    a = app.show_case(fixed, "A", now=NOW)
    assert a["state"] == "超期在办" and a["item_name"] == "建筑工程施工许可证核发"
    assert a["acceptance"]["handler"] == "王芳" and a["application"]["applicant_name"] == "某公司"
    [s] = a["steps"]
    assert s["handler"] == "李四" and s["limit_days"] == 2 and s["over_limit"] and s["ended_at"] is None
    lim = a["limits"]
    assert lim["promised_days"] == 5 and lim["statutory_days"] == 10 and lim["over_promised"]
    assert lim["used_min"] == 10 * 450 + 60  # 03-02 09:00 → 03-16 10:00: ten working days and an hour
    g = app.show_case(fixed, "G", now=NOW)
    assert g["state"] == "在办" and g["limits"]["used_min"] == 990 and g["suspensions"][0]["reason"] == "专家评审"
    f = app.show_case(fixed, "F", now=NOW)
    assert f["state"] == "退回补正" and f["corrections"][0]["materials"] == ["营业执照"]
    d = app.show_case(fixed, "D", now=NOW)
    assert d["state"] == "超期办结" and d["completion"]["result_code"] == "6" and d["steps"][0]["over_limit"] is True


def heads(home: Home) -> dict[Any, int]:
    return {k: h.seq for k, h in home.store().heads().items()}


def test_the_province_sees_a_county_case_whole(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    with_alerts(tree.county)
    red, _handlers = red_card_with_handler(tree.county)
    case = red["case_no"]
    c = str(tree.county.dir)
    zhang = add_person(tree.county, "zhang", "张三", "监察员")
    rc, _out, err = run(capsys, "alerts", "dispose", c, red["alert_id"], "--result", "false-alarm", "--note",
                        "经核实系统时钟错误，办件按时办结", *zhang)
    assert rc == 0, err
    rc, t_out, err = run(capsys, "tickets", "issue", c, "--to", "320303-WJ", "--subject", "请说明", "--body", "核查",
                         "--case", case, *zhang)
    assert rc == 0, err
    rc, cp, err = run(capsys, "complaints", "register", c, "--complainant", "刘先生", "--respondent-unit", "320303-WJ",
                      "--content", "办理拖延", "--source", "12345 热线", "--due-days", "5", "--case", case, *zhang)
    assert rc == 0, err
    sync(reopened(tree))
    p = str(tree.province.dir)
    before = heads(tree.province)
    rc, d, err = run(capsys, "cases", "show", p, case)
    assert rc == 0, err
    assert d["here"] == "320000" and d["held_from"] == ["320303"] and d["steps"] and d["acceptance"]
    assert all(s["used_min"] is not None and s["started_at"] for s in d["steps"])
    assert d["limits"]["used_min"] is not None and d["limits"]["promised_days"]
    [a] = [x for x in d["alerts"] if x["alert_id"] == red["alert_id"]]
    assert a["state"] == "false-alarm" and a["disposed_by"]["name"] == "张三" and "时钟" in a["note"]
    assert {t["ticket"] for t in d["tickets"]} == {t_out["ticket"], cp["ticket"]}
    assert [(x["complaint_no"], x["ticket"]) for x in d["complaints"]] == [(cp["complaint_no"], cp["ticket"])]
    rc, text, _ = run(capsys, "cases", "list", p, "--limit", "3")
    assert rc == 0 and text["total"] > 10 and len(text["cases"]) == 3
    capsys.readouterr()
    assert cli.main(["cases", "show", p, case]) == 0
    human = capsys.readouterr().out
    assert "环节" in human and "预警" in human and "督办" in human and "投诉" in human
    assert heads(reopened(tree).province) == before, "reads append nothing"

    # not held here: below this node, named; outside the subtree
    rc, out, err = run(capsys, "cases", "show", p, "32030399990101001000001")
    assert rc == 1 and out["code"] == "case_not_held" and "320303" in out["error"]
    rc, out, _ = run(capsys, "cases", "show", c, "32031199990101001000001")
    assert rc == 1 and "outside" in out["error"]
    # scope: a 监察员 of 320311 at the city may not read a 320303 case
    other = add_person(tree.city, "qian", "钱七", "监察员", scope="320311")
    rc, _out, err = run(capsys, "cases", "show", str(tree.city.dir), case, *other)
    assert rc == 2 and "320311" in err
    rc, out, _ = run(capsys, "cases", "list", str(tree.city.dir), *other)
    assert rc == 0 and out["total"] == 0


def test_every_filter_agrees_with_the_rows_on_a_synthetic_county(tree: Tree) -> None:
    ingest.append_chunked(tree.county.ledger(), ingest.synthetic_items(tree.county.code, 4000, 3))
    # forty days after the last acceptance: the cases still open are then past their limit
    last = max(r["accepted_at"] or "" for r in app.list_cases(tree.county, limit=app.MAX_PAGE)["cases"])
    now = min(datetime.fromisoformat(last).replace(hour=10, minute=0) + timedelta(days=40),
              datetime(2026, 12, 30, 10, 0, tzinfo=CST))  # (the calendar's last covered year)
    everything = app.list_cases(tree.county, now=now, limit=app.MAX_PAGE)
    total = everything["total"]
    rows = list(everything["cases"])
    while len(rows) < total:
        rows += app.list_cases(tree.county, now=now, limit=app.MAX_PAGE, offset=len(rows))["cases"]
    by_state: dict[str, set[str]] = {s: set() for s in STATES}
    for r in rows:
        by_state[r["state"]].add(r["case_no"])
    assert sum(map(len, by_state.values())) == total > 100
    for s in STATES:
        got = app.list_cases(tree.county, state=s, now=now, limit=app.MAX_PAGE)
        assert got["total"] == len(by_state[s]) and {r["case_no"] for r in got["cases"]} == by_state[s], s
    assert by_state["超期在办"] and by_state["办结"] and by_state["不予受理"], {s: len(v) for s, v in by_state.items()}
    sample = sorted(by_state["超期在办"])[:3] + sorted(by_state["在办"])[:3]
    for no in sample:  # `cases show` says the same
        assert app.show_case(tree.county, no, now=now)["state"] in (
            "超期在办" if no in by_state["超期在办"] else "在办",)
    # the desk's bounded pages (count_beyond): for every state, page and bound, the same cases in the same
    # order as the exact count, and the count capped; with the open cases that have a pause (judged one by
    # one in Python, merged with the ones SQL decides) just inside, at and just outside where the bound cuts
    with tree.county.store().read() as conn:
        paused = {r[0] for r in conn.exec_driver_sql(
            "SELECT case_no FROM stats_cases WHERE completed_at IS NULL AND pauses != '{}'")}
    assert paused
    for s in ("", *STATES):
        exact = app.list_cases(tree.county, state=s, now=now, limit=app.MAX_PAGE)
        order = [r["case_no"] for r in exact["cases"]]
        pages = [(0, 10, 5), (7, 10, 20), (30, 25, 0), (0, 50, 1000)]
        pages += [(b - 1, 1, 0) for p, no in enumerate(order) if no in paused for b in (p, p + 1, p + 2) if b >= 1]
        for offset, limit, beyond in pages:
            got = app.list_cases(tree.county, state=s, now=now, offset=offset, limit=limit, count_beyond=beyond)
            bound = offset + limit + beyond
            assert [r["case_no"] for r in got["cases"]] == order[offset:offset + limit], (s, offset, limit, beyond)
            assert (got["total"], got["total_exact"]) == (min(exact["total"], bound), exact["total"] <= bound), s
    judged = {r["case_no"] for s in ("在办", "超期在办") for r in
              app.list_cases(tree.county, state=s, now=now, limit=app.MAX_PAGE)["cases"]} & paused
    assert judged, paused  # the pages above did cut next to a case judged in Python
