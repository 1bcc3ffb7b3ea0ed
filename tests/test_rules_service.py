"""The rules in the node: the processor over real stores (SQLite and PostgreSQL), restarts, injected
crashes, the missing-year operator alert, a parent over its subtree; and the service in real node
processes with real links (slow)."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from bench import demo
from node.app import ingest
from node.core import admin_client as admin
from node.core.calendar import CST
from node.core.errors import ConfigError
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.keyring import Keyring
from node.core.ledger import NewRecord
from node.core.records import MONITOR
from node.features.rules.alerts import read_alerts
from node.features.rules.overrides import import_overrides, load_calendar
from node.features.rules.processor import RulesProcessor
from node.features.rules.settings import CURSOR_KEY, RulesSettings
from tests.conftest import Tree

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=CST)


def processor(home: Home, *, sections: dict[str, Any] | None = None, now: datetime = NOW) -> RulesProcessor:
    settings = RulesSettings.from_sections(sections or {})
    p = RulesProcessor(home.ledger(), settings, load_calendar(home.dir, settings), clock=lambda: now)
    p.rebuild()
    return p


def run_to_end(p: RulesProcessor) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        n, alerts = p.step()
        out.extend(alerts)
        if n == 0:
            break
    out.extend(p.scan())
    return out


def stored_ids(home: Home) -> list[str]:
    return [a.payload["alert_id"] for a in read_alerts(home.store())]


def push_up(child: Home, parent: Home) -> None:
    """Every log the child holds, as verified segments (what an uplink sends)."""
    cl, pl = child.ledger(), parent.ledger()
    for (origin, channel), head in cl.store.heads().items():
        have = pl.store.head(origin, channel).seq
        if have >= head.seq:
            continue
        seg = cl.read_segment(origin, channel, have, 100_000)
        assert seg is not None
        pl.admit_keys(cl.key_certificates_for({seg.checkpoint.key_id, *(r.key_id for r in seg.records)}))
        pl.accept_segment(seg, sender_subtree=child.code, source=child.code)


@pytest.fixture
def county_tree(tmp_path: Path, store_url: str) -> Any:
    t = Tree(tmp_path, county_db=store_url)
    yield t
    t.close()


# ---- processor on real stores ---------------------------------------------------------------------------


def test_alerts_are_signed_records_with_the_cursor_and_never_repeat_across_restarts(county_tree: Tree) -> None:
    county = county_tree.county
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 3000, 1))
    first = processor(county)
    alerts = run_to_end(first)
    assert alerts, "the synthetic data holds anomalies and overdue cases"
    ids = stored_ids(county)
    assert sorted(ids) == sorted(a["alert_id"] for a in alerts) and len(set(ids)) == len(ids)
    # the cursor is stored, and past every case record
    last_case = max(c.local_seq for c in county.store().changes(0, 100_000, kinds=("case.",)))
    assert int(county.store().get_meta(CURSOR_KEY) or 0) >= last_case
    # on the monitor channel, signed, in a chain that verifies
    stored = county.store().changes(0, 100_000, kinds=("alert",))
    assert {(c.origin, c.channel) for c in stored} == {(county.code, MONITOR)} and len(stored) == len(ids)
    report = verify_store(county.store(), Keyring.from_rows(county.root(), county.store().keys()))
    assert report.ok, report.problems
    # every record is a valid records.md alert (the engine's extra fields are not in it)
    assert all(set(a.payload) <= {"alert_id", "rule_id", "category", "level", "object", "case_no", "step_no",
                                  "division", "dept", "item_code", "message", "at", "source"}
               for a in read_alerts(county.store()))  # fmt: skip

    # restart: rebuilt from the records, nothing is raised again, at the same or any later time
    second = processor(county)
    assert run_to_end(second) == []
    later = processor(county, now=NOW + timedelta(days=20))
    escalated = run_to_end(later)
    new_ids = {a["alert_id"] for a in escalated}
    levels: dict[str, int] = collections.defaultdict(int)
    for stored_alert in read_alerts(county.store()):
        if stored_alert.payload["alert_id"] in new_ids:
            continue
        obj = stored_alert.payload["alert_id"].rsplit(":", 1)[0]
        levels[obj] = max(levels[obj], stored_alert.payload["level"])
    assert escalated, "20 days later some cards escalate"
    for a in escalated:  # only escalations of what was there before, or new objects
        assert a["level"] > levels[a["alert_id"].rsplit(":", 1)[0]]
    ids = stored_ids(county)
    assert len(set(ids)) == len(ids)


def test_same_records_ingested_again_raise_nothing_new(tree: Tree) -> None:
    county = tree.county
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 1500, 4))
    p = processor(county)
    n_first = len(run_to_end(p))
    assert n_first > 0
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 1500, 4))  # a re-sent batch
    assert run_to_end(p) == []
    assert len(stored_ids(county)) == n_first


def test_a_crash_before_commit_loses_nothing_and_repeats_nothing(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    county = tree.county
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 2000, 2))
    p = processor(county)
    real_append = p.ledger.append

    def crash(*args: Any, **kwargs: Any) -> Any:  # injected fault: the process dies inside the transaction
        raise OSError("disk unplugged")

    monkeypatch.setattr(p.ledger, "append", crash)
    with pytest.raises(OSError):
        p.step()
    assert stored_ids(county) == [] and county.store().get_meta(CURSOR_KEY) is None
    monkeypatch.setattr(p.ledger, "append", real_append)
    # the node restarts: a fresh processor from the records
    after = processor(county)
    alerts = run_to_end(after)
    ids = stored_ids(county)
    assert alerts and len(ids) == len(set(ids)) == len(alerts)


def _case_in(year: int) -> list[tuple[str, dict[str, Any]]]:
    common = {"case_no": f"YR{year}0001", "item_code": "ITEM-Y", "division": "320303", "dept": "320303-ZJ"}
    item = {"item_code": "ITEM-Y", "name": "测试事项", "item_type": "01", "dept": "320303-ZJ", "division": "320303",
            "case_kind": "2", "statutory_days": 20, "promised_days": 10, "unit": "workday",
            "steps": [{"step_code": "SL", "name": "受理", "limit_days": 1, "posts": ["窗口"]}]}  # fmt: skip
    return [
        ("item", item),
        ("case.apply", {**common, "time": f"{year}-03-02T09:00:00+08:00", "applicant_type": "1",
                        "applicant_name": "张三", "channel_code": "1"}),
        ("case.accept", {**common, "time": f"{year}-03-02T09:30:00+08:00", "handler": "窗口甲", "accepted": True,
                         "case_kind": "2"}),
    ]  # fmt: skip


def test_missing_calendar_year_raises_one_operator_alert_record_and_a_log_line(tree: Tree, tmp_path: Path) -> None:
    county = tree.county
    county.ledger().append([NewRecord(k, p) for k, p in _case_in(2027)])
    p = processor(county, now=datetime(2027, 6, 1, 10, 0, tzinfo=CST))
    with structlog.testing.capture_logs() as logs:
        alerts = run_to_end(p)
        assert p.scan() == []  # once per year, not once per scan
    operator = [a for a in alerts if a["rule_id"] == "calendar_year_missing"]
    assert [(a["level"], a["object"], a["division"]) for a in operator] == [(4, "supervisor", "320303")]
    assert [e for e in logs if e["event"] == "calendar_year_missing" and e["log_level"] == "error"]
    stored = [a.payload for a in read_alerts(county.store()) if a.payload["rule_id"] == "calendar_year_missing"]
    assert len(stored) == 1 and "2027" in stored[0]["message"]
    assert not [a for a in alerts if a["rule_id"] == "case_time"]  # not silently timed on a weekend rule

    # the operator imports 2027 (next year: not yet in chinese-calendar); after the reload the case is
    # timed and the operator alert is not repeated
    f = tmp_path / "2027.csv"
    f.write_text("date,kind,name\n2027,year,2027年安排\n2027-05-03,holiday,劳动节\n", encoding="utf-8")
    import_overrides(county.dir, f)
    again = processor(county, now=datetime(2027, 6, 1, 10, 0, tzinfo=CST))
    cards = run_to_end(again)
    assert [a["rule_id"] for a in cards] == ["case_time"] and cards[0]["level"] == 3
    assert again.engine.missing_years == set()


def test_a_parent_runs_the_rules_over_its_subtree(tree: Tree) -> None:
    county, city = tree.county, tree.city
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 1500, 3))
    push_up(county, city)
    own = processor(city)  # default scope: only cases born at the city (none)
    assert run_to_end(own) == []
    subtree = processor(city, sections={"rules": {"scope": "subtree"}})
    raised = run_to_end(subtree)
    # (deadlines of late-2026 cases run into 2027, which chinese-calendar lacks: one operator alert of the city)
    assert raised and {a["division"] for a in raised if a["object"] != "supervisor"} == {"320303"}
    at_city = {a.payload["alert_id"] for a in read_alerts(city.store())
               if a.origin == city.code and a.payload["object"] != "supervisor"}  # fmt: skip
    # the county runs them too; its alerts, once up, are known at the city and never raised again there
    at_county = run_to_end(processor(county))
    assert {a["alert_id"] for a in at_county if a["object"] != "supervisor"} == at_city
    push_up(county, city)
    assert run_to_end(processor(city, sections={"rules": {"scope": "subtree"}}, now=NOW)) == []


def test_bad_records_are_skipped_and_logged(tree: Tree) -> None:
    county = tree.county
    rows = _case_in(2025)
    rows.append(("case.step", {"case_no": "YR20250001", "division": "320303", "step_no": "not a number"}))
    rows.append(("case.suspend", {"case_no": "YR20250001", "division": "320303", "suspend_no": "1",
                                  "started_at": "the day after tomorrow", "approved_days": 5}))  # fmt: skip
    county.ledger().append([NewRecord(k, p) for k, p in rows])
    p = processor(county, now=datetime(2025, 6, 1, 10, 0, tzinfo=CST))
    with structlog.testing.capture_logs() as logs:
        run_to_end(p)
    assert p.skipped == 1 and [e for e in logs if e["event"] == "rules_record_skipped"]
    assert "320303/YR20250001" in p.engine.bad_objects
    assert int(county.store().get_meta(CURSOR_KEY) or 0) > 0


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"rules": {"enabled": "yes"}}, "enabled"),
        ({"rules": {"scan_interval_s": 0}}, "scan_interval_s"),
        ({"rules": {"scope": "everything"}}, "scope"),
        ({"rules": {"bogus": 1}}, "bogus"),
        ({"rules": {"default": {"case_warn_before_days": "two"}}}, "case_warn_before_days"),
        ({"calendar": {"office_hours": "25:00-26:00"}}, "office"),
    ],
)
def test_bad_settings_say_what_and_how_to_fix(sections: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        RulesSettings.from_sections(sections)
    assert fragment in str(e.value) and e.value.fix


def test_settings_defaults_and_thresholds() -> None:
    s = RulesSettings.from_sections({"rules": {"enabled": False, "item_types": {"02": {"step_red_ratio": 1.5}}}})
    assert not s.enabled and s.scope == "own" and s.scan_interval_s == 60
    assert s.engine.for_item_type("02").step_red_ratio == 1.5 and s.engine.for_item_type("01").step_red_ratio == 2.0


# ---- the service in real node processes -------------------------------------------------------------------

SMALL_TREE = [("320000", "江苏省", "province", None), ("320300", "徐州市", "city", "320000"),
              ("320303", "云龙区", "county", "320300")]  # fmt: skip


def _append_toml(home: Home, text: str) -> None:
    with open(home.config.path, "a", encoding="utf-8") as f:
        f.write("\n" + text + "\n")


def _alert_ids(home: Home) -> list[str]:
    from node.core.store import Store

    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        return [a.payload["alert_id"] for a in read_alerts(store)]
    finally:
        store.close()


def _rules_status(home: Home) -> dict[str, Any]:
    resp = admin.call(home, {"op": "rules.status"})
    assert resp is not None
    return dict(resp["result"])


def _settle(home: Home, timeout: float = 60.0) -> dict[str, Any]:
    """Run the rules to the end of the feed in the running node; return its rules status.

    Settled means: the engine is rebuilt, no record the rules read lies after its cursor (its own
    alerts included: they are read back, so every alert it raised is stored), and a scan after that
    raised nothing. A scan that answers while the engine is still being (re)built reads nothing, which
    is why "the scan raised nothing" alone is not enough."""
    deadline = time.monotonic() + timeout
    while True:
        resp = admin.call(home, {"op": "rules.scan"}, timeout=60)
        assert resp is not None
        st = _rules_status(home)
        if st.get("state") == "running" and st.get("caught_up") and resp["result"]["alerts"] == 0:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def _wait_province_holds(homes: dict[str, Home], n: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = _alert_ids(homes["320000"])
        if len(ids) >= n or time.monotonic() > deadline:
            return ids
        time.sleep(0.25)


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
def test_node_process_alerts_reach_the_province_without_duplicates_after_restart(tmp_path: Path) -> None:
    hook: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    hook.received = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    homes = demo.build_tree(tmp_path, SMALL_TREE)
    _append_toml(homes["320303"], "[rules]\nscan_interval_s = 1\n\n[notify]\nred = [\"log\", \"webhook\"]\n"
                 f"serious = [\"webhook\"]\nwebhook_url = \"http://127.0.0.1:{hook.server_address[1]}/alerts\"")
    _append_toml(homes["320000"], "[rules]\nenabled = false")
    homes = {code: Home(h.dir) for code, h in homes.items()}
    procs = {code: demo.start(homes[code].dir) for code, *_ in SMALL_TREE}
    try:
        for code in procs:
            demo.wait_admin(homes[code])
        resp = admin.call(homes["320303"], {"op": "ingest", "synthetic": 2500, "seed": 7})
        assert resp is not None and resp["result"]["ingested"] == 2500
        st = _settle(homes["320303"])
        at_county = _alert_ids(homes["320303"])
        assert at_county and len(set(at_county)) == len(at_county) and st["alerts_appended"] == len(at_county)
        ok, _ = demo.wait_converged(homes, ["320303"], "320000", timeout=60, progress=False)
        assert ok
        at_province = _wait_province_holds(homes, len(at_county))
        assert sorted(at_province) == sorted(at_county)
        status = admin.call(homes["320000"], {"op": "status"})
        assert status is not None and status["result"]["rules"]["enabled"] is False
        # red cards and serious violations went to the webhook, once each
        severe = {i for i in at_county if int(i.rsplit(":", 1)[1]) >= 3}
        assert severe and _wait_for(lambda: len(hook.received) >= len(severe))
        assert sorted(a["alert_id"] for a in hook.received) == sorted(severe)
        # the synthetic cases run to the end of 2026: deadlines in 2027 need a calendar the package lacks
        assert st["missing_years"] == [2027]

        # restart the county, feed the same events again: nothing is raised twice, anywhere
        demo.stop_all({"320303": procs["320303"]})
        procs["320303"] = demo.start(homes["320303"].dir)
        demo.wait_admin(homes["320303"])
        resp = admin.call(homes["320303"], {"op": "ingest", "synthetic": 2500, "seed": 7})
        assert resp is not None
        _settle(homes["320303"])
        time.sleep(1.5)  # at least one scheduled scan runs after the restart
        # the operator imports 2027 into the running node: it reloads and the year is covered
        year_file = tmp_path / "2027.csv"
        year_file.write_text("date,kind,name\n2027,year,2027年安排\n2027-01-01,holiday,元旦\n", encoding="utf-8")
        done = subprocess.run([sys.executable, "-c", "import sys; from node.interfaces.cli.main import main; sys.exit(main())",
                               "calendar", "import", str(homes["320303"].dir), str(year_file), "--json"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["node"] == "reloaded"
        st = _settle(homes["320303"])
        assert st["missing_years"] == [] and 2027 in st["calendar_years"]
        assert _wait_for(lambda: _rules_status(homes["320303"])["scheduled_scans"] >= 1, timeout=10)  # the job runs
        ok, _ = demo.wait_converged(homes, ["320303"], "320000", timeout=60, progress=False)
        assert ok
        after_county = _alert_ids(homes["320303"])
        assert len(set(after_county)) == len(after_county) and set(at_county) <= set(after_county)
        at_province = _wait_province_holds(homes, len(after_county))
        assert sorted(at_province) == sorted(after_county)
        received = [a["alert_id"] for a in hook.received]
        assert len(received) == len(set(received))  # no notification repeated either
        log_text = (homes["320303"].dir / "node.log").read_text(encoding="utf-8")
        assert "rules_rebuilt" in log_text and "calendar_year_missing" in log_text
    finally:
        demo.stop_all(procs)
        for h in homes.values():
            h.close()
        hook.shutdown()
        hook.server_close()


# ---- the service on a real runtime, in this process (store thread, scheduler, notify) ----------------------


def test_service_follows_the_feed_and_recovers_from_a_failed_append(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from node.runtime.process import NodeRuntime, make_scheduler
    from node.runtime.services.rules import RulesService

    county = tree.county

    async def main() -> tuple[list[str], list[str], dict[str, Any], bool]:
        rt = NodeRuntime(county)
        rt.scheduler = make_scheduler(rt)
        rt.scheduler.start()
        rt.recovered.set()
        svc = RulesService(rt)
        rt.services = [svc]
        await svc.start()
        while svc.processor is None:
            await asyncio.sleep(0.05)
        first = svc.processor
        real_append = rt.ledger.append
        failures = {"left": 1}

        def flaky_append(items: Any, **kw: Any) -> Any:  # injected fault: the first alert write fails
            if failures["left"] and any(i.kind == "alert" for i in items):
                failures["left"] -= 1
                raise OSError("disk full")
            return real_append(items, **kw)

        monkeypatch.setattr(rt.ledger, "append", flaky_append)
        with structlog.testing.capture_logs() as logs:
            await rt.db(ingest.append_chunked, rt.ledger, ingest.synthetic_items(county.code, 1500, 5))
            rt.notify()
            deadline = time.monotonic() + 60
            while True:
                await asyncio.sleep(0.2)
                status = await rt.db(svc.status)
                assert status is not None
                if status.get("cursor", 0) >= 1500 and not failures["left"] and svc.processor is not None:
                    break
                assert time.monotonic() < deadline, status
            await svc.follow()
            await svc.scan_now()
        ids = await rt.db(lambda: [a.payload["alert_id"] for a in read_alerts(rt.ledger.store)])
        status = await rt.db(svc.status)
        rebuilt = svc.processor is not first and svc.processor is not None and svc.processor.rebuilt
        await svc.stop()
        rt.scheduler.shutdown(wait=False)
        rt._executor.shutdown(wait=True)
        return ids, [e["event"] for e in logs], status or {}, rebuilt

    ids, events, status, rebuilt = asyncio.run(main())
    assert ids and len(ids) == len(set(ids))
    assert "rules_failed" in events and rebuilt  # the engine was dropped and rebuilt from the records
    assert status["enabled"] is True
    # nothing the failed transaction held was lost: a fresh engine over the records finds nothing missing
    assert run_to_end(processor(county, now=datetime.now(CST))) == []


def test_a_concluded_complaint_ticket_stops_the_complaint_deadline(tree: Tree) -> None:
    county = tree.county
    complaint = {"complaint_no": "TS320303000001", "complainant": "王五", "respondent_unit": "云龙区住建局",
                 "content": "拖延办理", "source": "12345", "registered_at": "2026-10-08T09:00:00+08:00",
                 "due_at": "2026-10-22T17:30:00+08:00", "division": "320303"}  # fmt: skip
    other = {**complaint, "complaint_no": "TS320303000002"}
    ticket = {"ticket": "320303-000001", "actor": "张三", "at": "2026-10-08T09:05:00+08:00", "node": "320303",
              "to": "320303", "subject": "投诉", "sign_deadline": "2026-10-09T17:30:00+08:00",
              "reply_deadline": "2026-10-20T17:30:00+08:00", "complaint_no": "TS320303000001"}  # fmt: skip
    conclude = {"ticket": "320303-000001", "actor": "张三", "at": "2026-10-21T10:00:00+08:00", "node": "320303",
                "verdict": "satisfactory", "text": "已办结", "satisfaction": "5"}  # fmt: skip
    county.ledger().append([NewRecord("complaint.register", complaint), NewRecord("complaint.register", other),
                            NewRecord("ticket.issue", ticket), NewRecord("ticket.conclude", conclude)])  # fmt: skip
    alerts = run_to_end(processor(county))
    assert {a["complaint_no"] for a in alerts if a["rule_id"] == "complaint_time"} == {"TS320303000002"}
    # and after a restart too
    assert run_to_end(processor(county, now=NOW + timedelta(days=10))) == []


# ---- bounded memory: the archive of cases that left memory ----------------------------------------------


def _synthetic(code: str, n: int, seed: int) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(the item catalogue, every other record) of a synthetic run."""
    rows = list(ingest.synthetic_items(code, n, seed))
    return [r for r in rows if r[0] == "item"], [r for r in rows if r[0] != "item"]


