"""`fednode bench`: end-to-end figures measured beside their references in the same run.

- e2e: a county preloaded with N records drains through a city to the province (three processes,
  mutual TLS, SQLite); reference: the single-node append rate measured in the same run.
- control_latency: while a 100k bulk backlog drains, a control record born at the county reaches the
  province; reference: the round trip of an idle link.
- peak RSS of each node (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import demo
from node.app import ingest
from node.core.home import Home
from node.core.records import CONTROL
from node.core.store import Store

CHAIN = [("320000", "江苏省", "province", None), ("320300", "徐州市", "city", "320000"),
         ("320303", "云龙区", "county", "320300")]


def _head(home: Home, origin: str, channel: int) -> int:
    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        return store.head(origin, channel).seq
    finally:
        store.close()


def _rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process: a figure a busy, shared machine does not dilute."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def single_node_append_rate(base: Path, n: int) -> float:
    homes = demo.build_tree(base / "single", CHAIN[:1])
    home = Home(homes["320000"].dir)
    ledger = home.ledger()
    items = list(ingest.synthetic_items("320000", n, 7))
    t0 = time.perf_counter()
    ingest.append_chunked(ledger, items)
    rate = n / (time.perf_counter() - t0)
    home.close()
    return rate


def preload(home_dir: Path, n: int, seed: int) -> None:
    home = Home(home_dir)
    ingest.append_chunked(home.ledger(), ingest.synthetic_items(home.code, n, seed))
    home.close()


def _held_at_root(homes: dict[str, Home], want: dict[tuple[str, int], int]) -> int:
    heads = demo.root_heads(homes["320000"])
    return sum(min(heads.get(k, 0), v) for k, v in want.items())


def _wait_uplink_connected(home: Home, timeout: float) -> None:
    from node.core import admin_client as admin

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        links = (admin.call(home, {"op": "status"}, timeout=30) or {}).get("result", {}).get("links", [])
        if any(lk["direction"] == "up" and lk["state"] == "connected" for lk in links):
            return
        time.sleep(0.05)


def drain(homes: dict[str, Home], procs: dict[str, Any], timeout: float,
          reconnect: Home | None = None) -> dict[str, Any]:
    """Time a drain county → province. The sustained rate counts from the moment every node answers on
    its admin socket (process start-up, ~0.7 s of imports and migrations checks per node, is not link
    throughput) and, with ``reconnect``, that node's uplink is connected again (its dialler backs off
    up to ~15 s while the parent is down); the rate over the whole run is reported beside it."""
    t_start = time.perf_counter()
    for code in procs:
        demo.wait_admin(homes[code])
    if reconnect is not None:
        _wait_uplink_connected(reconnect, timeout=120)
    t0 = time.perf_counter()
    want = demo.leaf_heads(homes, ["320303"])
    held0 = _held_at_root(homes, want)
    ok, want = demo.wait_converged(homes, ["320303"], "320000", timeout=timeout, progress=False)
    t1 = time.perf_counter()
    rss = {code: _rss_peak_mb(p.pid) for code, p in procs.items()}
    cpu = {code: _cpu_s(p.pid) for code, p in procs.items()}
    total = sum(want.values())
    return {"ok": ok, "records": total, "elapsed_s": t1 - t0, "sustained_rate": (total - held0) / (t1 - t0),
            "whole_run_rate": total / (t1 - t_start), "held_at_start": held0, "rss_mb": rss, "cpu_s": cpu,
            "waited_s": t0 - t_start}


def e2e(base: Path, n: int) -> dict[str, Any]:
    homes = demo.build_tree(base / "e2e", CHAIN)
    preload(homes["320303"].dir, n, 1)
    procs = {code: demo.start(homes[code].dir) for code, *_ in CHAIN}
    try:
        return drain(homes, procs, timeout=600)
    finally:
        demo.stop_all(procs)


def control_latency(base: Path, backlog: int) -> dict[str, Any]:
    from node.core import admin_client as admin

    homes = demo.build_tree(base / "latency", CHAIN)
    preload(homes["320303"].dir, backlog, 2)
    procs = {code: demo.start(homes[code].dir) for code, *_ in CHAIN}
    try:
        for code, *_ in CHAIN:
            demo.wait_admin(homes[code])
        time.sleep(1.0)  # the bulk backlog is draining now
        before = _head(homes["320000"], "320303", 3)
        target = _head(homes["320303"], "320303", CONTROL) + 1
        t0 = time.perf_counter()
        admin.call(homes["320303"], {"op": "probe", "note": "control latency probe"})
        while _head(homes["320000"], "320303", CONTROL) < target:
            time.sleep(0.01)
            if time.perf_counter() - t0 > 60:
                break
        latency = time.perf_counter() - t0
        during = _head(homes["320000"], "320303", 3)
        still_draining = during < backlog
    finally:
        demo.stop_all(procs)
    hops = _hops(homes, "320303", CONTROL, target)
    return {"latency_s": latency, "bulk_at_root_before": before, "bulk_at_root_after": during,
            "backlog": backlog, "bulk_still_draining": still_draining, "hops_s": hops}


def _hops(homes: dict[str, Home], origin: str, channel: int, seq: int) -> dict[str, float]:
    """Where a record's time went: born (its time_us) → stored at each node (each store's stored_us)."""
    from sqlalchemy import and_, select

    from node.core import schema

    stamps: dict[str, int] = {}
    for code, *_ in reversed(CHAIN):
        store = Store.open(homes[code].config.store_url, base_dir=homes[code].dir, migrate=False)
        try:
            t = schema.records
            with store.read() as conn:
                row = conn.execute(select(t.c.time_us, t.c.stored_us).where(
                    and_(t.c.origin == origin, t.c.channel == channel, t.c.seq == seq))).first()
        finally:
            store.close()
        if row is None:
            return {}
        stamps.setdefault("born", row.time_us)
        stamps[code] = row.stored_us
    names = list(stamps)
    return {f"{a}→{b}": round((stamps[b] - stamps[a]) / 1e6, 3) for a, b in zip(names, names[1:], strict=False)}


def _wait_rules_caught_up(home: Home, timeout: float) -> float:
    """Seconds until the node's rules service has read its whole feed (at once when rules are off)."""
    from node.core import admin_client as admin

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            st = (admin.call(home, {"op": "status"}, timeout=30) or {}).get("result", {}).get("rules", {})
        except TimeoutError:  # a node busy rebuilding on a loaded machine answers late: ask again
            continue
        if not st.get("enabled", True) or (st.get("state") == "running" and st.get("caught_up")):
            break
        time.sleep(0.5)
    return time.perf_counter() - t0


