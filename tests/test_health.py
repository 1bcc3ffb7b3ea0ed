"""Readiness and a truthful health (issue 27).

- Readiness: a node run with $NOTIFY_SOCKET (a datagram socket the test opens, as systemd does for
  ``Type=notify``) sends READY=1 only once its admin socket answers and it holds its own logs, STATUS=
  lines, and STOPPING=1 on SIGTERM; `fednode health --wait 30` right after the start succeeds.
- Health: each check with its state. A city whose parent has been down longer than the threshold is
  unhealthy (exit 1; its gRPC health service, asked over mutual TLS with its own certificates, says
  NOT_SERVING; /healthz 503), degraded before that, healthy again when the parent is back. Services off
  by configuration show as off; an adapter that fails shows and makes the node unhealthy until it works
  again. A county without a parent address warns at `run` and is degraded.
- The threshold is [link] parent_down_unhealthy_s (300 s by default, 60 s in the test); the test moves
  the city's wall clock past it (tests/faultlib.py FakeClock) rather than waiting.
- The judging functions (certificates, disk, uplink) and the sd_notify writer are also tested alone,
  with the real certificates of a test tree and real sockets.

Real parts: `fednode run` processes (tests/faultlib.py Cluster), real sockets, real mTLS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import demo
from bench.demo import free_port
from node.core import admin_client as admin
from node.core import pki
from node.core.home import Home
from node.runtime import health
from node.runtime.process import LinkState
from tests.conftest import Tree
from tests.faultlib import CHAIN, CITY, COUNTY, PROVINCE, Cluster, FakeClock, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def fednode(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def health_of(home: Home, *extra: str) -> tuple[int, dict[str, Any], str]:
    p = fednode("health", home.dir, "--json", *extra)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def node_health(home: Home) -> dict[str, Any]:
    """The node's own last evaluation, through its admin socket (cheaper than a CLI process per poll)."""
    resp = admin.call(home, {"op": "health"}, timeout=30)
    assert resp is not None, f"{home.code} is not running"
    return dict(resp["result"])


