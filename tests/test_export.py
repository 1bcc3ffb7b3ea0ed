"""Export to the provincial exchange database (前置库, issue 21): case events, alerts (表11 电子监察) and tickets
written in the GB/T 39046 layout into real SQLite, PostgreSQL and MariaDB databases; incremental,
idempotent (upserts by natural key), read back by the gbt39046 source mapping; a real node exporting
as a service, killed with -9 in the middle, rows matching records one to one afterwards."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select, text

from adapters.base import commit, load_cursor
from adapters.sql_poll import SqlPollAdapter
from bench import demo
from node.app import enrol
from node.app.export import Exporter, cursor_key
from node.app.ingest import run_request
from node.core import schema
from node.core.errors import ConfigError
from node.core.home import Home
from node.core.ledger import NewRecord
from node.core.records import channel_name, parse_body
from node.core.store import Store
from node.features.export import ExporterConfig, gbt39046
from node.features.tickets import lifecycle as lc
from tests.sqldbs import engine

pytest_plugins = ("tests.sqlfixtures",)  # mysql_url, and sql_url: SQLite, PostgreSQL and MariaDB

CST = dt.timezone(dt.timedelta(hours=8))
AT = dt.datetime(2025, 10, 9, 9, 0, tzinfo=CST)
EXPORTED = ("case.", "alert", "ticket.")


def alert(i: int, level: int = 2) -> dict[str, Any]:
    return {"alert_id": f"case_yellow:3203032025100900{i:06d}", "rule_id": "case_yellow", "category": "01",
            "level": level, "object": "case", "case_no": f"3203032025100900{i:06d}", "division": "320303",
            "dept": "320303-SJ", "item_code": "320303-XK-001", "message": f"办件{i}超过承诺时限", "at": AT.isoformat(),
            "source": "engine"}


def feed_node(h: Home, cases: int = 200, alerts: int = 5) -> dict[str, Any]:
    """Synthetic case flows, alerts, and a ticket issued then reminded (the ticket row changes)."""
    ledger = h.ledger()
    run_request(ledger, {"synthetic": cases, "seed": 7})
    ledger.append([NewRecord("alert", alert(i, level=1 + i % 3)) for i in range(alerts)])
    issue = lc.make_issue("320000", 1, to="320300", subject="督办：办件超时", actor="张三", at=AT, body="请说明原因",
                          basis="行政许可法第四十二条", alert_ids=[alert(0)["alert_id"]], case_nos=[alert(0)["case_no"]])
    ledger.append([NewRecord("ticket.issue", issue, dest="320300")])
    return issue


def remind(h: Home, issue: dict[str, Any]) -> None:
    later = lc.parse_time(issue["sign_deadline"]) + dt.timedelta(hours=1)
    h.ledger().append([NewRecord("ticket.remind", {"ticket": issue["ticket"], "actor": "system",
                                                   "at": lc.format_time(later), "node": "320000", "deadline": "sign",
                                                   "due": issue["sign_deadline"]}, dest="320300")])


def held(home_dir: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """record_id -> (kind, payload) of every exported kind the store holds, by kind prefix."""
    h = Home(home_dir)
    store = Store.open(h.config.store_url, base_dir=h.dir, migrate=False)
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    try:
        with store.read() as conn:
            for table in (schema.records, schema.down_records):
                for r in conn.execute(select(table.c.origin, table.c.channel, table.c.seq, table.c.body)):
                    b = parse_body(bytes(r.body))
                    if b.kind.startswith(EXPORTED):
                        rid = f"{r.origin}/{channel_name(r.channel)}/{r.seq}"
                        out.setdefault(b.kind, []).append((rid, b.payload_json()))
    finally:
        store.close()
    return out


def target_rows(url: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
    eng = engine(url)
    out = {}
    try:
        with eng.connect() as c:
            for name, t in gbt39046.tables(MetaData(), prefix).items():
                out[name] = [dict(r._mapping) for r in c.execute(select(t))]
    finally:
        eng.dispose()
    return out


def assert_one_to_one(home_dir: Path, url: str) -> dict[str, int]:
    """Every case event and alert the node holds is exactly one row, and every row one record; one row per
    ticket. Returns rows per table."""
    records = held(home_dir)
    rows = target_rows(url)
    counts = {}
    for name, table_rows in rows.items():
        counts[name] = len(table_rows)
    by_table: dict[str, set[str]] = {}
    for kind, items in records.items():
        if kind.startswith("ticket."):
            continue
        name = "supervision" if kind == "alert" else gbt39046.CASE_TABLES[kind][0]
        by_table.setdefault(name, set()).update(rid for rid, _ in items)
    for name, rids in by_table.items():
        got = [r["record_id"] for r in rows[name]]
        assert len(got) == len(set(got)) == len(rids), (name, len(got), len(set(got)), len(rids))
        assert set(got) == rids, name
    tickets = {p["ticket"] for _, p in records.get("ticket.issue", [])}
    assert {r["ticket_no"] for r in rows["supervision_ticket"]} == tickets
    return counts


# ---- the mapping and the target, on SQLite, PostgreSQL and MariaDB -----------------------------------------------


def test_export_rows_match_records_idempotent_incremental(node: Home, sql_url: str) -> None:
    issue = feed_node(node)
    ex = Exporter(ExporterConfig(name="qzk", url=sql_url, batch=97))  # pages cut anywhere
    first = ex.run(node.store())
    counts = assert_one_to_one(node.dir, sql_url)
    assert sum(first["rows"].values()) == sum(counts.values()) and first["skipped"] == 0
    assert counts["supervision"] == 5 and counts["supervision_ticket"] == 1 and counts["case_apply"] > 10
    rows = target_rows(sql_url)
    a0 = next(r for r in rows["supervision"] if r["alert_id"] == alert(0)["alert_id"])
    assert (a0["level"], a0["level_name"], a0["category"], a0["occur_time"], a0["message"]) == (
        1, "预警", "01", "20251009090000", "办件0超过承诺时限")
    (t,) = rows["supervision_ticket"]
    assert (t["ticket_no"], t["issuer"], t["target"], t["state"], t["reminders"]) == (
        "320000-000001", "320000", "320300", "issued", 0)
    assert t["alert_ids"] == alert(0)["alert_id"] and t["basis"] == "行政许可法第四十二条"
    assert t["issue_time"] == "20251009090000" and len(t["reply_deadline"]) == 14
    # nothing new: nothing written; the cursor is in the node's own store
    assert ex.run(node.store())["rows"] == {}
    cur = json.loads(node.store().get_meta(cursor_key("qzk")) or "{}")
    assert cur["after"] == first["cursor"] and cur["target"] == ex.target.identity
    # a later ticket record: the ticket's row is updated, not added
    remind(node, issue)
    assert ex.run(node.store())["rows"] == {"supervision_ticket": 1}
    (t,) = target_rows(sql_url)["supervision_ticket"]
    assert t["reminders"] == 1 and t["state"] == "issued"
    # everything again from the start (the cursor lost): upserts, the same rows
    with node.store().write() as tx:
        tx.set_meta(cursor_key("qzk"), "null")
    again = ex.run(node.store())
    assert sum(again["rows"].values()) == sum(counts.values())
    assert assert_one_to_one(node.dir, sql_url) == counts
    ex.close()


def test_exported_tables_read_back_with_the_gbt39046_mapping(node: Home, sql_url: str, tmp_path: Path) -> None:
    """The layout is the one the province's poller (or another fednode) reads: what a node exports comes back
    as the same records through `mapping = "gbt39046"`."""
    feed_node(node, cases=120, alerts=0)
    ex = Exporter(ExporterConfig(name="qzk", url=sql_url))
    ex.run(node.store())
    ex.close()
    back = enrol.init(tmp_path / "back", code="320000", name="江苏省", level="province")
    enrol.init_root(back)
    ad = SqlPollAdapter("qzk", {"url": sql_url, "mapping": "gbt39046"}, back.dir)
    ledger = back.ledger()
    while (batch := ad.poll(load_cursor(ledger, "qzk"))) is not None:
        out = commit(ledger, "qzk", batch.rows, cursor=batch.cursor, write_cursor=True)
        assert out.quarantined == 0, out.reasons[:3]
    ad.close()
    mine = held(node.dir)
    theirs = held(back.dir)
    back.close()
    for kind in ("case.apply", "case.accept", "case.suspend", "case.resume", "case.complete"):
        assert sorted(json.dumps(p, sort_keys=True) for _, p in theirs.get(kind, [])) == \
            sorted(json.dumps(p, sort_keys=True) for _, p in mine.get(kind, [])), kind
    # a step's row holds its end time where the mapping reads both time and ended_at (event_time keeps time)
    steps = {(p["case_no"], p["step_no"]): p for _, p in mine["case.step"]}
    got = {(p["case_no"], p["step_no"]): p for _, p in theirs["case.step"]}
    assert set(got) == set(steps)
    for k, p in steps.items():
        want = {**p, "time": p.get("ended_at", p["time"]), "ended_at": p.get("ended_at", p["time"])}
        assert got[k] == want, k


def test_a_crash_between_the_target_commit_and_the_cursor_writes_nothing_twice(
        node: Home, sql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The injected fault: the process dies right after the target committed a page, before the cursor moved
    (what kill -9 does at the worst moment). The next run writes that page again: upserts, one row each."""
    feed_node(node, cases=80)
    ex = Exporter(ExporterConfig(name="qzk", url=sql_url, batch=40))
    ex.step(node.store())  # one page, cursor saved
    saved = ex.cursor(node.store())

    def crash(store: Store, after: int) -> None:
        raise SystemExit("killed after the target's commit")

    monkeypatch.setattr(ex, "_save", crash)
    with pytest.raises(SystemExit):
        ex.step(node.store())
    assert ex.cursor(node.store()) == saved  # the page is in the target, the cursor still before it
    monkeypatch.undo()
    ex.run(node.store())
    assert_one_to_one(node.dir, sql_url)
    ex.close()


