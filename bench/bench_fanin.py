"""Fan-in benchmark (not a test): a city with N children, each its own `fednode run` process (issue 26).

Tree: province 320000 ← city 320300 ← N counties 320301.. (mutual TLS on loopback, SQLite, every
service on, as deployed). Figures, each beside its reference measured in the same run:

- idle CPU of the city per connected child: the city's CPU (utime + stime from /proc/PID/stat) over a
  window with N children connected and no data flowing, minus the same window before any child
  started, divided by N; the province's idle CPU beside it;
- fan-in: a catch-up after the children's outage. Every child is stopped, a backlog is appended to
  its store while it is down (``harness.preload``, as the catch-up bench does), then all are started
  at once and the drain is timed until the province holds every record. The rate compared is the one
  with every link up: from the first sample at which the city had every child connected, as the
  catch-up bench counts from the link's return (on 2 cores 10 children took 9 s to be connected, 50
  took 54 s); the rate from the children's start, connect included, is beside it. Either way the
  children's own services (rules, case index, statistics) read their backlogs while they send, on the
  same cores as the city: unlike the freeze, where they did it during the ingest. The city and the
  province run throughout and none of their links is cut by the bench.
  (Freezing the city with SIGSTOP while the backlogs were ingested outlived the links' keepalive with
  50 children x 24k records: every link dropped and the drain measured ~43 s of redials.) Reference:
  one child's backlog drained the same way in the same run. Rates, and the city's CPU µs per record
  moved, as ratios fan-in / one child. The city's CPU is what moving the records cost it in full:
  read from the children's start (their connects included) until, after the province holds them, the
  city's rules have read its feed, its case index and statistics have folded it, and its CPU has gone
  back to idle (the counter is read at the start of the quiet window that shows it). Read at the records' arrival instead, it left out
  whatever of that work had not run yet: most of it after a short drain, less after a long one, so
  the ratio compared unequal shares of the same work. Both drains are read the same way;
- the city's peak RSS (VmHWM) during the fan-in against its RSS when idle with N children;
- how far the province trails the city during the fan-in: every SAMPLE_S of the drain, the children's
  records held at the province, then at the city (their heads tables, read-only); for each province
  sample, the seconds since the city held as many (``trail``); max and p95 over the whole drain (and
  over the part with every link up), and the time from the city holding every record to the province
  holding them (target: <= 2 s). Beside it, the city's relay cache counters over the drain (segments
  forwarded from the cache, refused when full, passed);
- `status --json` sizes at the city and the province, without and with the subtree.

Run: ``fednode bench --only fanin --children 10`` (``--scale 0.2`` for a quick look).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import demo
from bench.harness import _wait_rules_caught_up
from node.core import admin_client as admin
from node.core.home import Home
from node.core.records import BULK

PROVINCE, CITY = "320000", "320300"
IDLE_WINDOW_S = 10.0
SETTLE_S = 4.0
QUIET_WINDOW_S = 1.0
SAMPLE_S = 0.25  # the drain's sampling period: records held at the province and at the city


def child_codes(n: int) -> list[str]:
    """N child codes under the city: counties 320301..320399, then departments 320300-D100.. ."""
    out = [f"3203{i:02d}" for i in range(1, min(n, 99) + 1)]
    out += [f"{CITY}-D{i}" for i in range(100, n + 1)]
    return out


def tree(n: int) -> list[tuple[str, str, str, str | None]]:
    t: list[tuple[str, str, str, str | None]] = [(PROVINCE, "江苏省", "province", None), (CITY, "徐州市", "city", PROVINCE)]
    for c in child_codes(n):
        t.append((c, f"节点{c}", "department" if "-" in c else "county", CITY))
    return t


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_share(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Share of one core each process used over ``seconds`` of wall time (nothing else is asked of them)."""
    c0 = {k: cpu_s(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return {k: (cpu_s(p) - c0[k]) / dt for k, p in pids.items()}


def _status(home: Home, **args: Any) -> dict[str, Any]:
    resp = admin.call(home, {"op": "status", **args}, timeout=60)
    assert resp is not None, f"{home.code} is not running"
    return dict(resp["result"])


def status_bytes(home: Home, **args: Any) -> int:
    return len(json.dumps(_status(home, **args), ensure_ascii=False).encode())


def connected_children(home: Home) -> set[str]:
    return {ln["peer"] for ln in _status(home)["links"] if ln["direction"] == "down" and ln["state"] == "connected"}


def wait_connected(home: Home, children: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(children) <= connected_children(home):
            return
        time.sleep(0.25)
    raise TimeoutError(f"{home.code}: children {sorted(set(children) - connected_children(home))} did not connect")


def _bulk_heads(home: Home, origins: list[str]) -> dict[str, int]:
    heads = demo.root_heads(home)
    return {o: heads.get((o, BULK), 0) for o in origins}


class HeadsReader:
    """A node's heads of the children's bulk logs, read from its store read-only with one connection
    kept open for the whole drain: one small query per read, no write, nothing asked of the node."""

    def __init__(self, home: Home, want: dict[str, int]) -> None:
        from node.core.store import Store

        self.want = want
        self.store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)

    def held(self) -> int:
        """Records of the children's backlogs held (each child's counted up to what it holds)."""
        return sum(min(h.seq, self.want[o]) for (o, c), h in self.store.heads().items()
                   if c == BULK and o in self.want)

    def close(self) -> None:
        self.store.close()


def trail(city: list[tuple[float, int]], province: list[tuple[float, int]], total: int) -> dict[str, Any]:
    """How far the province trails the city, from samples (monotonic time, records of the children held).
    For each province sample (t, P): t minus the time the city first held P records, that time
    interpolated linearly between the two city samples around it (0 when the city held P already at
    the first sample, i.e. before the drain). Max and p95 over the province samples; ``after_city_s``: the
    time from the first city sample holding ``total`` to the first province sample holding it."""
    lags: list[float] = []
    j = 0
    for t, p in province:
        while j < len(city) and city[j][1] < p:
            j += 1
        if j == len(city):  # cannot happen (the province reads first, and holds nothing the city lacks)
            continue
        if j == 0:
            lags.append(0.0)
            continue
        (ta, ca), (tb, cb) = city[j - 1], city[j]
        s = ta + (tb - ta) * (p - ca) / (cb - ca)
        lags.append(max(0.0, t - s))
    city_done = next((t for t, c in city if c >= total), None)
    prov_done = next((t for t, p in province if p >= total), None)
    lags.sort()
    return {"lag_max_s": lags[-1] if lags else float("nan"),
            "lag_p95_s": lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else float("nan"),
            "after_city_s": (prov_done - city_done) if city_done is not None and prov_done is not None else None,
            "samples": len(lags), "city_done_s": None if city_done is None else city_done - city[0][0]}


def relay_cache(home: Home) -> dict[str, Any] | None:
    """The city's uplink relay cache counters, and the records its uplink has sent."""
    for ln in _status(home)["links"]:
        if ln["direction"] == "up" and "relay_cache" in ln:
            return {**ln["relay_cache"], "records_out": ln["records_out"]}
    return None


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (Linux: 5 > /proc/PID/clear_refs), so the next peak is this phase's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def link_since(home: Home, children: list[str]) -> dict[str, int | None]:
    """When each child's link at ``home`` last changed state (wall µs), None for a child not connected."""
    return {ln["peer"]: (ln["since_us"] if ln["state"] == "connected" else None) for ln in _status(home)["links"]
            if ln["direction"] == "down" and ln["peer"] in children}


def _preload(args: tuple[str, int, int]) -> None:
    from bench.harness import preload

    preload(Path(args[0]), args[1], args[2])


def drain(homes: dict[str, Home], procs: dict[str, subprocess.Popen[bytes]], sources: list[str],
          per_child: int, idle_share: float, timeout: float = 900.0) -> dict[str, Any]:
    """Stop ``sources`` (SIGTERM: each closes its link), append ``per_child`` records of backlog to each
    one's store while it is down (``harness.preload``, the tooling of the catch-up bench: the same
    synthetic records as the admin op ``ingest``), start them all at once and time the drain into the
    province from that moment: a catch-up after the children's outage, their start-up (imports, store,
    services) and connect included; ``all_up_s`` says how long until the city had every one of them
    connected. The city and the province run throughout, every link of theirs stays up: no freeze, so
    no keepalive times out (freezing the city through minutes of ingest dropped every child's link and
    the drain measured their redials). The city's CPU runs from the start until it has settled
    (``settle``), its share of one core when idle with every child connected being ``idle_share``."""
    from concurrent.futures import ProcessPoolExecutor

    pid = procs[CITY].pid
    demo.stop_all({c: procs[c] for c in sources})
    deadline = time.monotonic() + 60
    while set(sources) & connected_children(homes[CITY]) and time.monotonic() < deadline:
        time.sleep(0.25)
    with ProcessPoolExecutor(max_workers=2) as pool:  # the bench's own work, before the clock starts
        list(pool.map(_preload, [(str(homes[c].dir), per_child, 100 + len(sources) + i)
                                 for i, c in enumerate(sources)]))
    want = {c: demo.leaf_heads(homes, [c]).get((c, BULK), 0) for c in sources}
    total = sum(want.values())
    readers = {c: HeadsReader(homes[c], want) for c in (PROVINCE, CITY)}
    held0 = readers[CITY].held()
    relay0 = relay_cache(homes[CITY])
    time.sleep(SETTLE_S)  # the city back to idle after the children left
    reset_peak_rss(pid)
    c0 = cpu_s(pid)
    t0 = time.monotonic()
    for c in sources:
        procs[c] = demo.start(homes[c].dir)
    ok = False
    all_up: float | None = None
    up_wall_us = 0
    # the province is read before the city at each sample, so the city's figure is never the older one
    city_s: list[tuple[float, int]] = [(t0, held0)]
    prov_s: list[tuple[float, int]] = []
    try:
        while time.monotonic() - t0 < timeout:
            held = readers[PROVINCE].held()
            prov_s.append((time.monotonic(), held))
            if held >= total:
                ok = True
                break
            if city_s[-1][1] < total:
                city_s.append((time.monotonic(), readers[CITY].held()))
            if all_up is None and set(sources) <= connected_children(homes[CITY]):
                all_up, up_wall_us = time.monotonic() - t0, int(time.time() * 1e6)
            time.sleep(SAMPLE_S)
    finally:
        for r in readers.values():
            r.close()
    t1 = time.monotonic()
    peak = _vm(pid, "VmHWM")
    relay = relay_cache(homes[CITY])
    if relay is not None and relay0 is not None:  # counters of this drain; segments and bytes: at its end
        relay.update({k: relay[k] - relay0[k] for k in ("hits", "refused", "passed", "records_out")})
    since = link_since(homes[CITY], sources)
    # every child connected once and not again: no link came up later than the moment all were up
    kept = all_up is not None and all(s is not None and s <= up_wall_us for s in since.values())
    settle_s, c1, settled = settle(homes[CITY], pid, idle_share)
    moved = total - held0
    # records flowing: from the first province sample with every child connected to the end (as
    # ``harness.drain`` counts a catch-up from the moment the link is up again); None if never all up
    flowing = None
    if all_up is not None and ok:
        ta, pa = next(((t, p) for t, p in prov_s if t - t0 >= all_up), prov_s[-1])
        flowing = {"rate": (total - pa) / max(t1 - ta, 1e-9), "records": total - pa, "elapsed_s": t1 - ta,
                   "trail": trail(city_s, [(t, p) for t, p in prov_s if t >= ta], total)}
    return {"ok": ok, "records": moved, "elapsed_s": t1 - t0, "rate": moved / (t1 - t0), "flowing": flowing,
            "city_us_per_record": (c1 - c0) * 1e6 / max(moved, 1), "city_peak_rss_mb": peak,
            "settle_s": settle_s, "settled": settled, "links_kept": kept, "all_up_s": all_up,
            "trail": trail(city_s, prov_s, total), "relay_cache": relay,
            "samples": {"city": [(t - t0, c) for t, c in city_s], "province": [(t - t0, p) for t, p in prov_s]}}


def folds_caught_up(home: Home) -> bool:
    """Whether the node's case index and statistics have folded every record of the kinds they read. (A
    fold's cursor stays at the last record it read: compared with the feed's end, a link report or a
    key record stored after it would never let it count as caught up.)"""
    from node.core.store import Store
    from node.features.cases import index
    from node.features.stats import projection

    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        return (not store.changes(index.cursor(store), 1, kinds=index.KINDS)
                and not store.changes(projection.cursor(store), 1, kinds=projection.KINDS))
    finally:
        store.close()


def settle(home: Home, pid: int, idle_share: float, timeout: float = 900.0) -> tuple[float, float, bool]:
    """(seconds waited, the node's CPU seconds, whether it settled within ``timeout``) once its own
    services have done their share of what just arrived: its rules have read the whole feed, its case
    index and statistics have folded it (the statistics fold on their interval tick, ``[stats]
    interval_s``, so this may wait that long), and its CPU has gone back to ``idle_share`` (+ 3% of a
    core) over a QUIET_WINDOW_S window. The CPU is the one at that window's start, so the quiet window
    itself is not counted; the idle CPU of the wait is (a few µs per record at most, in both drains)."""
    t0 = time.monotonic()
    _wait_rules_caught_up(home, timeout)
    while not folds_caught_up(home) and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
    while True:
        c0, w0 = cpu_s(pid), time.monotonic()
        time.sleep(QUIET_WINDOW_S)
        share = (cpu_s(pid) - c0) / (time.monotonic() - w0)
        if share <= idle_share + 0.03 or time.monotonic() - t0 > timeout:
            return w0 - t0, c0, w0 - t0 <= timeout


def fanin(base: Path, n: int, per_child: int) -> dict[str, Any]:
    t = tree(n)
    kids = child_codes(n)
    homes = demo.build_tree(base / f"fanin{n}", t)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    out: dict[str, Any] = {"children": n, "per_child": per_child}
    try:
        for c in (PROVINCE, CITY):
            procs[c] = demo.start(homes[c].dir)
        for c in (PROVINCE, CITY):
            demo.wait_admin(homes[c], timeout=60)
        time.sleep(SETTLE_S)
        idle0 = cpu_share({c: procs[c].pid for c in (PROVINCE, CITY)}, IDLE_WINDOW_S)
        for c in kids:
            procs[c] = demo.start(homes[c].dir)
        for c in kids:
            demo.wait_admin(homes[c], timeout=120)
        wait_connected(homes[CITY], kids, timeout=120)
        time.sleep(SETTLE_S)
        idle = cpu_share({c: procs[c].pid for c in (PROVINCE, CITY, kids[0])}, IDLE_WINDOW_S)
        out.update(idle0=idle0, idle=idle, city_idle_rss_mb=_vm(procs[CITY].pid, "VmRSS"))
        out["status_bytes"] = {
            f"{code} {label}": status_bytes(homes[code], **args)
            for code in (CITY, PROVINCE) for label, args in (("own links", {}), ("--tree", {"tree": True}))
        }
        one = max(2000, per_child * n // 2)
        out["one"] = drain(homes, procs, kids[:1], one, idle[CITY])
        out["fan"] = drain(homes, procs, kids, per_child, idle[CITY])
    finally:
        demo.stop_all(procs)
    return out


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def rows_for(r: dict[str, Any]) -> list[dict[str, Any]]:
    n = r["children"]
    idle_city, idle0 = r["idle"][CITY], r["idle0"][CITY]
    per_child = (idle_city - idle0) / n
    one, fan = r["one"], r["fan"]
    nothing: dict[str, Any] = {"rate": float("nan"), "records": 0, "elapsed_s": float("nan"),
               "trail": {"lag_max_s": float("nan"), "lag_p95_s": float("nan")}}
    fo, ff = one["flowing"] or nothing, fan["flowing"] or nothing
    kid = next(k for k in r["idle"] if k not in (CITY, PROVINCE))
    rows: list[dict[str, Any]] = [
        {"name": f"idle CPU of the city per child ({n} children)", "value": round(per_child * 100, 3),
         "unit": "% core", "target": "<= 0.05",
         "reference": f"city {idle_city * 100:.2f}% with {n} children, {idle0 * 100:.2f}% with none; province "
                      f"{r['idle'][PROVINCE] * 100:.2f}% (was {r['idle0'][PROVINCE] * 100:.2f}%); a child "
                      f"{r['idle'][kid] * 100:.2f}%", "ratio": None, "ok": per_child <= 0.0005},
        {"name": f"idle CPU of the city, {n} children", "value": round(idle_city * 100, 2), "unit": "% core",
         "target": "<= 3 (50 children)", "reference": f"{idle0 * 100:.2f}% with no child",
         "ratio": round(idle_city / idle0, 2) if idle0 > 0 else None, "ok": True},
        {"name": f"fan-in {n} children → province, every link up", "value": round(ff["rate"]) if fan["flowing"] else None, "unit": "records/s",
         "target": "ratio ~1",
         "reference": f"one child {fo['rate']:,.0f}/s ({fo['records']} records in {fo['elapsed_s']:.1f} s); fan-in "
                      f"{ff['records']} records in {ff['elapsed_s']:.1f} s. From the children's start, connect "
                      f"included: {fan['rate']:,.0f}/s, {fan['records']} records in {fan['elapsed_s']:.1f} s, all "
                      f"connected after {_s(fan['all_up_s'])} s (one child {one['rate']:,.0f}/s, connected after "
                      f"{_s(one['all_up_s'])} s; ratio {fan['rate'] / one['rate']:.3f}); links kept "
                      f"{fan['links_kept']}/{one['links_kept']}",
         "ratio": round(ff["rate"] / fo["rate"], 3) if fan["flowing"] and one["flowing"] else None,
         "ok": fan["ok"] and one["ok"] and fan["links_kept"] and one["links_kept"]},
        {"name": f"city CPU per record, fan-in {n} children", "value": round(fan["city_us_per_record"], 1),
         "unit": "µs", "target": "ratio <= 1.25",
         "reference": f"one child {one['city_us_per_record']:.1f} µs; CPU read once the city settled "
                      f"({fan['settle_s']:.1f} s / {one['settle_s']:.1f} s after the last record arrived)",
         "ratio": round(fan["city_us_per_record"] / one["city_us_per_record"], 3),
         "ok": fan["city_us_per_record"] <= 1.25 * one["city_us_per_record"] and fan["settled"] and one["settled"]},
        {"name": f"city peak RSS, fan-in {n} children", "value": round(fan["city_peak_rss_mb"], 1), "unit": "MB",
         "target": "ratio <= 1.5", "reference": f"idle with {n} children {r['city_idle_rss_mb']:.1f} MB",
         "ratio": round(fan["city_peak_rss_mb"] / r["city_idle_rss_mb"], 3),
         "ok": fan["city_peak_rss_mb"] <= 1.5 * r["city_idle_rss_mb"]},
    ]
    tr, tr1 = fan["trail"], one["trail"]
    after = "-" if tr["after_city_s"] is None else f"{tr['after_city_s']:.2f}"
    city_done = "-" if tr["city_done_s"] is None else f"{tr['city_done_s']:.1f}"
    rows.append({"name": f"province behind the city, fan-in {n} children", "value": round(tr["lag_max_s"], 2),
                 "unit": "s (max)", "target": "<= 2",
                 "reference": f"p95 {tr['lag_p95_s']:.2f} s over {tr['samples']} samples {SAMPLE_S} s apart; "
                              f"province done {after} s after the city held every record ({city_done} s into the "
                              f"drain); every link up: max {ff['trail']['lag_max_s']:.2f} s, p95 "
                              f"{ff['trail']['lag_p95_s']:.2f} s; one child: max {tr1['lag_max_s']:.2f} s, p95 "
                              f"{tr1['lag_p95_s']:.2f} s",
                 "ratio": None, "ok": fan["ok"] and tr["lag_max_s"] <= 2.0})
    rc = fan["relay_cache"]
    if rc is not None:
        rows.append({"name": f"city relay cache, fan-in {n} children", "value": rc["hits"], "unit": "segments hit",
                     "target": "-",
                     "reference": f"refused {rc['refused']} (cache full), passed {rc['passed']} (the uplink read "
                                  f"the store past them); {rc['segments']} left ({rc['bytes'] / 1e6:.1f} of "
                                  f"{rc['max_bytes'] / 1e6:.1f} MB); uplink sent {rc['records_out']} records "
                                  f"(during the fan-in's drain)",
                     "ratio": None, "ok": True})
    for label, size in r["status_bytes"].items():
        rows.append({"name": f"status --json {label} ({n} children)", "value": size, "unit": "bytes",
                     "target": "-", "reference": "admin op status", "ratio": None, "ok": True})
    return rows


def run(scale: float = 1.0, children: int | None = None) -> list[dict[str, Any]]:
    n = children or 10
    per_child = max(500, int(5000 * scale))
    base = Path(tempfile.mkdtemp(prefix="fednode-fanin-"))
    try:
        return rows_for(fanin(base, n, per_child))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import sys

    from bench.harness import print_table

    print(print_table(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0,
                          int(sys.argv[2]) if len(sys.argv) > 2 else None)))
