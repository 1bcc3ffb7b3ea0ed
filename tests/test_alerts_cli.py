"""`fednode alerts list|show` and `fednode calendar import|show` on real stores (node stopped)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from node.app import ingest
from node.core.calendar import CST
from node.core.home import Home
from node.features.rules.overrides import OVERRIDES_FILE, load_calendar
from node.features.rules.processor import RulesProcessor
from node.features.rules.settings import RulesSettings
from node.interfaces.cli import main as cli
from tests.conftest import Tree


@pytest.fixture(autouse=True)
def _logging_not_left_on_a_closed_stream() -> Iterator[None]:
    # cli.main configures structlog on the stderr of the moment, which pytest closes after the test
    yield
    structlog.reset_defaults()


def fednode(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()  # drop what came before (log lines)
    rc = cli.main(list(argv))
    out = capsys.readouterr().out
    try:
        return rc, json.loads(out)
    except ValueError:
        return rc, out


def with_alerts(home: Home) -> None:
    ingest.append_chunked(home.ledger(), ingest.synthetic_items(home.code, 3000, 1))
    settings = RulesSettings()
    p = RulesProcessor(home.ledger(), settings, load_calendar(home.dir, settings),
                       clock=lambda: datetime(2026, 11, 28, 10, 0, tzinfo=CST))  # fmt: skip
    p.rebuild()
    while p.step()[0]:
        pass
    p.scan()
    home.close()


def test_alerts_list_filters_and_json(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    with_alerts(tree.county)
    d = str(tree.county.dir)
    rc, rows = fednode(capsys, "alerts", "list", d, "--json")
    assert rc == 0 and len(rows) > 10
    assert all(r["origin"] == "320303" and r["seq"] >= 1 and r["alert_id"] for r in rows)
    rc, red = fednode(capsys, "alerts", "list", d, "--level", "red", "--json")
    assert rc == 0 and red and all(r["level"] >= 3 for r in red) and len(red) < len(rows)
    rc, same = fednode(capsys, "alerts", "list", d, "--level", "红牌", "--json")
    assert same == red
    rc, perm = fednode(capsys, "alerts", "list", d, "--rule", "permission", "--json")
    assert perm and {r["rule_id"] for r in perm} == {"permission"}
    case = perm[0]["case_no"]
    rc, one_case = fednode(capsys, "alerts", "list", d, "--case", case, "--json")
    assert one_case and {r["case_no"] for r in one_case} == {case}
    rc, elsewhere = fednode(capsys, "alerts", "list", d, "--division", "320311", "--json")
    assert elsewhere == []
    rc, last = fednode(capsys, "alerts", "list", d, "--limit", "3", "--json")
    assert last == rows[-3:]
    rc, text = fednode(capsys, "alerts", "list", d)
    assert rc == 0 and "红牌" in text and f"({len(rows)} alerts)" in text


def test_alerts_show_and_not_found(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    with_alerts(tree.county)
    d = str(tree.county.dir)
    _, rows = fednode(capsys, "alerts", "list", d, "--json")
    rc, one = fednode(capsys, "alerts", "show", d, rows[0]["alert_id"], "--json")
    assert rc == 0 and {k: one[k] for k in rows[0]} == rows[0]  # show: the row, its record and its disposal
    assert one["state"] == "open" and one["record"] == f"{rows[0]['origin']}/monitor/{rows[0]['seq']}"
    rc, text = fednode(capsys, "alerts", "show", d, rows[0]["alert_id"])
    assert rc == 0 and "fednode proof" in text and rows[0]["message"] in text
    rc, err = fednode(capsys, "alerts", "show", d, "nope:1", "--json")
    assert rc == 1 and err["code"] == "not_found" and err["fix"]


def test_alerts_list_on_a_node_without_alerts(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    rc, rows = fednode(capsys, "alerts", "list", str(tree.other.dir), "--json")
    assert (rc, rows) == (0, [])


def test_bad_level_is_bad_usage(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["alerts", "list", str(tree.county.dir), "--level", "purple"])
    assert e.value.code == 2


def test_calendar_import_and_show(tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tree.county.dir)
    rc, shown = fednode(capsys, "calendar", "show", d, "--year", "2027", "--json")
    assert rc == 1 and shown["covered"] is False and "calendar import" in shown["fix"]
    rc, y2025 = fednode(capsys, "calendar", "show", d, "--year", "2025", "--json")
    days = {x["date"]: x for x in y2025["special_days"]}
    assert rc == 0 and days["2025-10-08"]["kind"] == "holiday" and days["2025-09-28"]["kind"] == "work"
    assert days["2025-09-28"]["name"] == "国庆节" and days["2025-10-11"] == {  # the make-up Saturday
        "date": "2025-10-11", "kind": "work", "name": "国庆节", "source": "official"}
    csv_file = tmp_path / "2027.csv"
    csv_file.write_text("date,kind,name\n2027,year,2027年节假日安排\n2027-01-01,holiday,元旦\n"
                        "2027-02-06,work,春节调休\n", encoding="utf-8")  # fmt: skip
    rc, res = fednode(capsys, "calendar", "import", d, str(csv_file), "--json")
    assert rc == 0 and res["days"] == 2 and res["years"] == [2027] and res["node"] == "not running"
    assert (tree.county.dir / OVERRIDES_FILE).exists()
    toml_file = tmp_path / "local.toml"
    toml_file.write_text('[[days]]\ndate = 2026-12-31\nkind = "holiday"\nname = "本地调整"\n', encoding="utf-8")
    rc, res = fednode(capsys, "calendar", "import", d, str(toml_file), "--json")
    assert rc == 0 and res["total_days"] == 3 and res["total_years"] == [2027]
    rc, shown = fednode(capsys, "calendar", "show", d, "--year", "2027", "--json")
    assert rc == 0 and shown["covered"] and shown["operator_years"] == [2027]
    days = {x["date"]: x for x in shown["special_days"]}
    assert days["2027-01-01"] == {"date": "2027-01-01", "kind": "holiday", "name": "元旦", "source": "operator"}
    assert days["2027-02-06"]["kind"] == "work"
    rc, text = fednode(capsys, "calendar", "show", d)
    assert rc == 0 and "08:30-12:00" in text and "2027" in text


def test_calendar_import_refuses_a_bad_file(tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tree.county.dir)
    bad = tmp_path / "bad.csv"
    bad.write_text("2027-01-01,holiday\n2027-01-01,work\n", encoding="utf-8")
    rc, err = fednode(capsys, "calendar", "import", d, str(bad), "--json")
    assert rc == 2 and "both" in err["error"] and err["fix"]
    rc, err = fednode(capsys, "calendar", "import", d, str(tmp_path / "missing.csv"), "--json")
    assert rc == 2 and "cannot read" in err["error"]
    assert not (tree.county.dir / OVERRIDES_FILE).exists()  # nothing half-imported
