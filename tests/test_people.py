"""People, roles and authorization (issue 16): the permission table, sign-in and lockout, acts in a
person's name carried to the province, scope, refusals recorded, and no password anywhere but its hash.

The CLI runs on real stores (SQLite and PostgreSQL for the county); one test runs real `fednode run`
processes so that the admin-socket path and the links carry the same records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.app import people as app_people
from node.core.calendar import CST
from node.core.home import Home
from node.features.people import accounts
from node.features.people.roles import ACTIONS, GRANTS, ROLES, Person, Target, may, parse_role
from node.features.worklog import ACTION
from node.interfaces.cli import main as cli
from tests.conftest import Tree
from tests.faultlib import Cluster, wait_for
from tests.test_tickets_cli import receipts, sync

PASSWORD = "Yunlong-2026!"  # what no file, record, log or command line may hold
FEDNODE = str(Path(sys.executable).with_name("fednode"))

# ---- the table, exhaustively ------------------------------------------------------------------------------

# What each role may do, written from the issue's text (not read from roles.py): "own" = only what is
# assigned to them / their own case.
EXPECTED: dict[str, dict[str, str]] = {
    "sysadmin": {a: "scope" for a in ("node.operate", "users.manage", "node.read", "worklog.read")},
    "supervisor": {a: "scope" for a in (
        "node.read", "worklog.read", "tickets.read", "tickets.issue", "tickets.sign", "tickets.assign",
        "tickets.reply", "tickets.extend_request", "tickets.judge", "complaints.read", "complaints.register",
        "alerts.read", "alerts.handle", "cases.read", "stats.read")},
    "dept_supervisor": {a: "scope" for a in (
        "tickets.read", "tickets.sign", "tickets.assign", "tickets.reply", "tickets.extend_request",
        "complaints.read", "alerts.read", "alerts.handle", "cases.read", "stats.read")},
    "handler": {a: "own" for a in ("tickets.read", "tickets.reply", "tickets.extend_request", "alerts.read",
                                   "alerts.object", "cases.read")},
    "auditor": {a: "scope" for a in ("node.read", "worklog.read", "tickets.read", "complaints.read",
                                     "alerts.read", "cases.read", "stats.read")},
}
EXPECTED["leader"] = {**EXPECTED["supervisor"], "tickets.override": "scope", "stats.signoff": "scope"}


def test_the_table_has_every_role_and_nothing_else() -> None:
    assert set(EXPECTED) == set(ROLES)
    assert {a for grants in EXPECTED.values() for a in grants} == set(ACTIONS)


@pytest.mark.parametrize("role", list(ROLES))
def test_permission_table_every_action_in_and_out_of_scope(role: str) -> None:
    person = Person(login="p1", name="某人", roles=(role,), scope="320303", node="320300")
    inside = Target(codes=("320303-GA",), what="x")
    outside = Target(codes=("320311",), what="x")
    own_outside = Target(codes=("320311",), owners=frozenset({"p1"}), what="x")
    for action in ACTIONS:
        want = EXPECTED[role].get(action)
        assert bool(may(person, action, None)) == (want is not None), (role, action)
        assert bool(may(person, action, inside)) == (want == "scope"), (role, action, "in scope")
        assert not may(person, action, outside), (role, action, "out of scope")
        assert bool(may(person, action, own_outside)) == (want == "own"), (role, action, "own")
        refused = may(person, action, outside)
        assert refused.reason and (ROLES[role] in refused.reason or "辖区" in refused.reason or "分派" in refused.reason)


def test_the_sysadmin_may_not_issue_answer_or_conclude() -> None:
    admin = Person(login="it", name="运维", roles=("sysadmin",), scope="320300")
    for action in ("tickets.issue", "tickets.reply", "tickets.judge", "alerts.handle"):
        d = may(admin, action, Target(codes=("320300",)))
        assert not d and "系统管理员" in d.reason and "监察员" in d.reason


def test_inactive_people_may_nothing_and_nobody_judges_their_own_case() -> None:
    for state in ("locked", "disabled"):
        p = Person(login="s", name="甲", roles=("leader",), scope="320000", state=state)
        assert not any(may(p, a, Target(codes=("320303",))) for a in ACTIONS)
    sup = Person(login="s", name="甲", roles=("supervisor",), scope="320300")
    own_case = Target(codes=("320303",), handler="s", what="预警 A1")
    d = may(sup, "alerts.handle", own_case)
    assert not d and "自己的案件" in d.reason
    assert may(sup, "alerts.handle", Target(codes=("320303",), handler="someone-else"))
    handler = Person(login="h", name="乙", roles=("handler",), scope="320303")
    assert may(handler, "alerts.object", Target(codes=("320303",), handler="h"))
    assert not may(handler, "alerts.handle", Target(codes=("320303",), handler="h"))


def test_roles_by_chinese_name() -> None:
    assert parse_role("监察员") == "supervisor" and parse_role("leader") == "leader"
    with pytest.raises(ValueError, match="roles"):
        parse_role("boss")
    assert all(GRANTS[a] for a in ACTIONS)


# ---- passwords and lockout (pure) -----------------------------------------------------------------------------


def test_argon2_hash_and_lockout_window() -> None:
    h = accounts.hash_password(PASSWORD)
    assert h.startswith("$argon2id$") and PASSWORD not in h
    assert accounts.check_password(h, PASSWORD)[0] and not accounts.check_password(h, PASSWORD + "x")[0]
    assert not accounts.check_password("", PASSWORD)[0]
    policy = accounts.LoginPolicy(max_failures=5, window=timedelta(minutes=15))
    t0 = datetime(2026, 12, 1, 9, tzinfo=CST)
    fails: list[datetime] = []
    for i in range(4):
        fails, locked = accounts.after_failure(fails, t0 + timedelta(minutes=i), policy)
        assert not locked
    _, locked = accounts.after_failure(fails, t0 + timedelta(minutes=20), policy)
    assert not locked, "failures older than the window are forgotten"
    _, locked = accounts.after_failure(fails, t0 + timedelta(minutes=5), policy)
    assert locked
    assert accounts.password_problem("short") and accounts.password_problem("alllowercase")
    assert accounts.password_problem(PASSWORD) is None


# ---- the CLI on real stores ---------------------------------------------------------------------------------


@pytest.fixture
def pwfile(tmp_path: Path) -> str:
    p = tmp_path / "pw"
    p.write_text(PASSWORD + "\n", encoding="utf-8")
    p.chmod(0o600)
    return str(p)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    rc = cli.main([*argv, "--json"])
    cap = capsys.readouterr()
    try:
        out = json.loads(cap.out) if cap.out.strip() else None
    except json.JSONDecodeError:
        out = cap.out
    return rc, out, cap.err


def add(capsys: pytest.CaptureFixture[str], home: Home, login: str, name: str, role: str, pw: str,
        scope: str = "") -> None:
    argv = ["users", "add", str(home.dir), "--login", login, "--name", name, "--role", role, "--password-file", pw]
    rc, out, err = run(capsys, *argv, *(["--scope", scope] if scope else []))
    assert rc == 0, err


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    out = []
    store = home.store()
    for ch in store.changes(0, limit=1_000_000, kinds=(kind,)):
        if ch.kind == kind:
            out.append(ch.payload())
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def people_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tree]:
    db = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    t = Tree(tmp_path / "tree", county_db=db)
    yield t
    t.close()


def test_acts_in_a_persons_name_scope_and_refusals(people_tree: Tree, pwfile: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    t = people_tree
    add(capsys, t.city, "zhang", "张三", "监察员", pwfile)
    add(capsys, t.city, "qian", "钱七", "监察员", pwfile, scope="320311")
    add(capsys, t.county, "wang", "王五", "部门监察", pwfile)
    add(capsys, t.county, "li", "李四", "承办人", pwfile)
    me = ["--password-file", pwfile]

    # a 承办人 at 320303 cannot issue a ticket: exit 2, the role, the permission and who has it; recorded
    rc, out, err = run(capsys, "tickets", "issue", str(t.county.dir), "--to", "320303", "--subject", "s",
                       "--body", "b", "--as", "li", *me)
    assert rc == 2 and "承办人" in err and "tickets.issue" in err and "监察员" in err
    refused = [p for p in records(t.county, ACTION) if p["action"] == "refused"]
    assert refused and refused[-1]["actor"] == "li" and refused[-1]["detail"]["permission"] == "tickets.issue"
    assert refused[-1]["by"]["name"] == "李四"
    # the OS operator (root on the box) is 系统管理员: no tickets either
    rc, _out, err = run(capsys, "tickets", "issue", str(t.city.dir), "--to", "320303", "--subject", "s", "--body", "b")
    assert rc == 2 and "系统管理员" in err and "--as" in err

    # a 监察员 at 320300 issues one to 320303
    rc, out, err = run(capsys, "tickets", "issue", str(t.city.dir), "--to", "320303", "--subject", "超期未办结",
                       "--body", "请核查", "--as", "zhang", *me)
    assert rc == 0, err
    ticket = out["ticket"]
    assert out["by"] == {"login": "zhang", "name": "张三", "role": "supervisor", "role_label": "监察员",
                         "scope": "320300"}
    # a supervisor of 320311 at the same city neither sees nor acts on the 320303 ticket
    rc, out, err = run(capsys, "tickets", "list", str(t.city.dir), "--as", "qian", *me)
    assert rc == 0 and ticket not in [r["ticket"] for r in out]
    rc, _out, err = run(capsys, "tickets", "show", str(t.city.dir), ticket, "--as", "qian", *me)
    assert rc == 2 and "320311" in err
    rc, _out, err = run(capsys, "tickets", "conclude", str(t.city.dir), ticket, "satisfactory", "--as", "qian", *me)
    assert rc == 2 and "辖区" in err

    sync(t)
    assert receipts(t.county)  # what the running node's TicketService writes on storing the ticket
    # the 承办人 does not see what is not assigned to him; the 部门监察 signs and answers
    rc, out, _err = run(capsys, "tickets", "list", str(t.county.dir), "--as", "li", *me)
    assert rc == 0 and out == []
    rc, _out, err = run(capsys, "tickets", "sign", str(t.county.dir), ticket, "--as", "li", *me)
    assert rc == 2
    for argv in (["sign", str(t.county.dir), ticket], ["assign", str(t.county.dir), ticket, "--unit", "审批科",
                                                        "--person", "li", "--finding", "经办人延误"],
                 ["reply", str(t.county.dir), ticket, "已整改"]):
        rc, out, err = run(capsys, "tickets", *argv, "--as", "wang", *me)
        assert rc == 0, err
    # now assigned to li: he sees it (his own), still may not judge it
    rc, out, _err = run(capsys, "tickets", "list", str(t.county.dir), "--as", "li", *me)
    assert [r["ticket"] for r in out] == [ticket]
    sync(t)
    rc, out, err = run(capsys, "tickets", "conclude", str(t.city.dir), ticket, "satisfactory", "--text", "同意",
                       "--as", "zhang", *me)
    assert rc == 0, err
    sync(t)

    # the province sees each step with the person's name and role
    rc, shown, err = run(capsys, "tickets", "show", str(t.province.dir), ticket)
    assert rc == 0, err
    steps = {e["event"]: e for e in shown["timeline"]}
    assert steps["issue"]["by"]["name"] == "张三" and steps["issue"]["by"]["role_label"] == "监察员"
    assert steps["sign"]["by"]["name"] == "王五" and steps["sign"]["by"]["role_label"] == "部门监察"
    assert steps["reply"]["by"] == {"login": "wang", "name": "王五", "role": "dept_supervisor",
                                    "role_label": "部门监察", "scope": "320303"}
    assert steps["reply"]["node"] == "320303"
    assert steps["conclude"]["by"]["name"] == "张三"
    assert shown["state"] == "concluded"

    # nothing holds the password but its argon2 hash
    assert_no_password_anywhere(t)


def assert_no_password_anywhere(t: Tree) -> None:
    needle = PASSWORD.encode()
    for home in (t.province, t.city, t.county, t.other):
        for path in home.dir.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), f"the password is in {path}"
        store = home.store()
        for ch in store.changes(0, limit=1_000_000):
            assert PASSWORD not in json.dumps(ch.payload(), ensure_ascii=False)
        with store.read() as conn:
            from sqlalchemy import text

            for row in conn.execute(text("SELECT login, password_hash, failures FROM people_users")):
                assert PASSWORD not in " ".join(map(str, row)) and str(row[1]).startswith(("$argon2id$", ""))


def test_five_wrong_passwords_lock_and_only_a_sysadmin_unlocks(tree: Tree, pwfile: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, tree.city, "zhang", "张三", "监察员", pwfile)
    add(capsys, tree.city, "zhao", "赵六", "监察领导", pwfile)
    wrong = tmp_path / "wrong"
    wrong.write_text("Not-the-password1\n", encoding="utf-8")
    for i in range(5):
        rc, _out, err = run(capsys, "tickets", "list", str(tree.city.dir), "--as", "zhang", "--password-file", str(wrong))
        assert rc == 2, err
        assert ("locked" in err) == (i == 4), err
    # the right password no longer helps
    rc, _out, err = run(capsys, "tickets", "list", str(tree.city.dir), "--as", "zhang", "--password-file", pwfile)
    assert rc == 2 and "locked" in err and "users unlock" in err
    # a leader is not a 系统管理员: refused (and recorded); the OS operator is
    rc, _out, err = run(capsys, "users", "unlock", str(tree.city.dir), "zhang", "--as", "zhao", "--password-file", pwfile)
    assert rc == 2 and "用户管理" in err
    rc, out, err = run(capsys, "users", "unlock", str(tree.city.dir), "zhang")
    assert rc == 0 and out["state"] == "active", err
    rc, _out, err = run(capsys, "tickets", "list", str(tree.city.dir), "--as", "zhang", "--password-file", pwfile)
    assert rc == 0, err
    acts = [(p["action"], p["actor"]) for p in records(tree.city, ACTION)]
    assert acts.count(("login failed", "zhang")) == 5
    assert ("refused", "zhao") in acts and any(a == "users unlock" for a, _ in acts)


def test_sessions_disable_and_own_password(tree: Tree, pwfile: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, tree.city, "zhang", "张三", "监察员", pwfile)
    rc, out, err = run(capsys, "login", str(tree.city.dir), "--as", "zhang", "--password-file", pwfile)
    assert rc == 0, err
    session = tree.city.dir / "sessions" / "zhang"
    assert session.stat().st_mode & 0o777 == 0o600
    rc, out, err = run(capsys, "whoami", str(tree.city.dir), "--as", "zhang")  # the session, no password
    assert rc == 0 and out["person"]["name"] == "张三", err
    # a person who left: disabled, signed out everywhere, their records stay in their name
    rc, out, err = run(capsys, "users", "disable", str(tree.city.dir), "zhang")
    assert rc == 0 and out["state"] == "disabled"
    rc, _out, err = run(capsys, "whoami", str(tree.city.dir), "--as", "zhang")
    assert rc == 2
    run(capsys, "users", "enable", str(tree.city.dir), "zhang")
    new = tmp_path / "new"
    new.write_text("Another-pass9\n", encoding="utf-8")
    rc, _out, err = run(capsys, "users", "passwd", str(tree.city.dir), "--as", "zhang", "--password-file", pwfile,
                        "--new-password-file", str(new))
    assert rc == 0, err
    rc, _out, _err = run(capsys, "whoami", str(tree.city.dir), "--as", "zhang", "--password-file", pwfile)
    assert rc == 2
    rc, _out, err = run(capsys, "whoami", str(tree.city.dir), "--as", "zhang", "--password-file", str(new))
    assert rc == 0, err
    # scope must lie in the node's subtree
    rc, _out, err = run(capsys, "users", "add", str(tree.city.dir), "--login", "x1", "--name", "外人", "--role",
                        "监察员", "--scope", "320500", "--no-password")
    assert rc == 2 and "320500" in err


# ---- running nodes: the admin socket and the links ----------------------------------------------------------


def fednode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDNODE, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDNODE_USER": ""})


@pytest.mark.slow
def test_running_tree_acts_in_names_and_no_password_in_cmdline(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cl:
        cl.start()
        city, county = str(cl.homes["320300"].dir), str(cl.homes["320303"].dir)
        for home, login, name, role in ((city, "zhang", "张三", "监察员"), (county, "wang", "王五", "部门监察")):
            r = fednode("users", "add", home, "--login", login, "--name", name, "--role", role,
                        "--password-file", "-", stdin=PASSWORD + "\n")
            assert r.returncode == 0, r.stderr
        # sign in with the password on standard input: never in the command line or the environment
        p = subprocess.Popen([FEDNODE, "login", city, "--as", "zhang", "--password-file", "-", "--json"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert PASSWORD not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
        assert PASSWORD not in Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")
        out, err = p.communicate(PASSWORD + "\n", timeout=120)
        assert p.returncode == 0, err
        r = fednode("tickets", "issue", city, "--to", "320303", "--subject", "红牌督办", "--body", "限期整改",
                    "--as", "zhang", "--json")
        assert r.returncode == 0, r.stderr
        issued = json.loads(r.stdout)
        assert issued["via"] == "admin" and issued["by"]["name"] == "张三"
        ticket = issued["ticket"]

        def county_has_it() -> bool:
            r = fednode("tickets", "show", county, ticket, "--json")
            return r.returncode == 0
        wait_for(county_has_it, 60, "the ticket reaches the county")
        r = fednode("tickets", "sign", county, ticket, "--as", "wang", "--password-file", "-", stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        r = fednode("tickets", "reply", county, ticket, "已整改完毕", "--as", "wang", "--password-file", "-",
                    stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr

        def province_sees_reply() -> bool:
            r = fednode("tickets", "show", str(cl.homes["320000"].dir), ticket, "--json")
            if r.returncode != 0:
                return False
            by = {e["event"]: (e.get("by") or {}).get("name") for e in json.loads(r.stdout)["timeline"]}
            return by.get("issue") == "张三" and by.get("reply") == "王五"
        wait_for(province_sees_reply, 60, "the province sees who issued and who replied")
        for home in cl.homes.values():
            for path in home.dir.rglob("*"):
                if path.is_file() and not path.is_socket():
                    assert PASSWORD.encode() not in path.read_bytes(), path


def test_refusal_fix_names_the_holders() -> None:
    fix = app_people._refusal_fix(app_people.os_person("320300", "root"), "tickets.issue")
    assert "监察员" in fix and "--as" in fix


# ---- the supervisor rules, per person ------------------------------------------------------------------------


def test_supervisor_rules_watch_each_supervisor_and_escalate_to_the_leaders() -> None:
    from node.features import worklog
    from node.features.stats.config import SupervisorRules

    rules = SupervisorRules()
    t0 = datetime(2026, 12, 1, 9, tzinfo=CST)
    watched = [worklog.Watched("zhang", "张三", ("supervisor",), "320300"),
               worklog.Watched("zhao", "赵六", ("leader",), "320300"),
               worklog.Watched("it", "运维", ("sysadmin",), "320300"),
               worklog.Watched("li", "李四", ("handler",), "320300")]
    recs = [("audit.action", "320300", {"actor": "zhao", "action": "visit", "target": "", "at": t0.isoformat()}),
            ("audit.action", "320300", {"actor": "root", "action": "ingest", "target": "", "at": t0.isoformat()})]
    facts = worklog.facts_from_records("320300", recs)
    now = t0 + timedelta(days=1)
    due = worklog.supervisor_actions(facts, rules, now, (), watched)
    reminded = {d.payload["subject"]: d.payload for d in due if d.kind == worklog.REMIND}
    # zhang never acted: reminded at once, told himself; zhao was here yesterday; IT staff and handlers
    # and the OS operator are not supervisors
    assert set(reminded) == {"zhang"} and reminded["zhang"]["to"] == ["zhang"] and "张三" in reminded["zhang"]["message"]
    recs.append(("audit.remind", "320300", reminded["zhang"]))
    facts = worklog.facts_from_records("320300", recs)
    later = now + timedelta(days=rules.escalate_after_days + 0.1)
    due = worklog.supervisor_actions(facts, rules, later, (), watched)
    escalations = [d.payload for d in due if d.kind == "alert"]
    assert len(escalations) == 1 and escalations[0]["to"] == ["zhao"] and escalations[0]["object"] == "supervisor"
