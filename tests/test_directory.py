"""The right person told (issue 25, part 2): the directory (CSV in UTF-8 or GBK), the seed's ladder, each
attempt kept in an ``alert.notified`` record and listed by `alerts show`; a handler the directory lacks
goes to the department's 监察联系人 and raises one operator alert, not one per alert. The notifications go
through the real ``command`` notifier (a script that writes what it got)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from node.app import ingest
from node.core.calendar import CST
from node.core.errors import UsageError
from node.core.home import Home
from node.features.alerts import routing
from node.features.notify import load as load_dispatcher
from node.runtime.services.alerts import MISSING_RULE, NOTIFIED, route_once
from tests.conftest import Tree, add_person
from tests.test_alert_disposal import run

CSV = """姓名,登录名,部门,电话,邮箱,承办人标识,身份,分管部门
王芳,wangf,320303-ZJ,13800000001,wf@example.cn,WF001;王芳,承办人,
李局长,,320303-ZJ,13800000002,,,分管领导,320303-ZJ;320303-JT
周监察,,320303-ZJ,13800000003,,,监察联系人,
"""
NOW = datetime(2026, 3, 16, 10, 0, tzinfo=CST)


def test_parse_the_csv_in_utf8_and_gbk() -> None:
    for data in (CSV.encode("utf-8"), CSV.encode("utf-8-sig"), CSV.encode("gbk")):
        entries = routing.parse_csv(data)
        assert [e.name for e in entries] == ["王芳", "李局长", "周监察"]
        assert entries[0].handler_ids == ("WF001", "王芳") and entries[1].leads == ("320303-ZJ", "320303-JT")
        assert entries[2].duties == ("contact",)
    with pytest.raises(UsageError, match="身份"):
        routing.parse_csv("姓名,身份\n张三,局长\n".encode())
    with pytest.raises(UsageError, match="姓名"):
        routing.parse_csv(b"name_of,x\n")


def test_the_ladder() -> None:
    d = routing.Directory(routing.parse_csv(CSV.encode()))
    sup = routing.Entry(name="张三", login="zhang", duties=("supervisor",), source="user")
    alert = {"alert_id": "a", "level": 1, "object": "step", "dept": "320303-ZJ", "division": "320303"}

    def names(level: int, handler: str = "WF001", obj: str = "step") -> tuple[list[str], bool]:
        told, missing = routing.recipients({**alert, "level": level, "object": obj}, handler, d, [sup])
        return [e.name for e, _why in told], missing

    assert names(1) == (["王芳"], False)
    assert names(2) == (["王芳"], False)
    assert names(3) == (["李局长", "张三"], False)
    assert names(4) == (["张三", "周监察"], False)
    assert names(2, handler="X9") == (["周监察"], True)  # not in the directory: the 监察联系人, flagged
    assert names(2, handler="王芳") == (["王芳"], False)  # a handler ID or the name
    told, _ = routing.recipients({**alert, "level": 2}, "WF001", d, [sup])
    assert "初次警告" in told[0][1]


COMMAND = """import json, os, sys
msg = json.load(sys.stdin)
if msg["to"]["phone"] == "13800000009":
    sys.exit("gateway: number out of service")
with open(sys.argv[1], "a", encoding="utf-8") as f:
    f.write(json.dumps(msg, ensure_ascii=False) + "\\n")
