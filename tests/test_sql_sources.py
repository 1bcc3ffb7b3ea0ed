"""The SQL poll adapter against every source database a county points fednode at (issue 21): the same
suite on SQLite, the real PostgreSQL and the real MariaDB servers — both ready mappings, ties at the
watermark, bad rows quarantined, rows committed while a real node runs, kill -9 and a restart that
resumes exactly, `fednode adapters list` on the running node; GBK text in MariaDB latin1 columns; the
Oracle and SQL Server dialects compile the poll query; a missing driver names the extra to install."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, select, text

from adapters import drivers, encoding, mappings
from adapters.base import Batch, commit, load_cursor, load_totals
from adapters.sql_poll import SqlPollAdapter
from bench import demo
from node.core import admin_client as admin
from node.core import schema
from node.core.errors import ConfigError
from node.core.home import Home
from node.core.ledger import Ledger
from node.core.records import parse_body
from node.core.store import Store
from tests.sqldbs import T0, create, engine, exchange2009_case, gbt39046_case, insert, spxx_row

pytest_plugins = ("tests.sqlfixtures",)  # mysql_url, and sql_url: SQLite, PostgreSQL and MariaDB


def records_of(h: Home | Path, kind_prefix: str = "case.") -> list[tuple[str, dict[str, Any]]]:
    home = h if isinstance(h, Home) else Home(h)
    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        with store.read() as conn:
            rows = conn.execute(select(schema.records.c.body).where(schema.records.c.kind.startswith(kind_prefix))
                                .order_by(schema.records.c.local_seq)).all()
            quarantined = list(conn.execute(select(schema.quarantine).order_by(schema.quarantine.c.id)))
    finally:
        store.close()
    home._quarantined = quarantined  # type: ignore[attr-defined]
    return [(b.kind, b.payload_json()) for b in (parse_body(bytes(r.body)) for r in rows)]


def quarantined(h: Home) -> list[Any]:
    records_of(h, "\x00")
    return list(h._quarantined)  # type: ignore[attr-defined]


def drain(ad: Any, ledger: Ledger, name: str) -> int:
    """What the node's AdapterService does, synchronously: poll, commit with the cursor, after_commit."""
    for n in range(1000):
        batch: Batch | None = ad.poll(load_cursor(ledger, name))
        if batch is None:
            return n
        commit(ledger, name, batch.rows, cursor=batch.cursor, write_cursor=True)
        ad.after_commit(batch)
    raise AssertionError("adapter never ran dry")


# ---- the same suite on SQLite, PostgreSQL and MariaDB --------------------------------------------------------


def test_both_ready_mappings_every_row_once(node: Home, sql_url: str) -> None:
    eng9, t9 = create(sql_url, "exchange2009")
    engg, tg = create(sql_url, "gbt39046")
    for i in (1, 2, 3):
        insert(eng9, t9, exchange2009_case(i, T0 + dt.timedelta(seconds=i)))
        insert(engg, tg, gbt39046_case(100 + i, T0 + dt.timedelta(seconds=i)))
    ledger = node.ledger()
    for name, mapping in (("ex", "exchange2009"), ("gbt", "gbt39046")):
        ad = SqlPollAdapter(name, {"url": sql_url, "mapping": mapping, "batch": 2}, node.dir)
        drain(ad, ledger, name)
        ad.close()
    assert not quarantined(node), [q.reason for q in quarantined(node)]
    got = records_of(node)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for k, p in got:
        kinds.setdefault(k, []).append(p)
    assert {k: len(v) for k, v in kinds.items()} == {"case.apply": 6, "case.accept": 6, "case.step": 6,
                                                     "case.complete": 6, "case.suspend": 3, "case.resume": 3}
    assert len({json.dumps(p, sort_keys=True) for _, p in got}) == len(got) == 30
    apply1 = next(p for p in kinds["case.apply"] if p["case_no"] == "3203032025100900000001")
    assert apply1["applicant_name"] == "李四" and apply1["materials"] == ["申请书", "身份证"]
    assert apply1["time"] == "2025-10-09T09:00:00+08:00" and apply1["assigned"] is False
    assert all(p["accepted"] is True for p in kinds["case.accept"])
    step = next(p for p in kinds["case.step"] if p["case_no"] == "3203032025100900000101")
    assert step["action"] == "pass" and step["evidence"] == ["现场核查记录"] and step["handler"] == "赵六"
    done = next(p for p in kinds["case.complete"] if p["case_no"] == "3203032025100900000002")
    assert done["cert_valid_until"] == "2030-12-31" and done["result_code"] == "6"
    eng9.dispose()
    engg.dispose()


