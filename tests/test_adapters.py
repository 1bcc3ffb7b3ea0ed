"""Adapters: SQL poll (its suite on SQLite, PostgreSQL and MariaDB: tests/test_sql_sources.py), file drop
(CSV/JSON Lines, UTF-8/GB18030, complete files only, resume, archive), natural-key re-delivery, the
entry-point registry, and the local push service over a real gRPC port."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, create_engine, func, select

from adapters import mappings
from adapters.base import Batch, commit, load_cursor, make_adapter
from adapters.filedrop import FileDropAdapter
from adapters.sql_poll import SqlPollAdapter
from node.app import enrol
from node.core import schema
from node.core.domain import natural_key
from node.core.errors import ConfigError
from node.core.home import Home
from node.core.ledger import Ledger
from node.core.records import BULK, parse_body
from tests.sqldbs import spxx_row

T0 = dt.datetime(2025, 10, 9, 9, 0, 0)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    h = enrol.init(tmp_path / "320000", code="320000", name="江苏省", level="province")
    enrol.init_root(h)
    yield h
    h.close()


def records_of(h: Home, kind_prefix: str = "case.") -> list[tuple[str, dict[str, Any]]]:
    with h.store().read() as conn:
        rows = conn.execute(select(schema.records.c.body).where(schema.records.c.kind.startswith(kind_prefix))
                            .order_by(schema.records.c.channel, schema.records.c.seq)).all()
    out = []
    for r in rows:
        b = parse_body(bytes(r.body))
        out.append((b.kind, b.payload_json()))
    return out


def quarantined(h: Home) -> list[Any]:
    with h.store().read() as conn:
        return list(conn.execute(select(schema.quarantine).order_by(schema.quarantine.c.id)))


def drain(ad: Any, ledger: Ledger, name: str, max_batches: int = 1000) -> int:
    """What the node's AdapterService does, synchronously: poll, commit with the cursor, after_commit."""
    for n in range(max_batches):
        cursor = load_cursor(ledger, name)
        batch: Batch | None = ad.poll(cursor)
        if batch is None:
            return n
        commit(ledger, name, batch.rows, cursor=batch.cursor, write_cursor=True)
        ad.after_commit(batch)
    raise AssertionError("adapter never ran dry")


# ---- SQL poll ---------------------------------------------------------------------------------------------


def spxx_table(md: MetaData, ts_type: Any = DateTime) -> Table:
    cols = [c for c in mappings.columns_of(mappings.load("exchange2009")["tables"][2]) if c not in ("XH", "TBSJ")]
    return Table("SPXX", md, Column("XH", Integer, primary_key=True, autoincrement=False), Column("TBSJ", ts_type),
                 *[Column(c, Text) for c in cols])


def test_mapping_and_registry_errors(node: Home) -> None:
    with pytest.raises(ConfigError, match="no field"):
        mappings.load({"tables": [{"table": "x", "kind": "case.apply", "watermark": "w", "key": "k",
                                   "fields": {"nonsense": "c"}}]})
    with pytest.raises(ConfigError, match="not an installed adapter"):
        make_adapter("x", {"type": "ftp"}, node.dir)
    ad = make_adapter("d", {"type": "filedrop", "dir": "drop"}, node.dir)
    assert isinstance(ad, FileDropAdapter) and ad.dir == node.dir / "drop"


# ---- file drop ---------------------------------------------------------------------------------------------


def step_obj(i: int, **over: Any) -> dict[str, Any]:
    p = {"case_no": f"3203032025{i:08d}", "item_code": "320303-XK-001", "division": "320303", "dept": "320303-SJ",
         "time": "2025-10-09T10:00:00+08:00", "step_no": 1, "step_code": "SL", "step_name": "受理",
         "handler": "张三", "post": "窗口", "action": "pass", "started_at": "2025-10-09T09:30:00+08:00"}
    p.update(over)
    return p


