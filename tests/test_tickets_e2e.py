"""Tickets across a tree of real processes with mutual TLS (issue 5 acceptance).

province 320000 ← city 320300 ← county 320303. With the city stopped the province issues a ticket to
320303: `tickets show` says where it waits. The city comes back, the ticket is delivered (the county
writes the receipt by itself), 320303 signs and replies, the province returns it, 320303 replies
again, the province concludes; at the end every node's projection agrees, with every step's time,
actor and node. Then a second ticket while the county is down: the province says it is held at the
city, whose link to the county is down, and it is delivered when the county returns. The CLI is used throughout, talking to each running node over its admin socket.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench.demo import build_tree, start, stop_all, wait_admin
from node.core.home import Home
from node.interfaces.cli import main as cli
from node.runtime import logging as node_logging
from tests.conftest import add_person

pytestmark = pytest.mark.slow

PROVINCE, CITY, COUNTY = "320000", "320300", "320303"
CHAIN = [
    (PROVINCE, "江苏省", "province", None),
    (CITY, "徐州市", "city", PROVINCE),
    (COUNTY, "云龙区", "county", CITY),
]


@pytest.fixture(autouse=True)
def _log_to_the_real_stderr() -> Iterator[None]:
    """cli.main binds structlog to the stream it finds, here pytest's capture, closed after the test:
    put it back so later tests (any file) do not log into a closed file."""
    yield
    node_logging.configure("warning", stream=sys.__stderr__)


def fednode(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc = cli.main([*argv, "--json"])
    captured = capsys.readouterr()
    assert rc == 0, f"fednode {' '.join(argv)} exited {rc}: {captured.out} {captured.err}"
    return json.loads(captured.out)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


@contextlib.contextmanager
def running(homes: dict[str, Home], procs: dict[str, subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        stop_all(procs)
        for code, h in homes.items():
            p = h.dir / "node.log"
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines() if p.exists() else []
            print(f"----- {code} node.log -----\n" + "\n".join(lines[-30:]))
        raise
    finally:
        stop_all(procs)


def test_ticket_round_trip_across_a_down_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    homes = build_tree(tmp_path, CHAIN)
    dirs = {code: str(h.dir) for code, h in homes.items()}
    # the people who act, added before the nodes start (the province's 监察员 signs in with a session, the
    # county's people give their password with each act)
    jia = add_person(homes[PROVINCE], "jia", "省监察员甲", "监察员", session=True)
    yi = add_person(homes[COUNTY], "yi", "区经办人乙", "部门监察")
    bing = add_person(homes[COUNTY], "bing", "区负责人丙", "部门监察")
    procs = {code: start(homes[code].dir) for code in homes}
    with running(homes, procs):
        for code in homes:
            wait_admin(homes[code])
        wait_for("the city's link to the province", lambda: any(
            ln["peer"] == CITY and ln["state"] == "connected"
            for ln in fednode(capsys, "status", dirs[PROVINCE])["links"]))
        stop_all({CITY: procs.pop(CITY)})  # the 320300 link goes down

        def state_at(code: str, ticket: str) -> str | None:
            rows = fednode(capsys, "tickets", "list", dirs[code])
            return next((r["state"] for r in rows if r["ticket"] == ticket), None)

        out = fednode(capsys, "tickets", "issue", dirs[PROVINCE], "--to", COUNTY, "--subject", "办件超期督办",
                      "--body", "请于期限内核查答复", "--case", "320303-2026-0001", *jia)
        ticket = out["ticket"]
        assert out["via"] == "admin" and ticket == "320000-000001"
        assert out["by"]["login"] == "jia" and out["by"]["name"] == "省监察员甲"
        shown = fednode(capsys, "tickets", "show", dirs[PROVINCE], ticket)
        assert shown["state"] == "issued"
        assert shown["waits"].startswith(f"held at {PROVINCE}, link to {CITY} down since "), shown["waits"]
        time.sleep(1.0)
        assert state_at(COUNTY, ticket) is None  # it cannot have arrived

        procs[CITY] = start(homes[CITY].dir)  # the link comes back
        wait_admin(homes[CITY])
        wait_for("the receipt at the province", lambda: state_at(PROVINCE, ticket) == "delivered", 60)

        fednode(capsys, "tickets", "sign", dirs[COUNTY], ticket, *yi)
        fednode(capsys, "tickets", "reply", dirs[COUNTY], ticket, "已核查, 系窗口人员请假所致, 已整改", *yi)
        wait_for("the reply at the province", lambda: state_at(PROVINCE, ticket) == "replied")
        fednode(capsys, "tickets", "return", dirs[PROVINCE], ticket, "整改措施不具体", "--reply-days", "3", *jia)
        wait_for("the return at the county", lambda: state_at(COUNTY, ticket) == "returned")
        # no pause: records carry microseconds (desk.system_clock) and one writer's records of one kind at the
        # same instant keep their order in its log (lifecycle.py rule 7), so the second reply stays the last
        fednode(capsys, "tickets", "reply", dirs[COUNTY], ticket, "已补充整改方案及考核结果", *bing)
        wait_for("the second reply at the province", lambda: state_at(PROVINCE, ticket) == "replied")
        fednode(capsys, "tickets", "conclude", dirs[PROVINCE], ticket, "satisfactory", "--text", "整改到位", *jia)
        wait_for("the conclusion at the city", lambda: state_at(CITY, ticket) == "concluded")
        wait_for("the conclusion at the county", lambda: state_at(COUNTY, ticket) == "concluded")

        views = {code: fednode(capsys, "tickets", "show", dirs[code], ticket) for code in homes}
        timelines = {code: v["timeline"] for code, v in views.items()}
        steps = [(e["event"], e["node"], e["actor"], (e.get("by") or {}).get("name")) for e in timelines[PROVINCE]]
        assert steps == [
            ("issue", PROVINCE, "jia", "省监察员甲"),
            ("delivered", COUNTY, "system", None),
            ("sign", COUNTY, "yi", "区经办人乙"),
            ("reply", COUNTY, "yi", "区经办人乙"),
            ("return", PROVINCE, "jia", "省监察员甲"),
            ("reply", COUNTY, "bing", "区负责人丙"),
            ("conclude", PROVINCE, "jia", "省监察员甲"),
        ], json.dumps(timelines[PROVINCE], ensure_ascii=False, indent=1)
        assert {e["by"]["role_label"] for e in timelines[PROVINCE] if e.get("by")} == {"监察员", "部门监察"}
        assert all(e["at"] for e in timelines[PROVINCE])
        assert timelines[CITY] == timelines[PROVINCE] == timelines[COUNTY]  # every node agrees, times too
        for v in views.values():
            assert v["state"] == "concluded" and v["verdict"] == "satisfactory" and v["score"] == 100
            assert v["rejected"] == []
        assert views[PROVINCE]["waits"] == "delivered"

        # a ticket while the county is down: it waits at the city, and the province can tell
        stop_all({COUNTY: procs.pop(COUNTY)})
        second = fednode(capsys, "tickets", "issue", dirs[PROVINCE], "--to", COUNTY, "--subject", "二",
                         "--body", "b", *jia)["ticket"]
        waits = f"held at {CITY}, link to {COUNTY} down since "
        wait_for("the city's report of its link to the county", lambda: fednode(
            capsys, "tickets", "show", dirs[PROVINCE], second)["waits"].startswith(waits), 30)
        procs[COUNTY] = start(homes[COUNTY].dir)
        wait_for("the second receipt at the province", lambda: state_at(PROVINCE, second) == "delivered", 60)

        # the deadline job is in the node's persistent job store (it survives restarts)
        store = Home(homes[PROVINCE].dir).store()
        with store.read() as conn:
            ids = [r[0] for r in conn.execute(text("SELECT id FROM apscheduler_jobs"))]
        store.close()
        assert "tickets.deadlines" in ids
