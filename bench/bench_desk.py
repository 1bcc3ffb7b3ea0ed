"""Desk benchmark (not a test): the supervision desk's pages under 20 signed-in sessions while a catch-up
drain runs into the same node (issue 17).

A province (320000) holds 1,000,000 cases × scale, fed as `cases` feeds its store (synthetic case events
through the node's ledger, node/app/ingest.py; the case index and the statistics tables brought up to
date, node/app/alerts.py ``catch_up``). Two cities (320300, 320500) each hold a backlog of their own
records, built while they were not running. Then, on real processes (``fednode run``, the desk on
127.0.0.1 in the province's process):

1. the province starts; its rules read the cases (the alerts they raise are the overview's); 20
   supervisors sign in through the login form (form token, session cookie), each in its own session;
2. reference: 20 sessions browse the desk with no drain (``IDLE_S`` seconds);
3. drain A: the first city starts and its backlog drains into the province, no desk traffic;
4. drain B: the second city, the same backlog, while the 20 sessions browse the desk.

Each session is a person at a browser: a page (总览 ``/``, 办件查询 ``/cases?…`` under a filter, one
case's timeline ``/cases/NO``), then ``THINK_S`` ± 50% seconds reading it; persistent HTTP connections,
cookies as the browser keeps them. Latency is measured at the client (request sent → body read).

Targets: p95 of each page < 300 ms during the drain; drain B's rate ≥ 90% of drain A's (same run,
same store, same backlog). Rates are counted as `fednode bench` counts drains (bench/harness.py
``drain``): from the moment the city answers on its admin socket to the moment the province holds its
whole backlog.

Run: ``python -m bench.bench_desk [scale]`` or ``fednode bench --only desk --scale S``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from bench import demo
from bench.harness import _cpu_s, _wait_rules_caught_up, preload, print_table

CASES = 1_000_000
EVENTS_PER_CASE = 8.85  # what the synthetic generator yields (adapters/synthetic.py)
BACKLOG = 600_000  # records of each city's backlog at scale 1
MIN_BACKLOG = 300_000  # a drain of a few seconds at least: shorter ones time mostly noise
SESSIONS = 20
THINK_S = 1.0
IDLE_S = 20.0
TARGET_P95_MS = 300.0
DRAIN_RATIO = 0.9
PASSWORD = "Bench-Desk-2026!"
TREE = [("320000", "江苏省", "province", None), ("320300", "徐州市", "city", "320000"),
        ("320500", "苏州市", "city", "320000"), ("320400", "常州市", "city", "320000"),
        ("320600", "南通市", "city", "320000")]
CITIES = ("320300", "320500", "320400", "320600")  # drains: quiet, busy, quiet, busy
CACHE_FORMAT = 2  # bump when build() or _prime() change what the cached tree holds
PAGES = ("overview", "search", "timeline")


# ---- the store ------------------------------------------------------------------------------------------------


def build(base: Path, n_cases: int, backlog: int) -> tuple[dict[str, Any], dict[str, float]]:
    """The tree's homes: the province with ``n_cases`` cases, its projections caught up; each city with
    ``backlog`` records of its own. Every record goes through the node's own ledger (signed, chained,
    checkpointed) as `fednode ingest` appends it: nothing is written around it."""
    from node.app import ingest
    from node.app.alerts import catch_up
    from node.core.home import Home

    homes = demo.build_tree(base / "desk", TREE)
    t0 = time.perf_counter()
    province = Home(homes["320000"].dir)
    ingest.append_chunked(province.ledger(), ingest.synthetic_items("320303", int(n_cases * EVENTS_PER_CASE), 17))
    t1 = time.perf_counter()
    catch_up(province, province.store())
    province.close()
    t2 = time.perf_counter()
    for seed, code in enumerate(CITIES, start=21):
        preload(homes[code].dir, backlog, seed)
    t3 = time.perf_counter()
    return homes, {"feed_s": t1 - t0, "index_s": t2 - t1, "backlog_s": t3 - t2}


def _prime(home: Any) -> dict[str, float]:
    """Start the province once and stop it when its rules have read every case and its projections folded
    what they raised: the state a province is in before the measured run."""
    proc = demo.start(home.dir)
    try:
        demo.wait_admin(home, timeout=300)
        rules_s = _wait_rules_caught_up(home, timeout=14400)
        fold_s = _caught_up(home, timeout=3600)
    finally:
        demo.stop_all({"320000": proc})
    return {"rules_s": rules_s, "fold_s": fold_s}


def _cache_key(n_cases: int, backlog: int) -> str:
    """What the cached tree depends on: its size, the schema's migrations and the generator's source (a
    changed schema or generator builds a new tree; `fednode run` would migrate an old one anyway)."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(repr((TREE, EVENTS_PER_CASE, CACHE_FORMAT)).encode())
    for path in sorted((root / "node/core/migrations/versions").glob("*.py")) + [root / "adapters/synthetic.py"]:
        h.update(path.name.encode() + path.read_bytes())
    return f"desk-{n_cases}-{backlog}-{h.hexdigest()[:12]}"


