"""Drain over a county's WAN link: 20 Mbit/s, 40 ms one way (issue 26: the baseline for compression).

A county's link on the 电子政务外网 is 10–20 Mbit/s. This kernel has no ``tc netem``, so the link is a
TCP proxy in this process (``ShapedProxy``, the shaping tests/faultlib.py's ``TcpProxy`` lacks): each
direction is a delay line behind a serialiser: a chunk leaves the serialiser ``len × 8 / rate``
seconds after the one before it and is delivered ``delay`` later; when more than ``queue_ms`` of
data waits to be serialised the proxy stops reading, so TCP's own flow control pushes back on the
sender, as a full router queue would.

Tree: province ← city ← county (the province is not started: the drain is to the city), mutual TLS,
SQLite, links only (no rules: every byte on the wire is the backlog's). The county's backlog is
written before it starts; its parent address is the proxy's; the drain is timed from its uplink
being connected until the city holds every record. Figures:

- records/s over the shaped link, beside the link's ceiling in records/s at the measured bytes per
  record (the ratio is the link's utilisation) and the same drain through an unshaped proxy in the
  same run;
- bytes per record on the wire, county → city (every byte the proxy forwarded that way over the
  whole connection: TLS, HTTP/2, gRPC, the batches), beside the record's stored size (body + chain).

Each figure twice in the same run: with the links' compression (``[link] compression = "zstd"``, the
default, negotiated in Hello) and without it (``"none"`` at both ends, the reference), as ratios.

Run: ``fednode bench --only shaped`` (100k records); ``--scale 0.1`` for a quick look.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import demo
from bench.bench_nats import held, record_bytes, wait_held
from bench.harness import CHAIN, _wait_uplink_connected, preload
from node.core import config

CITY, COUNTY = CHAIN[1][0], CHAIN[2][0]
RECORDS = 100_000
MBIT_S = 20.0
DELAY_MS = 40.0


class ShapedProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``target_port``, each direction shaped to ``mbit_s`` (None: not
    limited) with ``delay_ms`` one-way delay. ``bytes_up`` (client → target) and ``bytes_down`` count
    what was forwarded. A context manager; its event loop runs in a thread of its own.

    (tests/faultlib.py's TcpProxy cuts and delays but does not limit the rate, and bench/ cannot import
    tests/: ``fednode bench`` runs from the installed package.)"""

    READ = 16 * 1024

    def __init__(self, target_port: int, mbit_s: float | None = MBIT_S, delay_ms: float = DELAY_MS,
                 queue_ms: float = 100.0) -> None:
        self.target_port = target_port
        self.rate = mbit_s * 1e6 / 8 if mbit_s else None  # bytes/s
        self.delay = delay_ms / 1000
        self.queue = queue_ms / 1000
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shaped-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[Any]] = set()

    def __enter__(self) -> ShapedProxy:
        self._thread.start()
        listen = asyncio.start_server(self._connection, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(listen, self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._open):
                t.cancel()
            await asyncio.gather(*self._open, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._open.add(me)
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._open.discard(me)
            return
        self.connections += 1
        ways = [asyncio.ensure_future(self._direction(reader, uwriter, up=True)),
                asyncio.ensure_future(self._direction(ureader, writer, up=False))]
        try:
            await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(me)
            for t in ways:
                t.cancel()
            await asyncio.gather(*ways, return_exceptions=True)
            for w in (writer, uwriter):
                w.transport.abort()

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        """Serialiser then delay line: (due time, chunk) pairs from the reading side to the writing side."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await line.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        out = asyncio.ensure_future(deliver())
        try:
            with contextlib.suppress(OSError):
                free_at = loop.time()  # when the serialiser is done with what it was given
                while data := await reader.read(self.READ):
                    now = loop.time()
                    free_at = max(now, free_at) + (len(data) / self.rate if self.rate else 0.0)
                    line.put_nowait((free_at + self.delay, data))
                    if (backlog := free_at - now) > self.queue:
                        await asyncio.sleep(backlog - self.queue)  # the queue is full: stop reading
            line.put_nowait(None)
            await out
        finally:
            out.cancel()


def drain_via_proxy(base: Path, records: int, mbit_s: float | None, delay_ms: float,
                    compression: str = "zstd") -> dict[str, Any]:
    """County backlog → city through a proxy; timed from the county's uplink connected."""
    homes = demo.build_tree(base, CHAIN, extra_config=demo.LINKS_ONLY)
    for code in (CITY, COUNTY):
        config.set_field(homes[code].config.path, "link", "compression", compression)
    preload(homes[COUNTY].dir, records, 5)
    want = demo.leaf_heads(homes, [COUNTY])
    total = sum(want.values())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    city_port = int(homes[CITY].config.listen.rsplit(":", 1)[1])
    with ShapedProxy(city_port, mbit_s, delay_ms) as proxy:
        config.set_field(homes[COUNTY].config.path, "link", "parent", f"127.0.0.1:{proxy.port}")
        try:
            procs[CITY] = demo.start(homes[CITY].dir)
            demo.wait_admin(homes[CITY], timeout=60)
            procs[COUNTY] = demo.start(homes[COUNTY].dir)
            demo.wait_admin(homes[COUNTY], timeout=60)
            _wait_uplink_connected(homes[COUNTY], timeout=60)
            t0 = time.perf_counter()
            held0 = held(homes[CITY], want)  # what crossed before the clock started
            ok, _ = wait_held(homes[CITY], want, timeout=max(120.0, records / 200))
            elapsed = time.perf_counter() - t0
            up, down = proxy.bytes_up, proxy.bytes_down
        finally:
            demo.stop_all(procs)
    return {"ok": ok, "records": total, "elapsed_s": elapsed, "rate": (total - held0) / elapsed, "bytes_up": up,
            "bytes_down": down, "bytes_per_record": up / max(total, 1), "record_bytes": record_bytes(homes[COUNTY]),
            "connections": proxy.connections}


def rows_for(shaped: dict[str, Any], plain: dict[str, Any], label: str = "",
             ref: tuple[dict[str, Any], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows of one compression setting; with ``ref`` (the same drains without compression, same run) the
    ratios are to it, else to the link's ceiling and to the stored record."""
    ceiling = MBIT_S * 1e6 / 8 / shaped["bytes_per_record"]
    used = shaped["bytes_up"] * 8 / shaped["elapsed_s"] / 1e6
    link = f"{MBIT_S:g} Mbit/s, {DELAY_MS:g} ms"
    rate_ref = f"; without compression {ref[0]['rate']:,.0f}/s (unshaped {ref[1]['rate']:,.0f}/s)" if ref else ""
    bytes_ref = f"; without compression {ref[0]['bytes_per_record']:.1f} B" if ref else ""
    return [
        {"name": f"shaped drain county→city{label}", "value": round(shaped["rate"]),
         "unit": "records/s", "target": ">= 3× without compression" if ref else "baseline",
         "reference": f"{link}: {shaped['records']} records in {shaped['elapsed_s']:.1f} s, {used:.1f} Mbit/s on the wire; "
                      f"link ceiling {ceiling:,.0f}/s at these bytes/record; unshaped proxy {plain['rate']:,.0f}/s"
                      + rate_ref,
         "ratio": round(shaped["rate"] / ref[0]["rate"], 3) if ref else round(shaped["rate"] / ceiling, 3),
         "ok": shaped["ok"] and plain["ok"] and (ref is None or shaped["rate"] >= 3 * ref[0]["rate"])},
        {"name": f"wire bytes per record county→city{label}", "value": round(shaped["bytes_per_record"], 1),
         "unit": "bytes", "target": "<= 0.25× without compression" if ref else "baseline",
         "reference": f"{shaped['bytes_up']:,} B up, {shaped['bytes_down']:,} B down for {shaped['records']} records "
                      f"({shaped['connections']} connection(s)); stored record (body + chain) "
                      f"{shaped['record_bytes']:.0f} B" + bytes_ref,
         "ratio": round(shaped["bytes_per_record"] / (ref[0]["bytes_per_record"] if ref else shaped["record_bytes"]), 3),
         "ok": shaped["ok"] and (ref is None or shaped["bytes_per_record"] <= 0.25 * ref[0]["bytes_per_record"])},
    ]


def run(scale: float = 1.0) -> list[dict[str, Any]]:
    records = max(4000, int(RECORDS * scale))
    base = Path(tempfile.mkdtemp(prefix="fednode-shaped-"))
    try:
        off = (drain_via_proxy(base / "shaped-off", records, MBIT_S, DELAY_MS, "none"),
               drain_via_proxy(base / "plain-off", records, None, 0.0, "none"))
        on = (drain_via_proxy(base / "shaped-zstd", records, MBIT_S, DELAY_MS, "zstd"),
              drain_via_proxy(base / "plain-zstd", records, None, 0.0, "zstd"))
        return [*rows_for(*off, label=", no compression"), *rows_for(*on, label=", zstd", ref=off)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import sys

    from bench.harness import print_table

    print(print_table(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)))
