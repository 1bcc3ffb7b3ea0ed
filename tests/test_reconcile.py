"""Reconciliation (issue 7): heads in one round trip, repair both ways, forks, verify, reports, schedule.

Store-level tests run two (or three) real stores in one process and call the same functions the RPCs
call (node.reconcile.LocalParent); the slow tests run real node processes with mutual TLS and the
`fednode reconcile` / `fednode verify` commands as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import and_, select, update

from bench.demo import build_tree, start, stop_all, wait_admin, wait_converged
from node.core import admin_client as admin
from node.core import schema
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK, CONTROL, MONITOR, channel_name, parse_body
from node.core.schema.reconcile import reports
from node.core.store import Head
from node.link.reconcile import (
    FORK,
    PULL,
    PUSH,
    Bisection,
    LocalParent,
    compare,
    last_reports,
    reconcile_with_parent,
)
from node.link.streams import apply_batch
from node.runtime.services import reconcile as cmd
from proto.fednode.v1 import fednode_pb2 as pb

COUNTY, CITY, PROVINCE = "320303", "320300", "320000"


# ---- helpers ------------------------------------------------------------------------------------------------


def fill(ledger: Ledger, n: int, kind: str = "case.step", tag: str = "") -> None:
    ledger.append([NewRecord(kind, {"i": i, "tag": tag}) for i in range(n)])


def send_up(child: Ledger, parent: Ledger, origin: str, channel: int, upto: int | None = None) -> int:
    """Move one log from child to parent the way a link does (read_tail → apply_batch)."""
    from node.link.reconcile import read_tail

    moved = 0
    while True:
        after = parent.store.head(origin, channel).seq
        if upto is not None and after >= upto:
            return moved
        batch = read_tail(child, origin, channel, after, max_records=(upto - after) if upto else 2000)
        if batch is None:
            return moved
        ack = apply_batch(parent, batch, peer=child.code, from_child=True)
        assert ack.ok, ack.error
        moved += sum(len(s.records) for s in batch.segments)


def bodies(ledger: Ledger, origin: str, channel: int) -> list[bytes]:
    return [bytes(r.body) for r in ledger.store.records(origin, channel)]


def backup(home: Home) -> Path:
    home.close()
    dst = home.dir / "store.backup.db"
    shutil.copy(home.dir / "store.db", dst)
    return dst


def restore(home: Home, src: Path) -> None:
    home.close()
    for suffix in ("-wal", "-shm"):
        (home.dir / f"store.db{suffix}").unlink(missing_ok=True)
    shutil.copy(src, home.dir / "store.db")


# ---- sans I/O -----------------------------------------------------------------------------------------------


def test_compare_table() -> None:
    a, b = b"a" * 32, b"b" * 32
    mine = {("1", 3): Head(5, a), ("2", 3): Head(5, a), ("3", 3): Head(7, a), ("4", 3): Head(7, a),
            ("5", 3): Head(2, a)}
    theirs = {("1", 3): Head(5, a), ("2", 3): Head(5, b), ("3", 3): Head(4, b), ("4", 3): Head(4, b),
              ("5", 3): Head(9, b), ("6", 3): Head(1, b)}
    plans = {p.key[0]: p for p in compare(mine, theirs, {("3", 3): b, ("4", 3): a})}
    assert [plans[k].action for k in "123456"] == ["equal", FORK, PUSH, FORK, PULL, PULL]
    assert plans["2"].fork_hi == 5 and plans["4"].fork_hi == 4


@pytest.mark.parametrize("n,first", [(1, 1), (2, 2), (1000, 1), (1000, 1000), (100_000, 31_337), (17, 9)])
def test_bisection_finds_first_difference(n: int, first: int) -> None:
    chain = {s: (b"same" if s < first else b"diff") + bytes(4) for s in range(n + 1)}
    other = {s: (b"same" if s < first else b"othr") + bytes(4) for s in range(n + 1)}
    b = Bisection(0, n)
    while not b.done:
        probes = b.probes()
        assert probes and all(b.lo < p < b.hi for p in probes)
        b.narrow({p: chain[p] for p in probes}, {p: other[p] for p in probes})
    assert b.first_different == first
    assert b.rounds <= 5  # log16(100k) ≈ 4.2


# ---- store level: two or three stores in one process ---------------------------------------------------


@pytest.fixture
def ledgers(tree: Any) -> Iterator[SimpleNamespace]:
    # enrolment already announced each node's signing key in its own control log
    yield SimpleNamespace(province=tree.province.ledger(), city=tree.city.ledger(), county=tree.county.ledger(),
                          tree=tree)


@pytest.fixture
def pg_ledgers(tmp_path: Path, pg_url: str) -> Iterator[SimpleNamespace]:
    from conftest import Tree

    tree = Tree(tmp_path, county_db=pg_url)  # the county's store on the real PostgreSQL server
    yield SimpleNamespace(province=tree.province.ledger(), city=tree.city.ledger(), county=tree.county.ledger(),
                          tree=tree)
    tree.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_parent_behind_on_several_logs_is_repaired(backend: str, request: pytest.FixtureRequest) -> None:
    ns = request.getfixturevalue("ledgers" if backend == "sqlite" else "pg_ledgers")
    city, county = ns.city, ns.county
    fill(county, 1200)
    fill(county, 40, kind="alert")
    county.append([NewRecord("audit.note", {"n": i}) for i in range(7)])
    # the city holds only a prefix of the county's three logs (e.g. restored from an older backup)
    send_up(county, city, COUNTY, BULK, upto=500)
    send_up(county, city, COUNTY, MONITOR)
    send_up(county, city, COUNTY, CONTROL, upto=1)
    county.append([NewRecord("alert", {"late": i}) for i in range(3)])
    rep = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert rep.ok, rep.as_dict()
    assert rep.heads_round_trips == 1
    control = county.store.head(COUNTY, CONTROL).seq - 1  # the key announcements and the 7 notes
    assert control >= 7
    assert rep.pushed == {f"{COUNTY}/bulk": 700, f"{COUNTY}/monitor": 3, f"{COUNTY}/control": control}
    for ch in (CONTROL, MONITOR, BULK):
        assert city.store.head(COUNTY, ch) == county.store.head(COUNTY, ch)
    assert verify_store(city.store, city.keyring).ok
    # a second run finds everything equal, and both sides keep a report
    again = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert again.ok and again.records_repaired == 0 and again.logs_equal == again.logs_compared == 3
    assert last_reports(county, "child")[0]["records_repaired"] == 0
    assert last_reports(city, "parent")[0]["peer"] == COUNTY
    with county.store.read() as conn:
        rows = conn.execute(select(reports.c.records_repaired, reports.c.ok).order_by(reports.c.id)).all()
    assert [tuple(r) for r in rows] == [(703 + control, 1), (0, 1)]


def test_child_that_lost_its_own_tail_recovers_it(ledgers: SimpleNamespace) -> None:
    tree, city = ledgers.tree, ledgers.city
    county = ledgers.county
    fill(county, 300)
    saved = backup(tree.county)
    county = tree.county.ledger()
    fill(county, 450, tag="after-backup")
    county.append([NewRecord("alert", {"i": i}) for i in range(5)])
    for ch in (CONTROL, MONITOR, BULK):
        send_up(county, city, COUNTY, ch)
    want = {ch: county.store.head(COUNTY, ch) for ch in (CONTROL, MONITOR, BULK)}
    restore(tree.county, saved)  # the county's disk died; the backup is older than what it sent up
    county = tree.county.ledger()
    assert county.store.head(COUNTY, BULK).seq == 300
    rep = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert rep.ok, rep.as_dict()
    assert rep.fetched == {f"{COUNTY}/bulk": 450, f"{COUNTY}/monitor": 5}
    for ch, head in want.items():
        assert county.store.head(COUNTY, ch) == head
    # it appends again after its recovered tail: no seq is reused
    fill(county, 1, tag="new")
    assert county.store.head(COUNTY, BULK).seq == 751
    assert send_up(county, city, COUNTY, BULK) == 1
    assert verify_store(county.store, county.keyring).ok


def test_fork_raises_incident_and_nothing_is_overwritten(ledgers: SimpleNamespace) -> None:
    tree, city = ledgers.tree, ledgers.city
    county = ledgers.county
    fill(county, 200)
    saved = backup(tree.county)
    county = tree.county.ledger()
    fill(county, 100, tag="branch-A")
    send_up(county, city, COUNTY, BULK)
    restore(tree.county, saved)
    county = tree.county.ledger()
    fill(county, 60, tag="branch-B")  # restored and appended before recovering: a fork from seq 201
    ours_before = bodies(county, COUNTY, BULK)
    theirs_before = bodies(city, COUNTY, BULK)
    rep = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert not rep.ok
    [inc] = rep.incidents
    assert (inc["origin"], inc["channel"], inc["seq"], inc["level"], inc["known"]) == (COUNTY, "bulk", 201, "red", False)
    assert f"{COUNTY}/bulk" not in rep.fetched and f"{COUNTY}/bulk" not in rep.pushed
    # nothing overwritten on either side
    assert bodies(county, COUNTY, BULK) == ours_before
    assert bodies(city, COUNTY, BULK) == theirs_before
    # the county's incident row keeps the parent's branch, exact bytes, from the fork seq on
    [row] = [r for r in county.store.incidents() if r.source == f"reconcile:{CITY}"]
    evidence = pb.Segment.FromString(row.evidence)
    assert parse_body(evidence.records[0].body).seq == 201
    assert evidence.records[0].body == theirs_before[200]
    # a red alert in the county's own monitor log: it travels up
    up = [parse_body(bytes(r.body)) for r in county.store.records(COUNTY, MONITOR)]
    assert [(b.kind, json.loads(b.payload)["seq"]) for b in up] == [("incident.fork", 201)]
    # the city saw the fork in the heads, raised it too, addressed down to the county
    down = [parse_body(bytes(r.body)) for r in city.store.records(CITY, MONITOR)]
    assert [(b.kind, b.dest) for b in down] == [("incident.fork", COUNTY)]
    # a second run reports the fork as known, raises nothing new, and fetches the city's alert down
    rep2 = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert [i["known"] for i in rep2.incidents] == [True]
    assert rep2.down_fetched == {f"{CITY}/monitor": 1}
    assert len(county.store.records(COUNTY, MONITOR)) == 1
    with county.store.read() as conn:
        held = conn.execute(select(schema.down_records.c.kind, schema.down_records.c.dest)).all()
    assert [tuple(h) for h in held] == [("incident.fork", COUNTY)]
    assert bodies(city, COUNTY, BULK) == theirs_before
    # the county goes on appending on its branch: the same fork, still raised once on each side
    fill(county, 5, tag="branch-B-more")
    rep3 = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert [(i["seq"], i["known"]) for i in rep3.incidents] == [(201, True)]
    assert [parse_body(bytes(r.body)).kind for r in city.store.records(CITY, MONITOR)] == ["incident.fork"]
    assert len(county.store.records(COUNTY, MONITOR)) == 1


def test_equal_length_fork_is_located(ledgers: SimpleNamespace) -> None:
    tree, city = ledgers.tree, ledgers.city
    county = ledgers.county
    fill(county, 1000)
    saved = backup(tree.county)
    county = tree.county.ledger()
    fill(county, 50, tag="A")
    send_up(county, city, COUNTY, BULK)
    restore(tree.county, saved)
    county = tree.county.ledger()
    fill(county, 50, tag="B")
    assert county.store.head(COUNTY, BULK).seq == city.store.head(COUNTY, BULK).seq == 1050
    rep = reconcile_with_parent(county, LocalParent(city, COUNTY))
    assert [(i["seq"], i["bisection_round_trips"] <= 3) for i in rep.incidents] == [(1001, True)]


def test_tampered_record_at_the_city_is_named_and_never_accepted_above(ledgers: SimpleNamespace) -> None:
    province, city, county = ledgers.province, ledgers.city, ledgers.county
    fill(county, 600)
    county.append([NewRecord("alert", {"i": i}) for i in range(20)])
    for ch in (MONITOR, BULK, CONTROL):
        send_up(county, city, COUNTY, ch)
    t = schema.records
    for ch, seq in ((BULK, 321), (MONITOR, 7)):
        with city.store.write() as tx:
            body = bytearray(tx.conn.execute(select(t.c.body).where(and_(
                t.c.origin == COUNTY, t.c.channel == ch, t.c.seq == seq))).scalar_one())
            body[-3] ^= 0x01  # one bit of one byte, inside the payload
            tx.conn.execute(update(t).where(and_(t.c.origin == COUNTY, t.c.channel == ch, t.c.seq == seq))
                            .values(body=bytes(body)))
    report = verify_store(city.store, city.keyring)
    named = {(p["origin"], p["channel"], p["seq"]) for p in report.problems}
    assert named == {(COUNTY, "bulk", "321"), (COUNTY, "monitor", "7")}
    # the city (child of the province) reconciles upward: the province refuses the tampered segments
    rep = reconcile_with_parent(city, LocalParent(province, CITY))
    assert rep.errors and not rep.ok
    assert province.store.head(COUNTY, BULK).seq < 321 and province.store.head(COUNTY, MONITOR).seq < 7
    tampered = {bytes(r.body) for r in city.store.records(COUNTY, BULK, 321, 321)}
    assert not tampered & {bytes(r.body) for r in province.store.records(COUNTY, BULK)}
    assert verify_store(province.store, province.keyring).ok


# ---- the schedule, under a fake clock ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        clock = self

        class FakeDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                return clock.now.astimezone(tz) if tz is not None else clock.now.replace(tzinfo=None)

        self.cls = FakeDatetime


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    from zoneinfo import ZoneInfo

    import apscheduler.executors.base as ex_base
    import apscheduler.schedulers.base as sch_base

    # a future date, so real time never makes the fake runs look misfired
    clock = FakeClock(datetime(2031, 3, 4, 1, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    monkeypatch.setattr(sch_base, "datetime", clock.cls)
    monkeypatch.setattr(ex_base, "datetime", clock.cls)
    return clock


def fake_runtime(home: Home, loop: asyncio.AbstractEventLoop) -> Any:
    from node.runtime.process import make_scheduler

    rt = SimpleNamespace(home=home, ledger=home.ledger(), loop=loop, code=home.code,
                         parent_code=home.config.parent_code, services=[], notify=lambda: None)
    rt.scheduler = make_scheduler(rt)  # type: ignore[arg-type]
    return rt


async def _wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_scheduled_job_fires_survives_restart_and_never_runs_twice(tree: Any, fake_clock: FakeClock) -> None:
    home = tree.county
    home.config.reconcile_cron, home.config.reconcile_jitter_s = "0 2 * * *", 600
    runs: list[tuple[str, datetime]] = []

    async def slow_runner(trigger: str) -> dict[str, Any]:
        runs.append((trigger, fake_clock.now))
        await asyncio.sleep(0.3)
        return {"report": None}

    async def first_life() -> str:
        rt = fake_runtime(home, asyncio.get_running_loop())
        svc = cmd.ReconcileService(rt, runner=slow_runner)
        rt.services.append(svc)
        rt.scheduler.start()
        await svc.start()
        job = rt.scheduler.get_job(cmd.JOB_ID)
        first = job.next_run_time
        # 02:00 Shanghai time, plus at most the configured jitter
        assert first.hour == 2 and first.minute < 10 and first.date() == fake_clock.now.date()
        fake_clock.now = first + timedelta(seconds=1)
        rt.scheduler.wakeup()
        await _wait_for(lambda: len(runs) == 1)
        assert runs[0][0] == "schedule"
        # a run on demand while the scheduled one is in progress is refused, never run concurrently
        assert (await svc.run("demand"))["skipped"] is True
        await _wait_for(lambda: not svc._lock.locked())
        # the next run is tomorrow; the node stops before it
        second = rt.scheduler.get_job(cmd.JOB_ID).next_run_time
        assert second.date() == (first + timedelta(days=1)).date() and second.hour == 2
        await svc.stop()
        rt.scheduler.shutdown(wait=False)
        await asyncio.sleep(0.05)
        return second.isoformat()

    second = asyncio.run(first_life())
    assert len(runs) == 1

    async def second_life() -> None:
        # restart after the missed 02:00 (the node was down): the stored job fires once, coalesced
        rt = fake_runtime(home, asyncio.get_running_loop())
        svc = cmd.ReconcileService(rt, runner=slow_runner)
        rt.services.append(svc)
        fake_clock.now = datetime.fromisoformat(second) + timedelta(hours=1)
        rt.scheduler.start()
        await svc.start()
        await _wait_for(lambda: len(runs) == 2)
        await asyncio.sleep(0.5)
        assert len(runs) == 2
        # two runs started at the same moment: exactly one runs
        results = await asyncio.gather(svc.run("demand"), svc.run("demand"))
        assert sorted(bool(r.get("skipped")) for r in results) == [False, True]
        # another process holding the lock (the CLI on the same home) also means: skip
        with cmd.run_lock(home.dir) as got:
            assert got
            assert (await svc.run("demand"))["skipped"] is True
        # the job is still the stored one, and the status names the next run
        assert rt.scheduler.get_job(cmd.JOB_ID).next_run_time.date() > datetime.fromisoformat(second).date()
        assert (await asyncio.to_thread(svc.status))["next_run"]  # type: ignore[index]
        # a changed schedule (SIGHUP reload) replaces the stored job
        home.config.reconcile_cron, home.config.reconcile_jitter_s = "30 3 * * *", 0
        await svc.reload()
        nxt = rt.scheduler.get_job(cmd.JOB_ID).next_run_time
        assert (nxt.hour, nxt.minute, nxt.second) == (3, 30, 0)
        await svc.stop()
        rt.scheduler.shutdown(wait=False)
        await asyncio.sleep(0.05)

    asyncio.run(second_life())
    assert [r[0] for r in runs] == ["schedule", "schedule", "demand"]


# ---- real processes: mutual TLS, the CLI as an operator runs it --------------------------------------------

CHAIN = [
    (PROVINCE, "江苏省", "province", None),
    (CITY, "徐州市", "city", PROVINCE),
    (COUNTY, "云龙区", "county", CITY),
]
REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 120) -> tuple[int, Any]:
    p = subprocess.run([str(Path(sys.executable).parent / "fednode"), *args, "--json"], cwd=REPO, capture_output=True,
                       timeout=timeout)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"`fednode {' '.join(args)}` printed no JSON:\n{p.stdout!r}\n{p.stderr.decode()}") from None
    return p.returncode, data


def copy_store(home: Home, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("store.db", "store.db-wal"):
        if (home.dir / name).exists():
            shutil.copy(home.dir / name, dst / name)


def put_store_back(home: Home, src: Path) -> None:
    for name in ("store.db", "store.db-wal", "store.db-shm"):
        (home.dir / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy(src / name, home.dir / name)


def subtree_of(home: Home, code: str) -> dict[tuple[str, int], Head]:
    from node.core import codes

    store = home.store()
    try:
        return {k: h for k, h in store.heads().items() if codes.within(k[0], code)}
    finally:
        home.close()


def holds(home: Home, heads: dict[tuple[str, int], Head]) -> bool:
    """The home holds these logs up to at least these heads, with the same chains (every CLI command
    appends an ``audit.action`` to the node's own control log afterwards, so a head may be further)."""
    store = home.store()
    try:
        return all(store.chains_at(o, c, [h.seq]).get(h.seq) == h.chain for (o, c), h in heads.items())
    finally:
        home.close()


@pytest.mark.slow
def test_real_processes_repair_both_ways_and_report(tmp_path: Path) -> None:
    """Restores from backup, as they happen: a node's disk is replaced by an older copy while it is
    stopped. (No restored node runs before it reconciled: each run below is the stopped node's CLI,
    or the parent answering.)"""
    homes = build_tree(tmp_path, CHAIN)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for code, *_ in CHAIN:
            procs[code] = start(homes[code].dir)
        for code, *_ in CHAIN:
            wait_admin(homes[code])
        assert admin.call(homes[COUNTY], {"op": "ingest", "synthetic": 400, "seed": 1}) is not None
        assert admin.call(homes[CITY], {"op": "ingest", "synthetic": 50, "seed": 2}) is not None
        assert wait_converged(homes, [COUNTY, CITY], PROVINCE, timeout=60, progress=False)[0]
        # the province and the city are backed up here (each while stopped)...
        stop_all(procs)
        procs.clear()
        copy_store(homes[PROVINCE], tmp_path / "province-backup")
        copy_store(homes[CITY], tmp_path / "city-backup")
        for code, *_ in CHAIN:
            procs[code] = start(homes[code].dir)
        for code, *_ in CHAIN:
            wait_admin(homes[code])
        # ...then everything goes on, and reaches the province
        assert admin.call(homes[COUNTY], {"op": "ingest", "synthetic": 600, "seed": 3}) is not None
        assert admin.call(homes[CITY], {"op": "ingest", "synthetic": 80, "seed": 4}) is not None
        assert wait_converged(homes, [COUNTY, CITY], PROVINCE, timeout=60, progress=False)[0]
        stop_all(procs)
        procs.clear()
        city_holds = subtree_of(homes[CITY], CITY)  # the city's and the county's logs

        # 1) the province's disk is replaced by its backup: the parent is behind on several logs.
        #    It runs; the stopped city reconciles with it.
        put_store_back(homes[PROVINCE], tmp_path / "province-backup")
        province_had = subtree_of(homes[PROVINCE], CITY)
        behind = {k: h.seq - province_had.get(k, Head(0, b"")).seq for k, h in city_holds.items()
                  if h.seq > province_had.get(k, Head(0, b"")).seq}
        assert len(behind) >= 3, behind
        procs[PROVINCE] = start(homes[PROVINCE].dir)
        wait_admin(homes[PROVINCE])
        status, out = cli("reconcile", str(homes[CITY].dir))
        assert status == 0, out
        rep = out["report"]
        assert out["mode"] == "direct" and rep["heads_round_trips"] == 1 and rep["ok"]
        assert rep["pushed"] == {f"{o}/{channel_name(c)}": n for (o, c), n in behind.items()}
        # the province's status shows its side of that run
        _, st = cli("status", str(homes[PROVINCE].dir))
        assert st["reconcile"]["children"][CITY]["role"] == "parent"
        assert st["reconcile"]["children"][CITY]["peer_behind"]
        stop_all(procs)
        procs.clear()
        assert holds(homes[PROVINCE], city_holds)

        # 2) the city's disk is replaced by its backup: it lost its own tail (and the county's).
        #    The province runs; the stopped city recovers everything before it would append again.
        put_store_back(homes[CITY], tmp_path / "city-backup")
        assert not holds(homes[CITY], city_holds)
        procs[PROVINCE] = start(homes[PROVINCE].dir)
        wait_admin(homes[PROVINCE])
        status, out = cli("reconcile", str(homes[CITY].dir))
        assert status == 0, out["report"]
        assert f"{CITY}/bulk" in out["report"]["fetched"] and f"{COUNTY}/bulk" in out["report"]["fetched"]
        assert holds(homes[CITY], city_holds)

        # 3) all running: a run on demand goes through the node (admin op), and `status` shows it
        #    (services may append while it runs: the live link and the run both carry that, so only `ok`)
        for code in (CITY, COUNTY):
            procs[code] = start(homes[code].dir)
        for code in (CITY, COUNTY):
            wait_admin(homes[code])
        status, out = cli("reconcile", str(homes[COUNTY].dir))
        assert status == 0, out
        assert "mode" not in out and out["report"]["ok"] and out["report"]["heads_round_trips"] == 1
        assert out["report"]["logs_compared"] >= 2 and not out["report"]["incidents"]
        _, st = cli("status", str(homes[COUNTY].dir))
        assert st["reconcile"]["last"]["started_us"] == out["report"]["started_us"]
        assert st["reconcile"]["next_run"]
        stop_all(procs)
        procs.clear()

        # 4) a byte flipped at rest in the city is named by `fednode verify`
        store = homes[CITY].store()
        t = schema.records
        with store.write() as tx:
            body = bytearray(tx.conn.execute(select(t.c.body).where(and_(
                t.c.origin == COUNTY, t.c.channel == BULK, t.c.seq == 123))).scalar_one())
            body[-2] ^= 0x20
            tx.conn.execute(update(t).where(and_(t.c.origin == COUNTY, t.c.channel == BULK, t.c.seq == 123))
                            .values(body=bytes(body)))
        homes[CITY].close()
        status, out = cli("verify", str(homes[CITY].dir))
        assert status == 1
        assert [(p["origin"], p["channel"], p["seq"]) for p in out["problems"]] == [(COUNTY, "bulk", "123")]
    finally:
        stop_all(procs)


def test_unreachable_parent_leaves_a_failed_report(ledgers: SimpleNamespace) -> None:
    from node.link.reconcile import ReconcileError

    class Down(LocalParent):
        def heads(self, request: pb.HeadsRequest) -> pb.HeadsReply:
            raise ReconcileError("the parent 320300 at 127.0.0.1:1 failed the reconciliation call (UNAVAILABLE)")

    rep = reconcile_with_parent(ledgers.county, Down(ledgers.city, COUNTY))
    assert not rep.ok and "UNAVAILABLE" in rep.errors[0]
    assert last_reports(ledgers.county, "child")[0]["errors"] == rep.errors
