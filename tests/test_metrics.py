"""Metrics: the exposition format, the [metrics] section, and a demo-like run scraped over real HTTP.

The integration test runs the demo tree (province ← city ← 320303, 320311, 320300-GA), each node a
real process with mutual TLS on loopback and its own metrics port, feeds the leaves (synthetic events,
a file with alerts and unreadable lines that go to quarantine), waits until the province holds
everything, and checks the scraped counters against the stores' own heads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from bench import demo
from node.core import admin_client as admin
from node.core import codes, schema
from node.core.home import Home
from node.core.store import Store
from node.features import metrics

_SCRIPT = Path(sys.executable).parent / "fednode"
FEDNODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "import sys; from node.interfaces.cli.main import main; sys.exit(main())"]
CHANNELS = {1: "control", 2: "monitor", 3: "bulk"}
ALERTS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fednode(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([*FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    key = (metric, frozenset(labels.items()))
    assert key in samples, f"no sample {metric}{labels}; have: {sorted(k for k in samples if k[0] == metric)}"
    return samples[key]


# ---- pure parts -----------------------------------------------------------------------------------------


def test_render_escapes_and_parses_back() -> None:
    f = GaugeMetricFamily("fednode_x", "help with \\ backslash", labels=["name", "path"])
    f.add_metric(['徐州 "市"\\n', "a\nb"], 3)
    f.add_metric(["plain", ""], 1.5)
    empty = CounterMetricFamily("fednode_empty", "no samples: left out")
    text = metrics.render([f, empty])
    assert "# TYPE fednode_x gauge" in text and "fednode_empty" not in text
    assert 'name="徐州 \\"市\\"\\\\n",path="a\\nb"' in text
    back = metrics.parse_exposition(text)
    assert back[("fednode_x", frozenset({("name", '徐州 "市"\\n'), ("path", "a\nb")}))] == 3
    assert back[("fednode_x", frozenset({("name", "plain"), ("path", "")}))] == 1.5


def test_config_section_rules(tmp_path: Path) -> None:
    p = tmp_path / "node.toml"
    assert not metrics.parse_config(p, None).enabled  # no [metrics]: no endpoint, no port fight
    assert metrics.parse_config(p, {}).listen == metrics.DEFAULT_LISTEN
    assert not metrics.parse_config(p, {"listen": ""}).enabled
    assert metrics.parse_config(p, {"listen": "0.0.0.0:9100"}).host_port == ("0.0.0.0", 9100)
    for bad, field in (({"listen": "9100"}, "metrics.listen"), ({"listen": 9100}, "metrics.listen"),
                       ({"port": 1}, "metrics.port"), ({"listen": "h:70000"}, "metrics.listen")):
        with pytest.raises(metrics.MetricsConfigError) as e:
            metrics.parse_config(p, bad)
        assert field in e.value.message and str(p) in e.value.message and e.value.fix
        assert e.value.exit_status == 2


def test_families_from_a_snapshot() -> None:
    status = {
        "node": {"code": "320300", "name": "徐州市", "level": "city", "path": "320000/320300", "version": "0.1.0"},
        "running": True, "recovered": True, "started_us": 1_700_000_000_000_000,
        "logs": [{"origin": "320300", "channel": "control", "seq": 2, "head": "ab"},
                 {"origin": "320303", "channel": "bulk", "seq": 500, "head": "cd"}],
        "links": [{"peer": "320000", "direction": "up", "state": "connected", "since_us": 1, "last_in_us": 2,
                   "last_out_us": 3, "rtt_ms": 4.0, "records_in": 0, "records_out": 502,
                   "backlog": {"bulk": {"records": 7, "oldest_age_s": 1.5}},
                   "acked": [{"kind": "log", "origin": "320303", "channel": "bulk", "seq": 493},
                             {"kind": "log", "origin": "320311", "channel": "bulk", "seq": 7}],
                   "paused": {"320311/bulk": "refused"}, "last_error": "x"}],
        "certificates": {"tls.crt": "2029-03-02T08:56:57+00:00"},
        "incidents": 1, "quarantine": 2, "refused_peers": {"320399": 1},
    }
    counts = {"incidents_by_kind": {"fork": 1}, "quarantine_by_source": {("cli", "pending"): 2},
              "alerts_by_kind": {"alert": 4}}
    snap = metrics.snapshot(status, counts, SERVICES, {"320000/up": ({"bulk": 0}, {"bulk": 500, "control": 2})})
    text = metrics.render(metrics.families(snap))
    s = metrics.parse_exposition(text)
    link = {"peer": "320000", "direction": "up"}
    assert value(s, "fednode_link_up", **link) == 1
    assert value(s, "fednode_link_state", **link, state="connected") == 1
    assert value(s, "fednode_link_state", **link, state="down") == 0
    assert value(s, "fednode_link_records_out_total", **link) == 502
    assert value(s, "fednode_link_channel_records_out_total", **link, channel="bulk") == 500
    assert value(s, "fednode_link_acked_seq", **link, channel="bulk") == 500
    assert value(s, "fednode_link_backlog_records", **link, channel="bulk") == 7
    assert value(s, "fednode_link_backlog_records", **link, channel="control") == 0
    assert value(s, "fednode_link_lag_seconds", **link, channel="bulk") == 1.5
    assert value(s, "fednode_link_rtt_seconds", **link) == 0.004
    assert value(s, "fednode_link_paused_streams", **link) == 1
    assert value(s, "fednode_link_error", **link) == 1
    assert value(s, "fednode_log_seq", origin="320303", channel="bulk") == 500
    assert value(s, "fednode_own_records", channel="control") == 2
    assert value(s, "fednode_incidents", kind="fork") == 1
    assert value(s, "fednode_quarantine_items", source="cli", state="pending") == 2
    assert value(s, "fednode_alert_records", kind="alert") == 4
    assert value(s, "fednode_certificate_expiry_timestamp_seconds", certificate="tls.crt") == dt.datetime(2029, 3, 2, 8, 56, 57, tzinfo=dt.UTC).timestamp()
    # the services' figures: each its own typed family (issue 27: no grab-bag gauge)
    assert value(s, "fednode_reconcile_last_ok") == 1
    assert value(s, "fednode_reconcile_last_records_repaired") == 3
    assert value(s, "fednode_rules_enabled") == 1
    assert value(s, "fednode_rules_scan_interval_seconds") == 60
    assert value(s, "fednode_rules_last_scan_timestamp_seconds") == dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC).timestamp()
    assert value(s, "fednode_rules_alerts_appended_total") == 5
    assert value(s, "fednode_notify_messages_total", outcome="failed") == 1
    assert value(s, "fednode_ticket_records_written_total", kind="reminder") == 2
    assert value(s, "fednode_adapter_rows_total", adapter="drop", type="filedrop", outcome="quarantined") == 1
    assert value(s, "fednode_adapter_up", adapter="drop", type="filedrop") == 1
    assert value(s, "fednode_metrics_scrapes_total") == 4
    assert not any(n == "fednode_service_value" for n, _ in s)
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert types["fednode_link_records_out_total"] == types["fednode_rules_alerts_appended_total"] == "counter"
    assert types["fednode_link_up"] == types["fednode_rules_last_scan_timestamp_seconds"] == "gauge"
    # counted as it happens, not in a snapshot: a stopped node has no such figure
    assert not any(n.startswith(("fednode_refused_peers", "process_")) for n, _ in s)


SERVICES: dict[str, Any] = {
    "reconcile": {"last": {"records_repaired": 3, "ok": True, "finished_us": 1_700_000_000_000_000}, "note": "x",
                  "next_run": "2026-11-21T02:00:00+08:00"},
    "rules": {"enabled": True, "caught_up": True, "scan_interval_s": 60.0, "open_cases": 3, "alerts_appended": 5,
              "last_scan": {"at": "2026-11-20T10:00:00+08:00", "alerts": 1, "s": 0.25},
              "notify": {"sent": 2, "failed": 1}},
    "tickets": {"receipts_written": 1, "reminders_written": 2, "escalations_written": 0,
                "last_deadline_check": "2026-11-20T10:00:00+08:00", "last_error": ""},
    "adapters": {"drop": {"type": "filedrop", "read": 3, "accepted": 2, "duplicates": 0, "quarantined": 1,
                          "batches": 1, "last_commit_us": 1_700_000_000_000_000, "state": "ok"}},
    "metrics": {"listen": "127.0.0.1:9464", "serving": True, "port": 9464, "scrapes": 4, "error": ""},
}


def test_instruments_count_as_it_happens() -> None:
    """The running node's live figures: refused peers a counter by RPC, the two latency histograms, the
    process collector; rendered with a snapshot into one page."""
    inst = metrics.Instruments()
    inst.refused("Link")
    inst.refused("Link")
    inst.refused("Bogus")  # a name outside the four RPCs cannot grow the label set
    for seconds in (0.002, 0.02, 0.2):
        inst.applied("320303", "down", seconds)
    inst.committed("320000", "up", 0.04)
    snap = metrics.snapshot({"node": {"code": "320300", "name": "徐州市", "level": "city"}, "running": True}, {})
    text = metrics.render(metrics.families(snap), inst.registry)
    s = metrics.parse_exposition(text)
    assert "# TYPE fednode_refused_peers_total counter" in text or "# TYPE fednode_refused_peers counter" in text
    assert value(s, "fednode_refused_peers_total", rpc="Link") == 2
    assert value(s, "fednode_refused_peers_total", rpc="Heads") == 0
    assert value(s, "fednode_refused_peers_total", rpc="other") == 1
    assert value(s, "fednode_batch_apply_seconds_count", peer="320303", direction="down") == 3
    assert value(s, "fednode_batch_apply_seconds_bucket", peer="320303", direction="down", le="0.01") == 1
    assert value(s, "fednode_batch_apply_seconds_sum", peer="320303", direction="down") == pytest.approx(0.222)
    assert value(s, "fednode_batch_commit_seconds_count", peer="320000", direction="up") == 1
    assert "# TYPE fednode_batch_commit_seconds histogram" in text
    assert value(s, "process_resident_memory_bytes") > 0
    assert value(s, "process_start_time_seconds") <= time.time()
    assert value(s, "fednode_running") == 1
    assert not any(n.endswith("_created") for n, _ in s)


PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("FEDNODE_REQUIRE_PROMTOOL"):  # CI installs it: a skip there is a failure
    raise RuntimeError("FEDNODE_REQUIRE_PROMTOOL is set but promtool is not installed (apt-get install prometheus)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")


@needs_promtool
def test_promtool_accepts_the_page() -> None:
    """`promtool check metrics` (the exposition's syntax and Prometheus' naming conventions) on a page
    with every family the node exports: snapshot, services, live counters and histograms."""
    status = {"node": {"code": "320300", "name": "徐州市", "level": "city", "path": "320000/320300"}, "running": True,
              "recovered": True, "started_us": 1_700_000_000_000_000, "incidents": 0, "quarantine": 1,
              "logs": [{"origin": "320300", "channel": "control", "seq": 2}],
              "links": [{"peer": "320000", "direction": "up", "state": "connected", "since_us": 1, "last_in_us": 2,
                         "rtt_ms": 4.0, "records_in": 1, "records_out": 2, "backlog": {}, "acked": [],
                         "paused": {}, "last_error": ""}],
              "certificates": {"tls.crt": "2029-03-02T08:56:57+00:00"}}
    counts = {"incidents_by_kind": {}, "quarantine_by_source": {("drop", "pending"): 1}, "alerts_by_kind": {"alert": 1}}
    inst = metrics.Instruments()
    inst.applied("320000", "up", 0.01)
    inst.committed("320000", "up", 0.01)
    page = metrics.render(metrics.families(metrics.snapshot(status, counts, SERVICES, {"320000/up": ({"bulk": 1}, {"bulk": 2})})),
                          inst.registry)
    assert "fednode_rules_enabled" in page and "fednode_batch_apply_seconds_bucket" in page
    check_metrics(page)


def check_metrics(page: str) -> None:
    assert PROMTOOL is not None
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


@needs_promtool
def test_alert_rules(tmp_path: Path) -> None:
    """deploy/prometheus/alerts.yml is valid (`promtool check rules`), its tests pass (`promtool test
    rules`: link down, lag, certificate expiry, quarantine growth, rules idle, refused peers), and every
    fednode metric an expression names is one the node exports."""
    assert PROMTOOL is not None
    rules = ALERTS_DIR / "alerts.yml"
    p = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=ALERTS_DIR, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # a rule whose threshold moved is caught by the rules' tests (they can fail)
    (tmp_path / "alerts.yml").write_text(rules.read_text(encoding="utf-8").replace("for: 10m", "for: 30m", 1),
                                         encoding="utf-8")
    shutil.copy(ALERTS_DIR / "alerts_test.yml", tmp_path)
    p = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "FednodeLinkDown" in p.stdout + p.stderr


def test_alert_rules_name_exported_metrics() -> None:
    """Every metric name in deploy/prometheus/alerts.yml is exported by the node (a rename cannot leave an
    alert that never fires)."""
    text = (ALERTS_DIR / "alerts.yml").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(fednode_[a-z_]+)", text))
    assert named
    inst = metrics.Instruments(process=False)
    inst.applied("p", "up", 0.1)
    inst.committed("p", "up", 0.1)
    status = {"node": {"code": "1", "name": "n", "level": "county"}, "running": True, "recovered": True,
              "incidents": 0, "links": [{"peer": "p", "direction": "up", "state": "down", "records_in": 0,
                                         "records_out": 0}], "certificates": {"tls.crt": "2029-03-02T08:56:57+00:00"}}
    counts = {"incidents_by_kind": {}, "quarantine_by_source": {("drop", "pending"): 1}, "alerts_by_kind": {}}
    page = metrics.render(metrics.families(metrics.snapshot(status, counts, SERVICES)), inst.registry)
    exported = {name for name, _ in metrics.parse_exposition(page)}
    exported |= {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}  # a histogram's name (in the texts)
    assert named <= exported, named - exported


# ---- a demo run, scraped ----------------------------------------------------------------------------------


def http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return metrics.parse_exposition(r.read().decode())


def kind_counts(home: Home, kind: str) -> int:
    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)
    try:
        with store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.records)
                                    .where(schema.records.c.kind == kind)).scalar_one())
    finally:
        store.close()


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def running(homes: dict[str, Home]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for code, h in homes.items():
            procs[code] = demo.start(h.dir)
        for h in homes.values():
            demo.wait_admin(Home(h.dir))
        yield procs
    finally:
        demo.stop_all(procs)


ALERT = {"rule_id": "R-TIME-01", "category": "01", "object": "case", "division": "320303",
         "message": "办件超期", "at": "2026-11-20T10:00:00+08:00", "source": "engine"}


@pytest.mark.slow
def test_demo_run_metrics(tmp_path: Path) -> None:
    homes = demo.build_tree(tmp_path / "tree")
    ports = dict(zip(homes, free_ports(len(homes)), strict=True))
    for code, h in homes.items():
        with open(h.dir / "node.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[metrics]\nlisten = "127.0.0.1:{ports[code]}"\n')
    drop = tmp_path / "alerts.jsonl"
    lines = [json.dumps({"kind": "alert", "payload": {**ALERT, "alert_id": f"A{i}", "level": lvl}}, ensure_ascii=False)
             for i, lvl in ((1, 2), (2, 3))]
    lines += ["{not json", '{"kind": "alert", "payload": {"alert_id": "A9"}}', "\x00\x01"]
    drop.write_text("\n".join(lines) + "\n", encoding="utf-8")
    per_leaf = 3000
    with running(homes) as procs:
        for i, leaf_code in enumerate(demo.LEAVES):
            r = admin.call(homes[leaf_code], {"op": "ingest", "synthetic": per_leaf, "seed": i + 1})
            assert r is not None and r["result"]["ingested"] == per_leaf
        p = fednode("ingest", homes["320303"].dir, drop, "--json")
        # exit 1: the command ran and found a problem (rows went to quarantine); the good rows are in
        assert p.returncode in (0, 1) and json.loads(p.stdout)["via"] == "admin", p.stdout + p.stderr
        ok, want = demo.wait_converged(homes, demo.LEAVES, "320000", timeout=120, progress=False)
        assert ok, f"the province did not get everything: {want}"

        county = scrape(ports["320303"])
        assert value(county, "fednode_running") == 1
        assert value(county, "fednode_node_info", code="320303", name="云龙区", level="county",
                     path="320000/320300/320303", version="0.1.0") == 1
        own = {ch: seq for (_o, ch), seq in demo.leaf_heads(homes, ["320303"]).items()}
        for ch, seq in own.items():
            assert value(county, "fednode_own_records", channel=CHANNELS[ch]) == seq
        assert sum(own.values()) >= per_leaf + 2 + 1  # the events, the 2 alerts, the key announcement
        alerts_here = kind_counts(homes["320303"], "alert")
        assert alerts_here >= 2
        assert value(county, "fednode_alert_records", kind="alert") == alerts_here
        assert value(county, "fednode_quarantine_stored") == 3
        assert sum(v for (n, _), v in county.items() if n == "fednode_quarantine_items") == 3
        leaf_heads = {c: value(county, "fednode_log_seq", origin="320303", channel=c) for c in ("control", "monitor", "bulk")}
        up = {"peer": "320300", "direction": "up"}
        assert value(county, "fednode_link_up", **up) == 1
        assert value(county, "fednode_link_records_out_total", **up) >= sum(leaf_heads.values())
        for c, head_seq in leaf_heads.items():
            assert value(county, "fednode_link_acked_seq", **up, channel=c) == head_seq
        deadline = time.monotonic() + 30  # acks and the backlog settle a moment after the province committed
        backlog = -1.0
        while time.monotonic() < deadline:
            city = scrape(ports["320300"])
            backlog = sum(v for (n, _), v in city.items() if n == "fednode_link_backlog_records")
            if backlog == 0:
                break
            time.sleep(0.3)
        assert backlog == 0
        for c in ("control", "monitor", "bulk"):
            assert value(city, "fednode_link_lag_seconds", peer="320000", direction="up", channel=c) == 0

        province = scrape(ports["320000"])
        store = Store.open(homes["320000"].config.store_url, base_dir=homes["320000"].dir, migrate=False)
        try:
            heads = store.heads()
        finally:
            store.close()
        for (origin, ch), head in heads.items():
            assert value(province, "fednode_log_seq", origin=origin, channel=CHANNELS[ch]) == head.seq
        # every record the province holds from the city's subtree came in over that one link
        from_city = sum(hd.seq for (o, _c), hd in heads.items() if codes.within(o, "320300"))
        down = {"peer": "320300", "direction": "down"}
        assert value(province, "fednode_link_records_in_total", **down) >= from_city
        assert value(province, "fednode_link_up", **down) == 1
        assert value(province, "fednode_alert_records", kind="alert") == kind_counts(homes["320000"], "alert")
        assert kind_counts(homes["320000"], "alert") >= alerts_here  # the alerts travelled up
        assert value(province, "fednode_incidents_stored") == 0
        assert value(scrape(ports["320000"]), "fednode_metrics_scrapes_total") >= 1  # the first is counted once answered
        # the live histograms: the province applied the city's batches, the county saw its own acknowledged
        assert value(province, "fednode_batch_apply_seconds_count", **down) >= 1
        assert value(county, "fednode_batch_commit_seconds_count", **up) >= 1
        assert value(province, "process_resident_memory_bytes") > 0
        assert value(province, "fednode_refused_peers_total", rpc="Link") == 0
        if PROMTOOL is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['320300']}/metrics", timeout=10) as r:
                check_metrics(r.read().decode())

        # the HTTP shell: bad requests get 4xx and the endpoint keeps serving
        port = ports["320300-GA"]
        assert http(port, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert http(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert http(port, b"\xff\xfe garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert http(port, b"GET /healthz HTTP/1.1\r\n\r\n").endswith(b"ok\n")
        assert value(scrape(port), "fednode_running") == 1

        # SIGHUP moves the endpoint to a new port without restarting the node
        new_port = free_ports(1)[0]
        toml = homes["320311"].dir / "node.toml"
        toml.write_text(toml.read_text(encoding="utf-8").replace(f"127.0.0.1:{ports['320311']}", f"127.0.0.1:{new_port}"),
                        encoding="utf-8")
        pid = procs["320311"].pid
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                moved = scrape(new_port)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert value(moved, "fednode_link_up", peer="320300", direction="up") == 1
        assert procs["320311"].poll() is None
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape(ports["320311"])

        # `fednode metrics --json` through the admin socket, and `fednode health`
        p = fednode("metrics", homes["320300"].dir, "--json")
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        assert data["running"] is True
        assert any(s["name"] == "fednode_link_up" and s["labels"] == {"peer": "320000", "direction": "up"}
                   and s["value"] == 1 for s in data["samples"])
        p = fednode("health", homes["320300"].dir, "--json")
        assert p.returncode == 0, p.stdout + p.stderr
        checks = json.loads(p.stdout)["checks"]
        assert {"admin", "store", "recovered", "uplink", "disk", "grpc_health", "metrics"} <= set(checks)
        assert all(c["ok"] for c in checks.values()), checks

    # stopped: `metrics` reads the store; `health` says unhealthy (exit 1)
    p = fednode("metrics", homes["320303"].dir, "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["running"] is False
    samples = {(s["name"], frozenset(s["labels"].items())): s["value"] for s in data["samples"]}
    assert value(samples, "fednode_running") == 0
    for ch, seq in own.items():
        assert value(samples, "fednode_own_records", channel=CHANNELS[ch]) == seq
    p = fednode("health", homes["320303"].dir, "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["healthy"] is False


@pytest.mark.slow
def test_bad_metrics_section_stops_the_node_at_start(tmp_path: Path) -> None:
    """A typo in [metrics]: `fednode metrics` and `fednode run` both exit 2 naming the field (issue 24: a
    typo must not leave the node running without its endpoint, with only a log line saying so)."""
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:1])
    h = homes["320000"]
    with open(h.dir / "node.toml", "a", encoding="utf-8") as f:
        f.write('\n[metrics]\nlisten = "nowhere"\n')
    p = fednode("metrics", h.dir)
    assert p.returncode == 2 and "metrics.listen" in p.stderr and "fix:" in p.stderr
    p = fednode("run", h.dir)
    assert p.returncode == 2 and "metrics.listen" in p.stderr and "fix:" in p.stderr
    assert admin.call(Home(h.dir), {"op": "status"}) is None
