"""Statistics benchmark (not a test): every indicator over 1M cases, on SQLite and on PostgreSQL.

The projection tables (node/core/schema/stats.py) are filled by SQL (1M cases × scale over 10 divisions,
20 items, 12 months; 5% of cases with a card, one reporting row per group), then timed:

- ``query.groups`` (the GROUP BY over cases, alerts and reporting) + ``query.breakdown`` by division
  and by period (month, with 环比/同比) — what ``fednode stats`` does after its fold. Target ≤ 10 s.

Reference, measured in the same run on the same table: one plain full scan
(``SELECT COUNT(*), SUM(used_work_min) FROM stats_cases``), the floor of reading the cases once;
ratio = indicators / scan.

Run: ``python -m bench.bench_stats [scale]``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

import node.core.schema.stats  # noqa: F401 — the tables on node.schema.metadata
from bench.harness import print_table
from node.core.store import Store
from node.features.stats import query
from node.features.stats.config import StatsConfig

CASES = 1_000_000
TARGET_S = 10.0
PG_ADMIN_URL = os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DIVISIONS = ["320302", "320303", "320305", "320311", "320312", "320321", "320322", "320324", "320381", "320382"]

# n = 1..N; every expression is plain SQL both engines run (|| and CASE; no printf/lpad)
_MONTH = "CASE WHEN n % 12 < 9 THEN '2025-0' || CAST(n % 12 + 1 AS TEXT) ELSE '2025-' || CAST(n % 12 + 1 AS TEXT) END"
_DIV = "CASE n % 10 " + " ".join(f"WHEN {i} THEN '{d}'" for i, d in enumerate(DIVISIONS)) + " END"


_DONE = "(CASE WHEN n % 20 <> 0 AND n % 10 < 8 THEN 1 ELSE 0 END)"


def _cases_select(series: str) -> str:
    return f"""
SELECT 'C' || CAST(n AS TEXT), {_DIV}, {_DIV} || '-D' || CAST(n % 3 AS TEXT), 'I' || CAST(n % 20 AS TEXT), {_MONTH},
  CASE WHEN n % 20 = 0 THEN 0 ELSE 1 END, NULL, '2025-01-01T09:00:00+08:00',
  CASE WHEN n % 10 < 8 THEN '2025-01-05T09:00:00+08:00' ELSE NULL END, '0', '{{}}',
  (n * 7) % 3000, (n * 11) % 6000,
  CASE n % 7 WHEN 0 THEN '1' WHEN 1 THEN '2' WHEN 2 THEN '4' ELSE NULL END,
  {_DONE}, {_DONE}, CASE WHEN {_DONE} = 1 AND (n * 7) % 3000 <= 1350 THEN 1 ELSE 0 END,
  CASE WHEN {_DONE} = 1 AND (n * 7) % 3000 < 1350 THEN 1 ELSE 0 END,
  CASE WHEN {_DONE} = 1 THEN 1350 END, CASE WHEN {_DONE} = 1 THEN (n * 7) % 3000 END,
  CASE WHEN {_DONE} = 1 THEN 2250 END, CASE WHEN {_DONE} = 1 THEN (n * 7) % 3000 END,
  CASE WHEN n % 7 < 3 THEN 1 ELSE 0 END, CASE WHEN n % 7 < 2 THEN 1 ELSE 0 END