def cached_tree(base: Path, n_cases: int, backlog: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tree of ``build`` + ``_prime``, built once into ``$FEDNODE_BENCH_CACHE`` (default
    ~/.cache/fednode-bench) and copied into ``base`` for each run (the run changes its copy: the drains
    land in the province's store). The copy gets fresh link ports; certificates name hosts, not ports."""
    from node.core import config as config_mod
    from node.core.home import Home

    cache = Path(os.environ.get("FEDNODE_BENCH_CACHE") or Path.home() / ".cache" / "fednode-bench")
    done = cache / _cache_key(n_cases, backlog)
    built: dict[str, Any]
    if (done / "built.json").exists():
        built = {**json.loads((done / "built.json").read_text()), "cached": True}
    else:
        partial = cache / f"{done.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        t0 = time.perf_counter()
        homes, built = build(partial, n_cases, backlog)
        built.update(_prime(homes["320000"]))
        built["build_s"] = time.perf_counter() - t0
        (partial / "built.json").write_text(json.dumps(built))
        partial.rename(done)
        built["cached"] = False
    t0 = time.perf_counter()
    shutil.copytree(done / "desk", base / "desk", ignore=shutil.ignore_patterns("*.sock"))  # the node left its socket
    built["copy_s"] = time.perf_counter() - t0
    homes = {code: Home(base / "desk" / code) for code, *_ in TREE}
    port = demo.free_port()
    config_mod.set_field(homes["320000"].config.path, "link", "listen", f"127.0.0.1:{port}")
    for code in CITIES:
        config_mod.set_field(homes[code].config.path, "link", "parent", f"127.0.0.1:{port}")
    homes = {code: Home(base / "desk" / code) for code, *_ in TREE}  # the configs as now written
    return homes, built


def _sample(home: Any, k: int, seed: int) -> tuple[list[str], list[str]]:
    """(k case numbers, the departments) held at the province, for the sessions' requests."""
    from sqlalchemy import select

    from node.core.schema import stats as st
    from node.core.store import Store

    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        with store.read() as conn:
            nos = [r[0] for r in conn.execute(select(st.cases.c.case_no))]
            depts = sorted({r[0] for r in conn.execute(select(st.cases.c.dept).distinct())})
    finally:
        store.close()
    return random.Random(seed).sample(nos, min(k, len(nos))), depts


def _caught_up(home: Any, timeout: float) -> float:
    """Seconds until the node's case index and statistics have folded its feed as it was on entry (the
    node's own services keep appending: a moving mark is never reached while they fold gently). The
    statistics' cursor stays on the last record it folds (it does not claim the records of other kinds
    after it): it is caught up when no record of its kinds up to the mark lies beyond it."""
    from node.core.store import Store
    from node.features.stats import projection

    t0 = time.perf_counter()
    high = -1
    while time.perf_counter() - t0 < timeout:
        store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
        try:
            if high < 0:
                high = int(store.get_meta("local_seq", "0") or 0)
            cases_done = int(store.get_meta("cases.cursor", "0") or 0) >= high
            pending = store.changes(projection.cursor(store), 1, kinds=projection.KINDS)
            stats_done = not pending or pending[0].local_seq > high
        finally:
            store.close()
        if cases_done and stats_done:
            break
        time.sleep(0.5)
    return time.perf_counter() - t0


# ---- a browser's session ----------------------------------------------------------------------------------------


class Session:
    """One signed-in person: a persistent connection, the cookies the desk sets."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        for line in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "Max-Age=0" in line or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return r.status, data

    def login(self, login: str) -> None:
        status, page = self.request("GET", "/login")
        m = re.search(rb'name="form_token" value="([^"]+)"', page)
        if status != 200 or m is None:
            raise RuntimeError(f"the desk's sign-in form did not come ({status})")
        form = urlencode({"form_token": m.group(1).decode(), "login": login, "password": PASSWORD}).encode()
        status, _ = self.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 303 or not self.cookies:
            raise RuntimeError(f"{login} could not sign in on the desk ({status})")
        status, _ = self.request("GET", "/")
        if status != 200:
            raise RuntimeError(f"{login} signed in but the overview answered {status}")


def _paths(rng: random.Random, nos: list[str], depts: list[str]) -> tuple[str, str]:
    from node.features.cases.view import STATES

    page = rng.choice(PAGES)
    if page == "overview":
        return page, "/"
    if page == "timeline":
        return page, f"/cases/{quote(rng.choice(nos))}"
    q: dict[str, Any] = rng.choice([{}, {"dept": rng.choice(depts)}, {"state": rng.choice(STATES)},
                                    {"since": "2026-06-01"}, {"dept": rng.choice(depts), "state": rng.choice(STATES)}])
    if rng.random() < 0.3:
        q["offset"] = rng.randrange(0, 1000, 50)
    return page, "/cases" + (f"?{urlencode(q)}" if q else "")


class Browsing:
    """The sessions browsing the desk, each on its own thread, until ``stop``."""

    def __init__(self, sessions: list[Session], nos: list[str], depts: list[str], seed: int) -> None:
        self.sessions, self.nos, self.depts, self.seed = sessions, nos, depts, seed
        self.times: dict[str, list[float]] = {p: [] for p in PAGES}
        self.log: list[tuple[str, float, float]] = []  # (page, sent at, seconds to the whole answer)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _run(self, s: Session, rng: random.Random) -> None:
        self._stop.wait(rng.uniform(0, THINK_S))  # the sessions do not click in step
        while not self._stop.is_set():
            page, path = _paths(rng, self.nos, self.depts)
            t0 = time.perf_counter()
            try:
                status, _body = s.request("GET", path)
            except (OSError, http.client.HTTPException) as e:
                status = -1
                with self._lock:
                    self.errors.append(f"{path}: {e!r}")
            took = time.perf_counter() - t0
            with self._lock:
                self.times[page].append(took)
                self.log.append((page, t0, took))
                if status != 200 and status != -1:
                    self.errors.append(f"{path}: HTTP {status}")
            self._stop.wait(rng.uniform(0.5 * THINK_S, 1.5 * THINK_S))

    def __enter__(self) -> Browsing:
        for i, s in enumerate(self.sessions):
            t = threading.Thread(target=self._run, args=(s, random.Random(self.seed * 1000 + i)), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


# ---- the drain --------------------------------------------------------------------------------------------------


def _drain(homes: dict[str, Any], child: str, procs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start ``child``; time its backlog into the province (bench/harness.py ``drain``'s count)."""
    t_start = time.perf_counter()
    procs[child] = demo.start(homes[child].dir)
    demo.wait_admin(homes[child], timeout=120)
    t0 = time.perf_counter()
    want = demo.leaf_heads(homes, [child])
    heads = demo.root_heads(homes["320000"])
    held0 = sum(min(heads.get(k, 0), v) for k, v in want.items())
    ok, want = demo.wait_converged(homes, [child], "320000", timeout=timeout, progress=False)
    t1 = time.perf_counter()
    total = sum(want.values())
    return {"ok": ok, "records": total, "elapsed_s": t1 - t0, "rate": (total - held0) / (t1 - t0),
            "held_at_start": held0, "waited_s": t0 - t_start, "t0": t0, "t1": t1}


# ---- the run ----------------------------------------------------------------------------------------------------


def measure(base: Path, n_cases: int, backlog: int) -> dict[str, Any]:
    from node.core import admin_client as admin
    from node.core import config as config_mod

    homes, built = cached_tree(base, n_cases, backlog)
    province = homes["320000"]
    port = demo.free_port()
    config_mod.set_field(province.config.path, "desk", "listen", f"127.0.0.1:{port}")
    nos, depts = _sample(province, 2000, 17)
    procs: dict[str, Any] = {}
    drains: list[dict[str, Any]] = []
    busy: dict[str, list[float]] = {p: [] for p in PAGES}
    errors: list[str] = []
    try:
        t1 = time.perf_counter()
        procs["320000"] = demo.start(province.dir)
        demo.wait_admin(province, timeout=300)
        rules_s = _wait_rules_caught_up(province, timeout=7200)
        fold_s = _caught_up(province, timeout=900)
        started_s = time.perf_counter() - t1
        logins = [f"jc{i:02d}" for i in range(SESSIONS)]
        for login in logins:
            r = admin.call(province, {"op": "people", "action": "add", "auth": {"os_user": "root"}, "login": login,
                                      "name": f"监察员{login[2:]}", "roles": ["supervisor"], "scope": "320000",
                                      "password": PASSWORD}, timeout=120)
            if r is None or not r.get("ok", True):
                raise RuntimeError(f"adding {login} failed: {r}")
        sessions = []
        for login in logins:
            s = Session(port)
            s.login(login)
            sessions.append(s)
        pid = procs["320000"].pid
        cpu0 = _cpu_s(pid)
        with Browsing(sessions, nos, depts, seed=1) as idle:
            time.sleep(IDLE_S)
        idle_cpu = _cpu_s(pid) - cpu0
        errors += idle.errors
        for i, city in enumerate(CITIES):
            _wait_rules_caught_up(province, timeout=3600)  # the previous drain's records read and folded
            _caught_up(province, timeout=600)
            cpu0 = _cpu_s(pid)
            if i % 2 == 0:
                d = {**_drain(homes, city, procs, timeout=3600), "desk": False}
            else:
                with Browsing(sessions, nos, depts, seed=2 + i) as b:
                    d = {**_drain(homes, city, procs, timeout=3600), "desk": True}
                for page, sent, took in b.log:  # the requests sent while the drain ran
                    if d["t0"] <= sent <= d["t1"]:
                        busy[page].append(took)
                errors += b.errors
            d["cpu_s"] = _cpu_s(pid) - cpu0
            drains.append(d)
        for s in sessions:
            s.conn.close()
    finally:
        demo.stop_all(procs)
    return {"cases": n_cases, "built": built, "rules_s": rules_s, "fold_s": fold_s, "started_s": started_s,
            "drains": drains, "busy": busy, "idle": idle.times, "errors": errors, "idle_cpu_s": idle_cpu}


def run(scale: float = 1.0) -> list[dict[str, Any]]:
    n_cases, backlog = sizes(scale)
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-desk-"))
    try:
        r = measure(base, n_cases, backlog)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows_of(r, n_cases)


def sizes(scale: float) -> tuple[int, int]:
    """(cases at the province, records of each city's backlog) at this scale."""
    return max(2000, int(CASES * scale)), max(MIN_BACKLOG, int(BACKLOG * scale))


def _rate(drains: list[dict[str, Any]]) -> float:
    """Records drained per second over these drains together."""
    secs = sum(d["elapsed_s"] for d in drains)
    return sum(d["records"] - d["held_at_start"] for d in drains) / secs if secs else 0.0


def rows_of(r: dict[str, Any], n_cases: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    names = {"overview": "总览 /", "search": "办件查询 /cases?…", "timeline": "办件时间线 /cases/NO"}
    b = r["built"]
    idle_n = sum(len(v) for v in r["idle"].values())
    cpu_ms = r["idle_cpu_s"] * 1000 / idle_n if idle_n else float("nan")
    for page in PAGES:
        busy, idle = r["busy"][page], r["idle"][page]
        p95, p50 = _pct(busy, 0.95) * 1000, _pct(busy, 0.5) * 1000
        rows.append({"name": f"desk {names[page]} p95, {n_cases:,} cases, {SESSIONS} sessions, during drain",
                     "value": round(p95, 1), "unit": "ms", "target": f"< {TARGET_P95_MS:g}",
                     "reference": f"p50 {p50:.1f} ms over {len(busy)} requests sent while a drain ran; no drain "
                                  f"(same sessions, {IDLE_S:g} s): p95 {_pct(idle, 0.95) * 1000:.1f} ms, p50 "
                                  f"{_pct(idle, 0.5) * 1000:.1f} ms over {len(idle)}; think time {THINK_S:g} s ±50%",
                     "ratio": round(p95 / (_pct(idle, 0.95) * 1000), 2) if idle else None,
                     "ok": p95 < TARGET_P95_MS and not r["errors"]})
    quiet = [d for d in r["drains"] if not d["desk"]]
    loaded = [d for d in r["drains"] if d["desk"]]
    q, lo = _rate(quiet), _rate(loaded)
    ratio = lo / q if q else 0.0

    def each(ds: list[dict[str, Any]]) -> str:
        return ", ".join(f"{(d['records'] - d['held_at_start']) / d['elapsed_s']:,.0f}/s" for d in ds)

    cpu = ", ".join(f"{d['cpu_s']:.1f}" for d in r["drains"])
    rows.append({"name": f"desk: drain into the desk's node with {SESSIONS} sessions browsing", "value": round(lo),
                 "unit": "records/s", "target": f"ratio >= {DRAIN_RATIO:g}",
                 "reference": f"drains alternate without and with desk traffic, {len(r['drains'])} of "
                              f"{r['drains'][0]['records']:,} records: without {q:,.0f}/s ({each(quiet)}), with "
                              f"{each(loaded)}; the node's CPU per drain {cpu} s; "
                              f"desk pages cost {cpu_ms:.1f} ms of the node's CPU each (no drain); errors "
                              f"{len(r['errors'])}" + (f" (first: {r['errors'][0]})" if r["errors"] else ""),
                 "ratio": round(ratio, 3), "ok": all(d["ok"] for d in r["drains"]) and ratio >= DRAIN_RATIO})
    how = "taken from the cache" if b.get("cached") else "built and cached"
    rows.append({"name": f"desk: store of {n_cases:,} cases ({how})", "value": round(b["build_s"], 1), "unit": "s",
                 "target": "-", "reference": f"fed {b['feed_s']:.0f} s, indexed and folded {b['index_s']:.0f} s, "
                                             f"backlogs {b['backlog_s']:.0f} s, the province's rules {b['rules_s']:.0f} s "
                                             f"and folds {b['fold_s']:.0f} s; copied in {b['copy_s']:.0f} s; the "
                                             f"node started and caught up in {r['started_s']:.0f} s",
                 "ratio": None, "ok": True})
    return rows


def main(argv: list[str]) -> int:
    nums = [a for a in argv if a.replace(".", "", 1).isdigit()]
    scale = float(nums[0]) if nums else 1.0
    if "--build" in argv:  # only the cached tree (a 1M-case province takes a while, once)
        base = Path(tempfile.mkdtemp(prefix="fednode-bench-desk-"))
        try:
            _homes, built = cached_tree(base, *sizes(scale))
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(json.dumps(built, indent=2))
        return 0
    rows = run(scale)
    if "--json" in argv:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(print_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