def test_filedrop_csv_gb18030_and_jsonl_utf8_archived(node: Home, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    header = "kind,case_no,item_code,division,dept,time,step_no,step_code,step_name,handler,post,action,started_at\n"
    lines = [f"case.step,3203032025{i:08d},320303-XK-001,320303,320303-SJ,20251009100000,1,SL,受理,张三,窗口,通过,"
             "20251009093000\n" for i in range(1, 6)]
    (drop / "a.csv").write_bytes((header + "".join(lines)).encode("gb18030"))
    (drop / "b.jsonl").write_text("".join(json.dumps({"kind": "case.step", **step_obj(i)}, ensure_ascii=False) + "\n"
                                          for i in range(6, 9)), encoding="utf-8")
    (drop / "c.jsonl.tmp").write_text("not read\n")
    old = time.time() - 60
    os.utime(drop / "a.csv", (old, old))
    ad = FileDropAdapter("drop", {"dir": str(drop), "settle_seconds": 0}, node.dir)
    ledger = node.ledger()
    drain(ad, ledger, "drop")  # first sight of each file only records its size
    drain(ad, ledger, "drop")
    got = records_of(node)
    assert [p["case_no"] for _, p in got] == [f"3203032025{i:08d}" for i in range(1, 9)]
    assert got[0][1]["handler"] == "张三" and got[0][1]["action"] == "pass"
    assert not (drop / "a.csv").exists() and not (drop / "b.jsonl").exists() and (drop / "c.jsonl.tmp").exists()
    archived = sorted(p.name for p in (drop / "archive").rglob("*") if p.is_file())
    assert archived == ["a.csv", "b.jsonl"]
    assert load_cursor(ledger, "drop") is None


def test_filedrop_only_complete_files_and_resume(node: Home, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    f = drop / "x.jsonl"
    f.write_text("".join(json.dumps({"kind": "case.step", **step_obj(i)}) + "\n" for i in range(1, 4)))
    ad = FileDropAdapter("drop", {"dir": str(drop), "marker": True, "batch": 2}, node.dir)
    ledger = node.ledger()
    assert ad.poll(None) is None  # no x.jsonl.done yet: not complete
    with f.open("a") as fh:
        fh.write("".join(json.dumps({"kind": "case.step", **step_obj(i)}) + "\n" for i in range(4, 6)))
    (drop / "x.jsonl.done").touch()
    b = ad.poll(None)
    assert b is not None and len(b.rows) == 2
    commit(ledger, "drop", b.rows, cursor=b.cursor, write_cursor=True)
    # a restart: a new adapter continues from the committed byte offset
    ad2 = FileDropAdapter("drop", {"dir": str(drop), "marker": True, "batch": 2}, node.dir)
    drain(ad2, ledger, "drop")
    assert [p["case_no"] for _, p in records_of(node)] == [f"3203032025{i:08d}" for i in range(1, 6)]
    assert not f.exists() and not (drop / "x.jsonl.done").exists()

    # settle rule: a file is read only after its size and mtime stood still for settle_seconds
    ad3 = FileDropAdapter("drop", {"dir": str(drop), "settle_seconds": 0.3}, node.dir)
    g = drop / "y.jsonl"
    g.write_text(json.dumps({"kind": "case.step", **step_obj(9)}) + "\n")
    assert ad3.poll(None) is None
    assert ad3.poll(None) is None
    time.sleep(0.35)
    b = ad3.poll(None)
    assert b is not None and len(b.rows) == 1


def test_filedrop_unreadable_lines_quarantined_rest_arrives(node: Home, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    good = [json.dumps({"kind": "case.step", **step_obj(i)}, ensure_ascii=False).encode() for i in range(1, 5)]
    bad = [
        good[0][:40],  # truncated line
        json.dumps({"kind": "case.step", **step_obj(90, handler="李四")}, ensure_ascii=False).encode("gb18030"),
        json.dumps({"kind": "case.step", **step_obj(91, opinion="长" * 5000)}, ensure_ascii=False).encode(),
        b"[1, 2]",
    ]
    body = b"\n".join([good[0], bad[0], good[1], bad[1], good[2], bad[2], bad[3], good[3]]) + b"\n"
    (drop / "m.jsonl").write_bytes(body)
    ad = FileDropAdapter("drop", {"dir": str(drop), "marker": False, "settle_seconds": 0}, node.dir)
    drain(ad, node.ledger(), "drop")
    drain(ad, node.ledger(), "drop")
    assert len(records_of(node)) == 4
    q = quarantined(node)
    assert [r.position for r in q] == ["m.jsonl:2", "m.jsonl:4", "m.jsonl:6", "m.jsonl:7"]
    assert "not valid JSON" in q[0].reason
    assert "wrong encoding" in q[1].reason and bytes(q[1].raw) == bad[1]
    assert "'opinion'" in q[2].reason and "longer than the limit" in q[2].reason
    assert "not an object" in q[3].reason


# ---- the local push service -----------------------------------------------------------------------------


def test_push_service_token_accept_quarantine_redelivery(node: Home) -> None:
    from adapters import push
    from proto.fednode.v1 import fednode_pb2 as pb
    from proto.fednode.v1 import fednode_pb2_grpc as pbg

    ledger = node.ledger()
    token = push.ensure_token(node.dir / "push.token")
    assert oct((node.dir / "push.token").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="loopback"):
        push.check_listen("0.0.0.0:7451")
    counted: list[Any] = []

    async def main() -> None:
        run = push.commit_for(ledger)

        async def do_commit(source: str, prepared: list[Any]) -> Any:
            return run(source, prepared)

        from bench.demo import free_port

        listen = f"127.0.0.1:{free_port()}"
        server = push.make_server(listen, push.IngestServicer(token, do_commit, lambda o, p: counted.append(o)))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(listen) as ch:
                stub = pbg.IngestStub(ch)
                items = [pb.IngestItem(kind="case.step", payload=json.dumps(step_obj(i)).encode(),
                                       source_position=f"r{i}") for i in range(1, 4)]
                items.append(pb.IngestItem(kind="case.step", payload=json.dumps(step_obj(4, step_no=0)).encode(),
                                           source_position="r4"))
                items.append(pb.IngestItem(kind="case.step", payload=b"{\"case_no\": ", source_position="r5"))
                req = pb.IngestRequest(source="local-sys", items=items)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.Push(req, metadata=[("authorization", "Bearer wrong")])
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                reply = await stub.Push(req, metadata=[("authorization", f"Bearer {token}")])
                assert [r.accepted for r in reply.results] == [True, True, True, False, False]
                assert "'step_no'" in reply.results[3].error and "not valid JSON" in reply.results[4].error
                again = await stub.Push(pb.IngestRequest(source="local-sys", items=items[:3]),
                                        metadata=[("authorization", f"Bearer {token}")])
                assert all(r.accepted for r in again.results)
        finally:
            await server.stop(None)

    asyncio.run(main())
    assert len(records_of(node)) == 3
    q = quarantined(node)
    assert [(r.source, r.position) for r in q] == [("push:local-sys", "local-sys:r4"), ("push:local-sys", "local-sys:r5")]
    assert counted[1].duplicates == 3 and counted[1].accepted == 0


def test_natural_key_conflict_is_quarantined_not_dropped(node: Home) -> None:
    from adapters.base import SourceRow

    ledger = node.ledger()
    out = commit(ledger, "t", [SourceRow("t:1", "case.step", step_obj(1))])
    assert out.accepted == 1
    out = commit(ledger, "t", [SourceRow("t:1", "case.step", step_obj(1)),
                               SourceRow("t:2", "case.step", step_obj(1, handler="李四"))])
    assert (out.accepted, out.duplicates, out.quarantined) == (0, 1, 1)
    q = quarantined(node)
    assert "conflicts with the record already accepted" in q[0].reason
    assert natural_key("case.step", step_obj(1)) in q[0].reason


def test_ingest_command_quarantines_bad_rows(node: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.interfaces.cli.main import main

    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([json.dumps({"kind": "case.step", "payload": step_obj(1)}),
                            json.dumps({"kind": "case.step", "payload": step_obj(2, time="2025-02-30 10:00")}),
                            json.dumps({"kind": "case.nope", **step_obj(3)}),
                            json.dumps({"kind": "case.step", **step_obj(4)})]) + "\n")
    node.close()
    assert main(["ingest", str(node.dir), str(f), "--json"]) == 1  # rows quarantined: the command found a problem
    out = json.loads(capsys.readouterr().out)
    assert (out["ingested"], out["quarantined"]) == (2, 2)
    assert [q["position"] for q in out["quarantine"]] == [f"{f}:2", f"{f}:3"]
    assert "'time'" in out["quarantine"][0]["reason"] and "unknown record kind" in out["quarantine"][1]["reason"]
    with node.store().read() as conn:
        n = conn.execute(select(func.count()).select_from(schema.records)
                         .where(schema.records.c.channel == BULK)).scalar_one()
    assert n == 2


def test_counters_for_status() -> None:
    # the counters dict is what `fednode status` shows under "adapters"
    from adapters.base import Counters, Outcome

    c = Counters()
    c.count(Outcome(read=3, accepted=2, quarantined=1), "x.csv line 3")
    c.error("boom")
    d = c.__dict__
    assert (d["read"], d["accepted"], d["quarantined"], d["last_error"]) == (3, 2, 1, "boom")
    assert d["position"] == "x.csv line 3" and d["last_error_us"] > 0


def test_commit_dedupe_quarantine_cursor_on_both_stores(tmp_path: Path, store_url: str) -> None:
    from adapters.base import SourceRow

    h = enrol.init(tmp_path / "n", code="320000", name="江苏省", level="province", db=store_url)
    enrol.init_root(h)
    try:
        ledger = h.ledger()
        rows = [SourceRow(f"t:{i}", "case.step", step_obj(i)) for i in range(1, 6)]
        rows.append(SourceRow("t:6", "case.step", step_obj(6, step_no="x")))
        out = commit(ledger, "t", rows, cursor={"at": 6}, write_cursor=True)
        assert (out.accepted, out.quarantined) == (5, 1)
        out = commit(ledger, "t", rows[:5], cursor={"at": 5}, write_cursor=True)
        assert (out.accepted, out.duplicates) == (0, 5)
        assert load_cursor(ledger, "t") == {"at": 5}
        assert len(records_of(h)) == 5 and len(quarantined(h)) == 1
    finally:
        h.close()


def test_service_keeps_running_through_source_errors(node: Home) -> None:
    """An injected fault: the source fails on the first poll; the service counts it, backs off, retries,
    and then commits every row once, with its cursor."""
    from adapters.base import Counters, SourceRow
    from node.runtime.process import NodeRuntime
    from node.runtime.services.adapters import AdapterService

    class Flaky:
        name, interval, prefetch = "flaky", 0.05, True

        def __init__(self) -> None:
            self.calls = 0

        def poll(self, cursor: Any) -> Batch | None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("source down")
            i = (cursor or {}).get("i", 0)
            if i >= 6:
                return None
            return Batch([SourceRow(f"f:{i + k}", "case.step", step_obj(500 + i + k)) for k in (1, 2)], {"i": i + 2})

        def after_commit(self, batch: Batch) -> None:
            pass

        def describe(self, cursor: Any) -> str:
            return json.dumps(cursor)

        def close(self) -> None:
            pass

    async def main() -> Counters:
        rt = NodeRuntime(node)
        rt.recovered.set()
        svc = AdapterService(rt)
        c = svc.counters["flaky"] = Counters()
        flaky = Flaky()
        task = asyncio.create_task(svc._run("flaky", flaky, c))
        deadline = time.monotonic() + 60
        while c.accepted < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert c.accepted == 6, (c.__dict__, flaky.calls, task)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert svc.status() == {"flaky": {"type": "", **c.__dict__}}
        rt._executor.shutdown(wait=True)
        return c

    c = asyncio.run(main())
    assert c.last_error == "RuntimeError: source down" and c.state == "ok"
    assert (c.read, c.accepted, c.batches) == (6, 6, 3)
    assert load_cursor(node.ledger(), "flaky") == {"i": 6}
    assert len(records_of(node)) == 6


def test_row_mapper_gives_what_apply_gives() -> None:
    # the SQL poll adapter maps tuples with a mapper built once per table; apply (dict rows) is the reference
    sbxx = {"table": "SBXX", "kind": "case.apply", "watermark": "TBSJ", "key": "XH",
            "fields": {"case_no": "SBLSH", "division": {"value": "320303"}, "dept": "BMDM",
                       "materials": {"column": "SBCL", "split": ";"}, "channel_code": {"column": "SBQD", "map": {"窗口": "1"}},
                       "amount": {"column": "JE", "json": True}}}  # fmt: skip
    tables = [*mappings.load("exchange2009")["tables"], *mappings.load("gbt39046")["tables"], sbxx]
    for tm in tables:
        cols = mappings.columns_of(tm)
        mapper = mappings.row_mapper(tm)
        for n in range(4):
            values = [None if (i + n) % 3 == 0 else f"v{i}" for i in range(len(cols))]
            for col, value in (("SBCL", "申请书; 营业执照 ;"), ("SBQD", " 窗口 " if n % 2 else "网上"),
                               ("JE", "12.5" if n % 2 else "{bad")):
                if col in cols:
                    values[cols.index(col)] = value
            assert mapper(tuple(values)) == mappings.apply(tm, dict(zip(cols, values, strict=True))), (tm["table"], n)


def test_accepted_carries_what_the_commit_needs() -> None:
    from adapters.base import Accepted, SourceRow, key_meta, prepare
    from node.core.domain import validate
    from node.core.records import encode_payload

    raw = {**step_obj(7), "step_no": " 2 ", "handler": " 张三 "}
    [p] = prepare([SourceRow("t:7", "case.step", raw)])
    assert isinstance(p, Accepted)
    payload = validate("case.step", raw)
    assert p.payload == payload and p.body == encode_payload(payload)
    assert p.key == natural_key("case.step", payload) and p.meta == key_meta(p.key)
    assert p.digest == __import__("hashlib").sha256(p.body).hexdigest()[:32]


def test_many_keys_duplicates_and_conflicts_on_both_stores(tmp_path: Path, store_url: str) -> None:
    # more keys than one SQLite IN list holds (900), a re-delivery, and a changed row, on either store
    from adapters.base import SourceRow

    h = enrol.init(tmp_path / "n", code="320000", name="江苏省", level="province", db=store_url)
    enrol.init_root(h)
    try:
        ledger = h.ledger()
        rows = [SourceRow(f"t:{i}", "case.step", step_obj(i)) for i in range(1, 2001)]
        assert commit(ledger, "t", rows).accepted == 2000
        changed = SourceRow("t:5", "case.step", step_obj(5, handler="李四"))
        out = commit(ledger, "t", [*rows, changed, SourceRow("t:2001", "case.step", step_obj(2001))])
        assert (out.accepted, out.duplicates, out.quarantined) == (1, 2000, 1)
        q = quarantined(h)
        assert [r.position for r in q] == ["t:5"]
        assert q[0].reason.startswith(f"natural key {natural_key('case.step', step_obj(5))} conflicts with the record")
        assert json.loads(q[0].raw)["payload"]["handler"] == "李四"
        assert len(records_of(h)) == 2001
    finally:
        h.close()


# ---- the child process that reads SQL sources beside the store thread --------------------------------------


def _sqlite_source(tmp_path: Path, n: int) -> str:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    eng = create_engine(url)
    md = MetaData()
    spxx = spxx_table(md)
    md.create_all(eng)
    rows = [spxx_row(i, T0 + dt.timedelta(seconds=i // 7)) for i in range(1, n + 1)]
    if n > 3:
        rows[3]["XZQHDM"] = "32030"  # a bad row: its Rejected (with its source row) crosses the process boundary
    with eng.begin() as c:
        c.execute(spxx.insert(), rows)
    eng.dispose()
    return url


def test_process_reader_reads_what_the_adapter_reads(node: Home, tmp_path: Path) -> None:
    from adapters.base import Rejected, prepare
    from adapters.reader import ProcessReader

    section = {"type": "sql_poll", "url": _sqlite_source(tmp_path, 23), "mapping": "exchange2009", "only": ["SPXX"],
               "batch": 5}
    local = SqlPollAdapter("ex", section, node.dir)
    reader = ProcessReader("ex", section, node.dir)
    try:
        assert reader.start().result(60) != os.getpid()
        cursor: Any = None
        batches = 0
        while True:
            batch, prepared = reader.read(cursor).result(60)
            want = local.poll(cursor)
            if want is None:
                assert batch is None and prepared is None
                break
            assert batch.cursor == want.cursor and batch.rows == []
            assert prepared == prepare(want.rows)
            assert any(isinstance(p, Rejected) and p.raw for p in prepared) == (batches == 0)
            cursor, batches = batch.cursor, batches + 1
        assert batches == 5
    finally:
        reader.close()
        local.close()


def test_process_reader_replaces_a_dead_child_and_reports_adapter_errors(node: Home, tmp_path: Path) -> None:
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from adapters.reader import ProcessReader

    section = {"type": "sql_poll", "url": _sqlite_source(tmp_path, 12), "mapping": "exchange2009", "only": ["SPXX"],
               "batch": 5}
    reader = ProcessReader("ex", section, node.dir)
    try:
        pid = reader.start().result(60)
        first, _ = reader.read(None).result(60)
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):  # the node's service retries the same way (error counted, backoff, read again)
            try:
                again, _ = reader.read(None).result(60)
                break
            except BrokenProcessPool:
                time.sleep(0.1)
        else:
            raise AssertionError("the reader never recovered")
        assert again.cursor == first.cursor and reader.start().result(60) != pid
    finally:
        reader.close()
    bad = ProcessReader("ex", {**section, "mapping": "no-such-mapping"}, node.dir)
    try:
        with pytest.raises(ConfigError, match="no-such-mapping"):  # the adapter's own error, not a broken pool
            bad.start().result(60)
    finally:
        bad.close()


def test_process_reader_child_exits_with_its_parent(node: Home, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    section = {"type": "sql_poll", "url": _sqlite_source(tmp_path, 3), "mapping": "exchange2009", "only": ["SPXX"]}
    script = ("import json, sys, time\nfrom pathlib import Path\nfrom adapters.reader import ProcessReader\n"
              "r = ProcessReader('ex', json.loads(sys.argv[1]), Path(sys.argv[2]))\n"
              "print(r.start().result(60), flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, json.dumps(section), str(node.dir)],
                              stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
        parent.send_signal(signal.SIGKILL)  # the parent only: no cleanup runs, the child is orphaned
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"reader child {child} outlived its killed parent")
    finally:
        parent.kill()


def test_reader_setting(node: Home, tmp_path: Path) -> None:
    from adapters.reader import reads_in_process

    sql = SqlPollAdapter("ex", {"url": f"sqlite:///{tmp_path / 'x.db'}", "mapping": "exchange2009"}, node.dir)
    files = FileDropAdapter("f", {"dir": str(tmp_path)}, node.dir)
    assert reads_in_process("ex", {}, sql) and reads_in_process("ex", {"reader": "process"}, sql)
    assert not reads_in_process("ex", {"reader": "thread"}, sql)
    assert not reads_in_process("f", {}, files)  # only prefetch adapters: their poll only reads
    with pytest.raises(ConfigError, match="reader = 'fork'"):
        reads_in_process("ex", {"reader": "fork"}, sql)
    sql.close()


def test_service_reads_sql_sources_in_a_child_process(node: Home, tmp_path: Path) -> None:
    from node.runtime.process import NodeRuntime
    from node.runtime.services.adapters import AdapterService

    url = _sqlite_source(tmp_path, 40)
    with (node.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[adapters.ex]\ntype = "sql_poll"\nurl = "{url}"\nmapping = "exchange2009"\nonly = ["SPXX"]\n'
                'batch = 7\ninterval = 0.05\n')
    home = Home(node.dir)

    async def main() -> dict[str, Any]:
        rt = NodeRuntime(home)
        rt.recovered.set()
        svc = AdapterService(rt)
        await svc.start()
        assert set(svc.readers) == {"ex"}
        c = svc.counters["ex"]
        deadline = time.monotonic() + 60
        while c.read < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await svc.stop()
        rt._executor.shutdown(wait=True)
        return dict(c.__dict__)

    try:
        c = asyncio.run(main())
        assert (c["read"], c["accepted"], c["quarantined"], c["last_error"]) == (40, 39, 1, ""), c
        assert len(records_of(home)) == 39 and [q.position for q in quarantined(home)] == ["SPXX:XH=4"]
        assert load_cursor(home.ledger(), "ex")["SPXX"]["k"] == ["int", 40]
    finally:
        home.close()


def test_prepared_rows_cross_the_process_boundary_in_order() -> None:
    import pickle

    from adapters.base import SourceRow, prepare
    from adapters.reader import _pack, _unpack

    good = [SourceRow(f"t:{i}", "case.step", step_obj(i)) for i in range(6)]
    bad = [SourceRow(f"b:{i}", "case.step", step_obj(i, division="x")) for i in range(3)]
    for rows in ([], good, bad, [bad[0], *good[:2], bad[1], good[2], bad[2]], [*good, bad[0]]):
        prepared = prepare(rows)
        assert _unpack(pickle.loads(pickle.dumps(_pack(prepared)))) == prepared
