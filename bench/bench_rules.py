"""Rules engine benchmark (not a test): printed figures beside references measured in the same run.

- rule evaluation rate: 1M case events (apply, accept, steps, suspensions, corrections, completion)
  fed to ``RulesEngine.feed_many`` in batches of 5,000 as the rules service reads them from the
  change feed (each batch ends with ``settle``: every touched case's deadlines are computed then,
  so this rate includes that work); target >= 50,000 events/s. Reference: ``json.loads`` of the same
  payloads (the least any consumer of the records does per event); ratio = engine / reference.
- periodic scan: 100k open cases (one open step each, a tenth suspended), fed the same way, then
  the first scan (cold: the first one after the feed, every reached card built) and a second scan
  (warm); target < 5 s. Reference: one working-minute
  index per case (the least a scan can compute); ratio = scan / reference.

- the rules service over a real store (SQLite): 200k synthetic records, of which it reads the rule
  inputs from the change feed, feeds them, and appends their alerts as signed records with the
  cursor and the cases it let go (``RulesProcessor.step``); and the rebuild a restart does (every
  alert, then every rule input up to the cursor, skipping what the archive holds). Rate = stored
  records got through per second. Reference: reading all of them from the change feed alone; ratio
  = service rate / reference rate.
  No target in the issue; printed so a regression shows.
- the rules service's peak memory (VmHWM of a process that runs it to the end of a preloaded store,
  then the first scan) over 100k and over 500k synthetic records: cases leave memory once nothing can
  fire for them, so the peak must not follow the backlog (issue 9: 500k / 100k < 1.25). Reference:
  the same process's RSS before the service starts (imports, store open); ratio = peak(500k) / peak(100k).

Run: ``python -m bench.bench_rules [size_factor]`` (``0.1`` for a quick look).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from node.core.calendar import CST, Calendar
from node.features.rules import RulesEngine

Record = tuple[str, dict[str, Any]]

EVENT_TARGET = 50_000.0  # events/s, at least
SCAN_TARGET = 5.0  # seconds, at most
BATCH = 5000  # records per change-feed read in the rules service
_DIVISIONS = ["320302", "320303", "320305", "320311", "320312", "320321", "320322", "320324", "320381"]
_BASE = datetime(2025, 9, 1, 9, 0)


def _items(n: int) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        items.append(
            {
                "item_code": f"320300-ZJ-{i:03d}",
                "name": f"事项{i}",
                "item_type": "02" if i % 3 == 0 else "01",
                "unit": "workday",
                "statutory_days": 20,
                "promised_days": 10,
                "steps": [
                    {"step_code": "S1", "name": "受理", "limit_days": 1, "posts": ["窗口"]},
                    {"step_code": "S2", "name": "审核", "limit_days": 3, "posts": ["科员", "科长"]},
                    {"step_code": "S3", "name": "批准", "limit_days": 2, "posts": ["局长"]},
                ],
                "discretion": [{"circumstance": "一般", "min_amount": 1000, "max_amount": 5000}],
                "risk_points": [{"step_code": "S3", "evidence": "集体讨论记录"}],
                "major_threshold": 1_000_000,
            }
        )
    return items


def _stamp(hours: float) -> str:
    return (_BASE + timedelta(hours=hours)).isoformat() + "+08:00"


def _case_events(rng: random.Random, n: int, *, items: int, open_case: bool) -> list[Record]:
    """The events of one case; an open case stops with its second step still running."""
    common = {"case_no": f"C{n:08d}", "division": _DIVISIONS[n % len(_DIVISIONS)], "dept": "320300-ZJ",
              "item_code": f"320300-ZJ-{n % items:03d}"}  # fmt: skip
    h = rng.uniform(0, 24 * 40)
    ev: list[Record] = [
        ("case.apply", {**common, "time": _stamp(h), "applicant_type": "1", "applicant_name": "申请人",
                        "channel_code": "2", "assigned": rng.random() < 0.01,
                        "amount": rng.choice([None, 5000, 2_000_000])}),
        ("case.accept", {**common, "time": _stamp(h + 1), "handler": "窗口甲", "accepted": True,
                         "refuse_reason": "", "case_kind": "2"}),
    ]  # fmt: skip
    t = h + 1
    last = 2 if open_case else 3
    for no, (code, post) in enumerate((("S1", "窗口"), ("S2", "科员"), ("S3", "局长")), 1):
        start, t = t, t + rng.uniform(1, 60)
        running = open_case and no == last
        ev.append(
            ("case.step", {**common, "step_no": no, "step_code": code, "step_name": code, "handler": "h",
                           "post": post if rng.random() > 0.02 else "临时工", "opinion": "同意",
                           "action": "pass", "started_at": _stamp(start),
                           "ended_at": None if running else _stamp(t), "evidence": ["集体讨论记录"]})
        )  # fmt: skip
        if no == last:
            break
    if rng.random() < 0.1:
        ev.append(("case.suspend", {**common, "suspend_no": "1", "suspend_kind": "2", "reason": "专家评审",
                                    "approver": "局长", "started_at": _stamp(t), "approved_days": 5}))  # fmt: skip
        if not open_case:
            ev.append(("case.resume", {**common, "suspend_no": "1", "ended_at": _stamp(t + 30)}))
    if rng.random() < 0.1:
        ev.append(("case.correction_notice", {**common, "notice_no": "1", "materials": ["图纸"],
                                              "issuer": "李四", "time": _stamp(h + 2)}))  # fmt: skip
        ev.append(("case.correction_accepted", {**common, "notice_no": "1", "time": _stamp(h + 26)}))
    if not open_case:
        ev.append(("case.complete", {**common, "time": _stamp(t + 5), "result_code": "6", "cert_name": "许可证",
                                     "cert_no": "X", "fee": 0}))  # fmt: skip
    return ev


def _chunks(total_events: int, *, items: int, seed: int, chunk: int = 100_000) -> Iterator[list[Record]]:
    rng = random.Random(seed)
    produced, n, buf = 0, 0, []
    while produced < total_events:
        evs = _case_events(rng, n, items=items, open_case=False)[: total_events - produced]
        n += 1
        produced += len(evs)
        buf.extend(evs)
        if len(buf) >= chunk:
            yield buf
            buf = []
    if buf:
        yield buf


def bench_events(n_events: int, *, items: int = 200) -> dict[str, Any]:
    engine = RulesEngine(Calendar())
    for item in _items(items):
        engine.feed("item", item)
    elapsed = ref_elapsed = 0.0
    fed = ref_n = alerts = 0
    for chunk in _chunks(n_events, items=items, seed=1):
        gc.collect()
        t0 = time.perf_counter()
        for i in range(0, len(chunk), BATCH):
            alerts += len(engine.feed_many(chunk[i : i + BATCH]))
        elapsed += time.perf_counter() - t0
        fed += len(chunk)
        # reference on the same chunk: parsing its payloads, nothing else
        texts = [json.dumps(p, ensure_ascii=False, separators=(",", ":"), sort_keys=True) for _, p in chunk]
        t0 = time.perf_counter()
        for text in texts:
            json.loads(text)
        ref_elapsed += time.perf_counter() - t0
        ref_n += len(texts)
    rate = fed / elapsed
    ref = ref_n / ref_elapsed
    return {"name": f"rule evaluation over {fed:,} case events", "value": round(rate), "unit": "events/s",
            "target": f">= {EVENT_TARGET:,.0f}", "reference": round(ref), "ratio": round(rate / ref, 3),
            "ok": rate >= EVENT_TARGET, "alerts": alerts}  # fmt: skip


def bench_scan(n_cases: int, *, items: int = 200) -> list[dict[str, Any]]:
    engine = RulesEngine(Calendar())
    for item in _items(items):
        engine.feed("item", item)
    rng = random.Random(2)
    accept_times: list[str] = []
    batch: list[Record] = []
    for n in range(n_cases):
        for kind, payload in _case_events(rng, n, items=items, open_case=True):
            batch.append((kind, payload))
            if kind == "case.accept":
                accept_times.append(payload["time"])
        if len(batch) >= BATCH:
            engine.feed_many(batch)
            batch = []
    engine.feed_many(batch)
    assert engine.open_case_count() == n_cases
    now = datetime(2025, 10, 20, 10, 0, tzinfo=CST)
    gc.collect()
    t0 = time.perf_counter()
    cold_alerts = engine.scan(now)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_alerts = engine.scan(now + timedelta(minutes=5))
    warm = time.perf_counter() - t0
    # reference: one working-minute index per case, on a calendar with warm year caches
    cal = engine.calendar
    t0 = time.perf_counter()
    for text in accept_times:
        cal.working_minute_index(datetime.fromisoformat(text))
    ref = time.perf_counter() - t0
    common = {"unit": "s", "target": f"< {SCAN_TARGET:g}", "reference": round(ref, 4)}
    return [
        {"name": f"periodic scan over {n_cases:,} open cases (cold)", "value": round(cold, 4), **common,
         "ratio": round(cold / ref, 2), "ok": cold < SCAN_TARGET, "alerts": len(cold_alerts)},
        {"name": f"periodic scan over {n_cases:,} open cases (warm)", "value": round(warm, 4), **common,
         "ratio": round(warm / ref, 2), "ok": warm < SCAN_TARGET, "alerts": len(warm_alerts)},
    ]  # fmt: skip


def bench_service(n_records: int) -> list[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    from adapters.synthetic import generate
    from node.app import enrol, ingest
    from node.core.calendar import CST as _CST
    from node.features.rules.overrides import load_calendar
    from node.features.rules.processor import RulesProcessor
    from node.features.rules.settings import RulesSettings

    with tempfile.TemporaryDirectory(prefix="fednode-bench-rules-") as tmp:
        home = enrol.init(Path(tmp) / "p", code="320000", name="江苏省", level="province")
        enrol.init_root(home)
        ledger = home.ledger()
        ingest.append_chunked(ledger, generate(n_records, 3, division="320303"))
        store = ledger.store
        # reference: the change feed alone, in the service's batch size
        t0 = time.perf_counter()
        after, read = 0, 0
        while batch := store.changes(after, limit=BATCH):
            read += len(batch)
            after = batch[-1].local_seq
        ref = read / (time.perf_counter() - t0)
        settings = RulesSettings()
        clock = lambda: datetime(2026, 11, 28, 10, 0, tzinfo=_CST)  # noqa: E731
        proc = RulesProcessor(ledger, settings, load_calendar(home.dir, settings), clock=clock)
        proc.rebuild()
        t0 = time.perf_counter()
        fed = 0
        while n := proc.step()[0]:
            fed += n
        proc.scan()
        rate = read / (time.perf_counter() - t0)  # the backlog it got through (it reads only rule inputs)
        t0 = time.perf_counter()
        again = RulesProcessor(ledger, settings, load_calendar(home.dir, settings), clock=clock)
        again.rebuild()
        rebuild_rate = read / (time.perf_counter() - t0)
        home.close()
    common = {"unit": "records/s", "target": "-", "reference": round(ref), "ok": True}
    return [
        {"name": f"rules service over a SQLite store ({read:,} records, {fed:,} read by the rules, "
                 f"{proc.appended:,} alerts)",
         "value": round(rate), **common, "ratio": round(rate / ref, 3)},
        {"name": f"rules service rebuild at restart ({read:,} records)", "value": round(rebuild_rate), **common,
         "ratio": round(rebuild_rate / ref, 3)},
    ]  # fmt: skip


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _service_memory_child(home_dir: str) -> None:
    """(``--rss-child DIR``) Run the rules service over DIR's store to the end, then scan; print JSON."""
    from pathlib import Path

    from node.core.calendar import CST as _CST
    from node.core.home import Home
    from node.features.rules.overrides import load_calendar
    from node.features.rules.processor import RulesProcessor
    from node.features.rules.settings import RulesSettings

    home = Home(Path(home_dir))
    ledger = home.ledger()
    settings = RulesSettings()
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    proc = RulesProcessor(ledger, settings, load_calendar(home.dir, settings),
                          clock=lambda: datetime(2026, 11, 28, 10, 0, tzinfo=_CST))  # fmt: skip
    proc.rebuild()
    read = 0
    while n := proc.step()[0]:
        read += n
    proc.scan()
    print(json.dumps({"base_mb": base, "peak_mb": _status_mb("VmHWM"), "read": read, "alerts": proc.appended,
                      "s": time.perf_counter() - t0, "held": proc.engine.held_case_count()}))  # fmt: skip
    home.close()


