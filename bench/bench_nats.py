"""fednode beside NATS JetStream, three tiers each, in one run (issue 26; the peer: ../shared/peers/nats/).

NATS: three ``nats-server`` processes (Debian's), JetStream with file storage in a temp dir, as county,
city and province: the county a leafnode of the city, the city a leafnode of the province, each upper
stream sourcing the one below through the lower server's JetStream domain (``$JS.<domain>.API``); no
TLS, no signing. Ports are chosen free, the configurations are generated in the shape of the peer's.
fednode: province ← city ← county, three ``fednode run`` processes, mutual TLS on loopback, SQLite,
every service on as deployed.

Both carry the same synthetic case events (adapters/synthetic.py, same count; a NATS message is the
event's JSON padded to ``MESSAGE_BYTES``, about a fednode bulk record's stored size, body + chain).

- live end to end: publish N at the county until the province holds all N. NATS: the Python client
  (nats-py) publishes asynchronously, 1,000 acks in flight, generating the events as it goes; fednode:
  the county's admin ``ingest`` of N synthetic events (generation, signing, chaining in the node);
- catch-up drain of a backlog: NATS as the peer's ndrain.py: the backlog is published at the county
  while no upper stream exists, then the city's and the province's sourcing streams are created and
  the drain is timed from there; fednode: the city is stopped, the backlog is ingested at the running
  county (its rules read it), the county stops; the city starts, then the county, and the drain is
  timed from the county's uplink being connected (also reported: from the county's process start).

Besides the rates: CPU seconds per record of the three server processes (utime + stime; with the
publisher for the live phase), which a shared machine does not dilute, and peak RSS. fednode's
figures are given as ratios to NATS's. Without ``nats-server`` (``apt-get install nats-server``) or
nats-py the benchmark says so and skips.

Run: ``fednode bench --only nats`` (300k backlog, 200k live); ``--scale 0.1`` for a quick look.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import demo
from bench.harness import CHAIN, _cpu_s, _rss_peak_mb, _wait_rules_caught_up, _wait_uplink_connected
from node.core import admin_client as admin
from node.core.home import Home

PROVINCE, CITY, COUNTY = (code for code, *_ in CHAIN)
LIVE_RECORDS = 200_000
BACKLOG_RECORDS = 300_000
MESSAGE_BYTES = 400
PUBLISH_BATCH = 1000
TIERS = ("prov", "city", "county")  # NATS servers, top down; each has a JetStream domain of its name
STREAMS = {"county": "EV", "city": "EVC", "prov": "EVP"}
NATS_SERVER_PATHS = ("nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server")
TARGET_LIVE, TARGET_DRAIN = 1.0, 0.6  # fednode / NATS (issue 26)


def nats_server_binary() -> str | None:
    for name in NATS_SERVER_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


def skipped(why: str) -> list[dict[str, Any]]:
    return [{"name": "fednode vs NATS JetStream (3 tiers)", "value": None, "unit": "", "target": "-",
             "reference": f"skipped: {why}", "ratio": None, "ok": True, "skipped": True}]


# ---- the events both carry -----------------------------------------------------------------------------


def messages(n: int, seed: int) -> Iterator[bytes]:
    """The synthetic case events of ``fednode ingest --synthetic`` as NATS message payloads: the event's
    JSON padded with spaces to MESSAGE_BYTES (still JSON). Generated lazily: the publisher pays for it,
    as the county node does for its own ingest."""
    from node.app.ingest import synthetic_items
    from node.core.ledger import NewRecord

    for kind, payload in synthetic_items(COUNTY, n, seed):
        body = NewRecord(kind, payload).payload_bytes()
        yield body.ljust(MESSAGE_BYTES) if len(body) < MESSAGE_BYTES else body


# ---- three nats-server processes ------------------------------------------------------------------------


class NatsTree:
    """prov ← city ← county: three nats-server processes with JetStream (file storage under ``base``),
    leafnodes upward, a monitoring port each. A context manager: every server is stopped on exit."""

    def __init__(self, base: Path, binary: str) -> None:
        self.base = base
        self.binary = binary
        self.client = {t: demo.free_port() for t in TIERS}
        self.http = {t: demo.free_port() for t in TIERS}
        self.leaf = {t: demo.free_port() for t in TIERS[:-1]}  # prov and city accept leafnodes
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def conf(self, tier: str) -> str:
        i = TIERS.index(tier)
        leaf = []
        if tier in self.leaf:
            leaf.append(f"listen: 127.0.0.1:{self.leaf[tier]}")
        if i > 0:
            leaf.append(f'remotes: [ {{ url: "nats-leaf://127.0.0.1:{self.leaf[TIERS[i - 1]]}" }} ]')
        store = self.base / tier
        return (f"server_name: {tier}\nlisten: 127.0.0.1:{self.client[tier]}\nhttp: 127.0.0.1:{self.http[tier]}\n"
                f'jetstream {{ store_dir: "{store}", domain: {tier} }}\nleafnodes {{ {", ".join(leaf)} }}\n')

    def url(self, tier: str) -> str:
        return f"nats://127.0.0.1:{self.client[tier]}"

    def pids(self) -> dict[str, int]:
        return {t: p.pid for t, p in self.procs.items()}

    def _monitor(self, tier: str, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http[tier]}/{path}", timeout=2) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError):
            return None

    def _log_tail(self, tier: str) -> str:
        p = self.base / f"{tier}.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def __enter__(self) -> NatsTree:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            for tier in TIERS:
                conf = self.base / f"{tier}.conf"
                conf.write_text(self.conf(tier), encoding="utf-8")
                with open(self.base / f"{tier}.log", "ab") as log:
                    self.procs[tier] = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log,
                                                        start_new_session=True)
            # every server healthy with JetStream, and every leafnode connection up (city has two)
            want_leaves = {"prov": 1, "city": 2, "county": 1}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for tier, p in self.procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"nats-server {tier} exited {p.returncode}: {self._log_tail(tier)}")
                leafz = {t: (self._monitor(t, "leafz") or {}).get("leafnodes", 0) for t in TIERS}
                healthy = all((self._monitor(t, "healthz") or {}).get("status") == "ok" for t in TIERS)
                if healthy and all(leafz[t] >= n for t, n in want_leaves.items()):
                    return self
                time.sleep(0.1)
            raise TimeoutError(f"the NATS servers did not come up with their leafnodes: {leafz}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def _nats_phase(nt: NatsTree, n: int, seed: int, live: bool) -> dict[str, Any]:
    """One phase on fresh streams. live: the sourcing streams exist first, then the publisher runs and
    the clock runs from its first message; drain: the backlog is published first, then the sourcing
    streams are created and the clock runs from there."""
    import nats
    from nats.js.api import ExternalStream, StreamConfig, StreamSource

    conns = {t: await nats.connect(nt.url(t)) for t in TIERS}
    try:
        js = {t: c.jetstream() for t, c in conns.items()}
        for t in TIERS:
            with contextlib.suppress(Exception):
                await js[t].delete_stream(STREAMS[t])
        await js["county"].add_stream(StreamConfig(name=STREAMS["county"], subjects=["ev.>"]))

        async def connect_upward() -> None:
            for lower, upper in (("county", "city"), ("city", "prov")):
                src = StreamSource(name=STREAMS[lower], external=ExternalStream(api=f"$JS.{lower}.API"))
                await js[upper].add_stream(StreamConfig(name=STREAMS[upper], sources=[src]))

        async def publish() -> float:
            t0 = time.perf_counter()
            it = messages(n, seed)
            subject = f"ev.{COUNTY}"
            while True:
                futs = [await js["county"].publish_async(subject, m) for m in itertools.islice(it, PUBLISH_BATCH)]
                if not futs:
                    return time.perf_counter() - t0
                await asyncio.gather(*futs)

        if live:
            await connect_upward()
        pids = nt.pids()
        cpu0, own0 = {t: _cpu_s(p) for t, p in pids.items()}, time.process_time()
        t0 = time.perf_counter()
        pub_s = await publish()
        if not live:
            cpu0, own0 = {t: _cpu_s(p) for t, p in pids.items()}, time.process_time()
            t0 = time.perf_counter()
            await connect_upward()
        ok, city_at = False, None
        deadline = t0 + max(120.0, n / 2000)
        while time.perf_counter() < deadline:
            if city_at is None and (await js["city"].stream_info(STREAMS["city"])).state.messages >= n:
                city_at = time.perf_counter()
            if (await js["prov"].stream_info(STREAMS["prov"])).state.messages >= n:
                ok = True
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = {t: _cpu_s(p) - cpu0[t] for t, p in pids.items()}
        publisher_cpu = time.process_time() - own0
        stored = (await js["county"].stream_info(STREAMS["county"])).state
        return {"ok": ok, "records": n, "elapsed_s": elapsed, "rate": n / elapsed, "publish_rate": n / pub_s,
                "cpu_s": cpu, "publisher_cpu_s": publisher_cpu if live else 0.0,
                "message_bytes": stored.bytes / max(stored.messages, 1),
                "middle_s": (city_at or time.perf_counter()) - t0}
    finally:
        for c in conns.values():
            with contextlib.suppress(Exception):
                await c.close()


def nats_run(base: Path, binary: str, live_n: int, backlog_n: int) -> dict[str, Any]:
    with NatsTree(base / "nats", binary) as nt:
        live = asyncio.run(_nats_phase(nt, live_n, 21, live=True))
        drain = asyncio.run(_nats_phase(nt, backlog_n, 22, live=False))
        rss = {t: _rss_peak_mb(p) for t, p in nt.pids().items()}
    return {"live": live, "drain": drain, "rss_mb": rss}


# ---- the same with three fednode processes --------------------------------------------------------------


def held(root: Home, want: dict[tuple[str, int], int]) -> int:
    """How many of the records ``want`` names (log → head) ``root`` holds."""
    heads = demo.root_heads(root)
    return sum(min(heads.get(k, 0), v) for k, v in want.items())


def wait_held(root: Home, want: dict[tuple[str, int], int], timeout: float,
              middle: Home | None = None) -> tuple[bool, float | None]:
    """Wait until ``root`` holds every record ``want`` names; with ``middle`` (a tier on the way), also
    when (``time.perf_counter()``) that one held them all: where a hop's time goes."""
    total = sum(want.values())
    deadline = time.perf_counter() + timeout
    middle_at: float | None = None
    while time.perf_counter() < deadline:
        if middle is not None and middle_at is None and held(middle, want) >= total:
            middle_at = time.perf_counter()
        if held(root, want) >= total:
            return True, middle_at if middle is None or middle_at is not None else time.perf_counter()
        time.sleep(0.05)
    return False, middle_at


