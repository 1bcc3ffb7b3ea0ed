"""deploy/README.md runbooks 1-3, end to end as written, on a small tree of real processes (issue 27).

province 320000 ← city 320300 (both built and running first), then the county 320303 enrolled by
Runbook 1 with the documented commands: init with --parent, pki request (its key fingerprint read off
stderr), pki sign --fingerprint on the city, pki install, start, health --wait, a synthetic smoke test,
status on both sides. Runbook 2: pki rotate, pki keys, pki revoke by the id rotate printed, on the
running node. Runbook 3: the nightly backup (sqlite3 .backup, tar of node.toml and keys), more records
after it, the server lost, the home restored on another directory, own-heads.json deleted, started:
it takes its newer records back from the city before anything else, then verify on the stopped node.
`systemctl start` is `fednode run` here (the unit's READY=1 is tested in tests/test_health.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import demo
from node.core.home import Home

REPO = Path(__file__).resolve().parent.parent
FP = re.compile(r"\b((?:[0-9a-f]{4} ){15}[0-9a-f]{4})\b")
SQLITE3 = shutil.which("sqlite3")


def fednode(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def ok(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = fednode(*args, timeout=timeout)
    assert p.returncode == 0, f"fednode {' '.join(map(str, args))}: {p.stdout}{p.stderr}"
    return p


def js(*args: object) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def logs_of(status: dict[str, Any], origin: str) -> dict[str, tuple[int, str]]:
    return {lg["channel"]: (lg["seq"], lg["head"]) for lg in status["logs"] if lg["origin"] == origin}


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


class Procs:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, home: Path) -> None:
        self.procs[name] = demo.start(home)
        demo.wait_admin(Home(home))

    def stop(self, name: str) -> None:
        demo.stop_all({name: self.procs.pop(name)})

    def close(self) -> None:
        demo.stop_all(self.procs)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.close()


@pytest.mark.slow
@pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 command (Runbook 3's backup) is not installed")
def test_runbooks_1_2_3(tmp_path: Path, procs: Procs) -> None:
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:3])  # its 320303 gives the city a listen port, then is left
    city_address = Home(homes["320300"].dir).config.listen
    assert city_address
    for code in ("320000", "320300"):
        procs.start(code, homes[code].dir)
    city = homes["320300"].dir
    county = tmp_path / "server" / "320303"
    county.parent.mkdir()

    # ---- Runbook 1: enrolling a new county --------------------------------------------------------------
    ok("init", county, "--code", "320303", "--name", "云龙区", "--level", "county", "--parent", city_address)
    p = ok("pki", "request", county)  # 2. the request, its key fingerprint on the screen
    (tmp_path / "320303.csr").write_text(p.stdout, encoding="utf-8")
    read_out = " ".join(FP.search(p.stderr).group(1).split()[:4])  # type: ignore[union-attr]  # "its first four groups"
    p = ok("pki", "sign", city, tmp_path / "320303.csr", "--fingerprint", read_out)  # 3. the parent signs
    (tmp_path / "320303.bundle").write_text(p.stdout, encoding="utf-8")
    bundle_fp = re.search(r"bundle fingerprint\s+([0-9a-f ]{79})", p.stderr).group(1)  # type: ignore[union-attr]
    p = ok("pki", "install", county, tmp_path / "320303.bundle")  # 4.
    assert "320000/320300/320303" in p.stdout and bundle_fp in p.stdout
    procs.start("320303", county)  # 5. systemctl start fednode
    health = json.loads(ok("health", county, "--wait", "60", "--json").stdout)
    assert health["state"] in ("healthy", "degraded"), health
    assert js("ingest", county, "--synthetic", "100")["ingested"] == 100  # the smoke test

    def synced() -> bool:  # 6. status on both sides: connected, nothing waiting, same seq and head
        mine, theirs = js("status", county, "--logs"), js("status", city, "--logs")
        up = [ln for ln in mine["links"] if ln["direction"] == "up"]
        return (bool(up) and up[0]["state"] == "connected" and not up[0]["backlog"]
                and logs_of(mine, "320303") == logs_of(theirs, "320303"))

    wait(synced, 60, "the county's logs at the city")
    human = ok("status", county).stdout
    assert re.search(r"320300\s+up\s+connected\s+\S+\+08:00", human), human

    # ---- Runbook 2: rotating keys, revoking the old one by the printed id --------------------------------
    p = ok("pki", "rotate", county)
    old, new = (re.search(rf"{w}\s+([0-9a-f]{{64}})", p.stdout).group(1) for w in ("old", "new"))  # type: ignore[union-attr]
    assert f"fednode pki revoke {county} {old}" in p.stdout  # the command it prints is the one to run
    keys = {k["key_id"]: k for k in js("pki", "keys", county)}
    assert keys[new]["current"] and keys[old]["state"] == "valid"
    ok("pki", "revoke", county, old, "--reason", "server compromised")
    keys = {k["key_id"]: k for k in js("pki", "keys", county)}
    assert keys[old]["state"] == "revoked" and keys[new]["state"] == "valid"
    wait(lambda: {k["key_id"]: k["state"] for k in js("pki", "keys", city, "--code", "320303")}.get(old) == "revoked",
         60, "the revocation at the city")
    assert js("ingest", county, "--synthetic", "50")["ingested"] == 50  # signed with the new key
    wait(synced, 60, "the records signed with the new key at the city")

    # ---- Runbook 3: backup, loss, restore -----------------------------------------------------------------
    backup = tmp_path / "backup"
    backup.mkdir()
    # the runbook's `umask 077` in a shell, as an operator runs it: not preexec_fn, which makes this
    # process (gRPC's threads and fork handlers loaded by earlier tests) fork and run Python in the
    # child; the child aborted once in CI (SIGABRT) before it reached sqlite3
    subprocess.run(["sh", "-c", 'umask 077 && exec "$0" "$1" "$2"', SQLITE3, str(county / "store.db"),
                    f".backup '{backup / 'store.db'}'"], check=True, timeout=60)
    assert (backup / "store.db").stat().st_mode & 0o077 == 0
    with tarfile.open(backup / "home.tgz", "w:gz") as tar:
        for name in ("node.toml", "keys"):
            tar.add(county / name, arcname=name)
    assert js("ingest", county, "--synthetic", "200")["ingested"] == 200  # written after the backup
    wait(synced, 60, "the records after the backup at the city")
    held_by_city = logs_of(js("status", city, "--logs"), "320303")
    procs.stop("320303")
    shutil.rmtree(county)  # the server is lost

    restored = tmp_path / "replacement" / "320303"  # 1.-2. a new server; the home and the store put back
    restored.mkdir(parents=True, mode=0o700)
    with tarfile.open(backup / "home.tgz") as tar:
        tar.extractall(restored, filter="data")
    shutil.copy(backup / "store.db", restored / "store.db")  # install -m 0600 BACKUP store.db
    os.chmod(restored / "store.db", 0o600)
    (restored / "own-heads.json").unlink(missing_ok=True)
    behind = logs_of(js("status", restored, "--logs"), "320303")
    assert behind != held_by_city and js("status", restored, "--logs")["running"] is False
    procs.start("320303", restored)  # 4.
    # 5. it takes back what it wrote after the backup before it appends anything
    wait(lambda: js("status", restored, "--logs").get("recovered") is True, 60, "recovered: true")
    assert logs_of(js("status", restored, "--logs"), "320303") == held_by_city
    p = ok("health", restored, "--wait", "30")
    assert "recovered" in p.stdout
    assert js("ingest", restored, "--synthetic", "10")["ingested"] == 10
    wait(synced_with(restored, city), 60, "the restored node's new records at the city")
    procs.stop("320303")  # 6. stop, verify, start
    v = js("verify", restored)
    assert v["ok"] is True, v


def synced_with(county: Path, city: Path) -> Any:
    def check() -> bool:
        return logs_of(js("status", county, "--logs"), "320303") == logs_of(js("status", city, "--logs"), "320303")
    return check