def grpc_health(home: Home) -> int:
    """grpc.health.v1 Check on the node's link port, over mutual TLS with the node's own certificates."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=home.key_path("root.crt").read_bytes(),
        private_key=home.key_path("tls.key").read_bytes(),
        certificate_chain=home.key_path("tls.crt").read_bytes() + home.key_path("chain.pem").read_bytes(),
    )
    name = pki.server_name_of(home.load_cert("tls.crt"))
    with grpc.secure_channel(home.config.listen, creds, options=[("grpc.ssl_target_name_override", name)]) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return int(resp.status)


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as $NOTIFY_SOCKET names it ("@...")."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"fednode-test-{os.getpid()}-{os.urandom(4).hex()}"
    s.bind("\0" + name)
    s.settimeout(1.0)
    try:
        yield s, "@" + name
    finally:
        s.close()


def receive(sock: socket.socket, until: str, timeout: float, on_message: Any = None) -> list[str]:
    """Datagrams until one carries the line ``until``; ``on_message(msg)`` is called as each arrives."""
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        try:
            msg = sock.recv(65536).decode()
        except TimeoutError:
            continue
        if on_message is not None:
            on_message(msg)
        got.append(msg)
        if until in msg.splitlines():
            return got
    raise AssertionError(f"no {until} within {timeout} s; received {got}")


# ---- the pure parts -------------------------------------------------------------------------------------


def test_certificates_expiring_soon_are_degraded_and_expired_unhealthy(tree: Tree) -> None:
    certs = health.load_certificates(tree.county)
    assert set(certs) >= {"tls.crt", "sign.crt", "root.crt"}
    tls = certs["tls.crt"]
    end = tls.not_valid_after_utc
    now = dt.datetime.now(dt.UTC)
    states = {c.name: c.state for c in health.certificate_checks(certs, now)}
    assert set(states.values()) == {health.OK}, states
    near = {c.name: c for c in health.certificate_checks({"tls.crt": tls}, end - dt.timedelta(days=10))}
    assert near["cert:tls.crt"].state == health.DEGRADED and "in 10 days" in near["cert:tls.crt"].detail
    assert health.certificate_checks({"tls.crt": tls}, end - dt.timedelta(days=40))[0].state == health.OK
    late = health.certificate_checks({"tls.crt": tls}, end + dt.timedelta(seconds=1))[0]
    assert late.state == health.UNHEALTHY and "expired" in late.detail
    early = health.certificate_checks({"tls.crt": tls}, tls.not_valid_before_utc - dt.timedelta(hours=1))[0]
    assert early.state == health.UNHEALTHY and "clock" in early.detail
    assert health.worst([health.OK, health.OFF]) == "healthy"
    assert health.worst([health.OK, health.DEGRADED, health.OFF]) == "degraded"
    assert health.worst([health.DEGRADED, health.UNHEALTHY]) == "unhealthy"


def test_disk_thresholds(tmp_path: Path) -> None:
    free = __import__("shutil").disk_usage(tmp_path).free
    assert health.disk_judgement(tmp_path, free, 1, 2).state == health.OK
    assert health.disk_judgement(tmp_path, free, 1, free + 1).state == health.DEGRADED
    assert health.disk_judgement(tmp_path, free, free + 1, free + 2).state == health.UNHEALTHY


def test_uplink_judgement() -> None:
    link = LinkState("320300", "up")
    t0 = link.down_since_us
    assert health.uplink_check(False, "", None, t0, 300).state == health.OK  # the province
    assert health.uplink_check(True, "", None, t0, 300).state == health.DEGRADED  # no parent address
    link.set("connecting")
    link.set("connected")
    assert link.down_since_us == 0 and health.uplink_check(True, "h:1", link, t0, 300).state == health.OK
    link.down("connection refused")
    link.set("connecting")  # redialling does not restart the clock
    since = link.down_since_us
    assert since > 0
    c = health.uplink_check(True, "h:1", link, since + 299_000_000, 300)
    assert c.state == health.DEGRADED and "connection refused" in c.detail
    assert health.uplink_check(True, "h:1", link, since + 300_000_000, 300).state == health.UNHEALTHY


def test_sd_notify_to_a_path_and_to_the_abstract_namespace(monkeypatch: pytest.MonkeyPatch,
                                                            notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    assert health.SystemdNotifier(address).send("READY=1", "STATUS=ok")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    d = tempfile.mkdtemp(prefix="fn-", dir="/tmp")  # a short path: sun_path holds 108 bytes
    try:
        path = os.path.join(d, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(path)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            n = health.SystemdNotifier.from_env()
            assert "NOTIFY_SOCKET" not in os.environ  # children of the node never talk to systemd
            assert n.send("STOPPING=1") and s.recv(4096) == b"STOPPING=1"
    finally:
        os.unlink(os.path.join(d, "notify"))
        os.rmdir(d)
    assert not health.SystemdNotifier(None).send("READY=1")


# ---- readiness -------------------------------------------------------------------------------------------


def test_ready_only_once_the_admin_socket_answers_and_health_wait(tmp_path: Path,
                                                                   notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    with Cluster(tmp_path, CHAIN[:2]) as cl:
        cl.env[CITY] = {"NOTIFY_SOCKET": address}
        cl.start(PROVINCE)
        cl.start(CITY, wait=False)
        seen: list[tuple[str, dict[str, Any] | None]] = []

        def at_message(msg: str) -> None:  # what the admin socket says the moment each datagram arrives
            resp = admin.call(cl.homes[CITY], {"op": "status"}, timeout=10)
            seen.append((msg, resp["result"] if resp else None))

        msgs = receive(sock, "READY=1", 90, at_message)
        ready_msg, status = seen[-1]
        assert status is not None, "READY=1 came before the admin socket answered"
        assert status["recovered"] is True and cl.uplink(CITY)["state"] == "connected"
        assert "STATUS=healthy" in ready_msg.splitlines(), ready_msg
        assert all("READY=1" not in m for m in msgs[:-1])
        rc, data, _err = health_of(cl.homes[CITY])  # no --wait: ready means healthy here
        assert rc == 0 and data["state"] == "healthy", data
        cl.stop(CITY)
        assert "STOPPING=1" in receive(sock, "STOPPING=1", 30)[-1].splitlines()

        # `health --wait` right after the start: exit 0 as soon as the node is healthy
        cl.start(CITY, wait=False)
        t0 = time.monotonic()
        p = fednode("health", cl.homes[CITY].dir, "--wait", "30")
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.startswith(f"{CITY}: healthy") and time.monotonic() - t0 < 30, p.stdout
        cl.stop(PROVINCE)
        # and exit 1 when it is not healthy by then: the city restarts while its parent is gone (it waits
        # [link] recover_wait_s = 30 s for the parent before it appends again)
        cl.stop(CITY)
        cl.start(CITY)
        p = fednode("health", cl.homes[CITY].dir, "--wait", "3")
        assert p.returncode == 1 and "recovering its own logs" in p.stdout, p.stdout + p.stderr


# ---- a truthful health -----------------------------------------------------------------------------------


def test_parent_down_longer_than_the_threshold_is_unhealthy_until_it_returns(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path / "clock-city")
    with Cluster(tmp_path / "tree", CHAIN) as cl:  # the city listens (it has a county), the county stays off
        mport = free_port()
        cl.set_config(CITY, "metrics", "listen", f"127.0.0.1:{mport}")
        cl.set_config(CITY, "link", "parent_down_unhealthy_s", 60)
        cl.env[CITY] = clock.env
        city = cl.homes[CITY]
        cl.start(PROVINCE, CITY)
        wait_for(lambda: node_health(city)["state"] == "healthy", 30, lambda: f"the city healthy: {node_health(city)}")
        rc, data, _err = health_of(city)
        assert rc == 0 and data["state"] == "healthy", data
        checks = data["checks"]
        for name in ("admin", "store", "recovered", "uplink", "disk", "cert:tls.crt", "cert:sign.crt", "grpc_health",
                     "metrics", "service:metrics", "service:rules"):
            assert name in checks, (name, sorted(checks))
        assert checks["uplink"]["state"] == "ok" and checks["service:rules"]["state"] == "off"
        assert grpc_health(city) == SERVING and healthz(mport) == (200, "ok\n")

        cl.stop(PROVINCE)
        wait_for(lambda: node_health(city)["checks"]["uplink"]["state"] == "degraded", 30, "the uplink degraded")
        rc, data, err = health_of(city)
        assert rc == 0 and data["state"] == "degraded" and "warning" in err and "uplink" in err, (data, err)
        assert "unhealthy after 60 s" in data["checks"]["uplink"]["detail"]
        assert grpc_health(city) == SERVING

        clock.jump(60 + 30)  # the parent has now been away for longer than [link] parent_down_unhealthy_s
        wait_for(lambda: node_health(city)["state"] == "unhealthy", 30, lambda: f"unhealthy: {node_health(city)}")
        rc, data, _err = health_of(city)
        assert rc == 1 and data["state"] == "unhealthy" and data["healthy"] is False, data
        assert data["checks"]["uplink"]["state"] == "unhealthy", data["checks"]["uplink"]
        assert data["checks"]["grpc_health"]["state"] == "unhealthy"
        assert grpc_health(city) == NOT_SERVING
        status, body = healthz(mport)
        assert status == 503 and body.startswith("unhealthy: uplink:"), body
        human = fednode("health", city.dir)
        assert human.returncode == 1 and human.stdout.startswith(f"{CITY}: UNHEALTHY")
        assert "UNHEALTHY uplink:" in human.stdout, human.stdout
        assert cl.events(CITY, "health_changed", state="unhealthy")

        cl.start(PROVINCE)
        wait_for(lambda: node_health(city)["state"] == "healthy", 60, lambda: f"healthy again: {node_health(city)}")
        rc, data, _err = health_of(city)
        assert rc == 0 and data["state"] == "healthy", data
        assert grpc_health(city) == SERVING and healthz(mport) == (200, "ok\n")
        assert cl.events(CITY, "health_changed", state="healthy")


def test_services_off_by_config_and_a_failing_adapter_show(tmp_path: Path) -> None:
    extra = ('\n[adapters.drop]\ntype = "filedrop"\ndir = "drop"\n'
             '\n[adapters.old]\ntype = "filedrop"\ndir = "old"\nenabled = false\n')
    with Cluster(tmp_path, CHAIN[:1]) as cl:
        home = cl.homes[PROVINCE]
        with home.config.path.open("a", encoding="utf-8") as f:
            f.write(extra)
        (home.dir / "drop").mkdir()
        cl.homes[PROVINCE] = home = Home(home.dir)
        cl.start(PROVINCE)
        wait_for(lambda: node_health(home)["state"] == "healthy", 30, lambda: f"healthy: {node_health(home)}")
        rc, data, _err = health_of(home)
        checks = data["checks"]
        assert rc == 0 and checks["adapter:drop"]["state"] == "ok", checks
        assert checks["adapter:old"] == {"state": "off", "ok": True, "detail": "[adapters.old] enabled = false"}
        assert checks["service:rules"]["state"] == "off" and checks["service:metrics"]["state"] == "off"

        (home.dir / "drop").rename(home.dir / "drop.away")  # the source goes away under the running adapter
        wait_for(lambda: node_health(home)["state"] == "unhealthy", 30, lambda: f"unhealthy: {node_health(home)}")
        rc, data, _err = health_of(home)
        drop = data["checks"]["adapter:drop"]
        assert rc == 1 and drop["state"] == "unhealthy" and "does not exist" in drop["detail"], drop
        (home.dir / "drop.away").rename(home.dir / "drop")
        wait_for(lambda: node_health(home)["state"] == "healthy", 90, lambda: f"healthy again: {node_health(home)}")


def test_run_warns_when_a_county_has_no_parent_address(tree: Tree) -> None:
    county = tree.county  # enrolled under the city, but its node.toml names no [link] parent
    assert not county.config.parent and county.config.level == "county"
    procs = {COUNTY: demo.start(county.dir)}
    try:
        demo.wait_admin(county, timeout=60)
        log = (county.dir / "node.log").read_text(encoding="utf-8")
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        warned = [e for e in events if e.get("event") == "no_parent_address"]
        assert warned and warned[0]["level"] == "warning", log
        assert warned[0]["warning"] == "this node has no [link] parent: its records go nowhere"
        rc, data, err = health_of(county, "--wait", "30")
        assert rc == 0 and data["state"] == "degraded", data
        assert "no [link] parent" in data["checks"]["uplink"]["detail"] and "no [link] parent" in err
    finally:
        demo.stop_all(procs)