def _ingest(home: Home, n: int, seed: int) -> float:
    """The county's admin ``ingest`` of n synthetic events; the seconds it took."""
    t0 = time.perf_counter()
    r = admin.call(home, {"op": "ingest", "synthetic": n, "seed": seed}, timeout=1800)
    assert r is not None and int(r["result"]["ingested"]) == n, f"ingest at {home.code} failed: {r}"
    return time.perf_counter() - t0


def fednode_live(homes: dict[str, Home], procs: dict[str, subprocess.Popen[bytes]], n: int) -> dict[str, Any]:
    county, root = homes[COUNTY], homes[PROVINCE]
    _wait_uplink_connected(county, timeout=60)
    _wait_uplink_connected(homes[CITY], timeout=60)
    before = demo.leaf_heads(homes, [COUNTY])
    cpu0 = {c: _cpu_s(p.pid) for c, p in procs.items()}
    t0 = time.perf_counter()
    pub_s = _ingest(county, n, 11)
    want = demo.leaf_heads(homes, [COUNTY])  # the events, and any alert the county's rules wrote meanwhile
    ok, city_at = wait_held(root, want, timeout=max(120.0, n / 500), middle=homes[CITY])
    elapsed = time.perf_counter() - t0
    moved = sum(want.values()) - sum(before.values())
    return {"ok": ok, "records": moved, "events": n, "elapsed_s": elapsed, "rate": moved / elapsed,
            "publish_rate": n / pub_s, "cpu_s": {c: _cpu_s(p.pid) - cpu0[c] for c, p in procs.items()},
            "middle_s": None if city_at is None else city_at - t0}


