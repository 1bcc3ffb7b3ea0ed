"""The deployment kit: the systemd unit, the container file, the Xuzhou example tree, and moving a big
node from SQLite to PostgreSQL.

- The example tree comes up with the documented script (deploy/examples/xuzhou/tree.sh), which uses
  the real `fednode init` / `pki` / `run` commands; `status --json` is checked on every node.
- `systemd-analyze verify` must pass on the unit with no warning at all. It needs Debian's `systemd`
  package; without `systemd-analyze` the test skips and says so (CI installs the package).
- PostgreSQL: a city with 100k records is copied from SQLite with `fednode store copy --switch`, every
  chain is verified on the target, and the node then runs on PostgreSQL as a real process in a tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import demo
from node.core import admin_client as admin
from node.core import config, storecopy
from node.core.home import Home
from node.core.records import CHANNEL_NAMES
from node.core.store import Store
from node.features import metrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "fednode.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
XUZHOU = DEPLOY / "examples" / "xuzhou"
TREE_SH = XUZHOU / "tree.sh"
XUZHOU_TREE = {"320000": None, "320300": "320000", "320303": "320300", "320300-GA": "320300"}

_SCRIPT = Path(sys.executable).parent / "fednode"
FEDNODE = str(_SCRIPT)
needs_script = pytest.mark.skipif(not _SCRIPT.exists(), reason=f"the fednode console script is not installed at {_SCRIPT}")


def fednode(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def js(*args: Any) -> Any:
    p = fednode(*args, "--json")
    assert p.returncode == 0, f"fednode {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


# ---- the systemd unit ----------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_unit_is_hardened() -> None:
    d = unit_directives(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in d.items()}
    assert one["Service.User"] == "fednode" and one["Service.Group"] == "fednode"  # a dedicated user
    assert one["Service.ProtectSystem"] == "strict"
    assert d["Service.ReadWritePaths"] == ["/var/lib/fednode"]  # write access: the node home only
    assert one["Service.ExecStart"].endswith("fednode run /var/lib/fednode")
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"  # the node reloads node.toml on SIGHUP
    assert one["Service.Restart"] == "on-failure" and one["Service.RestartPreventExitStatus"] == "2"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
        assert one[f"Service.{key}"] == "yes", key
    assert one["Service.CapabilityBoundingSet"] == ""
    assert "FEDNODE_HOME=/var/lib/fednode" in d["Service.Environment"]
    assert one["Install.WantedBy"] == "multi-user.target"


def test_unit_waits_for_readiness_and_owns_its_state_directory() -> None:
    """Type=notify (issue 27): `systemctl start` returns once the node sent READY=1 (node/health.py), only
    the node's own process may notify, and systemd creates the home (StateDirectory=) the unit runs in;
    the start timeout leaves room for the longest wait before READY=1."""
    from node.runtime.health import READY_MAX_WAIT_S

    d = unit_directives(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in d.items()}
    assert one["Service.Type"] == "notify" and one["Service.NotifyAccess"] == "main"
    assert one["Service.StateDirectory"] == "fednode" and one["Service.StateDirectoryMode"] == "0700"
    home = f"/var/lib/{one['Service.StateDirectory']}"
    assert one["Service.WorkingDirectory"] == home and one["Service.ExecStart"].endswith(f" run {home}")
    assert float(one["Service.TimeoutStartSec"]) > READY_MAX_WAIT_S


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing: install Debian's `systemd` package (apt-get install systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit verifies without a single warning. systemd checks that ExecStart exists, so the copy under
    test points at this checkout's fednode instead of /opt/fednode/bin/fednode (where the runbook installs it);
    nothing else is changed."""
    fednode_bin = _SCRIPT if _SCRIPT.exists() else Path(shutil.which("fednode") or "/nonexistent")
    text = UNIT.read_text(encoding="utf-8")
    assert text.count("/opt/fednode/bin/fednode") == 1
    unit = tmp_path / "fednode.service"
    unit.write_text(text.replace("/opt/fednode/bin/fednode", str(fednode_bin)), encoding="utf-8")
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), p.stdout + p.stderr
    # a broken unit must fail the same check (the check is not vacuous)
    bad = tmp_path / "broken.service"
    bad.write_text(unit.read_text(encoding="utf-8").replace("ProtectSystem=strict", "ProtectSystem=sometimes"),
                   encoding="utf-8")
    p = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "protect system value" in p.stderr and "sometimes" in p.stderr
    # systemd's own exposure score for the sandbox (0 = locked down, 10 = unprotected)
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for fednode\.service: ([0-9.]+)", p.stdout)
    if p.returncode == 0 and m:
        assert float(m.group(1)) <= 2.0, p.stdout[-2000:]