def bench_service_memory(small: int, big: int) -> list[dict[str, Any]]:
    import subprocess
    import tempfile
    from pathlib import Path

    from adapters.synthetic import generate
    from node.app import enrol, ingest

    got: dict[int, dict[str, Any]] = {}
    for n in (small, big):
        with tempfile.TemporaryDirectory(prefix="fednode-bench-rules-rss-") as tmp:
            home = enrol.init(Path(tmp) / "p", code="320000", name="江苏省", level="province")
            enrol.init_root(home)
            ingest.append_chunked(home.ledger(), generate(n, 3, division="320303"))
            home.close()
            # a fresh process: its peak is the service's alone, not this one's preload
            out = subprocess.run([sys.executable, "-m", "bench.bench_rules", "--rss-child", str(home.dir)],
                                 capture_output=True, text=True, check=True, timeout=3600)  # fmt: skip
            got[n] = json.loads(out.stdout.strip().splitlines()[-1])
    s, b = got[small], got[big]
    rows = []
    for n, r in got.items():
        rows.append({"name": f"rules service peak RSS over {n:,} preloaded records ({r['alerts']:,} alerts, "
                             f"{n / r['s']:,.0f} records/s)",
                     "value": round(r["peak_mb"], 1), "unit": "MB", "target": "-",
                     "reference": round(r["base_mb"], 1), "ratio": round(r["peak_mb"] / r["base_mb"], 3), "ok": True})  # fmt: skip
    grow = b["peak_mb"] / s["peak_mb"]
    rows.append({"name": f"rules service peak RSS growth {small:,} -> {big:,} records", "value": round(grow, 3),
                 "unit": "x", "target": "< 1.25", "reference": round(s["peak_mb"], 1), "ratio": round(grow, 3),
                 "ok": grow < 1.25})  # fmt: skip
    return rows


def run(size_factor: float = 1.0) -> list[dict[str, Any]]:
    """Measure every figure; ``size_factor`` scales 1M events, 100k cases, 200k stored records, and the
    100k / 500k records of the memory figure."""
    rows = [bench_events(max(1, int(1_000_000 * size_factor)))]
    rows.extend(bench_scan(max(1, int(100_000 * size_factor))))
    rows.extend(bench_service(max(1000, int(200_000 * size_factor))))
    rows.extend(bench_service_memory(max(2000, int(100_000 * size_factor)), max(10_000, int(500_000 * size_factor))))
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    from bench.harness import print_table

    print(print_table(rows))
    print("reference: events -> json.loads rate of the same payloads (events/s); "
          "scan -> one working-minute index per case (s); service -> reading the change feed alone (records/s); "
          "peak RSS -> the same process before the service starts (MB), growth -> the peak at the smaller size")


if __name__ == "__main__":
    from node.runtime import logging as node_logging

    node_logging.configure("warning")  # the rules service logs its rebuilds at info
    if len(sys.argv) > 2 and sys.argv[1] == "--rss-child":
        _service_memory_child(sys.argv[2])
    else:
        _print(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
