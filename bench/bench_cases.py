"""Cases benchmark (not a test): `cases show` and `cases list` on 100,000 cases, SQLite and PostgreSQL.

A province home is fed with synthetic case events (node/app/ingest.py, ~9 events a case: 100,000 cases ×
scale) and its projections brought up to date (the case index, the statistics tables: what the running
node's services keep current). Then, through the use cases the CLI and the desk call (node/app/cases.py,
the calendar and the catch-up of each call included):

- ``show``: ``show_case`` of 200 random cases (steps, times on the calendar, alerts, tickets, complaints);
- ``list``: ``list_cases`` pages under every filter (no filter, each 办理状态, --dept, --handler, --since,
  a deep page), 20 rounds.

Target: p95 well under 300 ms (the row asks ≤ 150 ms). References, measured in the same run on the same
store: the primary-key read of one ``stats_cases`` row (show) and a plain ``COUNT(*)`` of ``stats_cases``
(list): the floor of touching one case, and of touching them all once.

Run: ``python -m bench.bench_cases [scale]``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

from bench.harness import print_table

CASES = 100_000
EVENTS_PER_CASE = 8.85  # what the synthetic generator yields (adapters/synthetic.py)
TARGET_MS = 150.0
PG_ADMIN_URL = os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def measure(directory: Path, n_cases: int, db: str = "") -> dict[str, Any]:
    from node.app import cases as app
    from node.app import enrol, ingest
    from node.app.alerts import catch_up
    from node.core.schema import cases as ci
    from node.core.schema import stats as st
    from node.features.cases.view import STATES

    home = enrol.init(directory, code="320000", name="江苏省", level="province", db=db)
    enrol.init_root(home)
    t0 = time.perf_counter()
    ingest.append_chunked(home.ledger(), ingest.synthetic_items("320303", int(n_cases * EVENTS_PER_CASE), 11))
    t1 = time.perf_counter()
    store = home.store()
    catch_up(home, store)
    if store.engine.dialect.name == "postgresql":  # what autovacuum does on a live database after such a load:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:  # without statistics
            c.execute(text("ANALYZE"))  # the planner takes the fresh tables for empty ones and scans them
    t2 = time.perf_counter()
    rng = random.Random(25)
    with store.read() as conn:
        nos = [r[0] for r in conn.execute(select(st.cases.c.case_no))]
        handler = conn.execute(select(ci.index.c.handler).where(ci.index.c.handler != "").limit(1)).scalar()
        dept = conn.execute(select(st.cases.c.dept).limit(1)).scalar()
    sample = rng.sample(nos, min(200, len(nos)))
    show = []
    for no in sample:
        a = time.perf_counter()
        app.show_case(home, no)
        show.append(time.perf_counter() - a)
    ref_show = []
    with store.read() as conn:
        for no in sample:
            a = time.perf_counter()
            conn.execute(select(st.cases).where(st.cases.c.case_no == no)).one()
            ref_show.append(time.perf_counter() - a)
    queries: list[dict[str, Any]] = [{}, *({"state": s} for s in STATES), {"dept": dept}, {"handler": handler},
                                     {"since": "2026-06-01"}, {"offset": len(nos) // 2}]
    lst, ref_list = [], []
    for _round in range(20):
        for q in queries:
            a = time.perf_counter()
            app.list_cases(home, **q)
            lst.append(time.perf_counter() - a)
        with store.read() as conn:
            a = time.perf_counter()
            conn.execute(text("SELECT COUNT(*) FROM stats_cases")).one()
            ref_list.append(time.perf_counter() - a)
    home.close()
    return {"cases": len(nos), "ingest_s": t1 - t0, "catch_up_s": t2 - t1, "show_p95": _p95(show),
            "show_p50": sorted(show)[len(show) // 2], "ref_show_p95": _p95(ref_show), "list_p95": _p95(lst),
            "list_p50": sorted(lst)[len(lst) // 2], "ref_list_p95": _p95(ref_list)}


def _pg_db() -> tuple[str, Any] | None:
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"fednode_bench_cases_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 — no server: the PostgreSQL row says so
        print(f"bench_cases: PostgreSQL at {PG_ADMIN_URL} unavailable ({e})", file=sys.stderr)
        return None

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", drop


def run(scale: float = 1.0) -> list[dict[str, Any]]:
    n = max(500, int(CASES * scale))
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-cases-"))
    results: dict[str, dict[str, Any] | None] = {}
    try:
        results["SQLite"] = measure(base / "sqlite", n)
        pg = _pg_db()
        if pg is None:
            results["PostgreSQL"] = None
        else:
            url, drop = pg
            try:
                results["PostgreSQL"] = measure(base / "pg", n, db=url)
            finally:
                drop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for backend, r in results.items():
        for what, key, ref, ref_text in (
                ("show", "show_p95", "ref_show_p95", "200 random cases whole, p95; reference: primary-key read of "
                                                     "its stats row"),
                ("list", "list_p95", "ref_list_p95", "a page under each filter and 办理状态, 20 rounds, p95; reference: "
                                                     "plain COUNT(*) of the cases")):
            name = f"cases {what}, {n:,} cases ({backend})"
            if r is None:
                rows.append({"name": name, "value": None, "unit": "ms", "target": f"<= {TARGET_MS:g}",
                             "reference": "PostgreSQL not reachable", "ratio": None, "ok": False})
                continue
            value, ref_ms = r[key] * 1000, r[ref] * 1000
            rows.append({"name": f"cases {what}, {r['cases']:,} cases ({backend})", "value": round(value, 1), "unit": "ms",
                         "target": f"<= {TARGET_MS:g}",
                         "reference": f"{ref_text} {ref_ms:.2f} ms (p95); p50 {r[key.replace('95', '50')] * 1000:.1f} ms;"
                                      f" fed {r['ingest_s']:.0f} s, indexed {r['catch_up_s']:.0f} s",
                         "ratio": round(value / ref_ms, 1) if ref_ms > 0 else None, "ok": value <= TARGET_MS})
    return rows


def main(argv: list[str]) -> int:
    nums = [a for a in argv if a.replace(".", "", 1).isdigit()]
    rows = run(float(nums[0]) if nums else 1.0)
    if "--json" in argv:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(print_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