"""


def case(no: str, handler: str) -> list[dict[str, Any]]:
    base = {"case_no": no, "item_code": "320303010001", "division": "320303", "dept": "320303-ZJ"}
    return [{"kind": "case.accept", "payload": {**base, "time": "2026-03-02T09:00:00+08:00", "handler": handler,
                                                "accepted": True}},
            {"kind": "case.step", "payload": {**base, "time": "2026-03-02T09:30:00+08:00", "step_no": 1,
                                              "step_code": "CB", "step_name": "承办", "handler": handler,
                                              "post": "承办人", "action": "pass",
                                              "started_at": "2026-03-02T09:30:00+08:00"}}]


def alert(no: str, level: int, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"kind": "alert", "payload": {
        "alert_id": f"case_time:320303:{no}:{n}:{level}", "rule_id": "case_time", "category": "01", "level": level,
        "object": "case", "case_no": no, "division": "320303", "dept": "320303-ZJ",
        "message": f"办件 {no} 超时", "at": "2026-03-10T09:00:00+08:00", "source": "engine", **extra}}


def test_yellow_to_the_handler_red_to_the_leader_through_the_command(tree: Tree, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    got = tmp_path / "got.jsonl"
    script = tmp_path / "gateway.py"
    script.write_text(COMMAND, encoding="utf-8")
    with tree.county.config.path.open("a", encoding="utf-8") as f:
        f.write(f'\n[notify]\nwarn = ["log"]\nyellow = ["command"]\nred = ["command"]\nserious = ["command"]\n'
                f'command = {json.dumps([sys.executable, str(script), str(got)])}\nretries = 0\n')
    home = Home(tree.county.dir)
    c = str(home.dir)
    csv_file = tmp_path / "通讯录.csv"
    csv_file.write_bytes((CSV + "吴某,,320303-JT,13800000009,,W9,承办人,\n").encode("gbk"))  # a spreadsheet's GBK
    rc, out, err = run(capsys, "directory", "import", c, str(csv_file))
    assert rc == 0 and out["people"] == 4 and out["duties"]["leader"] == 1, err
    add_person(home, "zhang", "张三", "监察员")
    rc, rows, _ = run(capsys, "directory", "list", c)
    assert [r["name"] for r in rows] == ["王芳", "李局长", "周监察", "吴某", "张三"]
    rc, one, _ = run(capsys, "directory", "show", c, "WF001")
    assert one["name"] == "王芳" and one["leaders"] == ["李局长"] and one["contacts"] == ["周监察"]

    rows_ = [*case("C1", "WF001"), *case("C2", "X7"), *case("C3", "X7"), *case("C4", "W9"),
             alert("C1", 2), alert("C1", 3, n=2), alert("C2", 2), alert("C3", 2), alert("C4", 2)]
    out_ = ingest.run_request(home.ledger(), {"records": [{**r, "position": f"t:{i}"} for i, r in enumerate(rows_)]})
    assert out_["accepted"] == len(rows_), out_
    payloads = route_once(home.ledger(), load_dispatcher(home.config.sections), lambda: NOW)
    messages = [json.loads(line) for line in got.read_text(encoding="utf-8").splitlines()]
    told = {(m["alert_id"], m["to"]["name"]) for m in messages}
    yellow, red = alert("C1", 2)["payload"]["alert_id"], alert("C1", 3, n=2)["payload"]["alert_id"]
    assert (yellow, "王芳") in told and (red, "李局长") in told and (red, "张三") in told
    assert (red, "王芳") not in told
    assert all(m["to"]["phone"] for m in messages if m["to"]["name"] != "张三")
    # the handler X7 is not in the directory: 周监察 told twice, ONE operator alert about X7
    assert {(m["alert_id"].split(":")[2], m["to"]["name"]) for m in messages if "X7" in m.get("why", "")} == {
        ("C2", "周监察"), ("C3", "周监察")}
    missing = [p for p in _alerts(home) if p["rule_id"] == MISSING_RULE]
    assert [p["alert_id"] for p in missing] == [f"{MISSING_RULE}:320303:X7"] and missing[0]["level"] == 4
    # every attempt kept, failures too; `alerts show` lists them
    failed = [a for p in payloads for a in p["attempts"] if a["outcome"] == "failed"]
    assert [(a["name"], a["channel"]) for a in failed] == [("吴某", "command")] and "out of service" in failed[0]["error"]
    rc, shown, _ = run(capsys, "alerts", "show", c, red)
    assert {(n["name"], n["channel"], n["outcome"]) for n in shown["notified"]} == {
        ("李局长", "command", "sent"), ("张三", "command", "sent")}
    # the operator alert itself goes to the supervisors (严重违规)
    assert (f"{MISSING_RULE}:320303:X7", "张三") in told
    # once: routing again tells nobody again
    assert route_once(home.ledger(), load_dispatcher(home.config.sections), lambda: NOW) == []
    assert len(got.read_text(encoding="utf-8").splitlines()) == len(messages)
    home.close()


def _alerts(home: Home) -> list[dict[str, Any]]:
    return [c.payload() for c in home.store().changes(0, 100_000, kinds=("alert",)) if c.kind == "alert"]


def test_notified_records_are_monitor_records(tree: Tree) -> None:
    from node.core.records import MONITOR, channel_of_kind

    assert channel_of_kind(NOTIFIED) == MONITOR
