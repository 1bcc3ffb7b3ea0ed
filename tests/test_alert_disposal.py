"""Alert disposal (issue 25, part 1): 待处置 → 已转督办 | 已纠正 | 误报核销, reopened by a supervisor; each
transition a signed ``alert.*`` record naming the person, carried up the tree; who may (never a handler of
the case); the supervisor rule "alert left unhandled" counts disposals.

Pure state machine first, then the CLI on real stores (the county on SQLite and on PostgreSQL), then one
real-process tree: a disposal at the county reaches the province.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.app import alerts as app
from node.core.calendar import CST
from node.core.home import Home
from node.features import worklog
from node.features.alerts import disposal as dsp
from node.features.cases import index as cix
from node.features.stats.config import SupervisorRules
from node.interfaces.cli import main as cli
from tests.conftest import PERSON_PASSWORD, Tree, add_person
from tests.faultlib import COUNTY, PROVINCE, Cluster, wait_for
from tests.test_alerts_cli import with_alerts
from tests.test_tickets_cli import push_down, push_up, sync

BY = {"login": "zhang", "name": "张三", "role": "supervisor", "role_label": "监察员", "scope": "320303"}
FEDNODE = str(Path(sys.executable).with_name("fednode"))


def ev(kind: str, at: str, writer: str = "320303", **p: Any) -> tuple[str, dict[str, Any], str]:
    return kind, {"alert_id": "A1", "at": f"2026-03-02T{at}+08:00", "by": BY, "actor": "zhang", **p}, writer


# ---- the state machine (pure) ------------------------------------------------------------------------------


def test_every_transition_of_the_table() -> None:
    assert dsp.project([]) == {}
    for result in dsp.RESULTS:
        d = dsp.project([ev(dsp.DISPOSE, "09:00:00", result=result, note="已核实处理完毕")])["A1"]
        assert d.state == result and d.by == BY and d.at.startswith("2026-03-02T09:00") and d.label
        back = dsp.project([ev(dsp.DISPOSE, "09:00:00", result=result, note="已核实处理完毕"),
                            ev(dsp.REOPEN, "10:00:00", note="复查发现未整改")])["A1"]
        assert back.state == dsp.OPEN and back.result is None and back.history[-1]["reopened"]
    ticket = dsp.project([("ticket.issue", {"ticket": "320303-000001", "alert_ids": ["A1"], "subject": "红牌督办",
                                            "at": "2026-03-02T09:00:00+08:00", "by": BY}, "320303")])["A1"]
    assert ticket.state == dsp.TICKET and ticket.tickets == ["320303-000001"]
    # what the table does not allow is kept in the history, not applied
    twice = dsp.project([ev(dsp.DISPOSE, "09:00:00", result="corrected", note="已纠正"),
                         ev(dsp.DISPOSE, "09:30:00", result="false-alarm", note="其实是误报，时钟错误")])["A1"]
    assert twice.state == "corrected" and twice.history[1]["applied"] is False
    reopen_open = dsp.project([ev(dsp.REOPEN, "09:00:00", note="x")])["A1"]
    assert reopen_open.state == dsp.OPEN and reopen_open.history[0]["applied"] is False


def test_the_outcome_does_not_depend_on_arrival_order() -> None:
    events = [ev(dsp.DISPOSE, "09:00:00", result="corrected", note="已纠正"),
              ev(dsp.REOPEN, "10:00:00", note="复查未整改", writer="320300"),
              ev(dsp.DISPOSE, "11:00:00", result="false-alarm", note="核实为系统误报", writer="320300"),
              ev(dsp.DISPOSE, "11:00:00", result="corrected", note="同时处置", writer="320303")]
    first = dsp.project(events)["A1"]
    for order in (events[::-1], events[1:] + events[:1], events + events):
        again = dsp.project(order)["A1"]
        assert (again.state, again.by, again.note, len(again.history)) == \
            (first.state, first.by, first.note, len(first.history))
    assert first.state == "false-alarm"  # same second: the rank, then the writer decides, the same everywhere


def test_act_checks_reason_state_and_writers() -> None:
    with pytest.raises(Exception, match="reason"):
        dsp.check_dispose(dsp.Disposal("A1"), "false-alarm", "误报")
    with pytest.raises(Exception, match="empty"):
        dsp.check_dispose(dsp.Disposal("A1"), "corrected", "  ")
    with pytest.raises(Exception, match="not a disposal"):
        dsp.check_dispose(dsp.Disposal("A1"), "fixed", "已处理完毕")
    done = dsp.project([ev(dsp.DISPOSE, "09:00:00", result="corrected", note="已纠正")])["A1"]
    with pytest.raises(dsp.DisposalRefused, match="already disposed"):
        dsp.check_dispose(done, "corrected", "再次处置")
    with pytest.raises(dsp.DisposalRefused, match="nothing to reopen"):
        dsp.check_reopen(dsp.Disposal("A1"), "重新打开")
    assert dsp.check_dispose(dsp.Disposal("A1"), "false-alarm", " 系统误报，已核实 ") == "系统误报，已核实"
    # a record written by a node outside the alert's subtree (a sibling county) does not count
    forged = dsp.project([ev(dsp.DISPOSE, "09:00:00", writer="320311", result="corrected", note="伪造")],
                         {"A1": "320303"})["A1"]
    assert forged.state == dsp.OPEN and forged.history[0]["applied"] is False
    # a record of an ancestor does
    assert dsp.project([ev(dsp.DISPOSE, "09:00:00", writer="320000", result="corrected", note="省级处置")],
                       {"A1": "320303"})["A1"].state == "corrected"


def test_drafts_pending_confirmed_dropped() -> None:
    draft = ev(dsp.DRAFT, "09:00:00", to="320303-ZJ", subject="红牌督办", writer="320303")
    d = dsp.project([draft])["A1"]
    assert d.state == dsp.OPEN and d.draft and d.draft["state"] == "pending"
    second = dsp.project([draft, ev(dsp.DRAFT, "09:01:00", to="320303-ZJ", subject="again")])["A1"]
    assert second.draft and second.draft["subject"] == "红牌督办" and second.history[1]["applied"] is False
    issued = dsp.project([draft, ("ticket.issue", {"ticket": "320303-000002", "alert_ids": ["A1"], "subject": "s",
                                                   "at": "2026-03-02T09:30:00+08:00", "by": BY}, "320303")])["A1"]
    assert issued.state == dsp.TICKET and issued.draft and issued.draft["state"] == "confirmed"
    dropped = dsp.project([draft, ev(dsp.DRAFT_DROP, "09:10:00", note="电话督促即可")])["A1"]
    assert dropped.state == dsp.OPEN and dropped.draft and dropped.draft["state"] == "dropped"


def test_red_cards_and_who_issues_their_ticket() -> None:
    red = {"alert_id": "case_time:320303:C1:3", "rule_id": "case_time", "level": 3, "object": "case",
           "division": "320303", "dept": "320303-ZJ", "case_no": "C1", "message": "办件 C1 超过法定时限：红牌",
           "at": "2026-03-02T09:00:00+08:00"}
    assert dsp.is_red_card(red) and dsp.issuer_for(red) == "320303"
    assert dsp.issuer_for({**red, "dept": ""}) == "320300"  # a county's own case: its city
    assert not dsp.is_red_card({**red, "level": 2})
    assert not dsp.is_red_card({**red, "object": "supervisor", "rule_id": "supervisor_login"})
    assert not dsp.is_red_card({**red, "rule_id": "ticket.escalate"})
    fill = dsp.prefill(red, "320303")
    assert fill["to"] == "320303-ZJ" and "C1" in fill["subject"] and "红牌" in fill["subject"]
    assert fill["case_nos"] == ["C1"] and "办件超时" in fill["basis"] and red["message"] in fill["body"]
    assert dsp.prefill(red, "320311")["to"] == ""  # not below that node: the person names the target


def test_the_unhandled_rule_counts_disposals_not_views() -> None:
    node = "320303"
    t0 = datetime(2026, 3, 2, 9, tzinfo=CST)
    rules = SupervisorRules(alert_days=2, escalate_after_days=1)
    alert = ("alert", node, {"alert_id": "A1", "level": 3, "division": node, "at": t0.isoformat()})
    look = (worklog.ACTION, node, {"actor": "zhang", "action": "alerts show", "target": "A1", "at": t0.isoformat()})
    dispose = (dsp.DISPOSE, node, {"alert_id": "A1", "result": "corrected", "note": "已纠正", "by": BY,
                                   "at": (t0 + timedelta(hours=1)).isoformat()})
    reopen = (dsp.REOPEN, node, {"alert_id": "A1", "note": "未整改", "by": BY,
                                 "at": (t0 + timedelta(days=5)).isoformat()})

    def due(records: list[Any], now: datetime) -> list[str]:
        f = worklog.facts_from_records(node, records)
        return [d.payload["subject"] for d in worklog.supervisor_actions(f, rules, now) if d.payload.get("rule")
                == "alert_unhandled"]

    later = t0 + timedelta(days=4)
    assert due([alert, look], later), "looking at an alert does not handle it"
    assert not due([alert, look, dispose], later), "a disposal does"
    # reopened: open again, its time counted from the reopening
    assert not due([alert, dispose, reopen], t0 + timedelta(days=6))
    assert due([alert, dispose, reopen], t0 + timedelta(days=8))


# ---- the CLI on real stores --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def alert_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tree]:
    db = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    t = Tree(tmp_path / "tree", county_db=db)
    with_alerts(t.county)
    yield t
    t.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    rc = cli.main([*argv, "--json"])
    cap = capsys.readouterr()
    try:
        return rc, json.loads(cap.out) if cap.out.strip() else None, cap.err
    except json.JSONDecodeError:
        return rc, cap.out, cap.err


def red_card_with_handler(home: Home) -> tuple[dict[str, Any], list[str]]:
    rows = app.list_alert_rows(home, level=3)
    store = home.store()
    cix.fold_all(store)
    with store.read() as conn:
        for r in rows:
            if r.get("case_no"):
                handlers = cix.handlers_of(conn, r["case_no"])
                if handlers:
                    return r, handlers
    raise AssertionError("no red card on a case with handlers")


def reopened(t: Tree) -> Tree:
    """The tree's homes opened again: a store's in-memory heads predate what the in-process CLI appended
    through its own Home (a running node's would not), and push_up/push_down read them."""
    for name in ("province", "city", "county", "other"):
        home = getattr(t, name)
        home.close()
        setattr(t, name, Home(home.dir))
    return t


def records(home: Home, kind: str) -> list[tuple[Any, dict[str, Any]]]:
    store = home.store()
    return [(ch, ch.payload()) for ch in store.changes(0, limit=1_000_000, kinds=(kind,)) if ch.kind == kind]


def test_dispose_reopen_refuse_and_the_province_sees_it(alert_tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    t = alert_tree
    c = str(t.county.dir)
    red, handlers = red_card_with_handler(t.county)
    aid = red["alert_id"]
    assert red["state"] == "open" and red["disposed_by"] is None
    zhang = add_person(t.county, "zhang", "张三", "监察员")
    own = add_person(t.county, "wang", handlers[0], "部门监察")  # the 部门监察 is a handler of this very case
    zhao = add_person(t.county, "zhao", "赵六", "部门监察")
    li = add_person(t.county, "li", handlers[-1], "承办人")

    # a 承办人 on his own case: refused, with who may; recorded
    rc, _out, err = run(capsys, "alerts", "dispose", c, aid, "--result", "corrected", "--note", "已办结", *li)
    assert rc == 2 and "承办人" in err and "处置预警" in err and "监察员" in err
    # a 部门监察 who handled the case: refused as his own case, recorded
    rc, _out, err = run(capsys, "alerts", "dispose", c, aid, "--result", "corrected", "--note", "已办结", *own)
    assert rc == 2 and "自己的案件" in err and handlers[0] in err, err
    refused = [p for _c, p in records(t.county, worklog.ACTION) if p["action"] == "refused"]
    assert {p["actor"] for p in refused} >= {"li", "wang"}
    assert any(p["detail"]["permission"] == "alerts.handle" and "自己的案件" in p["detail"]["reason"] for p in refused)
    # a false alarm needs its reason; an unknown alert is a clear error
    rc, _out, err = run(capsys, "alerts", "dispose", c, aid, "--result", "false-alarm", "--note", "误报", *zhang)
    assert rc == 2 and "reason" in err
    rc, out, err = run(capsys, "alerts", "dispose", c, "no-such-alert:3", "--result", "corrected", "--note", "x",
                       *zhang)
    assert rc == 1 and out["code"] == "not_found"
    assert not records(t.county, dsp.DISPOSE), "nothing was written by a refused act"

    # a 监察员 disposes of it as a false alarm, with the reason: a signed monitor record naming him
    reason = "经核实系统时钟错误导致误报，办件实际按时办结"
    rc, out, err = run(capsys, "alerts", "dispose", c, aid, "--result", "false-alarm", "--note", reason, *zhang)
    assert rc == 0, err
    assert out["result"] == "false-alarm" and out["by"]["name"] == "张三" and out["note"] == reason
    [(ch, p)] = records(t.county, dsp.DISPOSE)
    assert ch.channel == 2 and ch.origin == "320303" and p["by"]["role_label"] == "监察员" and p["case_no"]
    rc, out, err = run(capsys, "alerts", "dispose", c, aid, "--result", "corrected", "--note", "再处置", *zhang)
    assert rc == 1 and out["code"] == "alert_disposal_refused" and "reopen" in err
    rc, rows, _ = run(capsys, "alerts", "list", c, "--state", "disposed")
    assert [r["alert_id"] for r in rows] == [aid]
    assert rows[0]["state"] == "false-alarm" and rows[0]["disposed_by"]["name"] == "张三" and rows[0]["disposed_at"]
    rc, rows, _ = run(capsys, "alerts", "list", c, "--state", "open")
    assert aid not in {r["alert_id"] for r in rows} and rows

    # reopened by a 部门监察: refused; by the 监察员: open again
    rc, _out, err = run(capsys, "alerts", "reopen", c, aid, "--note", "复查", *zhao)
    assert rc == 2 and "监察员" in err
    rc, out, err = run(capsys, "alerts", "reopen", c, aid, "--note", "复查发现原因不实", *zhang)
    assert rc == 0 and out["was"] == "false-alarm", err
    rc, one, _ = run(capsys, "alerts", "show", c, aid)
    assert one["state"] == "open" and one["disposed_by"] is None and len(one["history"]) == 2
    # `alerts handle` is `dispose --result corrected`
    rc, out, err = run(capsys, "alerts", "handle", c, aid, "--note", "已督促承办人当日办结", *zhang)
    assert rc == 0 and out["handled"]["result"] == "corrected", err
    acts = [p for _c, p in records(t.county, worklog.ACTION) if p["target"] == aid]
    assert [p["action"] for p in acts if p["action"] != "refused"] == ["alerts dispose", "alerts reopen",
                                                                         "alerts dispose"]
    assert acts[-1]["detail"]["via"] == "alerts handle"

    # the province sees the state, the person and the note
    sync(reopened(t))
    rc, shown, err = run(capsys, "alerts", "show", str(t.province.dir), aid)
    assert rc == 0, err
    assert shown["state"] == "corrected" and shown["state_label"] == "已纠正"
    assert shown["disposed_by"] == out["handled"]["by"] and shown["note"] == "已督促承办人当日办结"
    assert [h["event"] for h in shown["history"]] == ["dispose", "reopen", "dispose"]
    assert shown["history"][0]["note"] == reason


def test_an_ancestors_disposal_travels_down_to_the_alerts_node(alert_tree: Tree,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    t = alert_tree
    red, _handlers = red_card_with_handler(t.county)
    sync(reopened(t))
    city_sup = add_person(t.city, "qian", "钱七", "监察员")  # scope 320300: the county is inside
    other_sup = add_person(t.city, "sun", "孙八", "监察员", scope="320311")
    rc, _out, err = run(capsys, "alerts", "dispose", str(t.city.dir), red["alert_id"], "--result", "corrected",
                        "--note", "市级督促整改", *other_sup)
    assert rc == 2 and "辖区" in err
    rc, out, err = run(capsys, "alerts", "dispose", str(t.city.dir), red["alert_id"], "--result", "corrected",
                       "--note", "市级督促整改", *city_sup)
    assert rc == 0, err
    [(ch, _p)] = records(t.city, dsp.DISPOSE)
    assert ch.dest == "320303"
    assert push_down(reopened(t).city, t.county) == 1
    rc, shown, _ = run(capsys, "alerts", "show", str(t.county.dir), red["alert_id"])
    assert shown["state"] == "corrected" and shown["disposed_by"]["name"] == "钱七"
    assert shown["history"][-1]["node"] == "320300"
    push_up(t.city, t.province)
    rc, shown, _ = run(capsys, "alerts", "show", str(t.province.dir), red["alert_id"])
    assert shown["state"] == "corrected"


# ---- real processes -----------------------------------------------------------------------------------------


def fednode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDNODE, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDNODE_USER": ""})


@pytest.mark.slow
def test_a_disposal_at_the_county_reaches_the_province(tmp_path: Path) -> None:
    alert = {"alert_id": "case_time:320303:C-DISPOSE-1:3", "rule_id": "case_time", "category": "01", "level": 3,
             "object": "case", "case_no": "32030320260301001000001", "division": COUNTY, "dept": f"{COUNTY}-ZJ",
             "message": "办件 32030320260301001000001 超过法定时限：红牌", "at": "2026-03-02T09:00:00+08:00",
             "source": "engine"}
    with Cluster(tmp_path) as cl:
        cl.start()
        county, province = str(cl.homes[COUNTY].dir), str(cl.homes[PROVINCE].dir)
        assert cl.call(COUNTY, {"op": "ingest", "records": [{"kind": "alert", "payload": alert}]})["ingested"] == 1
        r = fednode("users", "add", county, "--login", "zhang", "--name", "张三", "--role", "监察员",
                    "--password-file", "-", stdin=PERSON_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        r = fednode("alerts", "dispose", county, alert["alert_id"], "--result", "false-alarm", "--note",
                    "核实为数据补录延迟造成的误报", "--as", "zhang", "--password-file", "-", "--json",
                    stdin=PERSON_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["via"] == "admin"

        def province_sees_it() -> bool:
            r = fednode("alerts", "show", province, alert["alert_id"], "--json")
            if r.returncode != 0:
                return False
            shown = json.loads(r.stdout)
            return shown["state"] == "false-alarm" and (shown["disposed_by"] or {}).get("name") == "张三" \
                and shown["note"] == "核实为数据补录延迟造成的误报"
        wait_for(province_sees_it, 60, "the province sees the county's disposal")
