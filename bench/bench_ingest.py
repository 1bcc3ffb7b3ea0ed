"""Ingest benchmark (not a test): PostgreSQL source table → signed log, beside the raw append rate.

- ``ingest_pg_rows_per_s``: N rows (default 100k) of an exchange2009 ``SPXX`` table on the real
  PostgreSQL server, polled by the SQL poll adapter in batches of 5,000 and committed into a fresh
  node's store (SQLite) exactly as the node's AdapterService does it: the adapter's reader (a child
  process, adapters/reader.py, started with the service, so before the clock starts) reads + validates
  the next batch while the previous one commits (records, natural keys and cursor in one
  transaction). Target >= 20,000 rows/s. ``--reader thread`` measures ``reader = "thread"``.
- reference, measured in the same run: ``Ledger.append`` of the same N payloads (already validated and
  encoded) into another fresh store, 5,000 per transaction: the raw signed-append rate; ratio =
  ingest / raw append.

Run: ``python -m bench.bench_ingest [size_factor] [--reader thread]`` (``0.1`` for a quick look). Needs PostgreSQL at
FEDNODE_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, Table, Text, create_engine, text

from adapters import mappings
from adapters.base import Accepted, commit_prepared, load_cursor, prepare
from adapters.reader import ProcessReader, reads_in_process
from adapters.sql_poll import SqlPollAdapter, engine_url
from node.app import enrol
from node.core.ledger import NewRecord

TARGET = 20_000.0
PG_ADMIN = os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = dt.datetime(2025, 10, 9, 9, 0, 0)


def _row(i: int) -> dict[str, Any]:
    return {"XH": i, "TBSJ": T0 + dt.timedelta(seconds=i // 50), "SBLSH": f"32030320251009{i:08d}",
            "SXBM": "320303-XK-001", "XZQHDM": "320303", "BMDM": "320303-SJ", "HJXH": str(1 + i % 5), "HJDM": "SH",
            "HJMC": "审核", "SPR": "张三", "GW": "科员", "SPYJ": "材料齐全，同意", "SPJG": "通过",
            "KSSJ": "20251009093000", "JSSJ": "20251009100000"}


def _source(n: int) -> tuple[str, Any]:
    name = f"fednode_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(engine_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    eng = create_engine(engine_url(url))
    md = MetaData()
    cols = [c for c in mappings.columns_of(mappings.load("exchange2009")["tables"][2]) if c not in ("XH", "TBSJ")]
    spxx = Table("SPXX", md, Column("XH", Integer, primary_key=True, autoincrement=False),
                 Column("TBSJ", DateTime), *[Column(c, Text) for c in cols], Index("ix_spxx_tbsj_xh", "TBSJ", "XH"))
    md.create_all(eng)
    with eng.begin() as c:
        for lo in range(1, n + 1, 10_000):
            c.execute(spxx.insert(), [_row(i) for i in range(lo, min(lo + 10_000, n + 1))])
    eng.dispose()

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return url, drop


def _home(base: Path, sub: str) -> Any:
    h = enrol.init(base / sub, code="320000", name="江苏省", level="province")
    enrol.init_root(h)
    return h


def bench_ingest(n: int, reader: str = "process") -> dict[str, Any]:
    url, drop = _source(n)
    try:
        with tempfile.TemporaryDirectory(prefix="fednode-bench-ingest-") as d:
            base = Path(d)
            # reference: the raw signed append of the same payloads
            ad = SqlPollAdapter("src", {"url": url, "mapping": "exchange2009", "only": ["SPXX"], "batch": 5000}, base)
            payloads: list[Any] = []
            cur: Any = None
            while (b := ad.poll(cur)) is not None:
                payloads.extend(p.body for p in prepare(b.rows) if isinstance(p, Accepted))
                cur = b.cursor
            raw_home = _home(base, "raw")
            ledger = raw_home.ledger()
            t = time.perf_counter()
            for i in range(0, len(payloads), 5000):
                ledger.append([NewRecord("case.step", p) for p in payloads[i : i + 5000]])
            raw_rate = len(payloads) / (time.perf_counter() - t)
            raw_home.close()

            # the adapter pipeline, as AdapterService (node/runtime/services/adapters.py) runs it
            home = _home(base, "node")
            ledger = home.ledger()
            section = {"type": "sql_poll", "url": url, "mapping": "exchange2009", "only": ["SPXX"], "batch": 5000,
                       "reader": reader}
            ad = SqlPollAdapter("src", section, base)
            child = ProcessReader("src", section, base) if reads_in_process("src", section, ad) else None
            pool = ThreadPoolExecutor(1)

            def read(cursor: Any) -> Future[Any]:
                if child is not None:
                    return child.read(cursor)
                return pool.submit(lambda: (b := ad.poll(cursor), prepare(b.rows) if b is not None else None))

            accepted = 0
            try:
                if child is not None:
                    child.start().result()
                t = time.perf_counter()
                fut = read(load_cursor(ledger, "src"))
                while True:
                    batch, prepared = fut.result()
                    if batch is None:
                        break
                    fut = read(batch.cursor)
                    out = commit_prepared(ledger, "src", prepared, cursor=batch.cursor, write_cursor=True)
                    accepted += out.accepted
                rate = accepted / (time.perf_counter() - t)
            finally:
                if child is not None:
                    child.close()
                pool.shutdown()
                home.close()
                ad.close()
    finally:
        drop()
    assert accepted == n, (accepted, n)
    return {"name": "ingest_pg_rows_per_s", "value": round(rate), "unit": "rows/s", "target": f">= {TARGET:,.0f}",
            "reference": round(raw_rate), "ratio": round(rate / raw_rate, 2), "ok": rate >= TARGET}


def run(size_factor: float = 1.0, reader: str = "process") -> list[dict[str, Any]]:
    return [bench_ingest(max(1000, int(100_000 * size_factor)), reader)]


def _print(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"{r['name']}: {r['value']:,} {r['unit']} (target {r['target']}); raw Ledger.append of the same "
              f"payloads {r['reference']:,} rows/s; ratio {r['ratio']}; {'ok' if r['ok'] else 'BELOW TARGET'}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.bench_ingest")
    ap.add_argument("size_factor", nargs="?", type=float, default=1.0)
    ap.add_argument("--reader", choices=("process", "thread"), default="process")
    a = ap.parse_args()
    _print(run(a.size_factor, a.reader))
