"""The node's own home can't be turned against it (issue 24, points 5-7 and the health part of 8).

Real `fednode run` processes on homes enrolled with the real pki path (node.demo.build_tree):

- modes: `init` and `run` leave the home 0700 and its secrets 0600 (node.toml, keys, the SQLite store
  and its -wal/-shm, the lock); `store copy` makes a new SQLite target 0600; `run` and `check` refuse a
  home whose secrets another local user could read, with the `chmod` to type (we run as root, so the
  tests assert modes, not another user's failed open);
- one process per home: a second `fednode run` exits 2 naming the first one's pid; the first keeps its
  admin socket, answers `status` and is the only appender;
- a link port another socket holds (even with SO_REUSEPORT, as gRPC binds by default) and a busy
  metrics port: `run` exits 2 naming the field;
- a typo in [rules], [notify], [metrics] or an adapter section: `run` exits 2 naming the field,
  `fednode check --json` lists every problem, with a "did you mean";
- SIGTERM with a gRPC health Watch stream open: the node exits within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import demo
from bench.demo import TREE, free_port
from node.core import admin_client as admin
from node.core import pki
from node.core.home import Home
from tests.faultlib import verify_home, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FEDNODE = [sys.executable, "-m", "node.interfaces.cli"]  # the code of the current directory (a worktree too)
PROVINCE = "320000"


def fednode(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([*FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def province(tmp_path: Path, *, listening: bool = False) -> Home:
    """The province alone (with a city enrolled below it, never run, when it must listen)."""
    return demo.build_tree(tmp_path / "tree", TREE[:2] if listening else TREE[:1])[PROVINCE]


def append(home: Home, text: str) -> None:
    with home.config.path.open("a", encoding="utf-8") as f:
        f.write("\n" + text + "\n")


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield started
    finally:
        for p in started.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def run_until_exit(home: Home, timeout: float = 30) -> tuple[int | None, str]:
    """`fednode run`: (exit status, output) if it exits within ``timeout``, else (None, output so far)."""
    log = home.dir / "refused.log"
    with log.open("wb") as out:
        p = subprocess.Popen([*FEDNODE, "run", str(home.dir)], stdout=out, stderr=out, start_new_session=True)
    try:
        rc: int | None = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        rc = None
    return rc, log.read_text(encoding="utf-8", errors="replace")


def start(home: Home, procs: dict[str, subprocess.Popen[bytes]], name: str = "node") -> subprocess.Popen[bytes]:
    procs[name] = demo.start(home.dir)
    demo.wait_admin(Home(home.dir), timeout=60)
    return procs[name]


def stop(p: subprocess.Popen[bytes]) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(30)


# ---- modes --------------------------------------------------------------------------------------------


def secrets_of(home: Home) -> list[Path]:
    return [home.config.path, *home.keys.glob("*.key"), *home.dir.glob("store.db*")]


def test_init_and_run_keep_the_home_private(tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    home = province(tmp_path)
    assert mode(home.dir) == 0o700 and mode(home.keys) == 0o700
    for path in secrets_of(home):
        assert mode(path) == 0o600, f"{path} is {mode(path):04o} after init"
    p = start(home, procs)
    r = admin.call(Home(home.dir), {"op": "ingest", "synthetic": 500, "seed": 1})
    assert r is not None and r["ok"], r
    made_by_run = [home.dir / "store.db-wal", home.dir / "store.db-shm", home.dir / "run.lock",
                   home.dir / "admin.sock"]
    wait_for(lambda: (home.dir / "own-heads.json").exists(), 20, "own-heads.json is written")
    for path in [*secrets_of(home), *made_by_run, home.dir / "own-heads.json"]:
        assert path.exists() and mode(path) & 0o077 == 0, f"{path} is {mode(path):04o} while the node runs"
    assert stop(p) == 0
    # a copy into a new SQLite file is as private as the store it copies
    target = tmp_path / "copy" / "store.db"
    target.parent.mkdir()
    c = fednode("store", "copy", home.dir, "--to", f"sqlite:///{target}", "--json")
    assert c.returncode == 0, c.stdout + c.stderr
    assert mode(target) == 0o600, f"store copy made {target} {mode(target):04o}"


def test_run_and_check_refuse_secrets_others_can_read(tmp_path: Path) -> None:
    home = province(tmp_path)
    loose = {home.config.path: 0o644, home.keys / "sign.key": 0o640, home.dir / "store.db": 0o644}
    for path, m in loose.items():
        os.chmod(path, m)
    rc, out = run_until_exit(home)
    assert rc == 2, f"run started with secrets readable by others (exit {rc}):\n{out}"
    assert "chmod 600" in out and all(str(path) in out for path in loose), out
    assert not (home.dir / "admin.sock").exists()
    c = fednode("check", home.dir, "--json")
    assert c.returncode == 2, c.stdout + c.stderr
    listed = {p["file"] for p in json.loads(c.stdout)["problems"] if p["field"] == "mode"}
    assert listed == {str(path) for path in loose}, c.stdout
    for path in loose:
        os.chmod(path, 0o600)
    c = fednode("check", home.dir, "--json")
    assert c.returncode == 0 and json.loads(c.stdout)["ok"] is True, c.stdout + c.stderr


# ---- one process per home, exclusive ports ----------------------------------------------------------------


def test_second_run_on_a_home_is_refused(tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    home = province(tmp_path)
    first = start(home, procs, "first")
    sock = home.dir / "admin.sock"
    inode = sock.stat().st_ino
    rc, out = run_until_exit(home)
    assert rc == 2, f"a second `fednode run` on one home did not exit 2 (exit {rc}):\n{out}"
    assert f"pid {first.pid}" in out and "fix:" in out, out
    # the first one is untouched: same admin socket, it answers, and it alone appends
    assert first.poll() is None and sock.stat().st_ino == inode
    s = fednode("status", home.dir, "--json")
    assert s.returncode == 0, s.stderr
    status = json.loads(s.stdout)
    assert status["running"] is True and status["pid"] == first.pid
    r = admin.call(Home(home.dir), {"op": "ingest", "synthetic": 300, "seed": 2})
    assert r is not None and r["ok"], r
    assert stop(first) == 0
    assert verify_home(home) == []


def hold_port(port: int, *, reuseport: bool) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gRPC server binds by default
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_busy_link_port_is_refused(tmp_path: Path) -> None:
    home = province(tmp_path, listening=True)
    port = int(home.config.listen.rsplit(":", 1)[1])
    with hold_port(port, reuseport=True):
        rc, out = run_until_exit(home)
    assert rc == 2, f"the node started on a link port another process holds (exit {rc}):\n{out}"
    assert f"127.0.0.1:{port}" in out and "in use" in out and "[link] listen" in out, out


def test_busy_metrics_port_is_refused(tmp_path: Path) -> None:
    home = province(tmp_path)
    port = free_port()
    append(home, f'[metrics]\nlisten = "127.0.0.1:{port}"')
    with hold_port(port, reuseport=False):
        rc, out = run_until_exit(home)
    assert rc == 2, f"the node started without its metrics port (exit {rc}):\n{out}"
    assert f"127.0.0.1:{port}" in out and "[metrics] listen" in out, out


# ---- every section validated at load ---------------------------------------------------------------------

TYPOS = {
    "rules": ("[rules]\nenabeld = false", "rules", "enabeld", "enabled"),
    "notify": ('[notify]\nred = ["log"]\nwebhook_ulr = "http://127.0.0.1:1/x"', "notify", "webhook_ulr", "webhook_url"),
    "metrics": ('[metrics]\nlisen = "127.0.0.1:9464"', "metrics", "lisen", "listen"),
    "adapter": ('[adapters.drop]\ntype = "filedrop"\ndir = "drop"\nsetle_seconds = 1', "adapters.drop",
                "setle_seconds", "settle_seconds"),
}


@pytest.mark.parametrize("which", list(TYPOS))
def test_a_typo_in_a_section_stops_run(tmp_path: Path, which: str) -> None:
    text, section, field, meant = TYPOS[which]
    home = province(tmp_path)
    append(home, text)
    rc, out = run_until_exit(home)
    assert rc == 2, f"run started with a typo in [{section}] (exit {rc}):\n{out}"
    assert str(home.config.path) in out and field in out and meant in out and "fix:" in out, out
    c = fednode("check", home.dir, "--json")
    assert c.returncode == 2, c.stdout + c.stderr
    [problem] = json.loads(c.stdout)["problems"]
    assert (problem["section"], problem["field"]) == (section, field), problem
    assert f"did you mean `{meant}`" in problem["fix"], problem


def test_check_lists_every_problem(tmp_path: Path) -> None:
    home = province(tmp_path)
    append(home, "\n".join(text for text, *_ in TYPOS.values()) + '\n[rules.default]\ncase_red_after_days = "two"')
    c = fednode("check", home.dir, "--json")
    assert c.returncode == 2, c.stdout + c.stderr
    found = {(p["section"], p["field"]) for p in json.loads(c.stdout)["problems"]}
    assert found == {(s, f) for _t, s, f, _m in TYPOS.values()} | {("rules", "case_red_after_days")}, c.stdout
    human = fednode("check", home.dir)
    assert human.returncode == 2 and human.stdout.count("fix:") == len(found), human.stdout


def test_a_typo_at_sighup_keeps_the_running_configuration(tmp_path: Path,
                                                          procs: dict[str, subprocess.Popen[bytes]]) -> None:
    home = province(tmp_path)
    p = start(home, procs)
    append(home, TYPOS["rules"][0])
    p.send_signal(signal.SIGHUP)
    wait_for(lambda: '"reload_failed"' in (home.dir / "node.log").read_text(encoding="utf-8"), 20,
             "the node logs reload_failed")
    assert p.poll() is None
    r = admin.call(Home(home.dir), {"op": "status"})
    assert r is not None
    rules = r["result"]["rules"]
    assert rules["enabled"] is True and not rules.get("error"), rules  # the rules still run, on the old settings
    assert "enabeld" in (home.dir / "node.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("code", ["320000", "320300", "320303", "320300-GA"])
def test_deploy_examples_pass_check(code: str) -> None:
    c = fednode("check", ROOT / "deploy" / "examples" / "xuzhou" / f"{code}.toml", "--json")
    assert c.returncode == 0 and json.loads(c.stdout)["ok"] is True, c.stdout + c.stderr


# ---- health Watch and SIGTERM ------------------------------------------------------------------------------


def test_sigterm_with_an_open_health_watch_stops_the_node(tmp_path: Path,
                                                          procs: dict[str, subprocess.Popen[bytes]]) -> None:
    home = province(tmp_path, listening=True)
    p = start(home, procs)
    creds = grpc.ssl_channel_credentials(
        root_certificates=home.key_path("root.crt").read_bytes(),
        private_key=home.key_path("tls.key").read_bytes(),
        certificate_chain=home.key_path("tls.crt").read_bytes() + home.key_path("chain.pem").read_bytes(),
    )
    channel = grpc.secure_channel(home.config.listen, creds,
                                  options=[("grpc.ssl_target_name_override", pki.dns_name_for(home.code))])
    seen: list[int] = []
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

    def watch() -> None:
        try:
            for resp in stream:
                seen.append(resp.status)
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for(lambda: health_pb2.HealthCheckResponse.SERVING in seen, 20, "the Watch stream says SERVING")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(8)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        assert rc == 0, f"the node did not stop on SIGTERM with a health Watch open (exit {rc} after {took:.1f} s)"
        assert took < 6, f"SIGTERM took {took:.1f} s"
    finally:
        stream.cancel()
        channel.close()
