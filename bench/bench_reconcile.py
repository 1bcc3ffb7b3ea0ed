"""Reconciliation benchmark (not a test): printed figures beside references measured in the same run.

Setup (built directly with Ledger/Store, both on SQLite): the city 320300 (child) and the province
320000 (parent) both hold 200 logs of the city's subtree, 1M records in all. The province is behind
on 5 logs (the city's and the county's own, signed, with checkpoints) by 10k records in total, and
one log is forked (the same head seq, different records from the middle on).

Figures (one run of ``reconcile_with_parent`` with the province in-process, through the same functions
its RPCs call; the request and reply are serialised to count their bytes):

- comparison bytes: serialised HeadsRequest + HeadsReply; target <= 64 KB. Reference: the chain
  hashes of every record of the child's logs as one ChainsReply (what comparing without heads costs).
- comparison round trips: target 1.
- whole run, repair and fork location included: target <= 15 s. Reference: reading every stored chain
  hash of the 200 logs on both sides (the least a comparison without heads does locally).

- the same run with real processes: the province as its own process, the stopped city running
  ``fednode reconcile DIR --json`` (it dials the province over mutual TLS, pushes over a Link stream);
  wall time including the CLI's start. Reference: the in-process run.

Run: ``python -m bench.bench_reconcile [size_factor] [--no-real]`` (``0.1`` for a quick look).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.demo import build_tree
from node.core import schema
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK, CONTROL, MONITOR, build_body
from node.core.store import Row
from node.link.reconcile import LocalParent, read_tail, reconcile_with_parent
from node.link.streams import apply_batch
from proto.fednode.v1 import fednode_pb2 as pb

BYTES_TARGET = 64 * 1024
TIME_TARGET = 15.0
TREE = [
    ("320000", "江苏省", "province", None),
    ("320300", "徐州市", "city", "320000"),
    ("320303", "云龙区", "county", "320300"),
]
CHILD, PARENT, COUNTY = "320300", "320000", "320303"
# (origin, channel, kind, records the province lacks): 10k in all
BEHIND = [(CHILD, BULK, "case.step", 4000), (CHILD, MONITOR, "alert", 1000), (COUNTY, BULK, "case.step", 3000),
          (COUNTY, MONITOR, "alert", 1000), (COUNTY, CONTROL, "audit.note", 1000)]
PREFIX = 100
FORK_AT_FRACTION = 0.6


def _append_many(ledger: Ledger, kind: str, n: int, tag: str) -> None:
    for lo in range(0, n, 5000):
        ledger.append([NewRecord(kind, {"i": lo + i, "tag": tag}) for i in range(min(5000, n - lo))])


def _send_up(child: Ledger, parent: Ledger, origin: str, channel: int, upto: int | None = None) -> None:
    while True:
        after = parent.store.head(origin, channel).seq
        if upto is not None and after >= upto:
            return
        batch = read_tail(child, origin, channel, after, (upto - after) if upto else 2000)
        if batch is None:
            return
        ack = apply_batch(parent, batch, peer=child.code, from_child=True)
        assert ack.ok, ack.error


def _synthetic_origins(n_logs: int) -> list[tuple[str, int]]:
    codes = [f"3203{i:02d}" for i in range(1, 100) if f"3203{i:02d}" != COUNTY]
    logs = [(c, ch) for c in codes for ch in (BULK, MONITOR)]
    return logs[:n_logs]


def _rows(origin: str, channel: int, lo: int, hi: int, variant: bytes = b"n") -> list[Row]:
    t0 = 1_700_000_000_000_000
    return [Row(s, build_body(origin=origin, channel=channel, seq=s, kind="case.step", time_us=t0 + s,
                              payload=b'{"%s":%d}' % (variant, s)), b"", b"", "case.step", "", t0 + s)
            for s in range(lo, hi + 1)]


def _fill_synthetic(child: Ledger, parent: Ledger, parent_db: Path, logs: list[tuple[str, int]], per_log: int,
                    fork: tuple[str, int, int]) -> None:
    """Unsigned bodies appended straight into the child's store (the comparison never verifies equal
    logs), copied into the parent's with SQL; the parent's copy of the forked log differs from the fork
    seq on."""
    for origin, channel in logs:
        rows = _rows(origin, channel, 1, per_log)
        with child.store.write() as tx:
            tx.append(origin, channel, rows)
    fo, fc, at = fork
    with parent.store.write() as tx:
        tx.append(fo, fc, _rows(fo, fc, 1, at - 1) + _rows(fo, fc, at, per_log, b"other"))
        offset = tx.next_local_seq(0)  # the counter + 1: copied rows are numbered after it
    con = sqlite3.connect(parent_db, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS src", (str(child.store.engine.url.database),))
        con.execute("BEGIN IMMEDIATE")
        keys = [f"{o}/{c}" for o, c in logs if (o, c) != (fo, fc)]
        where = f"(origin || '/' || channel) IN ({','.join('?' * len(keys))})"
        con.execute(f"INSERT INTO records SELECT origin, channel, seq, kind, dest, time_us, body, signature, key_id, "
                    f"chain, stored_us, local_seq + ? FROM src.records WHERE {where}", (offset, *keys))
        con.execute(f"INSERT INTO heads SELECT * FROM src.heads WHERE {where}", keys)
        top = con.execute("SELECT max(local_seq) FROM records").fetchone()[0]
        con.execute("UPDATE meta SET value = ? WHERE key = 'local_seq'", (str(top),))
        con.execute("COMMIT")
    finally:
        con.close()


def _read_all_chains(ledger: Ledger) -> list[bytes]:
    t = schema.records
    with ledger.store.read() as conn:
        return [bytes(r[0]) for r in conn.execute(select(t.c.chain))]


def _snapshot(home_dir: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("store.db", "store.db-wal"):
        if (home_dir / name).exists():
            shutil.copy(home_dir / name, dst / name)


def _put_back(home_dir: Path, src: Path) -> None:
    for name in ("store.db", "store.db-wal", "store.db-shm"):
        (home_dir / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy(src / name, home_dir / name)


def _real_process_run(root: Path, province: Path, city: Path) -> tuple[float, dict[str, Any]]:
    """The province as its own process (mutual TLS on loopback); the stopped city runs
    `fednode reconcile DIR --json`, which dials it, as an operator would."""
    from bench.demo import start, stop_all, wait_admin

    proc = start(province)
    try:
        wait_admin(Home(province))
        t0 = time.perf_counter()
        p = subprocess.run([str(Path(sys.executable).parent / "fednode"), "reconcile", str(city), "--json"],
                           capture_output=True, timeout=300)
        elapsed = time.perf_counter() - t0
        return elapsed, json.loads(p.stdout)
    finally:
        stop_all({"province": proc})


def run(size_factor: float = 1.0, base: Path | None = None, real: bool = True) -> list[dict[str, Any]]:
    total = int(1_000_000 * size_factor)
    behind = [(o, c, k, max(1, int(n * size_factor))) for o, c, k, n in BEHIND]
    tmp = tempfile.TemporaryDirectory(prefix="fednode-bench-reconcile-") if base is None else None
    root = Path(tmp.name) if tmp is not None else Path(base)  # type: ignore[arg-type]
    try:
        homes = build_tree(root, TREE)
        province, city, county = (Home(homes[c].dir) for c in (PARENT, CHILD, COUNTY))
        pl, cl, kl = province.ledger(), city.ledger(), county.ledger()
        t_build = time.perf_counter()
        _send_up(cl, pl, CHILD, CONTROL)  # the city's key announcement: both hold it
        for origin, channel, kind, n in behind:
            src = kl if origin == COUNTY else cl
            if channel != CONTROL:
                _append_many(src, kind, PREFIX, "prefix")
            if origin == COUNTY:
                _send_up(kl, cl, COUNTY, channel)
            _send_up(cl, pl, origin, channel)  # the province holds the prefix
            _append_many(src, kind, n, "tail")
            if origin == COUNTY:
                _send_up(kl, cl, COUNTY, channel)
        authentic = sum(h.seq for (o, _c), h in cl.store.heads().items() if o in (CHILD, COUNTY))
        synth_logs = _synthetic_origins(200 - len({k for k in cl.store.heads() if k[0] in (CHILD, COUNTY)}))
        per_log = max(2, (total - authentic) // len(synth_logs))
        fork = (synth_logs[7][0], synth_logs[7][1], int(per_log * FORK_AT_FRACTION))
        _fill_synthetic(cl, pl, homes[PARENT].dir / "store.db", synth_logs, per_log, fork)
        build_s = time.perf_counter() - t_build
        n_logs = len([k for k in cl.store.heads() if k[0] != PARENT and k[0].startswith("3203")])
        n_records = sum(h.seq for (o, _c), h in cl.store.heads().items() if o.startswith("3203"))

        before = {(o, c): cl.store.head(o, c) for o, c, _k, _n in behind}
        if real:
            for h in (province, city):
                h.close()
            _snapshot(homes[PARENT].dir, root / "snap-province")
            _snapshot(homes[CHILD].dir, root / "snap-city")
            pl, cl = province.ledger(), city.ledger()

        # the run
        t0 = time.perf_counter()
        rep = reconcile_with_parent(cl, LocalParent(pl, CHILD))
        elapsed = time.perf_counter() - t0

        # reference: read every chain hash on both sides
        t0 = time.perf_counter()
        chains = _read_all_chains(cl)
        _read_all_chains(pl)
        ref_s = time.perf_counter() - t0
        naive_bytes = pb.ChainsReply(chains=chains).ByteSize()

        want_pushed = sum(n for *_x, n in behind)
        pushed = sum(rep.pushed.values())
        heads_equal = all(pl.store.head(*k) == h for k, h in before.items())
        [inc] = rep.incidents or [{}]
        fork_ok = (inc.get("origin"), inc.get("seq")) == (fork[0], fork[2])
        common = {"logs": n_logs, "records": n_records, "build_s": round(build_s, 1)}
        rows = [
            {"name": "comparison bytes (HeadsRequest + HeadsReply)", "value": rep.heads_bytes, "unit": "B",
             "target": f"<= {BYTES_TARGET}", "reference": naive_bytes,
             "ratio": round(rep.heads_bytes / naive_bytes, 5), "ok": rep.heads_bytes <= BYTES_TARGET, **common},
            {"name": "comparison round trips", "value": rep.heads_round_trips, "unit": "round trips",
             "target": "1", "reference": 1, "ratio": float(rep.heads_round_trips), "ok": rep.heads_round_trips == 1,
             "other_round_trips": rep.other_round_trips},
            {"name": f"whole run: {pushed:,} records repaired on {len(rep.pushed)} logs, "
                     f"{len(rep.incidents)} fork located", "value": round(elapsed, 2), "unit": "s",
             "target": f"<= {TIME_TARGET:g}", "reference": round(ref_s, 2), "ratio": round(elapsed / ref_s, 2),
             "ok": elapsed <= TIME_TARGET and pushed == want_pushed and heads_equal and fork_ok and not rep.errors,
             "pushed": pushed, "pushed_expected": want_pushed, "fork_located": fork_ok,
             "errors": rep.errors[:3], "phases_s": rep.phases_s},
        ]
        for h in (province, city, county):
            h.close()
        if real:
            _put_back(homes[PARENT].dir, root / "snap-province")
            _put_back(homes[CHILD].dir, root / "snap-city")
            real_s, out = _real_process_run(root, homes[PARENT].dir, homes[CHILD].dir)
            rrep = out.get("report") or {}
            real_pushed = sum(rrep.get("pushed", {}).values())
            real_fork = [(i["origin"], i["seq"]) for i in rrep.get("incidents", [])] == [(fork[0], fork[2])]
            rows.append({
                "name": "real processes (mutual TLS): `fednode reconcile` wall time, CLI start included",
                "value": round(real_s, 2), "unit": "s", "target": f"<= {TIME_TARGET:g}",
                "reference": round(elapsed, 2), "ratio": round(real_s / elapsed, 2),
                "ok": real_s <= TIME_TARGET and real_pushed == want_pushed and real_fork
                and rrep.get("heads_round_trips") == 1 and rrep.get("heads_bytes", 1 << 30) <= BYTES_TARGET,
                "heads_bytes": rrep.get("heads_bytes"), "run_s": rrep.get("elapsed_s"), "pushed": real_pushed,
                "phases_s": rrep.get("phases_s"),
                "errors": rrep.get("errors", [])[:3],
            })
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()


def _print(rows: list[dict[str, Any]]) -> None:
    from bench.harness import print_table

    print(print_table(rows))
    r0 = rows[0]
    print(f"in-process phases (s): {rows[2]['phases_s']}")
    for r in rows[3:]:
        print(f"real processes: comparison {r['heads_bytes']} B in one round trip, the run itself {r['run_s']} s, "
              f"{r['pushed']:,} records pushed over the link, phases {r['phases_s']}; "
              "reference = the in-process run (s)")
    print(f"setup: {r0['logs']} logs, {r0['records']:,} records (built in {r0['build_s']} s); "
          f"other round trips (fork bisection, fetch of evidence, push): {rows[1]['other_round_trips']}")
    print("reference: bytes -> every chain hash of the child's logs as one ChainsReply; "
          "time -> reading every stored chain hash on both sides (s)")


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    _print(run(float(numbers[0]) if numbers else 1.0, real="--no-real" not in sys.argv))