def test_other_dialects_upsert_by_delete_and_insert(node: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle, SQL Server and 达梦 have no ON CONFLICT: the target deletes the keys and inserts in one
    transaction. Run on SQLite with its own upsert switched off, the result is the same."""
    feed_node(node, cases=60)
    url = f"sqlite:///{tmp_path / 'qzk.db'}"
    ex = Exporter(ExporterConfig(name="qzk", url=url, batch=50))
    monkeypatch.setattr(ex.target.engine.dialect, "name", "oracle")  # the generic path, on a real database
    ex.run(node.store())
    counts = assert_one_to_one(node.dir, url)
    with node.store().write() as tx:
        tx.set_meta(cursor_key("qzk"), "null")
    ex.run(node.store())
    assert assert_one_to_one(node.dir, url) == counts
    ex.close()


def test_a_new_target_starts_from_the_beginning_and_prefix(node: Home, tmp_path: Path) -> None:
    feed_node(node, cases=30)
    a = Exporter(ExporterConfig(name="qzk", url=f"sqlite:///{tmp_path / 'a.db'}"))
    a.run(node.store())
    b = Exporter(ExporterConfig(name="qzk", url=f"sqlite:///{tmp_path / 'b.db'}", prefix="FED_"))
    assert b.cursor(node.store()) == 0  # the cursor was made for a.db
    b.run(node.store())
    eng = engine(f"sqlite:///{tmp_path / 'b.db'}")
    with eng.connect() as c:
        names = set(c.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
        assert "FED_case_apply" in names and "case_apply" not in names
        assert c.execute(text("SELECT count(*) FROM FED_supervision")).scalar_one() == 5
    eng.dispose()
    a.close()
    b.close()


def test_config_and_missing_tables(node: Home, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batchh"):
        ExporterConfig.from_section("qzk", {"type": "sql", "url": "sqlite:///x.db", "batchh": 10})
    with pytest.raises(ConfigError, match="type"):
        ExporterConfig.from_section("qzk", {"type": "csv", "url": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match="mapping"):
        ExporterConfig.from_section("qzk", {"type": "sql", "url": "sqlite:///x.db", "mapping": "gb2009"})
    ex = Exporter(ExporterConfig(name="qzk", url=f"sqlite:///{tmp_path / 'empty.db'}", create_tables=False))
    feed_node(node, cases=5)
    from node.features.export.sql import ExportError

    with pytest.raises(ExportError, match="lacks the table"):
        ex.run(node.store())
    assert ex.cursor(node.store()) == 0  # nothing written, the cursor did not move
    ex.close()


def test_a_missing_driver_names_the_extra(node: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)
    with pytest.raises(ConfigError) as e:
        Exporter(ExporterConfig(name="qzk", url="mysql://u:p@127.0.0.1/qzk"))
    assert "pip install 'fednode[mysql]'" in e.value.fix
    # `fednode check` says it before the node starts
    with node.config.path.open("a", encoding="utf-8") as f:
        f.write('\n[exporters.qzk]\ntype = "sql"\nurl = "mysql://u:p@127.0.0.1/qzk"\n')
    code = ("import sys; sys.modules['pymysql'] = None; from node.interfaces.cli.main import main; "
            f"sys.exit(main(['check', {str(node.dir)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "fednode[mysql]" in out.stdout + out.stderr, out.stdout + out.stderr


# ---- the running node ------------------------------------------------------------------------------------------


def _cli(home: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "node.interfaces.cli", *args, str(home), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _count(url: str) -> int:
    eng = engine(url)
    try:
        with eng.connect() as c:
            t = gbt39046.tables()["case_process"]
            try:
                return int(c.execute(select(func.count()).select_from(t)).scalar_one())
            except Exception:
                return 0  # not created yet
    finally:
        eng.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["postgres", "mariadb"])
def test_node_exports_as_a_service_through_kill_9(tmp_path: Path, target: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("pg_url" if target == "postgres" else "mysql_url"))
    h = demo.build_tree(tmp_path / "tree", [("320000", "江苏省", "province", None)])["320000"]
    home = Home(h.dir)
    run_request(home.ledger(), {"synthetic": 12_000, "seed": 3})
    home.ledger().append([NewRecord("alert", alert(i)) for i in range(20)])
    home.close()
    total_steps = sum(1 for k, items in held(h.dir).items() if k == "case.step" for _ in items)
    # one-shot on the stopped node first: a part, so that the service resumes from a cursor
    with h.config.path.open("a", encoding="utf-8") as f:
        f.write(f'\n[exporters.qzk]\ntype = "sql"\nurl = "{url}"\nbatch = 300\ninterval = 0.5\n')
    p = demo.start(h.dir)
    killed_at = -1
    try:
        demo.wait_admin(h)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = _count(url)
            if 0 < n < total_steps // 2:
                killed_at = n
                break
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)  # mid-export: a page may be in the target but not in the cursor
        p.wait(10)
        assert 0 < killed_at < total_steps, (killed_at, total_steps)
        cursor_then = json.loads(Home(h.dir).store().get_meta(cursor_key("qzk")) or "{}").get("after", 0)
        p = demo.start(h.dir)
        demo.wait_admin(h)
        deadline = time.monotonic() + 240
        while _count(url) < total_steps and time.monotonic() < deadline:
            time.sleep(0.5)
        status = _cli(h.dir, "status")
        exp = status["exporters"]["qzk"]
        assert exp["state"] == "ok" and exp["target"].startswith(("postgresql://", "mysql://", "mariadb://")), exp
        assert "PASSWORD" not in json.dumps(exp)
        # the one-shot command through the running node: caught up, nothing more to write
        once = _cli(h.dir, "export")
        assert once["via"] == "node" and once["exporters"][0]["name"] == "qzk"
    finally:
        demo.stop_all({"n": p})
    assert cursor_then >= 0
    counts = assert_one_to_one(h.dir, url)
    assert counts["case_process"] == total_steps and counts["supervision"] >= 20
    # the stopped node: `fednode export` runs on the store and finds nothing new
    once = _cli(h.dir, "export")
    assert once["via"] == "store" and once["exporters"][0]["rows"] == {}
