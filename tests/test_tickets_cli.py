"""Tickets in the node, in one process: the CLI on real stores (node stopped), records carried between
the stores exactly as links carry them (verified segments up, verified downward records down), the
automatic receipt, reminders and escalations on a fake clock across a restart, and the refusals."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.core.calendar import CST
from node.core.errors import OutsideSubtree
from node.core.home import Home
from node.core.ledger import NewRecord
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import TicketDesk, TicketsConfig, held_records, project_store
from node.interfaces.cli import main as cli
from node.link import streams
from node.runtime import logging as node_logging
from tests.conftest import Tree, add_person


@pytest.fixture(autouse=True)
def _log_to_the_real_stderr() -> Iterator[None]:
    """cli.main binds structlog to the stream it finds, here pytest's capture, closed after the test:
    put it back so later tests (any file) do not log into a closed file."""
    yield
    node_logging.configure("warning", stream=sys.__stderr__)


# ---- carrying records the way links do -------------------------------------------------------------------


def push_up(child: Home, parent: Home) -> None:
    """Every log the child holds from its subtree, as verified segments (what an uplink sends)."""
    cl, pl = child.ledger(), parent.ledger()
    for (origin, channel), head in cl.store.heads().items():
        have = pl.store.head(origin, channel).seq
        if have >= head.seq:
            continue
        seg = cl.read_segment(origin, channel, have, 100_000)
        assert seg is not None
        pl.admit_keys(cl.key_certificates_for({seg.checkpoint.key_id, *(r.key_id for r in seg.records)}))
        pl.accept_segment(seg, sender_subtree=child.code, source=child.code)


def push_down(parent: Home, child: Home) -> int:
    """Records of the parent and its ancestors addressed into the child's subtree (what a downlink sends)."""
    pl, cl = parent.ledger(), child.ledger()
    new = 0
    for (_kind, origin, channel) in streams.down_heads_for(pl, child.code):
        seg, _last = streams._read_down(pl, origin, channel, 0, 100_000, child.code)
        if seg is None:
            continue
        cl.admit_keys(pl.key_certificates_for({r.key_id for r in seg.records}))
        new += cl.accept_down(seg.records, sender=parent.code, source=parent.code)
    return new


def sync(t: Tree) -> None:
    for _ in range(2):
        push_up(t.county, t.city)
        push_up(t.other, t.city)
        push_up(t.city, t.province)
        push_down(t.province, t.city)
        push_down(t.city, t.county)
        push_down(t.city, t.other)


