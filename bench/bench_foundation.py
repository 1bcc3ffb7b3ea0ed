"""Foundation micro-benchmark: the signed log's append and verify+store rates beside raw references.

    python -m bench.bench_foundation [--records N] [--no-pg] [--json] [--profile]

For N records (default 100k) on SQLite (WAL, a file in a temp dir) and on PostgreSQL (fresh temporary
databases, dropped afterwards) it measures, in the same run:

(a) append: ``Ledger.append`` of bulk-channel records in batches of 1000 (signed checkpoints every
    500 records and at the end of each batch);
(b) verify+store: a receiver's ``Ledger.accept_segments`` of the same records in segments of 1000,
    as the sender's ``read_segment`` cuts them (the checkpoint path: one signature per segment, the
    chain recomputed over every body);
(c) raw Ed25519 sign and verify rates (cryptography) over bodies of the same size;
(d) raw insert: SQLAlchemy Core executemany of same-sized rows into a plain table (the records
    table's columns, no secondary index), one commit per 1000, on the same database (and, for
    reference, the same rows through the driver's executemany, which the store's hot path uses);

and the ratios: append / raw insert, verify+store / raw insert, and how many signature
verifications the checkpoint path needed against one per record, with the time they take at the raw
verify rate. Targets on SQLite: append ≥ 50,000 and verify+store ≥ 50,000 records/s.
This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Column, MetaData, Table, create_engine, text

from node.app import enrol
from node.core import pki, schema
from node.core.crypto import RECORD_TYPE, chain_over, pae
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK
from node.core.store import Store
from proto.fednode.v1 import fednode_pb2 as pb

BATCH = 1000
TARGET = 50_000  # records/s, SQLite
DESIGN_RAW_INSERT = {"sqlite": 120_000, "postgres": 43_000}  # DESIGN §9, rows/s
DESIGN_ED25519 = {"sign": 30_000, "verify": 9_500}  # DESIGN §9, per second
PG_ADMIN_URL = os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORIGIN = "320303"


# ---- setup ------------------------------------------------------------------------------------------------


def _enrol(parent: Home, directory: Path, code: str, name: str, level: str) -> Home:
    child = enrol.init(directory, code=code, name=name, level=level)
    bundle = enrol.sign(parent, pki.Request.from_json(enrol.request(child).to_json()))
    enrol.install(child, pki.Bundle.from_json(bundle.to_json()))
    return child


def make_county(base: Path) -> Home:
    """An enrolled county 320303 (province 320000 → city 320300 → county), homes on SQLite in ``base``."""
    province = enrol.init(base / "320000", code="320000", name="江苏省", level="province")
    enrol.init_root(province)
    city = _enrol(province, base / "320300", "320300", "徐州市", "city")
    county = _enrol(city, base / "320303", ORIGIN, "云龙区", "county")
    province.close()
    city.close()
    return county


def payload(i: int) -> bytes:
    """~260 bytes of case-event JSON, so a body is ~300 bytes (DESIGN §9 budgets a 400-byte body)."""
    return (
        f'{{"case_no":"C{i:08d}","item_code":"320303-XK-{i % 997:04d}","step_no":{i % 7},"step":"承办",'
        f'"post":"窗口受理岗","actor":"A{i % 50000:05d}","result":"1","opinion":"材料齐全，符合法定形式，予以受理",'
        f'"time":"2025-03-04T09:{i % 60:02d}:00+08:00","dept":"320303-SJ","limit_days":20}}'
    ).encode()


def items(n: int, start: int) -> list[NewRecord]:
    return [NewRecord("case.step", payload(start + i), channel=BULK) for i in range(n)]


@contextmanager
def pg_databases(count: int) -> Iterator[list[str]]:
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    names = [f"fednode_bench_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    try:
        with admin.connect() as c:
            for name in names:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        yield [f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}" for name in names]
    finally:
        with admin.connect() as c:
            for name in names:
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


# ---- measurements ---------------------------------------------------------------------------------------


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def measure_ed25519(body_size: int, seconds: float = 1.0) -> tuple[float, float]:
    """Raw sign and verify rates over PAE-wrapped bodies of ``body_size`` bytes."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    msgs = [pae(RECORD_TYPE, os.urandom(body_size)) for _ in range(256)]
    sigs = [key.sign(m) for m in msgs]

    def loop(fn: Callable[[int], object]) -> float:
        n, t0 = 0, time.perf_counter()
        while True:
            for i in range(256):
                fn(i)
            n += 256
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return rate(n, elapsed)

    return loop(lambda i: key.sign(msgs[i])), loop(lambda i: public.verify(sigs[i], msgs[i]))


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def _timed(fn: Callable[[], object]) -> Timing:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure_append(sender: Ledger, records: int) -> Timing:
    batches = [items(min(BATCH, records - start), start) for start in range(0, records, BATCH)]

    def go() -> None:
        for batch in batches:
            sender.append(batch)

    return _timed(go)