# ---- the container file --------------------------------------------------------------------------------


def containerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_containerfile_multistage_nonroot_healthcheck() -> None:
    ins = containerfile_instructions()
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    ops = dict(final)  # the last of each instruction in the final stage
    assert "--from=build" in ops["COPY"]
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0") and user
    assert ops["HEALTHCHECK"].split("CMD", 1)[1].strip().startswith('["fednode", "health"')
    assert json.loads(ops["ENTRYPOINT"]) == ["fednode"]
    assert json.loads(ops["CMD"]) == ["run", "/var/lib/fednode"]
    assert "FEDNODE_HOME=/var/lib/fednode" in ops["ENV"]
    # every file the build stage copies exists in the repository (the build context)
    for op, rest in ins:
        if op == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"Containerfile copies {src}, which is not in the repository"


@needs_script
def test_health_command_exists_and_fails_when_stopped(tmp_path: Path) -> None:
    """The HEALTHCHECK command: exit 1 (unhealthy) for a node that is not running, with the reason."""
    js("init", tmp_path / "p", "--code", "320000", "--name", "江苏省", "--level", "province")
    p = fednode("health", tmp_path / "p", "--json")
    assert p.returncode == 1
    data = json.loads(p.stdout)
    assert data["healthy"] is False and "no node answers" in data["checks"]["admin"]["detail"]


# ---- the example tree ------------------------------------------------------------------------------------


def test_example_configs_are_valid_and_consistent() -> None:
    cfgs = {code: config.load(XUZHOU / f"{code}.toml") for code in XUZHOU_TREE}
    metric_ports = set()
    for code, parent in XUZHOU_TREE.items():
        cfg = cfgs[code]
        assert cfg.code == code and cfg.store_url == "sqlite:///store.db"
        m = metrics.parse_config(cfg.path, cfg.sections.get("metrics"))
        assert m.enabled and m.listen.startswith("127.0.0.1:")
        metric_ports.add(m.listen)
        has_children = any(p == code for p in XUZHOU_TREE.values())
        assert bool(cfg.listen) == has_children, code
        if parent is None:
            assert cfg.parent == "" and cfg.level == "province"
        else:
            assert cfg.parent_code == parent and cfg.parent == cfgs[parent].listen, code
    assert len(metric_ports) == len(XUZHOU_TREE)
    assert tomllib.loads((XUZHOU / "320300-GA.toml").read_text(encoding="utf-8"))["node"]["level"] == "department"


def _free_run(n: int) -> int:
    """A base port with n consecutive free loopback ports after it."""
    for _ in range(200):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _kill_tree(base: Path) -> None:
    for code in XUZHOU_TREE:
        pidfile = base / code / "fednode.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _link(status: dict[str, Any], peer: str) -> dict[str, Any]:
    found = [ln for ln in status["links"] if ln["peer"] == peer]
    assert found, f"{status['node']['code']} has no link to {peer}: {status['links']}"
    return found[0]