def _event_ids(alerts: list[dict[str, Any]]) -> list[str]:
    return sorted(a["alert_id"] for a in alerts if a["object"] != "supervisor")


def test_cases_leave_memory_and_an_item_arriving_last_reaches_them_in_the_archive(county_tree: Tree) -> None:
    county, other = county_tree.county, county_tree.other
    items, events = _synthetic(county.code, 4000, 6)
    # reference: the catalogue first, as the synthetic data has it
    other.ledger().append([NewRecord(k, p) for k, p in items + events])
    reference = run_to_end(processor(other))
    assert {a["rule_id"] for a in reference} >= {"permission", "workflow", "risk_evidence", "case_time"}

    # the catalogue last: every case is seen (and most leave memory) before its item is known
    county.ledger().append([NewRecord(k, p) for k, p in events])
    p = processor(county)
    before: list[dict[str, Any]] = []
    while (step := p.step())[0]:  # no scan yet: time rules are compared at one scan time below
        before += step[1]
    assert not {a["rule_id"] for a in before} & {"permission", "workflow", "risk_evidence", "discretion"}
    cases = len({(p_["division"], p_["case_no"]) for k, p_ in events if k == "case.apply"})
    assert p.archived >= cases * 0.9 and p.engine.held_case_count() <= cases * 0.1, (p.archived, cases)
    county.ledger().append([NewRecord(k, p_) for k, p_ in items])
    after = run_to_end(p)
    assert p.restored >= len({a["case_no"] for a in after if a["rule_id"] in ("permission", "workflow")})
    assert _event_ids(before + after) == _event_ids(reference)  # the same alerts, whatever the order

    # a restart reads the archive: the cases' records are skipped, not each case brought back again
    again = processor(county)
    assert run_to_end(again) == [] and again.restored < cases * 0.2, again.restored