def fednode_drain(homes: dict[str, Home], procs: dict[str, subprocess.Popen[bytes]], n: int) -> dict[str, Any]:
    county, root = homes[COUNTY], homes[PROVINCE]
    demo.stop_all({CITY: procs.pop(CITY)})
    _ingest(county, n, 12)  # the city is down: the backlog builds up at the running county
    rules_s = _wait_rules_caught_up(county, timeout=1800)
    demo.stop_all({COUNTY: procs.pop(COUNTY)})
    want = demo.leaf_heads(homes, [COUNTY])
    held0 = held(root, want)
    procs[CITY] = demo.start(homes[CITY].dir)
    demo.wait_admin(homes[CITY], timeout=60)
    _wait_uplink_connected(homes[CITY], timeout=60)
    t_start = time.perf_counter()
    procs[COUNTY] = demo.start(county.dir)
    demo.wait_admin(county, timeout=60)
    _wait_uplink_connected(county, timeout=60)
    cpu0 = {c: _cpu_s(p.pid) for c, p in procs.items()}
    t0 = time.perf_counter()
    at_t0 = held(root, want)  # what crossed while the uplink came up, before the clock started
    ok, city_at = wait_held(root, want, timeout=max(300.0, n / 500), middle=homes[CITY])
    t1 = time.perf_counter()
    moved = sum(want.values()) - held0
    clocked = sum(want.values()) - at_t0
    return {"ok": ok, "records": moved, "clocked": clocked, "elapsed_s": t1 - t0, "rate": clocked / (t1 - t0),
            "from_start_rate": moved / (t1 - t_start), "county_rules_s": rules_s,
            "cpu_s": {c: _cpu_s(p.pid) - cpu0[c] for c, p in procs.items()},
            "middle_s": None if city_at is None else city_at - t0}


