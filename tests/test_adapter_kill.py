"""Acceptance: kill -9 during ingestion, restart, and every source row is exactly one record.

Real `fednode run` processes (node.demo.start) on a single-node tree; the adapters run inside the
node from node.toml [adapters.*]. The source is the real PostgreSQL server (100k rows while an
inserter keeps adding rows at the watermark's edge), and a drop directory with a file still being
written when the node is killed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Index, Integer, MetaData, Table, Text, create_engine, func, select

from adapters import mappings
from adapters.sql_poll import engine_url
from bench import demo
from node.core import admin_client as admin
from node.core import schema
from node.core.home import Home
from node.core.store import Store

T0 = dt.datetime(2025, 10, 9, 9, 0, 0)
SINGLE = [("320000", "江苏省", "province", None)]


def _row(i: int) -> dict[str, Any]:
    # 50 rows share each timestamp: ties at the watermark everywhere, including batch boundaries
    return {"XH": i, "TBSJ": T0 + dt.timedelta(seconds=i // 50), "SBLSH": f"32030320251009{i:08d}",
            "SXBM": "320303-XK-001", "XZQHDM": "320303", "BMDM": "320303-SJ", "HJXH": "1", "HJDM": "SL",
            "HJMC": "受理", "SPR": "张三", "GW": "窗口", "SPYJ": "同意", "SPJG": "通过", "KSSJ": "20251009093000",
            "JSSJ": "20251009100000"}


def _counts(h: Home, kind: str = "case.step") -> tuple[int, int]:
    store = Store.open(h.config.store_url, base_dir=h.dir, migrate=False)
    try:
        with store.read() as conn:
            t = schema.records
            n = conn.execute(select(func.count()).select_from(t).where(t.c.kind == kind)).scalar_one()
            # case_no is unique per source row: count distinct bodies' natural keys via the meta table
            keys = conn.execute(select(func.count()).select_from(schema.meta)
                                .where(schema.meta.c.key.startswith("nk:"))).scalar_one()
        return int(n), int(keys)
    finally:
        store.close()


def _distinct_case_nos(h: Home) -> tuple[int, int]:
    from node.core.records import parse_body

    store = Store.open(h.config.store_url, base_dir=h.dir, migrate=False)
    try:
        with store.read() as conn:
            bodies = conn.execute(select(schema.records.c.body).where(schema.records.c.kind == "case.step")).all()
        nos = [json.loads(parse_body(bytes(b.body)).payload)["case_no"] for b in bodies]
        return len(nos), len(set(nos))
    finally:
        store.close()


def _kill(p: subprocess.Popen[bytes]) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


def _wait(pred: Any, timeout: float, what: str, home: Home) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    log = (home.dir / "node.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"timed out waiting for {what}; node.log tail:\n{log}")


def _add_config(h: Home, text: str) -> None:
    with (h.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_during_postgres_poll_every_row_exactly_once(tmp_path: Path, pg_url: str) -> None:
    h = demo.build_tree(tmp_path, SINGLE)["320000"]
    eng = create_engine(engine_url(pg_url))
    md = MetaData()
    cols = [c for c in mappings.columns_of(mappings.load("exchange2009")["tables"][2]) if c not in ("XH", "TBSJ")]
    spxx = Table("SPXX", md, Column("XH", Integer, primary_key=True, autoincrement=False),
                 Column("TBSJ", DateTime), *[Column(c, Text) for c in cols], Index("ix_spxx_tbsj_xh", "TBSJ", "XH"))
    md.create_all(eng)
    n0 = 100_000
    with eng.begin() as c:
        for lo in range(1, n0 + 1, 10_000):
            c.execute(spxx.insert(), [_row(i) for i in range(lo, min(lo + 10_000, n0 + 1))])
    _add_config(h, f'[adapters.src]\ntype = "sql_poll"\nurl = "{pg_url}"\nmapping = "exchange2009"\n'
                   'only = ["SPXX"]\nbatch = 2000\ninterval = 0.2\n')
    stop = threading.Event()
    inserted = [n0]

    def inserter() -> None:  # new rows keep arriving, at and beyond the current watermark
        e2 = create_engine(engine_url(pg_url))
        while not stop.is_set():
            nxt = inserted[0] + 1
            with e2.begin() as c:
                c.execute(spxx.insert(), [_row(i) for i in range(nxt, nxt + 20)])
            inserted[0] = nxt + 19
            time.sleep(0.1)
        e2.dispose()

    th = threading.Thread(target=inserter, daemon=True)
    th.start()
    p = demo.start(h.dir)
    try:
        demo.wait_admin(h)
        _wait(lambda: _counts(h)[0] >= 10_000, 120, "10k records before the first kill", h)
        _kill(p)
        p = demo.start(h.dir)
        demo.wait_admin(h)
        _wait(lambda: _counts(h)[0] >= 40_000, 180, "40k records before the second kill", h)
        _kill(p)
        p = demo.start(h.dir)
        demo.wait_admin(h)
        time.sleep(1.0)
        stop.set()
        th.join(10)
        total = inserted[0]
        _wait(lambda: _counts(h)[0] >= total, 300, f"all {total} rows", h)
        time.sleep(1.0)  # nothing more may arrive
        status = admin.call(h, {"op": "status"})
        assert status is not None
        src = status["result"]["adapters"]["src"]
        assert src["quarantined"] == 0 and src["last_error"] == "", src
    finally:
        stop.set()
        demo.stop_all({"n": p})
        eng.dispose()
    n, distinct = _distinct_case_nos(h)
    assert n == total == distinct, (n, distinct, total)
    assert _counts(h)[1] == total  # one natural key per row


@pytest.mark.slow
def test_kill_during_file_drop_with_a_file_still_being_written(tmp_path: Path) -> None:
    h = demo.build_tree(tmp_path, SINGLE)["320000"]
    drop = h.dir / "drop"
    drop.mkdir()
    _add_config(h, '[adapters.files]\ntype = "filedrop"\ndir = "drop"\nsettle_seconds = 1.0\nbatch = 1000\n'
                   'interval = 0.2\n')
    n_big, n_small = 20_000, 500

    def line(i: int) -> str:
        return json.dumps({"kind": "case.step", "case_no": f"3203032025{i:08d}", "item_code": "320303-XK-001",
                           "division": "320303", "dept": "320303-SJ", "time": "20251009100000", "step_no": 1,
                           "step_code": "SL", "step_name": "受理", "handler": "张三", "post": "窗口", "action": "通过",
                           "started_at": "20251009093000"}, ensure_ascii=False) + "\n"

    def writer() -> None:  # slow writer: pauses shorter than settle_seconds, so the file is never "complete" early
        with (drop / "big.jsonl").open("w", encoding="utf-8") as f:
            for lo in range(0, n_big, 2000):
                f.write("".join(line(i) for i in range(lo, lo + 2000)))
                f.flush()
                time.sleep(0.15)
        body = "".join(line(i) for i in range(n_big, n_big + n_small))
        (drop / "small.jsonl.tmp").write_text(body.replace("通过", "退回"), encoding="gb18030")
        os.rename(drop / "small.jsonl.tmp", drop / "small.jsonl")

    th = threading.Thread(target=writer, daemon=True)
    p = demo.start(h.dir)
    try:
        demo.wait_admin(h)
        th.start()
        time.sleep(1.5)  # the file is half written
        assert _counts(h)[0] == 0, "an incomplete file was read"
        _kill(p)
        p = demo.start(h.dir)
        demo.wait_admin(h)
        _wait(lambda: _counts(h)[0] >= 6_000, 120, "6k records before the second kill", h)
        _kill(p)
        p = demo.start(h.dir)
        demo.wait_admin(h)
        th.join(60)
        total = n_big + n_small
        _wait(lambda: _counts(h)[0] >= total and not (drop / "small.jsonl").exists(), 120, f"all {total} rows", h)
        time.sleep(1.0)
    finally:
        demo.stop_all({"n": p})
    n, distinct = _distinct_case_nos(h)
    assert n == total == distinct, (n, distinct, total)
    archived = sorted(x.name for x in (drop / "archive").rglob("*") if x.is_file())
    assert archived == ["big.jsonl", "small.jsonl"]
    assert _counts(h)[1] == total