def test_a_changed_configuration_evaluates_the_archived_cases_again(tree: Tree) -> None:
    county = tree.county
    ingest.append_chunked(county.ledger(), ingest.synthetic_items(county.code, 3000, 8))
    first = processor(county)
    raised = run_to_end(first)
    permission = sorted(a["alert_id"] for a in raised if a["rule_id"] == "permission")
    assert permission and all(i.endswith(":4") for i in permission) and first.archived > 100
    # the operator makes 超越权限 a yellow card: archived (closed) cases are evaluated again at the restart
    changed = processor(county, sections={"rules": {"anomaly_levels": {"permission": 2}}})
    assert changed.restored >= len(permission)
    stored = [a.payload["alert_id"] for a in read_alerts(county.store())]
    assert sorted(i for i in stored if i.startswith("permission:") and i.endswith(":2")) == \
        sorted(i[:-1] + "2" for i in permission)  # fmt: skip
    assert run_to_end(changed) == [] and len(stored) == len(set(stored))
    # and only once: the next restart with the same configuration skips the archived cases' records
    same = processor(county, sections={"rules": {"anomaly_levels": {"permission": 2}}})
    assert run_to_end(same) == [] and same.restored < changed.restored


def test_background_services_give_way_only_to_links_that_are_moving_records() -> None:
    """rt.links_busy, which the rules service and the stats fold consult between their batches."""
    from types import SimpleNamespace

    from node.core.records import now_us
    from node.runtime.process import LinkState, NodeRuntime

    up = LinkState("320300", "up", state="connected")
    rt = SimpleNamespace(links={"320300": up})
    busy = [NodeRuntime.links_busy(rt)]  # type: ignore[arg-type]  # connected, nothing moved yet
    up.last_records_us = now_us()  # a batch sent or applied
    busy.append(NodeRuntime.links_busy(rt))  # type: ignore[arg-type]
    up.last_records_us = now_us() - 5_000_000
    busy.append(NodeRuntime.links_busy(rt))  # type: ignore[arg-type]
    up.last_in_us = up.last_out_us = now_us()  # a child's report and its ack: not records moving
    busy.append(NodeRuntime.links_busy(rt))  # type: ignore[arg-type]
    up.last_records_us = now_us()
    busy.append(NodeRuntime.links_busy(rt))  # type: ignore[arg-type]
    assert busy == [False, True, False, False, True]
