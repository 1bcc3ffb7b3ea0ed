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

from node import demo, ingest
from node.home import Home
from node.records import CONTROL
from node.store import Store

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


def e2e(base: Path, n: int) -> dict[str, Any]:
    homes = demo.build_tree(base / "e2e", CHAIN)
    preload(homes["320303"].dir, n, 1)
    procs = {code: demo.start(homes[code].dir) for code, *_ in CHAIN}
    try:
        t0 = time.perf_counter()
        ok, want = demo.wait_converged(homes, ["320303"], "320000", timeout=600, progress=False)
        elapsed = time.perf_counter() - t0
        rss = {code: _rss_peak_mb(p.pid) for code, p in procs.items()}
    finally:
        demo.stop_all(procs)
    return {"ok": ok, "records": sum(want.values()), "elapsed_s": elapsed, "rss_mb": rss}


def control_latency(base: Path, backlog: int) -> dict[str, Any]:
    from node import admin

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
        admin.call(homes["320303"], {"op": "ingest", "records": [
            {"kind": "link.ping", "payload": {"note": "control latency probe"}}]})
        while _head(homes["320000"], "320303", CONTROL) < target:
            time.sleep(0.01)
            if time.perf_counter() - t0 > 60:
                break
        latency = time.perf_counter() - t0
        during = _head(homes["320000"], "320303", 3)
        still_draining = during < backlog
    finally:
        demo.stop_all(procs)
    return {"latency_s": latency, "bulk_at_root_before": before, "bulk_at_root_after": during,
            "backlog": backlog, "bulk_still_draining": still_draining}


def run(records: int = 200_000, backlog: int = 100_000, only: str | None = None) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        if only in (None, "e2e"):
            ref = single_node_append_rate(base, min(records, 100_000))
            r = e2e(base, records)
            rate = r["records"] / r["elapsed_s"]
            rows.append({"name": "e2e county→city→province", "value": round(rate), "unit": "records/s",
                         "target": ">= 10000, ratio >= 0.5", "reference": f"single-node append {ref:,.0f}/s",
                         "ratio": round(rate / ref, 3), "ok": r["ok"]})
            for code, mb in r["rss_mb"].items():
                rows.append({"name": f"peak RSS {code}", "value": round(mb, 1), "unit": "MB", "target": "< 300",
                             "reference": f"{r['records']} records backlog", "ratio": None, "ok": mb < 300})
        if only in (None, "control_latency"):
            c = control_latency(base, backlog)
            rows.append({"name": "control record leaf→province during bulk drain", "value": round(c["latency_s"], 3),
                         "unit": "s", "target": "< 2",
                         "reference": f"bulk at root {c['bulk_at_root_before']}→{c['bulk_at_root_after']} of "
                                      f"{c['backlog']}", "ratio": None,
                         "ok": c["latency_s"] < 2 and c["bulk_still_draining"]})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def print_table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'benchmark':<48}{'value':>12} {'unit':<10}{'target':<24}{'ratio':>7}  reference"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        out.append(f"{r['name']:<48}{r['value']:>12} {r['unit']:<10}{r['target']:<24}{ratio:>7}  {r['reference']}"
                   f"{'' if r.get('ok', True) else '   <-- MISSED'}")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    rows = run(args.records, args.backlog, args.only)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(print_table(rows))
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--only")
    p.add_argument("--json", action="store_true")
    sys.exit(main(p.parse_args()))
