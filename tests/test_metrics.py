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
    f = metrics.Family("fednode_x", "gauge", "help with \\ backslash")
    f.add(3, name='徐州 "市"\\n', path="a\nb")
    f.add(1.5, name="plain", path="")
    empty = metrics.Family("fednode_empty", "counter", "no samples: left out")
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
    snap = metrics.snapshot(status, counts, {"reconcile": {"last": {"repaired": 3, "ok": True}, "note": "x"}},
                            {"320000/up": ({"bulk": 0}, {"bulk": 500, "control": 2})})
    s = metrics.parse_exposition(metrics.render(metrics.families(snap)))
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
    assert value(s, "fednode_refused_peers") == 1
    assert value(s, "fednode_service_value", service="reconcile", field="last.repaired") == 3
    assert value(s, "fednode_service_value", service="reconcile", field="last.ok") == 1
    assert value(s, "fednode_certificate_expiry_timestamp_seconds", certificate="tls.crt") == dt.datetime(2029, 3, 2, 8, 56, 57, tzinfo=dt.UTC).timestamp()


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
        assert value(province, "fednode_service_value", service="metrics", field="serving") == 1

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