def catchup(base: Path, backlog: int) -> dict[str, Any]:
    """A county builds up a backlog while its city is down; after the city comes back, the drain.

    The county runs (links, rules, every service) while the city is down, as it would through an outage:
    the backlog is preloaded, so the county first evaluates it (its rules catch up), then the city starts
    and the drain is timed."""
    from node.core import config as config_mod

    homes = demo.build_tree(base / f"catchup{backlog}", CHAIN)
    # the county starts while its city is down: it appends (its rules' alerts) after the grace period
    config_mod.set_field(homes["320303"].config.path, "link", "recover_wait_s", 1)
    preload(homes["320303"].dir, backlog, 3)
    procs = {code: demo.start(homes[code].dir) for code in ("320000", "320303")}
    try:
        for code in procs:
            demo.wait_admin(homes[code])
        rules_s = _wait_rules_caught_up(homes["320303"], timeout=900)
        procs["320300"] = demo.start(homes["320300"].dir)
        return drain(homes, {"320300": procs["320300"]}, timeout=900, reconnect=homes["320303"]) | {
            "rss_mb": {code: _rss_peak_mb(p.pid) for code, p in procs.items()},
            "cpu_s": {code: _cpu_s(p.pid) for code, p in procs.items()}, "county_rules_caught_up_s": rules_s}
    finally:
        demo.stop_all(procs)