def read_segments(sender: Ledger, records: int) -> list[pb.Segment]:
    segs, after = [], 0
    while after < records:
        seg = sender.read_segment(ORIGIN, BULK, after, BATCH)
        assert seg is not None
        segs.append(seg)
        after += len(seg.records)
    return segs


def measure_verify_store(receiver: Ledger, segs: list[pb.Segment]) -> Timing:
    def go() -> None:
        for seg in segs:
            receiver.accept_segments([seg], sender_subtree=ORIGIN)

    return _timed(go)


def measure_raw_insert(store: Store, segs: list[pb.Segment]) -> tuple[Timing, Timing]:
    """Core executemany of rows shaped like ``records`` into a plain table, one commit per 1000."""
    md = MetaData()
    plain = Table("bench_raw", md, *[Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False)
                                     for c in schema.records.columns])
    md.create_all(store.engine)
    batches = []
    seq = 0
    for seg in segs:
        bodies = [r.body for r in seg.records]
        chains = chain_over(bytes(32), bodies)  # precomputed: only the insert is timed
        rows = []
        for body, chain in zip(bodies, chains, strict=True):
            seq += 1
            rows.append({"origin": ORIGIN, "channel": BULK, "seq": seq, "kind": "case.step", "dest": "",
                         "time_us": 1, "body": body, "signature": b"", "key_id": b"", "chain": chain,
                         "stored_us": 1, **({"local_seq": seq} if "local_seq" in plain.c else {})})
        batches.append(rows)
    def core() -> None:
        for rows in batches:
            with store.engine.begin() as conn:
                conn.execute(plain.insert(), rows)

    elapsed = _timed(core)
    # the same through the driver directly (what the store's hot path uses), for reference
    cols = list(batches[0][0]) if batches else []
    mark = "%s" if store.is_postgres else "?"
    sql = f"INSERT INTO bench_raw ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"
    with store.engine.begin() as conn:
        conn.execute(plain.delete())
    tuples = [[tuple(r[c] for c in cols) for r in rows] for rows in batches]

    def dbapi() -> None:
        for rows in tuples:
            with store.engine.begin() as conn:
                conn.exec_driver_sql(sql, rows)

    driver = _timed(dbapi)
    md.drop_all(store.engine)
    return elapsed, driver


def bench_backend(backend: str, county: Home, sender_url: str, receiver_url: str, records: int,
                  sign_rate: float, verify_rate: float) -> list[dict[str, Any]]:
    root = county.root()
    sender = Ledger(Store.open(sender_url), ORIGIN, county.signer(), root)
    receiver = Ledger(Store.open(receiver_url), "320300", None, root)
    try:
        receiver.admit_keys([county.key_certificate()])
        t_append = measure_append(sender, records)
        segs = read_segments(sender, records)
        t_verify = measure_verify_store(receiver, segs)
        assert receiver.store.head(ORIGIN, BULK) == sender.store.head(ORIGIN, BULK)
        t_raw, t_driver = measure_raw_insert(receiver.store, segs)
    finally:
        sender.store.close()
        receiver.store.close()
    in_process = backend == "sqlite"  # PostgreSQL works in its server: our CPU time would flatter it

    def row(name: str, t: Timing, unit: str, target: float | None, reference: float) -> dict[str, Any]:
        value = rate(records, t[0])
        return {"name": name, "value": value, "unit": unit, "target": target, "reference": reference,
                "ratio": value / reference, "cpu_rate": rate(records, t[1]) if in_process else None}

    raw = rate(records, t_raw[0])
    target = TARGET if backend == "sqlite" else None
    verifies = len(segs)
    sig_time = verifies / verify_rate
    return [
        row(f"{backend}: append, bulk (Ledger.append, {BATCH}/batch)", t_append, "records/s", target, raw),
        row(f"{backend}: verify+store (accept_segments, {BATCH}/segment)", t_verify, "records/s", target, raw),
        row(f"{backend}: raw insert (Core executemany, commit/{BATCH})", t_raw, "rows/s", None,
            DESIGN_RAW_INSERT[backend]),
        row(f"{backend}: raw insert via the driver (DB-API executemany)", t_driver, "rows/s", None, raw),
        {"name": f"{backend}: Ed25519 verifies on the verify+store path", "value": verifies, "unit": "verifies",
         "target": None, "reference": records, "ratio": verifies / records, "cpu_rate": None},
        {"name": f"{backend}: time they take at the raw verify rate", "value": sig_time, "unit": "s",
         "target": None, "reference": t_verify[0], "ratio": sig_time / t_verify[0], "cpu_rate": None},
        {"name": f"{backend}: per-record verify would cap verify+store at", "value": verify_rate,
         "unit": "records/s", "target": None, "reference": rate(records, t_verify[0]),
         "ratio": verify_rate / rate(records, t_verify[0]), "cpu_rate": None},
    ]