def test_watermark_ties_each_row_once(node: Home, sql_url: str) -> None:
    eng, t = create(sql_url, "exchange2009")
    # 10 rows share one timestamp, then 3 more: batch 4 cuts twice inside the tie
    rows = [spxx_row(i, T0) for i in range(1, 11)] + [spxx_row(i, T0 + dt.timedelta(seconds=1)) for i in range(11, 14)]
    insert(eng, t, {"SPXX": rows})
    ad = SqlPollAdapter("ex", {"url": sql_url, "mapping": "exchange2009", "only": ["SPXX"], "batch": 4}, node.dir)
    ledger = node.ledger()
    assert drain(ad, ledger, "ex") == 4
    assert [p["case_no"] for _, p in records_of(node)] == [r["SBLSH"] for r in rows]
    # late rows at the SAME watermark as the cursor, with a higher key, are still read; nothing repeats
    insert(eng, t, {"SPXX": [spxx_row(14, T0 + dt.timedelta(seconds=1)), spxx_row(15, T0 + dt.timedelta(seconds=2))]})
    drain(ad, ledger, "ex")
    assert [p["case_no"] for _, p in records_of(node)][-2:] == ["3203032025100900000014", "3203032025100900000015"]
    cur = load_cursor(ledger, "ex")["SPXX"]  # SQLite hands the timestamp back as text: the cursor keeps its type
    assert cur["k"] == ["int", 15] and "2025-10-09" in cur["w"][1] and "09:00:02" in cur["w"][1]
    # re-delivery from the start: every row read again, none appended twice
    with node.store().write() as tx:
        tx.set_meta("adapter:ex", "null")
    drain(ad, ledger, "ex")
    assert len(records_of(node)) == 15 and not quarantined(node)
    ad.close()
    eng.dispose()


def test_bad_rows_quarantined_with_reasons_the_rest_arrives(node: Home, sql_url: str) -> None:
    eng, t = create(sql_url, "exchange2009")
    rows = [spxx_row(i, T0) for i in range(1, 7)]
    rows[1]["XZQHDM"] = "32030"  # bad division
    rows[3]["JSSJ"] = "20251309100000"  # month 13
    rows[4]["SPJG"] = "maybe"  # unknown action code
    insert(eng, t, {"SPXX": rows})
    section = {"url": sql_url, "mapping": "exchange2009", "batch": 100, "only": ["SPXX"],
               "override": {"SPXX": {"watermark": "XH"}}}  # an id watermark (key = watermark)
    ad = SqlPollAdapter("ex", section, node.dir)
    drain(ad, node.ledger(), "ex")
    assert [p["case_no"][-1] for _, p in records_of(node)] == ["1", "3", "6"]
    q = quarantined(node)
    assert [r.position for r in q] == ["SPXX:XH=2", "SPXX:XH=4", "SPXX:XH=5"]
    assert "'division'" in q[0].reason and "'time'" in q[1].reason and "'action'" in q[2].reason
    assert json.loads(bytes(q[2].raw))["payload"]["action"] == "maybe"
    ad.close()
    eng.dispose()