def fednode(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    rc = cli.main(list(argv))
    out = capsys.readouterr().out
    try:
        return rc, json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        return rc, out


def receipts(home: Home) -> list[dict[str, Any]]:
    return TicketDesk(home.ledger(), TicketsConfig()).write_receipts()


def states(home: Home) -> dict[str, lc.TicketState]:
    return project_store(home.store())[0].tickets


# ---- the whole flow through the CLI ---------------------------------------------------------------------------


@pytest.fixture
def mixed_tree(tmp_path: Path, store_url: str) -> Any:
    """The tree with the county's store on SQLite, then on the real PostgreSQL server."""
    t = Tree(tmp_path / "tree", county_db=store_url)
    yield t
    t.close()


def test_flow_through_cli_with_assignment(mixed_tree: Tree, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tree = mixed_tree
    p, c, k = str(tree.province.dir), str(tree.city.dir), str(tree.county.dir)
    sheng = add_person(tree.province, "sun", "孙省监", "监察员", session=True)
    zhang = add_person(tree.county, "zhang", "张三", "部门监察", session=True)
    rc, out = fednode(capsys, "tickets", "issue", p, "--to", "320303", "--subject", "超期办件", "--body",
                      "请核查并答复", "--case", "C1", "--json", *sheng)
    assert rc == 0 and out["ticket"] == "320000-000001" and out["via"] == "store"
    assert out["by"]["login"] == "sun" and out["by"]["name"] == "孙省监"
    rc, out = fednode(capsys, "tickets", "issue", p, "--to", "320303", "--subject", "二", "--body", "b", *sheng)
    assert rc == 0 and out.strip() == "320000-000002"  # the bare number is the contract
    t = "320000-000001"
    sync(tree)
    assert states(tree.county)[t].state == "issued"
    assert [r["ticket"] for r in receipts(tree.county)] == [t, "320000-000002"]
    assert receipts(tree.county) == []  # the cursor moved; nothing twice
    assert states(tree.county)[t].state == "delivered"
    assert fednode(capsys, "tickets", "sign", k, t, *zhang)[0] == 0
    assert fednode(capsys, "tickets", "assign", k, t, "--unit", "云龙区市场监管局", "--person", "李四",
                   "--finding", "窗口未按时受理", *zhang)[0] == 0
    assert fednode(capsys, "tickets", "reply", k, t, "已整改", *zhang)[0] == 0
    assert fednode(capsys, "tickets", "assign-result", k, t, "1", "诫勉谈话", "--disputed", *zhang)[0] == 0
    sync(tree)
    rc, rows = fednode(capsys, "tickets", "list", p, "--json")
    assert rc == 0
    row = next(r for r in rows if r["ticket"] == t)
    assert {k2: row[k2] for k2 in ("ticket", "state", "to", "issuer")} == {
        "ticket": t, "state": "replied", "to": "320303", "issuer": "320000"}
    assert fednode(capsys, "tickets", "return", p, t, "证据不足", "--reply-days", "2", *sheng)[0] == 0
    sync(tree)
    evidence = tmp_path / "整改报告<1>.pdf"
    evidence.write_bytes(b"%PDF-1.4 report" * 1000)
    photos = tmp_path / "photos.zip"
    photos.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    assert fednode(capsys, "tickets", "reply", k, t, "补充证据", "--attach", str(evidence), "--attach", str(photos),
                   *zhang)[0] == 0
    rc, _out = fednode(capsys, "tickets", "reply", k, t, "x", "--attach", str(tmp_path / "missing.pdf"), *zhang)
    assert rc != 0
    sync(tree)
    assert fednode(capsys, "tickets", "conclude", p, t, "basically", "--text", "基本满意", *sheng)[0] == 0
    sync(tree)
    views = [states(h)[t] for h in (tree.province, tree.city, tree.county)]
    assert {v.state for v in views} == {"concluded"}
    assert len({json.dumps(v.timeline, sort_keys=True) for v in views}) == 1  # every node agrees
    assert views[0].assignments["1"]["status"] == "reported" and views[0].assignments["1"]["disputed"] is True
    rc, shown = fednode(capsys, "tickets", "show", c, t, "--json")
    assert [e["event"] for e in shown["timeline"]] == [
        "issue", "delivered", "sign", "assign", "reply", "assign_result", "return", "reply", "conclude"]
    assert [e["node"] for e in shown["timeline"]][:3] == ["320000", "320303", "320303"]
    assert [e["actor"] for e in shown["timeline"]] == [
        "sun", "system", "zhang", "zhang", "zhang", "zhang", "sun", "zhang", "sun"]
    assert [(e.get("by") or {}).get("name") for e in shown["timeline"]] == [
        "孙省监", None, "张三", "张三", "张三", "张三", "孙省监", "张三", "孙省监"]
    rc, text = fednode(capsys, "tickets", "show", p, t)
    assert rc == 0 and "张三" in text and "320303" in text and "concluded" in text
    # the second reply's attachments: metadata computed from the files, in the signed record, at every level
    want = [{"name": "整改报告<1>.pdf", "size": 15000, "sha256": hashlib.sha256(evidence.read_bytes()).hexdigest(),
             "media_type": "application/pdf"},
            {"name": "photos.zip", "size": 260, "sha256": hashlib.sha256(photos.read_bytes()).hexdigest(),
             "media_type": "application/zip"}]
    for home in (p, c, k):
        rc, shown = fednode(capsys, "tickets", "show", home, t, "--json")
        replies = [e for e in shown["timeline"] if e["event"] == "reply"]
        assert "attachments" not in replies[0]["detail"] and replies[1]["detail"]["attachments"] == want, home
        assert shown["reply_attachments"] == want
    assert want[0]["sha256"] in text and "整改报告<1>.pdf (15000 bytes, application/pdf)" in text


def test_complaint_becomes_ticket_and_records_satisfaction(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    c, k = str(tree.city.dir), str(tree.county.dir)
    qian = add_person(tree.city, "qian", "钱七", "监察员", session=True)
    wang = add_person(tree.county, "wang", "王五", "部门监察", session=True)
    rc, out = fednode(capsys, "complaints", "register", c, "--complainant", "王五", "--respondent-unit", "320303",
                      "--respondent-person", "赵六", "--content", "办事拖延", "--source", "12345热线",
                      "--due-days", "5", "--json", *qian)
    assert rc == 0 and out["to"] == "320303" and out["ticket"] == "320300-000001"
    assert out["by"]["login"] == "qian" and out["by"]["name"] == "钱七"
    t = out["ticket"]
    sync(tree)
    receipts(tree.county)
    for argv in (("sign", k, t), ("reply", k, t, "已道歉并办结")):
        assert fednode(capsys, "tickets", *argv, *wang)[0] == 0
    sync(tree)
    rc, out = fednode(capsys, "tickets", "conclude", c, t, "satisfactory", "--json", *qian)
    assert rc == 1 and out["code"] == "ticket_malformed" and "satisfaction" in out["error"]  # 满意度 needed
    assert fednode(capsys, "tickets", "conclude", c, t, "satisfactory", "--satisfaction", "2", *qian)[0] == 0
    sync(tree)
    rc, rows = fednode(capsys, "complaints", "list", str(tree.province.dir), "--json")
    assert rc == 0 and rows[0]["state"] == "concluded" and rows[0]["satisfaction"] == "2"


# ---- refusals -----------------------------------------------------------------------------------------------


def _issue(home: Home, to: str = "320303") -> str:
    return str(TicketDesk(home.ledger()).issue(to=to, subject="s", body="b")["ticket"])


def test_forged_ticket_from_a_non_ancestor_is_refused(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    # through the CLI: 320311 is no ancestor of 320303; no person of 320311 has 320303 in their scope, so the
    # act is refused (exit 2, recorded) before the ticket rules are asked
    zhou = add_person(tree.other, "zhou", "周八", "监察员", session=True)
    rc, out = fednode(capsys, "tickets", "issue", str(tree.other.dir), "--to", "320303", "--subject", "x",
                      "--body", "y", "--json", *zhou)
    assert rc == 2 and out["code"] == "forbidden" and "辖区" in out["error"]
    # the ticket rules refuse it too, for whoever writes it on 320311's desk
    with pytest.raises(lc.TicketError) as refused:
        TicketDesk(tree.other.ledger()).issue(to="320303", subject="x", body="y", actor="zhou")
    assert refused.value.code == "ticket_not_authorised"
    assert project_store(tree.other.store())[0].tickets == {}
    # written anyway (a forger bypassing the CLI): it travels up as 320311's record and is refused there
    forged = lc.make_issue("320311", 1, to="320303", subject="伪造", actor="x", at=datetime.now(CST))
    tree.other.ledger().append([NewRecord(lc.ISSUE, forged, dest="320303")])
    sync(tree)
    proj, _ = project_store(tree.city.store())
    assert "320311-000001" not in proj.tickets
    assert [(r.kind, r.code) for r in proj.rejected] == [(lc.ISSUE, "ticket_not_authorised")]
    rc, shown = fednode(capsys, "tickets", "show", str(tree.city.dir), "320311-000001", "--json")
    assert rc == 0 and shown["state"] is None and shown["rejected"][0]["code"] == "ticket_not_authorised"
    # it never reaches 320303: only ancestors' records go down, and a relay that tried is refused
    assert "320311-000001" not in states(tree.county)
    rec = tree.other.store().records("320311", 1)[-1]
    from proto.fednode.v1 import fednode_pb2 as pb

    signed = pb.SignedRecord(body=bytes(rec.body), signature=bytes(rec.signature), key_id=bytes(rec.key_id))
    with pytest.raises(OutsideSubtree):
        tree.county.ledger().accept_down([signed], sender="320300")
    assert receipts(tree.county) == []


def test_reply_from_the_wrong_unit_is_refused(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    t = _issue(tree.province)
    sync(tree)
    receipts(tree.county)
    wang = add_person(tree.county, "wang", "王五", "部门监察", session=True)
    assert fednode(capsys, "tickets", "sign", str(tree.county.dir), t, *wang)[0] == 0
    sync(tree)
    # the city relays the ticket but is not in the target's subtree (its 监察员 has 320303 in scope: the
    # person may reply, the node may not)
    qian = add_person(tree.city, "qian", "钱七", "监察员", session=True)
    rc, out = fednode(capsys, "tickets", "reply", str(tree.city.dir), t, "我来答复", "--json", *qian)
    assert rc == 1 and out["code"] == "ticket_not_authorised"
    # the issuer may not reply to its own ticket either
    sun = add_person(tree.province, "sun", "孙省监", "监察员", session=True)
    rc, out = fednode(capsys, "tickets", "reply", str(tree.province.dir), t, "x", "--json", *sun)
    assert rc == 1 and out["code"] == "ticket_not_authorised"
    # a sibling's forged reply arrives upward and is listed as refused, the ticket untouched
    bad = {"ticket": t, "actor": "x", "at": lc.format_time(datetime.now(CST)), "node": "320311", "text": "伪造答复"}
    tree.other.ledger().append([NewRecord(lc.REPLY, bad, dest="320000")])
    sync(tree)
    proj, _ = project_store(tree.province.store())
    assert proj.tickets[t].state == "signed_for"
    assert [(r.kind, r.writer_code, r.code) for r in proj.rejected] == [(lc.REPLY, "320311", "ticket_not_authorised")]


def test_out_of_order_transitions_are_refused(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    t = _issue(tree.province)
    sun = add_person(tree.province, "sun", "孙省监", "监察员", session=True)
    rc, out = fednode(capsys, "tickets", "conclude", str(tree.province.dir), t, "satisfactory", "--json", *sun)
    assert rc == 1 and out["code"] == "ticket_out_of_order" and "issued" in out["error"]
    sync(tree)
    receipts(tree.county)
    wang = add_person(tree.county, "wang", "王五", "部门监察", session=True)
    rc, out = fednode(capsys, "tickets", "reply", str(tree.county.dir), t, "先答复", "--json", *wang)
    assert rc == 1 and out["code"] == "ticket_out_of_order"
    assert "allowed now" in out["error"]
    qian = add_person(tree.city, "qian", "钱七", "监察员", session=True)
    rc, out = fednode(capsys, "tickets", "sign", str(tree.city.dir), "320000-000099", "--json", *qian)
    assert rc == 1 and out["code"] == "ticket_unknown"
    # nothing was written by any refusal
    assert [h.kind for h in held_records(tree.county.store()) if h.origin == "320303"] == [lc.DELIVERED]


# ---- reminders and escalations on a fake clock, across a restart ---------------------------------------------


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _desk(directory: Path, clock: FakeClock) -> tuple[Home, TicketDesk]:
    home = Home(directory)
    return home, TicketDesk(home.ledger(), TicketsConfig(escalate_after_days=1), clock)


def _automatic(home: Home) -> list[tuple[str, str]]:
    out = []
    for h in held_records(home.store(), ("ticket.remind", "ticket.escalate", "alert")):
        p = h.payload
        out.append((h.kind, p.get("deadline", "") if h.kind != "alert" else str(p["level"])))
    return out


def test_reminders_and_escalations_never_twice_across_a_restart(tree: Tree) -> None:
    clock = FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=CST))  # a Monday
    directory = tree.province.dir
    tree.province.close()
    home, desk = _desk(directory, clock)
    p = desk.issue(to="320303", subject="s", body="b", sign_days=1, reply_days=3)
    assert p["sign_deadline"] == "2026-11-03T09:00:00+08:00"  # one working day (office hours)
    assert p["reply_deadline"] == "2026-11-05T09:00:00+08:00"
    clock.t = datetime(2026, 11, 3, 8, 59, tzinfo=CST)
    assert desk.run_due() == []
    clock.t = datetime(2026, 11, 3, 10, 0, tzinfo=CST)
    assert [k for k, _ in desk.run_due()] == [lc.REMIND]
    assert desk.run_due() == []  # same moment: nothing new
    home.close()  # restart: a new process reads the same store

    home, desk = _desk(directory, clock)
    assert desk.run_due() == []
    clock.t = datetime(2026, 11, 4, 9, 0, tzinfo=CST)  # 7 working hours after the reminder: not yet
    assert desk.run_due() == []
    clock.t = datetime(2026, 11, 4, 10, 30, tzinfo=CST)  # one working day after it
    assert [k for k, _ in desk.run_due()] == [lc.ESCALATE]
    home.close()

    home, desk = _desk(directory, clock)
    assert desk.run_due() == []
    # over the weekend and past the reply deadline: the sign-for instance is exhausted, the reply one starts;
    # a late check may write a reminder and, in a later round, its escalation only when that is due.
    clock.t = datetime(2026, 11, 9, 9, 0, tzinfo=CST)
    assert [(k, p["deadline"]) for k, p in desk.run_due()] == [(lc.REMIND, "reply")]
    clock.t = datetime(2026, 11, 10, 9, 30, tzinfo=CST)
    assert [(k, p["deadline"]) for k, p in desk.run_due()] == [(lc.ESCALATE, "reply")]
    for _ in range(3):
        assert desk.run_due() == []
    assert _automatic(home) == [(lc.REMIND, "sign"), (lc.ESCALATE, "sign"), ("alert", "3"),
                                (lc.REMIND, "reply"), (lc.ESCALATE, "reply"), ("alert", "3")]
    alert = next(h.payload for h in held_records(home.store(), ("alert",)))
    from node.core import domain

    domain.validate("alert", alert)  # the escalation alert is a valid `alert` record
    home.close()


def test_reminder_goes_down_and_the_escalation_alert_goes_up(tree: Tree) -> None:
    clock = FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=CST))
    desk = TicketDesk(tree.city.ledger(), TicketsConfig(), clock)
    t = desk.issue(to="320303", subject="s", body="b", sign_days=0.5, reply_days=2)["ticket"]
    clock.t += timedelta(days=1)
    desk.run_due()
    clock.t += timedelta(days=2)
    desk.run_due()
    sync(tree)
    county = states(tree.county)[t]
    assert [r["deadline"] for r in county.reminders] == ["sign", "reply"]
    alerts = [h for h in held_records(tree.province.store(), ("alert",))]
    assert [(h.origin, h.payload["level"], h.payload["rule_id"]) for h in alerts] == [("320300", 3, "ticket.escalate")]


def test_tickets_config_is_validated(tmp_path: Path) -> None:
    from node.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown field"):
        TicketsConfig.from_section({"sign_dayz": 1}, source="node.toml", base=tmp_path)
    with pytest.raises(ConfigError, match="invalid"):
        TicketsConfig.from_section({"reply_days": -1}, source="node.toml", base=tmp_path)
    assert TicketsConfig.from_section({"reply_days": 5}, source="x", base=tmp_path).reply_days == 5


# ---- the running node's service: the persisted APScheduler job on a fake clock, restarted in between --------


def _run_node(directory: Path, clock: FakeClock, until: Any) -> list[tuple[str, str]]:
    """Run the node in this process (main thread: it installs signal handlers) until ``until(rt)`` returns;
    the only thing replaced is the clock of the ticket service."""
    import asyncio

    from node.runtime.process import NodeRuntime
    from node.runtime.services import tickets as tickets_cmd

    async def main() -> list[tuple[str, str]]:
        home = Home(directory)
        rt = NodeRuntime(home)
        serving = asyncio.create_task(rt.serve())
        try:
            await until(rt)
        finally:
            rt.stopping.set()
            await serving
        h = Home(directory)
        try:
            return _automatic(h)
        finally:
            h.close()

    saved = tickets_cmd.CLOCK
    tickets_cmd.CLOCK = clock
    try:
        return asyncio.run(main())
    finally:
        tickets_cmd.CLOCK = saved


def test_service_job_reminds_then_escalates_once_across_restarts(tree: Tree) -> None:
    import asyncio

    directory = tree.province.dir
    with open(directory / "node.toml", "a", encoding="utf-8") as f:
        f.write("\n[tickets]\ncheck_interval_s = 0.2\n")
    clock = FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=CST))
    desk = TicketDesk(tree.province.ledger(), TicketsConfig(), clock)
    desk.issue(to="320303", subject="s", body="b", sign_days=1, reply_days=3)
    tree.province.close()

    def waiting_for(kinds: list[tuple[str, str]]) -> Any:
        async def until(rt: Any) -> None:
            for _ in range(150):
                if await rt.db(_automatic, rt.home) == kinds:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # several more job runs: nothing more may be written

        return until

    clock.t = datetime(2026, 11, 3, 10, 0, tzinfo=CST)  # the sign-for deadline is overdue
    assert _run_node(directory, clock, waiting_for([(lc.REMIND, "sign")])) == [(lc.REMIND, "sign")]
    # restarted later: the escalation is due now, the reminder is not written again
    clock.t = datetime(2026, 11, 4, 10, 30, tzinfo=CST)
    want = [(lc.REMIND, "sign"), (lc.ESCALATE, "sign"), ("alert", "3")]
    assert _run_node(directory, clock, waiting_for(want)) == want
    # and once more at the same moment: nothing at all
    assert _run_node(directory, clock, waiting_for(want)) == want


