"""The desk's overview (总览) costs the same whatever the number of alerts held (issue 17).

Not timed: the work is counted. On a real SQLite store, the SQL statements the overview runs and the
steps of SQLite's virtual machine (``set_progress_handler``: every row an index or table scan visits
costs steps) are counted for 1,000 and for 10,000 alerts held; they must not grow. Before the change the
overview read every alert record on every request (10,000 alerts: ten times the steps of 1,000).

And the counts are the same as reading every alert and asking ``may()`` of each (what the overview did
before): today's and all, by unit and level, for a supervisor, one of another county, and a 承办人 who
sees only the alerts of his own cases.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from node.app import desk as app_desk
from node.app import enrol
from node.app.alerts import alert_target, catch_up
from node.core.calendar import CST
from node.core.home import Home
from node.core.ledger import NewRecord
from node.features.people.roles import Person, may
from node.features.rules.alerts import read_alerts
from node.features.tickets.desk import HeldIndex

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=CST)
DAY_US = 86_400_000_000
DIVISIONS = ("320303", "320311", "320302")
TODAY = 40  # alerts raised today, whatever the number of older ones
HANDLER = Person("li", "李四", ("handler",), "320303")
SUPERVISOR = Person("zhang", "张三", ("supervisor",), "320000")
OTHER = Person("qian", "钱七", ("supervisor",), "320311")


def _home(directory: Path, older: int) -> Home:
    home = enrol.init(directory, code="320000", name="江苏省", level="province")
    enrol.init_root(home)
    ledger = home.ledger()
    now_us = int(NOW.timestamp() * 1e6)
    items: list[NewRecord] = []
    for i in range(older + TODAY):
        division = DIVISIONS[i % len(DIVISIONS)]
        case_no = f"{division}2026{i:08d}"
        at = now_us - (1 + i % 20) * DAY_US if i < older else now_us - (i - older) * 1_000_000
        own = i % 97 == 0  # some cases are 李四's: he reads their alerts (the engine names him in them)
        items.append(NewRecord("alert", {"alert_id": f"case:{case_no}:{1 + i % 4}", "rule_id": "R-TEST", "level": 1 + i % 4,
                                         "object": "case", "division": division, "dept": division, "case_no": case_no,
                                         "item_code": "ITEM", "message": "测试预警", **({"handler": "li"} if own else {}),
                                         "at": datetime.fromtimestamp(at / 1e6, CST).isoformat()}, time_us=at))
        if own:
            items.append(NewRecord("case.accept", {"case_no": case_no, "division": division, "dept": division,
                                                   "item_code": "ITEM", "handler": "li", "accepted": True,
                                                   "time": datetime.fromtimestamp(at / 1e6, CST).isoformat()},
                                   time_us=at))
    for k in range(0, len(items), 2000):
        ledger.append(items[k:k + 2000])
    catch_up(home, home.store())
    return home


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("desk_perf")
    made = {n: _home(base / str(n), n) for n in (1_000, 10_000)}
    yield made
    for h in made.values():
        h.close()


def _reference(home: Home, person: Person) -> list[dict[str, Any]]:
    """What the overview showed before: every alert read, ``may()`` asked of each."""
    today = NOW.date().isoformat()
    units: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"today": [0] * 4, "all": [0] * 4})
    for a in read_alerts(home.store()):
        if not may(person, "alerts.read", alert_target(a)):
            continue
        level = int(a.payload["level"])
        u = units[str(a.payload["division"])]
        u["all"][level - 1] += 1
        if datetime.fromtimestamp(a.time_us / 1e6, CST).date().isoformat() == today:
            u["today"][level - 1] += 1
    return [{"division": d, **v} for d, v in sorted(units.items())]


@pytest.mark.parametrize("person", [SUPERVISOR, OTHER, HANDLER], ids=["supervisor", "other-county", "handler"])
def test_overview_counts_alerts_as_reading_each_did(homes: dict[int, Home], person: Person) -> None:
    home = homes[1_000]
    got = app_desk.overview(home.store(), home.code, person, None, now=NOW, index=HeldIndex())["alerts"]
    assert got == _reference(home, person)
    assert got, "every person here sees some alerts"
    assert sum(sum(u["today"]) for u in got) < sum(sum(u["all"]) for u in got)


def _work(home: Home, person: Person) -> tuple[int, int]:
    """(SQL statements, SQLite VM steps / 100) of one overview, the desk's ticket index already warm."""
    store = home.store()
    index = HeldIndex()
    app_desk.overview(store, home.code, person, None, now=NOW, index=index)  # the desk's index, warmed
    counted = {"statements": 0, "steps": 0}

    def step() -> int:
        counted["steps"] += 1
        return 0

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counted["statements"] += 1
        conn.connection.driver_connection.set_progress_handler(step, 100)

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        app_desk.overview(store, home.code, person, None, now=NOW, index=index)
    finally:
        event.remove(store.engine, "before_cursor_execute", before)
        with store.engine.connect() as c:  # the pooled connections stop counting
            c.connection.driver_connection.set_progress_handler(None, 100)  # type: ignore[union-attr]
    return counted["statements"], counted["steps"]


@pytest.mark.parametrize("person", [SUPERVISOR, HANDLER], ids=["supervisor", "handler"])
def test_overview_work_does_not_grow_with_the_alerts_held(homes: dict[int, Home], person: Person) -> None:
    small_stmts, small_steps = _work(homes[1_000], person)
    big_stmts, big_steps = _work(homes[10_000], person)
    assert big_stmts == small_stmts, (small_stmts, big_stmts)
    # the handler's own cases grow with the store here (one case in 97): allow for those few rows
    assert big_steps <= small_steps * 1.5 + 50, (small_steps, big_steps)