def _pg_url() -> str:
    import os

    return os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def bench_references(base: Path, scale: float) -> list[dict[str, Any]]:
    from bench import refs as benchrefs

    ed = benchrefs.ed25519(int(20_000 * scale) or 1000)
    rows = [
        {"name": "ref: Ed25519 sign", "value": round(ed["sign_per_s"]), "unit": "ops/s", "target": "-",
         "reference": "cryptography, one process", "ratio": None, "ok": True},
        {"name": "ref: Ed25519 verify", "value": round(ed["verify_per_s"]), "unit": "ops/s", "target": "-",
         "reference": "cryptography, one process", "ratio": None, "ok": True},
        {"name": "ref: raw SQLite insert (WAL, commit/1000)", "value": round(benchrefs.sqlite_insert(int(100_000 * scale) or 5000)),
         "unit": "rows/s", "target": "-", "reference": "sqlite3 executemany", "ratio": None, "ok": True},
    ]
    pg = benchrefs.pg_insert(_pg_url(), int(50_000 * scale) or 5000)
    rows.append({"name": "ref: raw PostgreSQL insert (commit/1000)", "value": round(pg) if pg else None,
                 "unit": "rows/s", "target": "-", "reference": "psycopg executemany", "ratio": None, "ok": True})
    rows.append({"name": "ref: raw gRPC batch stream (TLS, 1000/msg)", "value": round(benchrefs.grpc_stream(int(200_000 * scale) or 20000)),
                 "unit": "records/s", "target": "-", "reference": "grpc.aio, window 4", "ratio": None, "ok": True})
    return rows


def bench_e2e(base: Path, scale: float) -> list[dict[str, Any]]:
    records = int(200_000 * scale) or 2000
    ref = single_node_append_rate(base, min(records, 100_000))
    r = e2e(base, records)
    rate = r["sustained_rate"]
    rows = [{"name": "e2e county→city→province (sustained, every service on)", "value": round(rate), "unit": "records/s",
             "target": ">= 10000, ratio >= 0.5",
             "reference": f"single-node append {ref:,.0f}/s; whole run incl. start-up {r['whole_run_rate']:,.0f}/s",
             "ratio": round(rate / ref, 3), "ok": r["ok"] and rate >= 10_000 and rate / ref >= 0.5}]
    for code, mb in r["rss_mb"].items():
        rows.append({"name": f"e2e peak RSS {code}", "value": round(mb, 1), "unit": "MB", "target": "< 300",
                     "reference": f"{r['records']} records backlog", "ratio": None, "ok": mb < 300})
    return rows


def bench_control_latency(base: Path, scale: float) -> list[dict[str, Any]]:
    c = control_latency(base, int(100_000 * scale) or 2000)
    return [{"name": "control record leaf→province during bulk drain", "value": round(c["latency_s"], 3),
             "unit": "s", "target": "< 2",
             "reference": f"bulk at root {c['bulk_at_root_before']}→{c['bulk_at_root_after']} of {c['backlog']}; "
                          f"per hop (s): {', '.join(f'{k} {v}' for k, v in c['hops_s'].items())}",
             "ratio": None, "ok": c["latency_s"] < 2 and c["bulk_still_draining"]}]


def bench_catchup(base: Path, scale: float) -> list[dict[str, Any]]:
    small, big = int(100_000 * scale) or 2000, int(500_000 * scale) or 10000
    rs = catchup(base, small)
    rb = catchup(base, big)
    rate = rb["sustained_rate"]
    rows = [{"name": "catch-up drain after reconnect", "value": round(rate), "unit": "records/s", "target": ">= 30000",
             "reference": f"{rb['records']} records built up while the city was down (the county's rules read "
                          f"them in {rb['county_rules_caught_up_s']:.0f} s first); timed from the reconnect "
                          f"({rb['waited_s']:.1f} s after the city started: the county's dial backoff); from the "
                          f"city's start {rb['whole_run_rate']:,.0f}/s", "ratio": None,
             "ok": rb["ok"] and rate >= 30_000}]
    for code in rb["rss_mb"]:
        grow = rb["rss_mb"][code] / rs["rss_mb"][code]
        rows.append({"name": f"catch-up peak RSS {code}", "value": round(rb["rss_mb"][code], 1), "unit": "MB",
                     "target": "no growth with backlog", "reference": f"{rs['rss_mb'][code]:.1f} MB at {rs['records']} records",
                     "ratio": round(grow, 3), "ok": grow < 1.25})
    return rows


