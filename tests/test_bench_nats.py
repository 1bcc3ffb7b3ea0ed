"""`fednode bench --only nats` and `--only shaped` (issue 26) at a tiny scale, through the harness.

Not timed tests: they check that both benchmarks run end to end and give the rows the report reads
(values, ratios against NATS, bytes per record), and that the shaped link is shaped. The NATS one
skips without Debian's nats-server (or nats-py) unless FEDNODE_REQUIRE_NATS=1.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest

from bench import bench_nats, bench_shaped, harness

REQUIRE_NATS = os.environ.get("FEDNODE_REQUIRE_NATS") == "1"


def _nats_missing() -> str | None:
    if bench_nats.nats_server_binary() is None:
        return "nats-server is not installed (apt-get install nats-server)"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (the dev extra)"
    return None


def _rows(only: str, scale: float) -> dict[str, dict[str, Any]]:
    rows = harness.run(only, scale, progress=False)
    for r in rows:
        assert "FAILED" not in str(r["reference"]), r
        assert r["group"] == only
    return {r["name"]: r for r in rows}


@pytest.mark.slow
def test_nats_bench_gives_fednode_as_ratios_to_nats() -> None:
    missing = _nats_missing()
    if missing:
        if REQUIRE_NATS:
            pytest.fail(f"FEDNODE_REQUIRE_NATS=1 but {missing}")
        pytest.skip(missing)
    rows = _rows("nats", 0.01)
    for phase in ("live e2e county→city→province", "catch-up drain through 3 tiers"):
        ref, fed = rows[f"NATS {phase}"], rows[f"fednode {phase}"]
        assert ref["ok"], ref  # NATS moved every message to the province
        assert ref["value"] > 0 and fed["value"] > 0
        assert fed["ratio"] == pytest.approx(fed["value"] / ref["value"], rel=0.01)
        assert "city had all at" in fed["reference"] and "city had all at" in ref["reference"]
    for name in ("CPU per record, catch-up, 3 tiers", "CPU per record, live incl. publisher", "peak RSS, 3 tiers"):
        assert rows[name]["value"] > 0 and rows[name]["ratio"] > 0, rows[name]
    size = rows["record size (fednode bulk: body + chain)"]
    assert 300 <= size["value"] <= 500, size  # the same ~400-byte records on both sides


def test_nats_bench_skips_without_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_nats, "NATS_SERVER_PATHS", ("/nonexistent/nats-server",))
    rows = _rows("nats", 0.01)
    (row,) = rows.values()
    assert row["ok"] and row["skipped"] and "nats-server not found" in row["reference"]


def test_shaped_proxy_limits_rate_and_delays() -> None:
    """1 MB through the proxy at 20 Mbit/s takes >= 0.4 s, and the first byte >= 40 ms; unshaped, far less."""
    def through(mbit_s: float | None, delay_ms: float) -> tuple[float, float, int]:
        srv = socket.create_server(("127.0.0.1", 0))
        got: list[tuple[int, float]] = []

        def sink() -> None:
            conn, _ = srv.accept()
            n, first = 0, 0.0
            while data := conn.recv(1 << 16):
                first = first or time.perf_counter()
                n += len(data)
            got.append((n, first))
            conn.close()

        th = threading.Thread(target=sink, daemon=True)
        th.start()
        with bench_shaped.ShapedProxy(srv.getsockname()[1], mbit_s, delay_ms) as proxy, \
                socket.create_connection(("127.0.0.1", proxy.port)) as c:
            t0 = time.perf_counter()
            c.sendall(b"x" * 1_000_000)
            c.shutdown(socket.SHUT_WR)
            th.join(30)
            elapsed = time.perf_counter() - t0
            forwarded = proxy.bytes_up
        srv.close()
        n, first = got[0]
        assert n == forwarded == 1_000_000
        return elapsed, first - t0, forwarded

    elapsed, first, _ = through(20.0, 40.0)
    assert first >= 0.04
    assert elapsed >= 0.4 * 0.98  # 8 Mbit at 20 Mbit/s
    plain, _, _ = through(None, 0.0)
    assert plain < elapsed / 2


@pytest.mark.slow
def test_shaped_bench_rate_and_bytes_per_record() -> None:
    rows = _rows("shaped", 0.04)
    rate = rows["shaped drain county→city, no compression"]
    wire = rows["wire bytes per record county→city, no compression"]
    assert rate["ok"] and wire["ok"], (rate, wire)
    assert 50 <= wire["value"] <= 2000, wire
    # the shaping held: what crossed in the timed window fits in 20 Mbit/s (and the link was used)
    mbit = rate["value"] * wire["value"] * 8 / 1e6
    assert 2 < mbit <= bench_shaped.MBIT_S * 1.1, (rate, wire)
    assert 0 < rate["ratio"] <= 1.1
    # zstd negotiated in Hello: a quarter of the bytes or less, and the same link drains faster for it
    zrate = rows["shaped drain county→city, zstd"]
    zwire = rows["wire bytes per record county→city, zstd"]
    assert zwire["ok"] and zwire["ratio"] <= 0.25, zwire
    assert zrate["value"] > rate["value"], (zrate, rate)
    zmbit = zrate["value"] * zwire["value"] * 8 / 1e6
    assert zmbit <= bench_shaped.MBIT_S * 1.1, (zrate, zwire)