def run(records: int = 100_000, pg: bool = True) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-"))
    try:
        county = make_county(base / "homes")
        body_size = len(pb.RecordBody(origin=ORIGIN, channel=BULK, seq=records, kind="case.step",  # type: ignore[arg-type]
                                      time_us=time.time_ns() // 1000, payload=payload(0)).SerializeToString())
        sign_rate, verify_rate = measure_ed25519(body_size)
        rows: list[dict[str, Any]] = [
            {"name": f"Ed25519 sign (raw, {body_size}-byte body)", "value": sign_rate, "unit": "signs/s",
             "target": None, "reference": DESIGN_ED25519["sign"], "ratio": sign_rate / DESIGN_ED25519["sign"],
             "cpu_rate": None},
            {"name": f"Ed25519 verify (raw, {body_size}-byte body)", "value": verify_rate, "unit": "verifies/s",
             "target": None, "reference": DESIGN_ED25519["verify"], "ratio": verify_rate / DESIGN_ED25519["verify"],
             "cpu_rate": None},
        ]
        rows += bench_backend("sqlite", county, f"sqlite:///{base / 'sender.db'}", f"sqlite:///{base / 'receiver.db'}",
                              records, sign_rate, verify_rate)
        if pg:
            with pg_databases(2) as (sender_url, receiver_url):
                rows += bench_backend("postgres", county, sender_url, receiver_url, records, sign_rate, verify_rate)
        county.close()
        return rows
    finally:
        shutil.rmtree(base, ignore_errors=True)


def profile(records: int, top: int = 18) -> str:
    """cProfile of the SQLite append and verify+store paths: where the time goes, by own time."""
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-prof-"))
    out = io.StringIO()
    try:
        county = make_county(base / "homes")
        root = county.root()
        sender = Ledger(Store.open(f"sqlite:///{base / 'sender.db'}"), ORIGIN, county.signer(), root)
        receiver = Ledger(Store.open(f"sqlite:///{base / 'receiver.db'}"), "320300", None, root)
        receiver.admit_keys([county.key_certificate()])
        batches = [items(min(BATCH, records - start), start) for start in range(0, records, BATCH)]

        def append() -> None:
            for batch in batches:
                sender.append(batch)

        def verify_store() -> None:
            for seg in segs:
                receiver.accept_segments([seg], sender_subtree=ORIGIN)

        segs: list[pb.Segment] = []
        for label, fn in (("append", append), ("verify+store", verify_store)):
            if label == "verify+store":
                segs = read_segments(sender, records)
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.runcall(fn)
            elapsed = time.perf_counter() - t0
            stats = pstats.Stats(prof, stream=out)
            total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
            out.write(f"\n== {label}: {records} records, {elapsed:.2f} s under the profiler; top by own time\n")
            out.write(f"{'share':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  function\n")
            entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
            for (file, line, func), (_cc, nc, tt, ct, _callers) in entries:
                where = f"{Path(file).name}:{line}" if line else file
                out.write(f"{tt / total:6.1%} {tt:7.3f} {ct:7.3f} {nc:9d}  {func} ({where})\n")
        sender.store.close()
        receiver.store.close()
        county.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out.getvalue()


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f}"
    if isinstance(v, float) and v < 10:
        return f"{v:.3f}"
    return f"{v:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'measure':<{w}}  {'value':>11} {'unit':<11} {'target':>8} {'reference':>11} {'ratio':>7}  met "
             f"{'per CPU-s':>10}"]
    for r in rows:
        met = "" if r["target"] is None else ("yes" if r["value"] >= r["target"] else "NO")
        lines.append(f"{r['name']:<{w}}  {_fmt(r['value'], r['unit']):>11} {r['unit']:<11} {_fmt(r['target']):>8} "
                     f"{_fmt(r['reference'], r['unit']):>11} {r['ratio']:>7.3f}  {met:<3} {_fmt(r['cpu_rate']):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also cProfile the SQLite paths")
    args = ap.parse_args(argv)
    rows = run(args.records, pg=not args.no_pg)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"fednode foundation benchmark, {args.records:,} records, Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {load}\n(value: wall-clock rate; per CPU-s: records per CPU-second of "
              "this process, SQLite only, which a busy machine does not dilute)")
        print(table(rows))
    if args.profile:
        print(profile(args.records), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