FROM {series}"""


def fill(store: Store, n: int) -> None:
    pg = store.engine.dialect.name == "postgresql"
    series = f"generate_series(1, {n}) AS s(n)" if pg else "seq"
    prefix = "" if pg else f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {n}) "
    cols = ("case_no, division, dept, item_code, period, accepted, applied_at, accepted_at, completed_at, "
            "result_code, pauses, used_work_min, used_nat_min, satisfaction, done, measured, on_time, early, "
            "p_min, p_used, s_min, s_used, evaluated, satisfied")
    with store.write() as tx:
        for d in DIVISIONS:
            for i in range(20):
                tx.conn.execute(text(
                    "INSERT INTO stats_items (division, item_code, item_type, dept, unit, promised_days, statutory_days)"
                    " VALUES (:d, :i, :t, :dept, :u, :p, :s)"),
                    {"d": d, "i": f"I{i}", "t": f"{i % 10 + 1:02d}", "dept": f"{d}-D0", "u": "day" if i == 19 else "workday",
                     "p": 3 + i % 5, "s": 10 + i % 5})
        if pg:
            tx.conn.execute(text(f"INSERT INTO stats_cases ({cols}) {_cases_select(series)}"))
        else:
            tx.conn.execute(text(f"{prefix}INSERT INTO stats_cases ({cols}) {_cases_select(series)}"))
        alerts = max(1, n // 20)
        a_series = f"generate_series(1, {alerts}) AS s(n)" if pg else "seq"
        a_prefix = "" if pg else f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {alerts}) "
        tx.conn.execute(text(
            f"{a_prefix}INSERT INTO stats_alerts (alert_id, division, dept, item_code, object, level, period) "
            f"SELECT 'A' || CAST(n AS TEXT), {_DIV}, {_DIV} || '-D0', 'I' || CAST(n % 20 AS TEXT), 'case', n % 3 + 1, "
            f"{_MONTH} FROM {a_series}"))
        for d in DIVISIONS:
            for m in range(1, 13):
                tx.conn.execute(text(
                    "INSERT INTO stats_reporting (division, dept, item_code, period, events, timely)"
                    " VALUES (:d, :dept, 'I1', :p, 5000, 4900)"), {"d": d, "dept": f"{d}-D0", "p": f"2025-{m:02d}"})
    if pg:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE stats_cases"))


def measure(store: Store, n: int) -> dict[str, float]:
    cfg = StatsConfig()
    t0 = time.perf_counter()
    with store.read() as conn:
        conn.execute(text("SELECT COUNT(*), SUM(used_work_min) FROM stats_cases")).one()
    scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    gs = query.groups(store, "320300")
    by_div = query.breakdown(gs, query.Query(by="division"), cfg)
    query.breakdown(gs, query.Query(by="period", period="month"), cfg)
    query.breakdown(gs, query.Query(by="dept", at="2025-Q3"), cfg)
    took = time.perf_counter() - t0
    assert by_div["total"]["totals"]["cases"] == n, by_div["total"]["totals"]
    return {"indicators_s": took, "scan_s": scan}


def _sqlite(base: Path, n: int) -> dict[str, float]:
    store = Store.open(f"sqlite:///{base / 'stats.db'}")
    try:
        fill(store, n)
        return measure(store, n)
    finally:
        store.close()


def _pg(n: int) -> dict[str, float] | None:
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"fednode_bench_stats_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 — no server: the PostgreSQL row says so
        print(f"bench_stats: PostgreSQL at {PG_ADMIN_URL} unavailable ({e})", file=sys.stderr)
        return None
    store = Store.open(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    try:
        fill(store, n)
        return measure(store, n)
    finally:
        store.close()
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def run(scale: float = 1.0) -> list[dict[str, Any]]:
    n = max(1000, int(CASES * scale))
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-stats-"))
    try:
        results = {"SQLite": _sqlite(base, n), "PostgreSQL": _pg(n)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for backend, r in results.items():
        name = f"stats: all indicators over {n:,} cases ({backend})"
        if r is None:
            rows.append({"name": name, "value": None, "unit": "s", "target": f"<= {TARGET_S:g}",
                         "reference": "PostgreSQL not reachable", "ratio": None, "ok": False})
            continue
        rows.append({"name": name, "value": round(r["indicators_s"], 3), "unit": "s", "target": f"<= {TARGET_S:g}",
                     "reference": f"plain full scan of the cases {r['scan_s']:.3f} s",
                     "ratio": round(r["indicators_s"] / r["scan_s"], 2) if r["scan_s"] > 0 else None,
                     "ok": r["indicators_s"] <= TARGET_S})
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
