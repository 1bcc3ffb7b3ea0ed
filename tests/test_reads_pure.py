"""Reads are pure (issue 14): status, health, metrics, every list/show, stats, worklog, verify, proof,
calendar show and adapters list append nothing to any log, on a running or a stopped node; the work
log (node/auditlog.py) gets what people do, and at most one "visit" per person per day.

The acceptance test is a real tree (province > city > county, each a `fednode run` process, real
mTLS links): settled, then 200 calls of every read at the county (in-process `cli.main`, the way the
CLI talks to a running node: its admin socket), HTTP scrapes of its metrics endpoint and a few real
`fednode` subprocesses; every log's head at the three nodes is the same before and after, and the
county and the city report the same `logs` for the county.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.demo import free_port
from node.core.home import Home
from node.features import worklog as auditlog
from node.features.stats.config import SupervisorRules
from node.interfaces.cli import main as cli
from tests.conftest import Tree, add_person
from tests.faultlib import CHAIN, CITY, COUNTY, PROVINCE, Cluster, open_store, wait_for

ACTOR, ACTOR_NAME = "zhangjc", "张监察"  # the supervisor who reads: a person of the node (login, name)
DEPT = f"{COUNTY}-SC"  # a department under the county: a complaint registered at the county goes to it


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue()


def heads_of(homes: dict[str, Home]) -> dict[str, dict[tuple[str, int], tuple[int, str]]]:
    out = {}
    for code, home in homes.items():
        store = open_store(home)
        try:
            out[code] = {k: (h.seq, h.chain.hex()) for k, h in store.heads().items()}
        finally:
            store.close()
    return out


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """node -> the logs whose head moved ("origin/channel: seq a -> b")."""
    out: dict[str, list[str]] = {}
    for node, logs in after.items():
        moved = [f"{o}/{c}: {before[node].get((o, c), (0, ''))[0]} -> {h[0]}"
                 for (o, c), h in sorted(logs.items()) if before[node].get((o, c)) != h]
        if moved:
            out[node] = moved
    return out


def reads(d: str, ticket: str, complaint: str, alert_id: str, quarantine_id: int) -> list[list[str]]:
    """Every read command of the issue (and the later read-only ones where this tree has them)."""
    argvs = [
        ["status", d, "--json"], ["status", d, "--tree"], ["status", d, "--logs"], ["health", d, "--json"], ["metrics", d],
        ["alerts", "list", d, "--json"], ["alerts", "show", d, alert_id],
        ["tickets", "list", d, "--json"], ["tickets", "show", d, ticket],
        ["complaints", "list", d, "--json"], ["complaints", "show", d, complaint],
        ["quarantine", "list", d, "--json"], ["quarantine", "show", d, str(quarantine_id)],
        ["stats", d, "--json"], ["worklog", d, "--json"], ["verify", d, "--json"],
        ["proof", d, COUNTY, "bulk", "1"], ["calendar", "show", d, "--json"], ["adapters", "list", d, "--json"],
        ["pki", "keys", d, "--json"], ["check", d, "--json"], ["notify", "dead-letters", d, "--json"],
    ]
    cli.build_parser()  # registers every feature module's commands
    return [a for a in argvs if a[0] in cli.COMMANDS or " ".join(a[:2]) in cli.COMMANDS]


def logs_of(status: dict[str, Any], origin: str) -> list[dict[str, Any]]:
    return [lg for lg in status["logs"] if lg["origin"] == origin]


# ---- the classification --------------------------------------------------------------------------------------


def test_every_command_is_classified_once() -> None:
    """Each command is a read, a desk read (daily visit), an act recorded by its own transaction, an act
    recorded after it succeeds, or not logged: never by default, so a new command is decided on purpose."""
    cli.build_parser()
    sets = {"read": auditlog.READS, "visit": auditlog.VISIT_READS, "self": auditlog.SELF_RECORDED,
            "skip": auditlog.NOT_LOGGED, "action": auditlog.ACTIONS}
    for name in cli.COMMANDS:
        homes = [k for k, s in sets.items() if name in s]
        assert len(homes) == 1, f"`fednode {name}` is in {homes or 'no set'} of node/auditlog.py"
        assert auditlog.classify(name) == homes[0]


# ---- the supervisor rules from the records that remain --------------------------------------------------------


T0 = datetime(2025, 11, 10, 9, 0, tzinfo=auditlog.CST)
RULES = SupervisorRules(login_days=7, alert_days=3, ticket_days=2, escalate_after_days=1)


def _alert(alert_id: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "rule_id": "case_time", "category": "01", "level": 3, "object": "case",
            "division": COUNTY, "message": "超期", "at": T0.isoformat(), "source": "engine"}


def test_looking_is_presence_not_handling() -> None:
    """alert_unhandled: an alert is handled by `alerts handle` (an act targeting it) or a ticket naming it
    in alert_ids; an `alerts show` (as older versions recorded it) is not. login: a visit is presence."""
    records: list[tuple[str, str, dict[str, Any]]] = [
        ("alert", COUNTY, _alert("a-looked")), ("alert", COUNTY, _alert("a-handled")),
        ("alert", COUNTY, _alert("a-ticketed")),
        ("audit.action", COUNTY, auditlog.action_payload("李四", "alerts show", "a-looked", {}, T0)),
        ("audit.action", COUNTY, auditlog.action_payload("李四", "alerts handle", "a-handled", {"note": "已核实"}, T0)),
        ("ticket.issue", CITY, {"ticket": "320300-000001", "alert_ids": ["a-ticketed"]}),
        ("audit.action", COUNTY, auditlog.action_payload("王五", "visit", "", {"via": "alerts list"},
                                                         T0 + timedelta(days=5))),
    ]
    facts = auditlog.facts_from_records(COUNTY, records)
    assert facts.acted_targets == {"a-handled"} and facts.ticketed_alerts == {"a-ticketed"}
    due = auditlog.supervisor_actions(facts, RULES, T0 + timedelta(days=8))
    got = sorted((d.payload["rule"], d.payload["subject"], d.payload["message"]) for d in due)
    assert [(r, s) for r, s, _m in got] == [("alert_unhandled", "alerts@2025-11-13"), ("login", "李四")]
    assert "a-looked" in got[0][2] and "a-handled" not in got[0][2] and "a-ticketed" not in got[0][2]
    # 王五 visited on day 5: his login reminder falls due only on day 12
    assert [d.payload["subject"] for d in auditlog.supervisor_actions(facts, RULES, T0 + timedelta(days=12))
            if d.payload["rule"] == "login"] == ["李四", "王五"]


# ---- a stopped node -------------------------------------------------------------------------------------------


def test_reads_on_a_stopped_node_spool_one_visit_a_day_and_nothing_else(tree: Tree) -> None:
    home = tree.county
    d = str(home.dir)
    me = add_person(home, ACTOR, ACTOR_NAME, "监察员", session=True)  # signed in: `--as` needs no password
    assert run("ingest", d, "--synthetic", "20")[0] == 0  # an act (of the OS operator): spooled
    auditlog.drain_spool(home.dir, home.ledger())
    spool = home.dir / auditlog.SPOOL
    assert not spool.exists()
    before = heads_of({COUNTY: home})
    argvs = [a for a in reads(d, "none", "none", "none", 1) if a[0] not in ("tickets", "complaints", "alerts",
                                                                             "quarantine")]
    argvs += [["alerts", "list", d], ["tickets", "list", d], ["complaints", "list", d]]
    for _ in range(20):
        for argv in argvs:
            rc, _out = run(*argv, *me)
            assert rc == (1 if argv[0] == "health" else 0), argv  # health: no node answers
    assert heads_of({COUNTY: home}) == before
    lines = spool.read_text(encoding="utf-8").splitlines()
    assert [(p["actor"], p["action"], p["by"]["name"]) for p in map(json.loads, lines)] == [
        (ACTOR, "visit", ACTOR_NAME)]
    # the running node appends it once; the day is then known, so later reads spool nothing
    assert auditlog.drain_spool(home.dir, home.ledger()) == 1
    assert run("stats", d, *me)[0] == 0 and run("worklog", d, *me)[0] == 0
    assert not spool.exists()
    after = heads_of({COUNTY: home})
    assert changed(before, after) == {COUNTY: [f"{COUNTY}/1: {before[COUNTY][(COUNTY, 1)][0]} -> "
                                               f"{before[COUNTY][(COUNTY, 1)][0] + 1}"]}
    # a visit spooled twice for the same day (two CLIs at once) still enters the log once
    auditlog.spool(home.dir, auditlog.action_payload("赵六", auditlog.VISIT, "", {"via": "stats"}))
    auditlog.spool(home.dir, auditlog.action_payload("赵六", auditlog.VISIT, "", {"via": "worklog"}))
    auditlog.spool(home.dir, auditlog.action_payload(ACTOR, auditlog.VISIT, "", {"via": "stats"}))
    assert auditlog.drain_spool(home.dir, home.ledger()) == 1


def test_acts_are_recorded_once_with_the_person(tree: Tree) -> None:
    """A ticket act writes its own work-log entry (no second one from the CLI), named for the person acting;
    `alerts handle` records the handling; `tickets issue --alert` names the alerts it deals with."""
    from node.app import ingest

    city, county = str(tree.city.dir), str(tree.county.dir)
    me = add_person(tree.city, ACTOR, ACTOR_NAME, "监察员")
    li = add_person(tree.county, "li", "李四", "监察员")
    alert = _alert("a-1") | {"at": datetime.now(auditlog.CST).isoformat(timespec="seconds")}
    ingest.run_request(tree.county.ledger(), {"records": [{"position": "t:1", "kind": "alert", "payload": alert}]})
    rc, out = run("tickets", "issue", city, "--to", COUNTY, "--subject", "督办", "--body", "请整改", "--alert", "a-1",
                  "--json", *me)
    assert rc == 0, out
    rc, out = run("alerts", "handle", county, "a-1", "--note", "已核实", "--json", *li)
    handled = json.loads(out)["handled"]
    assert rc == 0 and handled["actor"] == "li" and handled["by"]["name"] == "李四"
    assert run("alerts", "handle", county, "nope", "--note", "x", *li)[0] != 0  # not held here: nothing recorded
    from node.app.stats import audit_records

    city_log = [p for k, _w, p in audit_records(tree.city.store()) if k == auditlog.ACTION]
    assert [(p["actor"], p["action"], p["detail"].get("alert_ids"), p["by"]["name"]) for p in city_log
            if p["action"] != "users add"] == [(ACTOR, "ticket.issue", ["a-1"], ACTOR_NAME)]
    # `alerts handle` is a disposal (issue 25): its signed alert.dispose and its work-log entry in one transaction,
    # on the store of the stopped county as every ticket act is (nothing spooled, nothing twice)
    assert not auditlog._read_spool(tree.county.dir / auditlog.SPOOL)
    county_log = [p for k, _w, p in audit_records(tree.county.store()) if k == auditlog.ACTION
                  and p["action"] != "users add"]
    assert [(p["actor"], p["action"], p["target"], p["detail"]["note"], p["detail"]["via"], p["by"]["name"])
            for p in county_log] == [("li", "alerts dispose", "a-1", "已核实", "alerts handle", "李四")]


# ---- the running tree -----------------------------------------------------------------------------------------


def _fednode(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDNODE_USER": ""})


@pytest.mark.slow
def test_reads_at_a_running_county_leave_every_log_unchanged(tmp_path: Path) -> None:
    calls = int(os.environ.get("FEDNODE_READS_CALLS", "200"))
    with Cluster(tmp_path, [*CHAIN, (DEPT, "云龙区市场监管局", "department", COUNTY)]) as cl:
        mport = free_port()
        cl.set_config(COUNTY, "metrics", "listen", f"127.0.0.1:{mport}")
        cl.start(PROVINCE, CITY, COUNTY)  # the department stays down: its ticket waits at the county
        homes = {c: cl.homes[c] for c in (PROVINCE, CITY, COUNTY)}
        d, dc = str(cl.homes[COUNTY].dir), str(cl.homes[CITY].dir)
        # the people: the county's supervisor reads (signed in once), the city's issues, the county's registers
        me = add_person(cl.homes[COUNTY], ACTOR, ACTOR_NAME, "监察员", session=True)
        city_sup = add_person(cl.homes[CITY], "qian", "钱七", "监察员", session=True)
        # something of every kind to read: cases, an alert, a quarantined row, a ticket from above, a complaint
        cl.ingest(COUNTY, 200, 1)
        now = datetime.now(auditlog.CST).isoformat(timespec="seconds")
        rows = tmp_path / "rows.jsonl"
        rows.write_text(json.dumps({"kind": "alert", "payload": _alert("A-1") | {"at": now}}) + "\n"
                        + json.dumps({"kind": "case.apply", "payload": {"case_no": "X"}}) + "\n", encoding="utf-8")
        assert run("ingest", d, str(rows))[0] == 1  # one row quarantined
        rc, out = run("tickets", "issue", dc, "--to", COUNTY, "--subject", "督办", "--body", "请核查", "--json",
                      *city_sup)
        assert rc == 0, out
        ticket = json.loads(out)["ticket"]
        rc, out = run("complaints", "register", d, "--complainant", "群众", "--respondent-unit", DEPT,
                      "--content", "办事慢", "--source", "12345 热线", "--due-days", "5", "--json", *me)
        assert rc == 0, out
        complaint = json.loads(out)["complaint_no"]
        rc, out = run("quarantine", "list", d, "--json", *me)
        quarantine_id = json.loads(out)["rows"][0]["id"]
        # the supervisor's first look of the day: the one visit it leaves
        assert run("alerts", "list", d, *me)[0] == 0

        def settled() -> bool:
            h = heads_of(homes)
            sub = {k: v for k, v in h[COUNTY].items() if not k[0].startswith(DEPT)}
            return (all(h[CITY].get(k) == v for k, v in sub.items())
                    and all(h[PROVINCE].get(k) == v for k, v in h[CITY].items()))

        prev: list[Any] = [None]

        def quiet() -> bool:  # settled, and nothing moved for a second
            now_heads = heads_of(homes) if settled() else None
            same = now_heads is not None and now_heads == prev[0]
            prev[0] = now_heads
            return same

        wait_for(quiet, 90, "the tree settled", every=1.0)
        day = datetime.now(auditlog.CST).date()
        before = heads_of(homes)
        status_before = {c: json.loads(run("status", str(cl.homes[c].dir), "--json", "--logs")[1]) for c in (COUNTY, CITY)}
        assert logs_of(status_before[COUNTY], COUNTY) == logs_of(status_before[CITY], COUNTY)
        assert {lg["channel"] for lg in logs_of(status_before[COUNTY], COUNTY)} >= {"control", "monitor", "bulk"}

        argvs = reads(d, ticket, complaint, "A-1", quarantine_id)
        t0 = time.monotonic()
        for argv in argvs:
            for _ in range(calls):
                rc, out = run(*argv, *me)
                assert rc == 0, (argv, out)
        took = time.monotonic() - t0
        for _ in range(calls):  # the Prometheus scraper
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
                assert resp.status == 200 and b"fednode_" in resp.read()
        for argv in (["status", d, "--json"], ["health", d], ["alerts", "list", d], ["tickets", "show", d, ticket]):
            p = _fednode(*argv, *me)
            assert p.returncode == 0, p.stderr
        time.sleep(3.0)  # anything written would be on its way up by now
        after = heads_of(homes)
        if datetime.now(auditlog.CST).date() != day:
            pytest.skip("the run crossed midnight: the new day's first read is a visit (by design)")
        print(f"\n{len(argvs)} reads x {calls} in-process calls in {took:.1f}s, {calls} scrapes, 4 subprocesses")
        assert changed(before, after) == {}
        status_after = {c: json.loads(run("status", str(cl.homes[c].dir), "--json", "--logs")[1]) for c in (COUNTY, CITY)}
        assert logs_of(status_after[COUNTY], COUNTY) == logs_of(status_after[CITY], COUNTY) \
            == logs_of(status_before[COUNTY], COUNTY)
        assert not (cl.homes[COUNTY].dir / auditlog.SPOOL).exists()

        # the county stopped: reads still write nothing (today's visit is already in its log)
        cl.stop(COUNTY)
        before = heads_of(homes)
        for argv in argvs:
            for _ in range(5):
                rc, out = run(*argv, *me)
                assert rc == (1 if argv[0] == "health" else 0), (argv, out)
        assert changed(before, heads_of(homes)) == {}
        assert not (cl.homes[COUNTY].dir / auditlog.SPOOL).exists()
