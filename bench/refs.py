"""Reference figures measured in the same run as the benchmarks, so ratios mean something on a shared,
noisy machine: raw Ed25519, raw SQLite and PostgreSQL inserts, a raw gRPC batch stream over TLS."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from typing import Any

from node.core.crypto import Signer


def ed25519(n: int = 20_000) -> dict[str, float]:
    s = Signer.generate()
    msg = os.urandom(200)
    t0 = time.perf_counter()
    sigs = [s.sign(b"x", msg) for _ in range(n)]
    sign = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for sig in sigs:
        s.public.verify(sig, b"DSSEv1 1 x 200 " + msg)  # the PAE form Signer.sign signed; raises if not
    return {"sign_per_s": sign, "verify_per_s": n / (time.perf_counter() - t0)}


def _rows(n: int) -> list[tuple[Any, ...]]:
    body = os.urandom(500)
    return [("320303", 3, i, "case.step", "", 0, body, b"", b"", os.urandom(32), 0, i) for i in range(1, n + 1)]


_DDL = ("CREATE TABLE raw_records (origin VARCHAR(64), channel SMALLINT, seq BIGINT, kind VARCHAR(64), "
        "dest VARCHAR(64), time_us BIGINT, body {blob}, signature {blob}, key_id {blob}, chain {blob}, "
        "stored_us BIGINT, local_seq BIGINT, PRIMARY KEY (origin, channel, seq))")


def sqlite_insert(n: int = 100_000) -> float:
    """Raw sqlite3 executemany, WAL, commit per 1000 rows: the ceiling for our SQLite store."""
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(f"{d}/raw.db", isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute(_DDL.format(blob="BLOB"))
        rows = _rows(n)
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO raw_records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows[i : i + 1000])
            c.execute("COMMIT")
        rate = n / (time.perf_counter() - t0)
        c.close()
        return rate


def pg_insert(url: str, n: int = 50_000) -> float | None:
    """Raw psycopg executemany into a scratch table of the given database, commit per 1000 rows."""
    try:
        import psycopg
    except ImportError:
        return None
    try:
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3)
    except Exception:
        return None
    with conn:
        conn.execute("DROP TABLE IF EXISTS raw_records")
        conn.execute(_DDL.format(blob="BYTEA"))
        conn.commit()
        rows = _rows(n)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(0, n, 1000):
                cur.executemany("INSERT INTO raw_records VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows[i : i + 1000])
                conn.commit()
        rate = n / (time.perf_counter() - t0)
        conn.execute("DROP TABLE raw_records")
        conn.commit()
    return rate


def grpc_stream(n: int = 200_000, per_batch: int = 1000) -> float:
    """Records/s through a raw grpc.aio bidirectional stream of Batch messages over loopback TLS,
    acked per batch, window 4: what the link could do if storing cost nothing."""
    from bench.demo import build_tree, free_port
    from node.core.home import Home

    async def main(base: str) -> float:
        import grpc

        from node.link import transport
        from proto.fednode.v1 import fednode_pb2 as pb
        from proto.fednode.v1 import fednode_pb2_grpc as pbg

        homes = build_tree(__import__("pathlib").Path(base), [("320000", "p", "province", None),
                                                              ("320300", "c", "city", "320000")])
        parent, child = Home(homes["320000"].dir), Home(homes["320300"].dir)
        port = free_port()

        class Echo(pbg.FederationServicer):
            async def Link(self, it: Any, context: Any) -> None:  # noqa: N802
                async for msg in it:
                    await context.write(pb.LinkMessage(ack=pb.Ack(batch_id=msg.batch.batch_id, ok=True)))

        class _Rt:
            def __init__(self, home: Home) -> None:
                self.home = home

        server = grpc.aio.server(options=transport.SERVER_OPTIONS)
        pbg.add_FederationServicer_to_server(Echo(), server)
        server.add_secure_port(f"127.0.0.1:{port}", transport.server_credentials(_Rt(parent)))  # type: ignore[arg-type]
        await server.start()
        body = os.urandom(500)
        batch = pb.Batch(segments=[pb.Segment(origin="320300", channel=3,  # type: ignore[arg-type]
                                              records=[pb.SignedRecord(body=body) for _ in range(per_batch)])])
        options = [*transport.CLIENT_OPTIONS, ("grpc.ssl_target_name_override", "320000.fednode")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", transport.channel_credentials(_Rt(child)),  # type: ignore[arg-type]
                                           options=options) as ch:
            call = pbg.FederationStub(ch).Link()
            sem = asyncio.Semaphore(4)
            batches = n // per_batch

            async def reader() -> None:
                for _ in range(batches):
                    await call.read()
                    sem.release()

            t0 = time.perf_counter()
            r = asyncio.create_task(reader())
            for i in range(batches):
                await sem.acquire()
                batch.batch_id = i + 1
                await call.write(pb.LinkMessage(batch=batch))
            await r
            rate = batches * per_batch / (time.perf_counter() - t0)
            await call.done_writing()
        await server.stop(None)
        parent.close()
        child.close()
        return rate

    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(main(d))