def test_bad_arriving_records_are_listed_as_refused_never_crash(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    t = _issue(tree.province)
    sync(tree)
    receipts(tree.county)
    now = lc.format_time(datetime.now(CST))
    tree.county.ledger().append([
        NewRecord(lc.REPLY, b"\xff not json", dest="320000"),
        NewRecord("ticket.bogus", {"ticket": t, "actor": "x", "at": now, "node": "320303"}, dest="320000"),
        NewRecord(lc.REPLY, {"ticket": t, "actor": "x", "at": now, "node": "320000", "text": "冒名"}, dest="320000"),
        NewRecord(lc.SIGN, {"ticket": t, "actor": "x", "at": "yesterday", "node": "320303"}, dest="320000"),
    ])
    sync(tree)
    assert receipts(tree.county) == []
    rc, rows = fednode(capsys, "tickets", "list", str(tree.province.dir), "--rejected", "--json")
    assert rc == 0
    assert sorted(r["code"] for r in rows) == [
        "ticket_malformed", "ticket_malformed", "ticket_malformed", "ticket_not_authorised"]
    rc, tickets = fednode(capsys, "tickets", "list", str(tree.province.dir), "--json")
    assert rc == 0 and [(r["ticket"], r["state"]) for r in tickets] == [(t, "delivered")]
    rc, text = fednode(capsys, "tickets", "list", str(tree.province.dir))
    assert rc == 0 and text.count("REFUSED") == 4