@pytest.fixture
def xuzhou_tree(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path / "xuzhou-tree"
    env = {**{k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}, "FEDNODE": FEDNODE,
           "FEDNODE_PORT_BASE": str(_free_run(2)), "FEDNODE_METRICS_BASE": str(_free_run(4))}
    try:
        yield base, env
    finally:
        subprocess.run(["bash", str(TREE_SH), "down", str(base)], env=env, capture_output=True, timeout=60)
        _kill_tree(base)


@pytest.mark.slow
@needs_script
def test_example_tree_comes_up_with_the_documented_commands(xuzhou_tree: tuple[Path, dict[str, str]]) -> None:
    base, env = xuzhou_tree
    p = subprocess.run(["bash", str(TREE_SH), "up", str(base)], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    for line in ("fednode pki init-root", "320303: fednode pki request → 320300 signs → fednode pki install",
                 "320300-GA: healthy"):
        assert line in p.stderr
    # the enrolment left what the runbook says: CSRs and bundles that travelled, keys 0600
    for code in ("320300", "320303", "320300-GA"):
        assert (base / f"{code}.csr").exists() and (base / f"{code}.bundle").exists()
        assert (base / code / "keys" / "sign.key").stat().st_mode & 0o077 == 0

    status = {code: js("status", base / code) for code in XUZHOU_TREE}
    for code, parent in XUZHOU_TREE.items():
        st = status[code]
        assert st["running"] is True and st["recovered"] is True and st["node"]["code"] == code
        assert st["incidents"] == 0 and st["quarantine"] == 0
        assert st["metrics"]["serving"] is True
        if parent:
            up = _link(st, parent)
            assert up["direction"] == "up" and up["state"] == "connected", up
        for child in (c for c, p_ in XUZHOU_TREE.items() if p_ == code):
            assert _link(st, child)["state"] == "connected"
    assert status["320300"]["node"]["path"] == "320000/320300"
    assert status["320300-GA"]["node"]["path"] == "320000/320300/320300-GA"

    # first sync: records born at the leaves reach the province; status shows it on every node
    assert js("ingest", base / "320303", "--synthetic", "500", "--seed", "1")["via"] == "admin"
    assert js("ingest", base / "320300-GA", "--synthetic", "300", "--seed", "2")["via"] == "admin"

    def running_status(code: str, tree: bool = False) -> dict[str, Any]:
        # polling goes through the admin socket directly: each CLI start costs seconds on a loaded machine
        resp = admin.call(Home(base / code), {"op": "status", "tree": tree, "logs": True})
        assert resp is not None, f"{code} stopped"
        return dict(resp["result"])

    def leaf_logs(code: str) -> dict[tuple[str, str], int]:
        return {(lg["origin"], lg["channel"]): lg["seq"] for lg in running_status(code)["logs"] if lg["origin"] == code}

    want = {**leaf_logs("320303"), **leaf_logs("320300-GA")}
    assert sum(want.values()) >= 800

    def province_has_all() -> bool:
        have = {(lg["origin"], lg["channel"]): lg["seq"] for lg in running_status("320000")["logs"]}
        return all(have.get(k, 0) >= v for k, v in want.items())

    _wait(province_has_all, 90, "the province to hold every leaf record")
    tree = _wait(lambda: running_status("320000", tree=True)["tree"].get("320300", {}).get("children"), 30,
                 "the city's link report with its children")
    assert set(tree) == {"320303", "320300-GA"}
    assert js("status", base / "320000", "--tree")["tree"]["320300"]["code"] == "320300"

    p = subprocess.run(["bash", str(TREE_SH), "status", str(base)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.count(": healthy") == 4, p.stdout + p.stderr
    p = subprocess.run(["bash", str(TREE_SH), "down", str(base)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert js("status", base / "320000")["running"] is False
    assert js("verify", base / "320000")["ok"] is True


# ---- SQLite → PostgreSQL ----------------------------------------------------------------------------------

BIG = 100_000
CHAIN = [("320000", "江苏省", "province", None), ("320300", "徐州市", "city", "320000"),
         ("320303", "云龙区", "county", "320300")]


@pytest.mark.slow
@pytest.mark.postgres
@needs_script
def test_move_big_node_from_sqlite_to_postgresql(tmp_path: Path, pg_url: str) -> None:
    homes = demo.build_tree(tmp_path / "tree", CHAIN)
    city = homes["320300"].dir
    assert js("ingest", city, "--synthetic", str(BIG), "--seed", "3")["ingested"] == BIG
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n\x00\n", encoding="utf-8")
    p = fednode("ingest", city, bad, "--json")  # two unreadable lines: quarantine rows with integer ids to carry over
    assert p.returncode in (0, 1) and json.loads(p.stdout)["via"] == "store", p.stdout + p.stderr

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # the city runs on SQLite first (its services create their tables and jobs); the copy refuses meanwhile
        procs["320300"] = demo.start(city)
        demo.wait_admin(Home(city), timeout=60)
        p = fednode("store", "copy", city, "--to", pg_url, "--json")
        assert p.returncode == 2 and json.loads(p.stdout)["code"] == "store_copy_node_running", p.stdout + p.stderr
        demo.stop_all({"320300": procs.pop("320300")})
        city_heads = demo.leaf_heads(homes, ["320300"])
        assert sum(city_heads.values()) > BIG

        t0 = time.monotonic()
        report = js("store", "copy", city, "--to", pg_url, "--switch")
        elapsed = time.monotonic() - t0
        print(f"\n  store copy: {report['rows']} rows in {report['copy_s']} s ({report['rows_per_s']} rows/s), "
              f"verify {report['verify_s']} s, command {elapsed:.1f} s")
        assert report["ok"] is True and report["switched"] is True
        assert report["heads_equal"] is True and report["heads"] >= 3
        assert report["verify"]["ok"] is True and report["verify"]["records"] >= BIG
        tables = report["tables"]
        assert tables["records"]["source"] == tables["records"]["target"] >= BIG
        assert tables["quarantine"]["target"] == 2
        assert tables.get("apscheduler_jobs") is not None  # tables outside node/schema.py travel too
        assert all(t["source"] == t["target"] for t in tables.values()), tables
        assert config.load(city / "node.toml").store_url == pg_url

        # never merged into: a second copy into the same database is refused
        src = Store.open(f"sqlite:///{city / 'store.db'}")
        tgt = Store.open(pg_url)
        try:
            with pytest.raises(storecopy.TargetNotEmpty):
                storecopy.copy_store(src, tgt)
            # the id sequences moved past the copied rows: a new quarantine row does not collide
            with tgt.write() as tx:
                new_id = tx.quarantine(source="test", position="x:1", kind="", reason="after the move", raw=b"x")
            assert new_id == 3
            with tgt.write() as tx:
                tx.conn.execute(__import__("node.core.schema", fromlist=["quarantine"]).quarantine.delete()
                                .where(__import__("node.core.schema", fromlist=["quarantine"]).quarantine.c.id == new_id))
        finally:
            src.close()
            tgt.close()

        # the node runs on PostgreSQL: a real process in its tree, sending its 100k records up and relaying a
        # district's records
        for code in ("320000", "320300", "320303"):
            procs[code] = demo.start(homes[code].dir)
        for code in ("320000", "320300", "320303"):
            demo.wait_admin(Home(homes[code].dir), timeout=60)
        _wait(lambda: js("status", homes["320303"].dir)["recovered"], 60, "the district's uplink")
        assert js("ingest", homes["320303"].dir, "--synthetic", "300", "--seed", "4")["via"] == "admin"
        county_heads = demo.leaf_heads(homes, ["320303"])

        def city_holds_county() -> bool:
            logs = {(lg["origin"], lg["channel"]): lg["seq"] for lg in js("status", city, "--logs")["logs"]}
            return all(logs.get((o, CHANNEL_NAMES[c]), 0) >= v for (o, c), v in county_heads.items())

        _wait(city_holds_county, 90, "the district's records in the city's PostgreSQL store")
        # and the city's own records flow up from PostgreSQL to the province (which never ran before the move)
        _wait(lambda: demo.root_counts(homes["320000"], [("320300", 3)])[0].get(("320300", 3), 0) > 0, 60,
              "the province to receive the city's records from PostgreSQL")
        st = js("status", city, "--logs")
        assert st["running"] is True and st["recovered"] is True
        logs = {(lg["origin"], lg["channel"]): lg["seq"] for lg in st["logs"]}
        assert logs[("320300", "bulk")] >= city_heads[("320300", 3)]
        assert logs[("320303", "bulk")] >= county_heads[("320303", 3)]
        assert _link(st, "320000")["state"] == "connected" and _link(st, "320303")["state"] == "connected"
        assert st["quarantine"] == 2
        resp = admin.call(Home(city), {"op": "status"})
        assert resp is not None and resp["result"]["node"]["code"] == "320300"
    finally:
        demo.stop_all(procs)
    verified = js("verify", city)
    assert verified["ok"] is True and verified["records"] >= BIG + 300
