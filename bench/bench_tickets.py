"""Ticket latency benchmark (not a test): printed figures beside references measured in the same run.

Three processes (province 320000 ← city 320300 ← county 320303, mutual TLS, SQLite). The county
store is preloaded with a bulk backlog (100k case events) before the nodes start, as bench/harness.py
does, so the backlog drains up while we measure:

- ticket down: `tickets issue` at the province until the county holds the ticket; target < 2 s;
- reply up: `tickets reply` at the county until the province holds the reply; target < 2 s;
each the median of 3 tickets in a row, all while the backlog drains. The acts are a person's, as in
production: a 监察员 of the province issues, a 部门监察 of the county signs and replies, each signed in
once before the nodes start (a session token in ``auth``, so no argon2 check sits inside the figures).

References, measured in the same run: the same two on an idle tree (no backlog), ratio = loaded / idle;
and bench/harness.py's bare control record (``link.ping``) from the county to the province under the
same backlog, i.e. what the links alone achieve, without any ticket work.
A row is ok only if the bulk backlog was still draining when the figure was taken.

Run: ``python -m bench.bench_tickets [backlog]``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import demo
from bench.harness import CHAIN, control_latency, print_table
from node.app import people
from node.core import admin_client as admin
from node.core.home import Home
from node.core.store import Store

TARGET_S = 2.0
BULK = 3
PASSWORD = "Bench-Tickets-2026!"  # the bench's own throwaway people


def _open(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def _holds(store: Store, table: str, origin: str, kind: str, ticket: str) -> bool:
    # restricted to one control log: the primary key prefix, never a scan of the bulk records
    with store.read() as conn:
        rows = conn.execute(text(f"SELECT body FROM {table} WHERE origin = :o AND channel = 1 AND kind = :k"),
                            {"o": origin, "k": kind}).fetchall()
    return any(ticket.encode() in bytes(r[0]) for r in rows)


def _wait(store: Store, table: str, origin: str, kind: str, ticket: str, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not _holds(store, table, origin, kind, ticket):
        if time.perf_counter() - t0 > timeout:
            return float("inf")
        time.sleep(0.005)
    return time.perf_counter() - t0


def _person(home: Home, login: str, name: str, role: str) -> dict[str, str]:
    """A person of ``home`` (the node stopped: on its store), signed in: the ``auth`` of their session."""
    ledger, policy = home.ledger(), people.policy_of(home)
    people.execute(ledger, policy, {"action": "add", "auth": {"os_user": "bench"}, "login": login, "name": name,
                                    "roles": [role], "password": PASSWORD})
    signed_in = people.execute(ledger, policy, {"action": "login", "login": login, "password": PASSWORD,
                                                "via": "bench"})
    return {"login": login, "token": str(signed_in["token"])}


def _call(home: Home, req: dict[str, Any]) -> dict[str, Any]:
    resp = admin.call(home, {"op": "tickets", **req})
    assert resp is not None, f"{home.code} is not running"
    return dict(resp["result"])


def round_trip(base: Path, backlog: int, samples: int = 3) -> dict[str, Any]:
    downs: list[float] = []
    ups: list[float] = []
    homes = demo.build_tree(base, CHAIN)
    issuer = _person(homes["320000"], "sup", "省监察员", "supervisor")
    replier = _person(homes["320303"], "dept", "区部门监察", "dept_supervisor")
    if backlog:
        from bench.harness import preload

        preload(homes["320303"].dir, backlog, 3)
    procs = {code: demo.start(homes[code].dir) for code, *_ in CHAIN}
    province, county = _open(homes["320000"]), _open(homes["320303"])
    try:
        for code, *_ in CHAIN:
            demo.wait_admin(homes[code])
        time.sleep(1.0)  # links up; the bulk backlog is draining now
        for _ in range(samples):
            t0 = time.perf_counter()
            ticket = _call(homes["320000"], {"action": "issue", "to": "320303", "subject": "bench", "body": "x",
                                               "auth": issuer})
            ticket_no = str(ticket["ticket"])
            _wait(county, "down_records", "320000", "ticket.issue", ticket_no)
            downs.append(time.perf_counter() - t0)
            _wait(county, "records", "320303", "ticket.delivered", ticket_no)  # the receipt, before signing
            _call(homes["320303"], {"action": "act", "verb": "sign", "ticket": ticket_no, "fields": {},
                                    "auth": replier})
            t1 = time.perf_counter()
            _call(homes["320303"], {"action": "act", "verb": "reply", "ticket": ticket_no,
                                    "fields": {"text": "ok"}, "auth": replier})
            _wait(province, "records", "320303", "ticket.reply", ticket_no)
            ups.append(time.perf_counter() - t1)
        bulk_at_root = province.head("320303", BULK).seq
    finally:
        demo.stop_all(procs)
        province.close()
        county.close()
    return {"down_s": statistics.median(downs), "up_s": statistics.median(ups), "samples": samples,
            "down_all": downs, "up_all": ups, "bulk_at_root": bulk_at_root, "backlog": backlog,
            "draining": backlog == 0 or bulk_at_root < backlog}


def run(backlog: int = 100_000) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="fednode-bench-tickets-"))
    try:
        idle = round_trip(base / "idle", 0)
        loaded = round_trip(base / "loaded", backlog)
        raw = control_latency(base, backlog)["latency_s"]  # the links alone: a bare control record
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for key, name in (("down_s", "ticket province→county during bulk drain"),
                      ("up_s", "reply county→province during bulk drain")):
        load = os.getloadavg()[0]
        rows.append({
            "name": name + f" (median of {loaded['samples']})", "value": round(loaded[key], 3), "unit": "s", "target": f"< {TARGET_S:g}",
            "reference": f"idle tree {idle[key]:.3f} s; bare control record up {raw:.3f} s under the same "
                         f"backlog; bulk at root {loaded['bulk_at_root']} of {backlog}; load average {load:.1f}",
            "ratio": round(loaded[key] / idle[key], 2) if idle[key] > 0 else None,
            "ok": loaded[key] < TARGET_S and loaded["draining"],
        })
    return rows


def main(argv: list[str]) -> int:
    numbers = [a for a in argv if a.isdigit()]
    backlog = int(numbers[0]) if numbers else 100_000
    rows = run(backlog)
    if "--json" in argv:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(print_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1  # --json may follow the backlog


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