def _module_bench(module: str) -> Any:
    def run_it(base: Path, scale: float, **options: Any) -> list[dict[str, Any]]:
        import importlib
        import inspect

        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            return [{"name": module, "value": None, "unit": "", "target": "-", "reference": f"not available: {e}",
                     "ratio": None, "ok": True}]
        params = inspect.signature(mod.run).parameters
        kwargs = {}
        for name in ("scale", "size_factor"):
            if name in params:
                kwargs[name] = scale
        kwargs.update({k: v for k, v in options.items() if k in params and v is not None})
        rows: list[dict[str, Any]] = mod.run(**kwargs)
        return rows

    return run_it


BENCHES = {
    "references": bench_references,
    "foundation": _module_bench("bench.bench_foundation"),
    "e2e": bench_e2e,
    "control_latency": bench_control_latency,
    "catchup": bench_catchup,
    "ingest": _module_bench("bench.bench_ingest"),
    "rules": _module_bench("bench.bench_rules"),
    "tickets": _module_bench("bench.bench_tickets"),
    "reconcile": _module_bench("bench.bench_reconcile"),
    "stats": _module_bench("bench.bench_stats"),
    "cases": _module_bench("bench.bench_cases"),
    "desk": _module_bench("bench.bench_desk"),
    "nats": _module_bench("bench.bench_nats"),
    "shaped": _module_bench("bench.bench_shaped"),
    "fanin": _module_bench("bench.bench_fanin"),
}


def run(only: str | None = None, scale: float = 1.0, progress: bool = True,
        children: int | None = None) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        for name, fn in BENCHES.items():
            if only is not None and name != only:
                continue
            t0 = time.perf_counter()
            if progress:
                print(f"bench {name} ...", file=sys.stderr, flush=True)
            try:
                got = fn(base, scale, children=children) if fn.__name__ == "run_it" else fn(base, scale)
            except Exception as e:  # one broken benchmark must not hide the others
                got = [{"name": name, "value": None, "unit": "", "target": "-", "reference": f"FAILED: {e!r}",
                        "ratio": None, "ok": False}]
            for r in got:
                r.setdefault("group", name)
            rows.extend(got)
            if progress:
                print(f"bench {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'benchmark':<50}{'value':>14} {'unit':<11}{'target':<26}{'ratio':>8}  reference"]
    for r in rows:
        out.append(f"{r['name'][:49]:<50}{_fmt(r['value']):>14} {r['unit']:<11}{_fmt(r['target'])[:25]:<26}"
                   f"{_fmt(r['ratio']):>8}  {_fmt(r['reference'])}{'' if r.get('ok', True) else '   <-- MISSED'}")
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    import datetime as dt
    import platform

    lines = ["# fednode benchmark results", "",
             f"Generated by `fednode bench --markdown docs/benchmarks.md` on {dt.datetime.now():%Y-%m-%d %H:%M} "
             f"({platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}). "
             "References are measured in the same run; the machine is shared, so compare ratios, not absolutes.", "",
             "| benchmark | value | unit | target | ratio | reference | met |", "|---|---:|---|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {r['unit']} | {_fmt(r['target'])} | {_fmt(r['ratio'])} | "
                     f"{_fmt(r['reference'])} | {'yes' if r.get('ok', True) else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    rows = run(args.only, args.scale, children=getattr(args, "children", None))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows), encoding="utf-8")
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(print_table(rows))
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=list(BENCHES))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--children", type=int)
    p.add_argument("--markdown")
    p.add_argument("--json", action="store_true")
    sys.exit(main(p.parse_args()))
