"""红牌 to 督办 (issue 25, part 3): ``[tickets] auto_from_red = "off" | "draft" | "issue"``; exactly one ticket
per red card (after a restart, a replay of the feed, the alert arriving again, a second red card on the same
case); drafts confirmed or dropped by a person; `tickets issue --alert` prefilled; `tickets show` lists the
alerts and `alerts show` the tickets. Real stores; one real node process restarted in between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from node.app import ingest
from node.core.calendar import CST
from node.core.errors import ConfigError
from node.core.home import Home
from node.features import worklog
from node.features.alerts import disposal as dsp
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import TicketsConfig, project_store
from node.runtime.services.alerts import CURSOR_KEY, auto_step
from tests.conftest import PERSON_PASSWORD, Tree, add_person
from tests.faultlib import COUNTY, Cluster, wait_for
from tests.test_alert_disposal import run
from tests.test_tickets_cli import push_up

NOW = datetime(2026, 3, 3, 10, 0, tzinfo=CST)
ISSUE = TicketsConfig(auto_from_red="issue")
DRAFT = TicketsConfig(auto_from_red="draft")
FEDNODE = str(Path(sys.executable).with_name("fednode"))


def red(n: int, case: str = "32030320260301001000001", dept: str = "320303-ZJ", level: int = 3,
        rule: str = "case_time") -> dict[str, Any]:
    return {"alert_id": f"{rule}:320303:{case}:{n}:{level}", "rule_id": rule, "category": "01", "level": level,
            "object": "case", "case_no": case, "division": "320303", "dept": dept,
            "message": f"办件 {case} 超过法定时限：红牌", "at": "2026-03-02T09:00:00+08:00", "source": "engine"}


def put(home: Home, *alerts: dict[str, Any]) -> None:
    rows = [{"position": f"t:{a['alert_id']}", "kind": "alert", "payload": a} for a in alerts]
    out = ingest.run_request(home.ledger(), {"records": rows})
    assert out["accepted"] == len(alerts) or out.get("duplicates"), out


def tickets_citing(home: Home, alert_id: str) -> list[lc.TicketState]:
    return [st for st in project_store(home.store())[0].tickets.values() if alert_id in st.alert_ids]


def state(home: Home, alert_id: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    rc, out, err = run(capsys, "alerts", "show", str(home.dir), alert_id)
    assert rc == 0, err
    return dict(out)


def test_auto_from_red_is_validated(tmp_path: Path) -> None:
    assert TicketsConfig().auto_from_red == "off"
    assert TicketsConfig.from_section({"auto_from_red": "draft"}, source="x", base=tmp_path).auto_from_red == "draft"
    with pytest.raises(ConfigError, match="auto_from_red"):
        TicketsConfig.from_section({"auto_from_red": "maybe"}, source="x", base=tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def county_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tree]:
    db = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    t = Tree(tmp_path / "tree", county_db=db)
    yield t
    t.close()


def test_issue_exactly_one_ticket_per_red_card(county_tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    county = county_tree.county
    first = red(1)
    put(county, first, {**red(9, level=2), "rule_id": "step_time"})  # a yellow card: nothing
    n, written = auto_step(county.ledger(), ISSUE, lambda: NOW)
    assert n == 2 and [w["kind"] for w in written] == ["issue"]
    [st] = tickets_citing(county, first["alert_id"])
    assert st.to == "320303-ZJ" and st.issuer == "320303" and st.case_nos == [first["case_no"]]
    assert "红牌" in st.subject and first["case_no"] in st.subject and "办件超时" in st.basis
    issue = st.timeline[0]
    assert issue["actor"] == "system" and issue["by"] == dsp.system_by("320303")
    assert not [p for p in _records(county, worklog.ACTION)], "no person acted: no work-log entry"
    shown = state(county, first["alert_id"], capsys)
    assert shown["state"] == "ticket" and shown["state_label"] == "已转督办"
    assert [x["ticket"] for x in shown["ticket_states"]] == [st.ticket]
    rc, tshow, _ = run(capsys, "tickets", "show", str(county.dir), st.ticket)
    assert [(a["alert_id"], a["state_label"]) for a in tshow["alerts"]] == [(first["alert_id"], "已转督办")]

    # again, after a restart (a new ledger), the alert arriving again, the feed replayed from 0
    assert auto_step(county.ledger(), ISSUE, lambda: NOW)[1] == []
    county.close()
    county = Home(county.dir)
    put(county, first)
    with county.store().write() as tx:
        tx.set_meta(CURSOR_KEY, "0")
    assert auto_step(county.ledger(), ISSUE, lambda: NOW)[1] == []
    # a second red card on the same case joins the open ticket
    second = red(2, level=4, rule="step_time")
    put(county, second)
    _n, written = auto_step(county.ledger(), ISSUE, lambda: NOW)
    assert written == [{"kind": "linked", "alert_id": second["alert_id"], "ticket": st.ticket}]
    assert len(tickets_citing(county, first["alert_id"])) == 1 and not tickets_citing(county, second["alert_id"])
    assert len(project_store(county.store())[0].tickets) == 1
    linked = state(county, second["alert_id"], capsys)
    assert linked["state"] == "ticket" and linked["tickets"] == [st.ticket] and linked["disposed_by"]["login"] == "system"
    county_tree.county = county


def _records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [c.payload() for c in home.store().changes(0, 1_000_000, kinds=(kind,)) if c.kind == kind]


def test_the_node_above_the_unit_issues_it(tree: Tree) -> None:
    own = red(3, case="32030320260301001000003", dept="")  # the county's own case: its city issues
    put(tree.county, own)
    assert auto_step(tree.county.ledger(), ISSUE, lambda: NOW)[1] == []
    push_up(tree.county, tree.city)
    _n, written = auto_step(tree.city.ledger(), ISSUE, lambda: NOW)
    assert [(w["kind"], w["to"]) for w in written] == [("issue", "320303")]
    push_up(tree.city, tree.province)
    assert auto_step(tree.province.ledger(), ISSUE, lambda: NOW)[1] == []


def test_off_moves_on_and_switching_on_acts_from_then(tree: Tree) -> None:
    put(tree.county, red(4, case="C4"))
    assert auto_step(tree.county.ledger(), TicketsConfig(), lambda: NOW)[1] == []
    put(tree.county, red(5, case="C5"))
    assert [w["alert_id"] for w in auto_step(tree.county.ledger(), ISSUE, lambda: NOW)[1]] == [red(5, case="C5")["alert_id"]]


def test_drafts_confirmed_or_dropped_by_a_person(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(tree.county.dir)
    a, b = red(6, case="C6"), red(7, case="C7")
    put(tree.county, a, b)
    _n, written = auto_step(tree.county.ledger(), DRAFT, lambda: NOW)
    assert [w["kind"] for w in written] == ["draft", "draft"]
    assert not project_store(tree.county.store())[0].tickets, "a draft is not a ticket"
    assert auto_step(tree.county.ledger(), DRAFT, lambda: NOW)[1] == []
    zhang = add_person(tree.county, "zhang", "张三", "监察员")
    wang = add_person(tree.county, "wang", "王五", "部门监察")
    rc, drafts, err = run(capsys, "tickets", "drafts", c, *zhang)
    assert rc == 0 and [d["alert_id"] for d in drafts] == [a["alert_id"], b["alert_id"]], err
    assert drafts[0]["to"] == "320303-ZJ" and drafts[0]["state"] == "pending" and drafts[0]["alert_state"] == "open"
    rc, _out, err = run(capsys, "tickets", "confirm", c, a["alert_id"], *wang)
    assert rc == 2 and "签发督办单" in err  # a 部门监察 does not issue tickets
    rc, out, err = run(capsys, "tickets", "confirm", c, a["alert_id"], *zhang)
    assert rc == 0 and out["by"]["name"] == "张三" and out["to"] == "320303-ZJ", err
    rc, again, err = run(capsys, "tickets", "confirm", c, a["alert_id"], *zhang)
    assert rc == 1 and again["code"] == "alert_disposal_refused"
    shown = state(tree.county, a["alert_id"], capsys)
    assert shown["state"] == "ticket" and shown["draft"]["state"] == "confirmed" and shown["tickets"] == [out["ticket"]]
    rc, out, err = run(capsys, "tickets", "drop", c, b["alert_id"], "--note", "已电话督促，无需督办", *zhang)
    assert rc == 0 and out["dropped"], err
    shown = state(tree.county, b["alert_id"], capsys)
    assert shown["state"] == "open" and shown["draft"]["state"] == "dropped"
    rc, drafts, _ = run(capsys, "tickets", "drafts", c, *zhang)
    assert drafts == []
    acts = [p["action"] for p in _records(tree.county, worklog.ACTION) if p["action"] not in ("users add", "refused")]
    assert acts == ["ticket.issue", "tickets drop"]


def test_tickets_issue_with_an_alert_is_prefilled(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    a = red(8, case="C8")
    put(tree.county, a)
    zhang = add_person(tree.county, "zhang", "张三", "监察员")
    rc, out, err = run(capsys, "tickets", "issue", str(tree.county.dir), "--alert", a["alert_id"], *zhang)
    assert rc == 0, err
    assert out["to"] == "320303-ZJ" and out["case_nos"] == ["C8"] and "C8" in out["subject"]
    assert state(tree.county, a["alert_id"], capsys)["state"] == "ticket"
    rc, out, err = run(capsys, "tickets", "issue", str(tree.county.dir), "--alert", "not-held:1", *zhang)
    assert rc == 1 and out["code"] == "not_found"


# ---- the running node's service, restarted ------------------------------------------------------------------


def fednode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDNODE, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDNODE_USER": ""})


@pytest.mark.slow
def test_the_running_node_issues_once_across_a_restart(tmp_path: Path) -> None:
    a = red(1, case="32030320260301001000042")
    with Cluster(tmp_path) as cl:
        cl.set_config(COUNTY, "tickets", "auto_from_red", "issue")
        cl.start()
        county = cl.homes[COUNTY]
        assert cl.call(COUNTY, {"op": "ingest", "records": [{"kind": "alert", "payload": a}]})["ingested"] == 1

        def ticket_of() -> list[dict[str, Any]]:
            r = fednode("tickets", "list", str(county.dir), "--json")
            assert r.returncode == 0, r.stderr
            return [x for x in json.loads(r.stdout) if x["to"] == "320303-ZJ"]
        wait_for(lambda: len(ticket_of()) == 1, 60, "the red card becomes a ticket")
        cl.stop(COUNTY)
        cl.start(COUNTY)
        assert cl.call(COUNTY, {"op": "ingest", "records": [{"kind": "alert", "payload": a}]}) is not None
        r = fednode("users", "add", str(county.dir), "--login", "zhang", "--name", "张三", "--role", "监察员",
                    "--password-file", "-", stdin=PERSON_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: cl.status(COUNTY)["auto_tickets"]["mode"] == "issue", 30, "the service runs")
        import time

        time.sleep(3)  # what a second ticket would need to appear
        assert len(ticket_of()) == 1
        r = fednode("alerts", "show", str(county.dir), a["alert_id"], "--json")
        shown = json.loads(r.stdout)
        assert shown["state"] == "ticket" and len(shown["tickets"]) == 1