def record_bytes(home: Home) -> float:
    """Mean stored size of the node's bulk records: body + chain (bulk records carry no signature)."""
    from sqlalchemy import func, select

    from node.core import schema
    from node.core.records import BULK
    from node.core.store import Store

    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        t = schema.records
        with store.read() as conn:
            q = select(func.avg(func.length(t.c.body) + func.length(t.c.chain))).where(t.c.channel == BULK)
            return float(conn.execute(q).scalar() or 0.0)
    finally:
        store.close()


def fednode_run(base: Path, live_n: int, backlog_n: int) -> dict[str, Any]:
    homes = demo.build_tree(base / "fednode", CHAIN)
    procs = {code: demo.start(homes[code].dir) for code, *_ in CHAIN}
    try:
        for code in procs:
            demo.wait_admin(homes[code], timeout=60)
        live = fednode_live(homes, procs, live_n)
        drain = fednode_drain(homes, procs, backlog_n)
        rss = {c: _rss_peak_mb(p.pid) for c, p in procs.items()}
    finally:
        demo.stop_all(procs)
    return {"live": live, "drain": drain, "rss_mb": rss, "record_bytes": record_bytes(homes[COUNTY])}


# ---- rows --------------------------------------------------------------------------------------------


def _us_per_record(phase: dict[str, Any], extra_s: float = 0.0) -> float:
    """CPU µs per record moved while the CPU was measured (``clocked``: the drain's clock started after
    the uplink came up, a few records may have crossed before)."""
    return (sum(phase["cpu_s"].values()) + extra_s) * 1e6 / max(phase.get("clocked", phase["records"]), 1)


def _hops(phase: dict[str, Any]) -> str:
    return f"city had all at {phase['middle_s']:.2f} s, province at {phase['elapsed_s']:.2f} s"