def _cli(home: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "node.interfaces.cli", *args, str(home), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    assert "not written to the work log" not in out.stderr, out.stderr
    return json.loads(out.stdout)


def _wait(pred: Any, timeout: float, what: str, home: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    log = (home / "node.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"timed out waiting for {what}; node.log tail:\n{log}")


def _case_nos(home: Path) -> list[str]:
    return [p["case_no"] for _, p in records_of(home)]


@pytest.mark.slow
def test_running_node_rows_while_it_runs_kill_9_and_restart_resume_exactly(tmp_path: Path, sql_url: str) -> None:
    h = demo.build_tree(tmp_path / "tree", [("320000", "江苏省", "province", None)])["320000"]
    eng, t = create(sql_url, "exchange2009")
    # 7 rows per timestamp: every batch of 50 ends inside a tie
    insert(eng, t, {"SPXX": [spxx_row(i, T0 + dt.timedelta(seconds=i // 7)) for i in range(1, 121)]})
    with h.config.path.open("a", encoding="utf-8") as f:
        f.write(f'\n[adapters.src]\ntype = "sql_poll"\nurl = "{sql_url}"\nmapping = "exchange2009"\n'
                'only = ["SPXX"]\nbatch = 50\ninterval = 0.2\n')
    p = demo.start(h.dir)
    try:
        demo.wait_admin(h)
        _wait(lambda: len(_case_nos(h.dir)) >= 120, 60, "the first 120 rows", h.dir)
        # rows committed while the node runs: at the watermark of the cursor (a tie at the edge) and after it,
        # one of them bad
        last_ts = T0 + dt.timedelta(seconds=120 // 7)
        more = [spxx_row(i, last_ts if i < 130 else T0 + dt.timedelta(seconds=i // 7)) for i in range(121, 181)]
        more[5]["XZQHDM"] = "bad"  # row 126
        for lo in range(0, 60, 20):
            insert(eng, t, {"SPXX": more[lo:lo + 20]})
            time.sleep(0.3)
        _wait(lambda: len(_case_nos(h.dir)) >= 179, 60, "the rows committed while running", h.dir)
        listed = _cli(h.dir, "adapters", "list")
        assert listed["running"] is True
        (src,) = listed["adapters"]
        assert src["cursor"]["SPXX"]["k"] == ["int", 180], src
        assert (src["total"]["read"], src["total"]["accepted"], src["total"]["quarantined"]) == (180, 179, 1), src
        assert src["running"]["state"] == "ok" and src["running"]["cursor"] == src["cursor"]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        insert(eng, t, {"SPXX": [spxx_row(i, T0 + dt.timedelta(seconds=i // 7)) for i in range(181, 221)]})
        stopped = _cli(h.dir, "adapters", "list")
        assert stopped["running"] is False and stopped["adapters"][0]["total"]["read"] == 180
        p = demo.start(h.dir)
        demo.wait_admin(h)
        _wait(lambda: len(_case_nos(h.dir)) >= 219, 60, "the rows committed while stopped", h.dir)
        time.sleep(1.0)  # nothing more may arrive
        listed = _cli(h.dir, "adapters", "list")
        (src,) = listed["adapters"]
        # the totals survive the restart (they said "read 0 accepted 0" after one); this start read 40
        assert (src["total"]["read"], src["total"]["accepted"], src["total"]["quarantined"]) == (220, 219, 1), src
        assert (src["running"]["read"], src["running"]["accepted"]) == (40, 40), src
        assert src["cursor"]["SPXX"]["k"] == ["int", 220]
        verified = subprocess.run([sys.executable, "-m", "node.interfaces.cli", "verify", str(h.dir)],
                                  capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        demo.stop_all({"n": p})
        eng.dispose()
    nos = _case_nos(h.dir)
    expected = [f"32030320251009{i:08d}" for i in range(1, 221) if i != 126]
    assert sorted(nos) == expected  # every good row exactly once
    q = quarantined(Home(h.dir))
    assert [r.position for r in q] == ["SPXX:XH=126"] and "'division'" in q[0].reason


def test_admin_requests_during_a_restart_are_answered_or_fall_back(tmp_path: Path) -> None:
    """`fednode adapters list` once printed "not written to the work log: Expecting value: line 1 column 1":
    a node stopping mid-request closed the admin connection without an answer. Now a stopping node answers
    what it accepted, and a client whose connection is cut retries, or finds the node gone."""
    h = demo.build_tree(tmp_path / "tree", [("320000", "江苏省", "province", None)])["320000"]
    errors: dict[str, int] = {}
    answered = [0]
    for _ in range(3):
        p = demo.start(h.dir)
        demo.wait_admin(h)
        stop = threading.Event()

        def hammer(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    if admin.call(h, {"op": "status"}, timeout=30) is not None:
                        answered[0] += 1
                except Exception as e:
                    key = f"{type(e).__name__}: {e}"[:100]
                    errors[key] = errors.get(key, 0) + 1

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for th in threads:
            th.start()
        time.sleep(0.8)
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join(30)
    assert answered[0] > 0
    assert errors == {}


# ---- text in the encodings local systems use ------------------------------------------------------------------


def test_gbk_bytes_in_mariadb_latin1_columns_decoded_or_quarantined(node: Home, mysql_url: str) -> None:
    eng = engine(mysql_url)
    cols = [c for c in mappings.columns_of(mappings.load("exchange2009")["tables"][2]) if c not in ("XH", "TBSJ")]
    md = MetaData()
    spxx = Table("SPXX", md, Column("XH", Integer, primary_key=True, autoincrement=False), Column("TBSJ", DateTime),
                 *[Column(c, String(200)) for c in cols], mysql_charset="latin1")
    md.create_all(eng)
    # the legacy application sent GBK/GB18030 bytes on a latin1 connection: the column holds those bytes
    def gbk(v: Any) -> Any:
        return v.encode("gb18030") if isinstance(v, str) else v

    # 俠 is 0x82 0x62 (a byte cp1252 maps to ‚), 丂 0x81 0x40 (a byte cp1252 leaves undefined)
    names = ["张三", "欧阳俠", "王小二", "赵丂䶮"]
    rows = [{k: gbk(v) for k, v in spxx_row(i, T0, SPR=names[i - 1], SPYJ="同意，材料齐全€").items()}
            for i in range(1, 5)]
    rows[2]["SPYJ"] = "同意".encode("gbk")[:3]  # cut inside a character (a column too short): not decodable
    with eng.begin() as c:
        c.execute(spxx.insert(), rows)
    with eng.connect() as c:  # read as fednode reads it (utf8mb4): the classic mojibake
        seen = c.execute(text("SELECT SPR FROM SPXX WHERE XH = 1")).scalar_one()
    assert seen == "ÕÅÈý" and encoding.is_suspect(seen)
    charset = eng.connect().execute(text(
        "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'SPXX' AND COLUMN_NAME = 'SPR'")).scalar_one()
    assert charset == "latin1"
    ad = SqlPollAdapter("ex", {"url": mysql_url, "mapping": "exchange2009", "only": ["SPXX"]}, node.dir)
    drain(ad, node.ledger(), "ex")
    ad.close()
    got = records_of(node)
    assert [p["handler"] for _, p in got] == ["张三", "欧阳俠", "赵丂䶮"]  # row 3 quarantined
    assert [(p["step_name"], p["post"], p["opinion"]) for _, p in got] == [("受理", "窗口", "同意，材料齐全€")] * 3
    (q,) = quarantined(node)
    assert q.position == "SPXX:XH=3" and "'SPYJ'" in q.reason and "GB18030" in q.reason and "cd ac d2" in q.reason
    assert "legacy_text" in q.reason
    # the same source with the check off stores the garbled text: what the check prevents
    with node.store().write() as tx:
        tx.set_meta("adapter:raw", "null")
    off = SqlPollAdapter("raw", {"url": mysql_url, "mapping": "exchange2009", "only": ["SPXX"],
                                 "legacy_text": "off"}, node.dir)
    batch = off.poll(None)
    off.close()
    assert batch is not None and batch.rows[0].payload["handler"] == "ÕÅÈý"
    eng.dispose()


def test_mojibake_detection_is_exact() -> None:
    for s in ["张三", "身份证;户口簿", "王小二·买买提", "ABC-001", "", "办件 SL-01 受理"]:
        assert not encoding.is_suspect(s)
        bad = s.encode("gb18030").decode("latin1")
        assert encoding.is_suspect(bad) == (not s.isascii())
        if not s.isascii():
            assert encoding.repair(bad)[0] == s
            # MySQL's latin1 is cp1252: bytes 0x80-0x9F come back as € ‚ ƒ ... (or C1 controls)
            cp = "".join(bytes([b]).decode("cp1252", errors="replace") if 0x80 <= b < 0xA0 else chr(b)
                         for b in s.encode("gb18030"))
            if "\ufffd" not in cp:
                assert encoding.repair(cp)[0] == s
    assert encoding.repair("café")[0] is None  # a lone lead byte: not GB18030
    assert encoding.repair_row(("ABC", 1, None, "张三"), ["a", "b", "c", "d"]) is None
    with pytest.raises(encoding.Mojibake, match="'d'"):
        encoding.repair_row(("ABC", 1, None, "café"), ["a", "b", "c", "d"])


# ---- drivers and dialects -------------------------------------------------------------------------------------


def test_a_missing_driver_names_the_extra_to_install(node: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)  # as on a node installed without the extra
    with pytest.raises(ConfigError) as e:
        SqlPollAdapter("src", {"url": "mysql+pymysql://root@127.0.0.1:3306/fedsrc", "mapping": "exchange2009"},
                       node.dir)
    assert "driver" in e.value.message and "pymysql" in e.value.message
    assert "pip install 'fednode[mysql]'" in e.value.fix
    with pytest.raises(ConfigError) as e:
        SqlPollAdapter("src", {"url": "mariadb://root@127.0.0.1/fedsrc", "mapping": "exchange2009"}, node.dir)
    assert "pip install 'fednode[mysql]'" in e.value.fix
    with pytest.raises(ConfigError) as e:  # a driver no extra installs: the package, and the one that is
        SqlPollAdapter("src", {"url": "mysql+mysqldb://root@127.0.0.1/fedsrc", "mapping": "exchange2009"}, node.dir)
    assert "pip install mysqlclient" in e.value.fix and "mysql://" in e.value.fix
    with pytest.raises(ConfigError) as e:
        SqlPollAdapter("src", {"url": "dm+dmPython://SYSDBA:x@127.0.0.1:5236", "mapping": "exchange2009"}, node.dir)
    assert "达梦" in e.value.message and "dmPython" in e.value.fix
    # `fednode check` says the same before the node starts
    with node.config.path.open("a", encoding="utf-8") as f:
        f.write('\n[adapters.src]\ntype = "sql_poll"\nurl = "mysql://root@127.0.0.1:3306/fedsrc"\n'
                'mapping = "exchange2009"\n')
    without = ("import sys; sys.modules['pymysql'] = None; from node.interfaces.cli.main import main; "
               f"sys.exit(main(['check', {str(node.dir)!r}]))")
    out = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "pip install 'fednode[mysql]'" in out.stdout + out.stderr


def test_bare_urls_get_the_drivers_of_the_extras() -> None:
    assert drivers.engine_url("mysql://root@h/db") == "mysql+pymysql://root@h/db"
    assert drivers.engine_url("mariadb://root@h/db") == "mariadb+pymysql://root@h/db"
    assert drivers.engine_url("mssql://sa:pw@h/db") == "mssql+pymssql://sa:pw@h/db"
    assert drivers.engine_url("oracle://u:pw@h:1521/?service_name=orcl").startswith("oracle+oracledb://u:pw@h:1521/")
    assert drivers.engine_url("kingbase://system:pw@h:54321/db") == "postgresql+psycopg://system:pw@h:54321/db"
    assert drivers.engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert drivers.engine_url("mysql+mysqldb://root@h/db") == "mysql+mysqldb://root@h/db"  # named: kept
    assert drivers.engine_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize("url", ["oracle://fed:pw@127.0.0.1:1521/?service_name=XE",
                                 "mssql://sa:pw@127.0.0.1:1433/fedsrc"])
def test_oracle_and_sql_server_compile_the_poll_query(node: Home, url: str) -> None:
    """No Oracle or SQL Server here: the installed extras' dialects compile the query the adapter sends."""
    ad = SqlPollAdapter("src", {"url": url, "mapping": "exchange2009", "batch": 500}, node.dir)
    spxx = next(tm for tm in ad.mapping["tables"] if tm["table"] == "SPXX")
    cursor = {"w": ["datetime", "2025-10-09T09:00:00"], "k": ["int", 42]}
    first, after = (str(ad._query(spxx, c).compile(ad.engine, compile_kwargs={"literal_binds": True}))
                    .replace("[", '"').replace("]", '"') for c in (None, cursor))  # SQL Server quotes [SPXX]
    for sql in (first, after):
        assert '"SPXX"' in sql and '"TBSJ"' in sql and '"SBLSH"' in sql
    if ad.engine.dialect.name == "oracle":
        assert ad.engine.driver == "oracledb"
        assert "FETCH FIRST 500 ROWS ONLY" in after and "ORDER BY" in after
        assert "TO_DATE('2025-10-09 09:00:00', 'YYYY-MM-DD HH24:MI:SS')" in after, after
    else:
        assert ad.engine.driver == "pymssql"
        assert "TOP 500" in after and "ORDER BY" in after and "'2025-10-09 09:00:00'" in after, after
    # no row-value comparison where the database has none: (wm > w) OR (wm = w AND key > k)
    assert '"TBSJ" > ' in after and '"TBSJ" = ' in after and '"XH" > 42' in after and " OR " in after
    assert '"TBSJ" IS NOT NULL' in first
    ad.close()


def test_totals_kept_with_the_cursor(node: Home, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    eng, t = create(url, "exchange2009")
    insert(eng, t, {"SPXX": [spxx_row(i, T0, **({"XZQHDM": "x"} if i == 2 else {})) for i in range(1, 6)]})
    ad = SqlPollAdapter("ex", {"url": url, "mapping": "exchange2009", "only": ["SPXX"], "batch": 2}, node.dir)
    ledger = node.ledger()
    totals = load_totals(ledger.store, "ex")
    assert totals == {"read": 0, "accepted": 0, "duplicates": 0, "quarantined": 0, "batches": 0}
    while (batch := ad.poll(load_cursor(ledger, "ex"))) is not None:
        commit(ledger, "ex", batch.rows, cursor=batch.cursor, write_cursor=True, totals=totals)
    assert totals == load_totals(ledger.store, "ex") == {"read": 5, "accepted": 4, "duplicates": 0,
                                                         "quarantined": 1, "batches": 3}
    with eng.connect() as c:
        assert c.execute(select(func.count()).select_from(t["SPXX"])).scalar_one() == 5
    ad.close()
    eng.dispose()