def rows_for(nats: dict[str, Any], fed: dict[str, Any]) -> list[dict[str, Any]]:
    nl, nd, fl, fd = nats["live"], nats["drain"], fed["live"], fed["drain"]
    live_ratio, drain_ratio = fl["rate"] / nl["rate"], fd["rate"] / nd["rate"]
    n_live_us = _us_per_record(nl, nl["publisher_cpu_s"])
    n_drain_us, f_live_us, f_drain_us = _us_per_record(nd), _us_per_record(fl), _us_per_record(fd)
    per_tier_us = " / ".join(f"{fd['cpu_s'][c] * 1e6 / max(fd['clocked'], 1):.1f}" for c in (COUNTY, CITY, PROVINCE))
    nats_rss = " / ".join(f"{nats['rss_mb'][t]:.0f}" for t in reversed(TIERS))
    fed_rss = " / ".join(f"{fed['rss_mb'][c]:.0f}" for c in (COUNTY, CITY, PROVINCE))
    fed_rss_total, nats_rss_total = sum(fed["rss_mb"].values()), sum(nats["rss_mb"].values())
    return [
        {"name": "NATS live e2e county→city→province", "value": round(nl["rate"]), "unit": "records/s",
         "target": "-", "reference": f"{nl['records']} messages, {nl['message_bytes']:.0f} B stored each; the Python "
                                     f"client published {nl['publish_rate']:,.0f}/s; {_hops(nl)}",
         "ratio": None, "ok": nl["ok"]},
        {"name": "fednode live e2e county→city→province", "value": round(fl["rate"]), "unit": "records/s",
         "target": f">= {TARGET_LIVE} × NATS",
         "reference": f"NATS {nl['rate']:,.0f}/s; the county ingested {fl['publish_rate']:,.0f}/s ({fl['events']} "
                      f"events, {fl['records']} records with alerts); {_hops(fl)}",
         "ratio": round(live_ratio, 3), "ok": fl["ok"] and live_ratio >= TARGET_LIVE},
        {"name": "NATS catch-up drain through 3 tiers", "value": round(nd["rate"]), "unit": "records/s",
         "target": "-", "reference": f"{nd['records']} backlog at the county; timed from creating the sourcing "
                                     f"streams; {_hops(nd)}", "ratio": None, "ok": nd["ok"]},
        {"name": "fednode catch-up drain through 3 tiers", "value": round(fd["rate"]), "unit": "records/s",
         "target": f">= {TARGET_DRAIN} × NATS",
         "reference": f"NATS {nd['rate']:,.0f}/s; {fd['records']} records, timed from the county's uplink "
                      f"connected ({fd['records'] - fd['clocked']} crossed before); from the county's start "
                      f"{fd['from_start_rate']:,.0f}/s; {_hops(fd)}",
         "ratio": round(drain_ratio, 3), "ok": fd["ok"] and drain_ratio >= TARGET_DRAIN},
        {"name": "CPU per record, catch-up, 3 tiers", "value": round(f_drain_us, 1), "unit": "µs",
         "target": "-", "reference": f"NATS {n_drain_us:.1f} µs; fednode county/city/province {per_tier_us} µs",
         "ratio": round(f_drain_us / n_drain_us, 3) if n_drain_us else None, "ok": True},
        {"name": "CPU per record, live incl. publisher", "value": round(f_live_us, 1), "unit": "µs",
         "target": "-", "reference": f"NATS {n_live_us:.1f} µs (of which the Python publisher "
                                     f"{nl['publisher_cpu_s'] * 1e6 / nl['records']:.1f})",
         "ratio": round(f_live_us / n_live_us, 3) if n_live_us else None, "ok": True},
        {"name": "peak RSS, 3 tiers", "value": round(fed_rss_total, 1), "unit": "MB", "target": "-",
         "reference": f"NATS {nats_rss_total:.0f} MB; county/city/province: NATS {nats_rss}, fednode {fed_rss}",
         "ratio": round(fed_rss_total / nats_rss_total, 3) if nats_rss_total else None, "ok": True},
        {"name": "record size (fednode bulk: body + chain)", "value": round(fed["record_bytes"], 1), "unit": "bytes",
         "target": "-", "reference": f"NATS message: {MESSAGE_BYTES} B payload, {nl['message_bytes']:.0f} B stored",
         "ratio": round(fed["record_bytes"] / MESSAGE_BYTES, 3), "ok": True},
    ]


def run(scale: float = 1.0) -> list[dict[str, Any]]:
    binary = nats_server_binary()
    if binary is None:
        return skipped("nats-server not found (Debian: apt-get install nats-server)")
    try:
        import nats  # noqa: F401
    except ImportError:
        return skipped("the nats-py client is not installed (pip install -e '.[dev]')")
    live_n = max(1000, int(LIVE_RECORDS * scale))
    backlog_n = max(1000, int(BACKLOG_RECORDS * scale))
    base = Path(tempfile.mkdtemp(prefix="fednode-nats-"))
    try:
        nats_res = nats_run(base, binary, live_n, backlog_n)
        shutil.rmtree(base / "nats", ignore_errors=True)
        return rows_for(nats_res, fednode_run(base, live_n, backlog_n))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import sys

    from bench.harness import print_table

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(print_table(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)))
