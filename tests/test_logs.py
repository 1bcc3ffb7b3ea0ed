"""Logs (issue 27): one line per event of our own, journald priorities under systemd, +08:00 times,
gRPC's C-core kept out of the stream, Python's own logging through the same renderer, node.log
rotated by the shipped logrotate snippet.

The main test runs two real nodes (province and city, mutual TLS on loopback) with gRPC's C-core
tracers switched on (GRPC_TRACE) and no GRPC_VERBOSITY in their environment: without the default
node/__init__.py sets, the C-core prints its glog lines (``I1205 09:08:21.537846 15464 init.cc:124]
grpc_init(void)``) into the stream.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import demo
from node.core import admin_client as admin
from node.core.home import Home
from node.runtime import logging as node_logging

PRIO = re.compile(r"^<([0-7])>")
OFFSET = "+08:00"
REPO = Path(__file__).resolve().parent.parent


def start(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(home / "node.log", "ab") as logf:
        return subprocess.Popen([sys.executable, "-m", "node.interfaces.cli", "run", str(home)], stdout=logf,
                                stderr=logf, env=env, start_new_session=True, cwd=REPO)


def read_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


@pytest.mark.slow
def test_run_log_stream(tmp_path: Path) -> None:
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:2])
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "JOURNAL_STREAM", "FEDNODE_HOME"))}
    base_env["GRPC_TRACE"] = "api,channel"  # C-core tracers: print at INFO unless the verbosity keeps them out
    province_log = homes["320000"].dir / "node.log"
    province_log.touch()
    st = os.stat(province_log)
    envs = {"320000": {**base_env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},  # as systemd sets it
            "320300": {**base_env, "JOURNAL_STREAM": "1:1"}}  # the journal is some other stream: no prefix
    procs = {code: start(h.dir, envs[code]) for code, h in homes.items()}
    try:
        for h in homes.values():
            demo.wait_admin(Home(h.dir))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = admin.call(Home(homes["320300"].dir), {"op": "status"}, timeout=5)
            links = (r or {}).get("result", {}).get("links", [])
            if any(ln["state"] == "connected" for ln in links):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the city never connected to the province")
    finally:
        demo.stop_all(procs)

    for code, h in homes.items():
        lines = read_lines(h.dir / "node.log")
        assert len(lines) >= 3, lines
        for line in lines:
            m = PRIO.match(line)
            if code == "320000":
                assert m, f"no journald priority: {line!r}"
                body = line[m.end():]
            else:
                assert not m, line
                body = line
            ev = json.loads(body)  # every line is one of ours: no glog line of the C-core, no bare text
            assert ev["timestamp"].endswith(OFFSET), ev
            dt.datetime.fromisoformat(ev["timestamp"])
            if m:
                assert int(m.group(1)) == node_logging.PRIORITY[ev["level"]], line
        levels = {json.loads(PRIO.sub("", ln))["level"] for ln in lines}
        assert "info" in levels
    province = read_lines(province_log)
    assert any(ln.startswith("<6>") for ln in province)


def test_stdlib_logging_and_priorities(tmp_path: Path) -> None:
    """Python's logging (APScheduler, Alembic) is rendered like our own events; a stream that is the
    journal's gets priorities, with the level each event has."""
    path = tmp_path / "journal"
    with open(path, "w", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        try:
            node_logging.configure("info", "json", stream=stream)
            logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "rules")
            logging.getLogger("alembic.runtime.migration").debug("below the level: not written")
            import structlog

            structlog.get_logger("t").error("boom", code="320303")
            structlog.get_logger("t").info("fine")
        finally:
            del os.environ["JOURNAL_STREAM"]
            node_logging.configure("warning", stream=sys.__stderr__)
    lines = read_lines(path)
    assert [ln[:3] for ln in lines] == ["<4>", "<3>", "<6>"], lines
    first = json.loads(lines[0][3:])
    assert first["event"] == "Run time of job rules was missed" and first["logger"] == "apscheduler.scheduler"
    assert first["level"] == "warning" and first["timestamp"].endswith(OFFSET)
    assert json.loads(lines[1][3:])["code"] == "320303"
    # not the journal: no prefix
    buf = io.StringIO()
    node_logging.configure("info", "json", stream=buf)
    try:
        logging.getLogger("apscheduler").warning("plain")
    finally:
        node_logging.configure("warning", stream=sys.__stderr__)
    assert json.loads(buf.getvalue())["event"] == "plain"


LOGROTATE = shutil.which("logrotate")


@pytest.mark.skipif(LOGROTATE is None or os.geteuid() != 0, reason="logrotate is not installed, or not root")
def test_logrotate_snippet_rotates_an_open_log(tmp_path: Path) -> None:
    """deploy/logrotate/fednode rotates node.log while the writer keeps its descriptor (copytruncate):
    the old lines go to the rotated file, new lines land at the start of the emptied one."""
    log = tmp_path / "node.log"
    conf = (REPO / "deploy" / "logrotate" / "fednode").read_text(encoding="utf-8")
    assert "/var/lib/fednode/node.log {" in conf and "copytruncate" in conf
    conf = conf.replace("/var/lib/fednode/node.log", str(log)).replace("su fednode fednode", "su root root")
    (tmp_path / "fednode.conf").write_text(conf, encoding="utf-8")
    with open(log, "a", encoding="utf-8") as writer:  # as `fednode run DIR >> node.log` holds it
        writer.write('{"event": "before"}\n' * 1000)
        writer.flush()
        p = subprocess.run([LOGROTATE, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "fednode.conf")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        writer.write('{"event": "after"}\n')
        writer.flush()
    rotated = [f for f in tmp_path.iterdir() if f.name.startswith("node.log-")]
    assert len(rotated) == 1 and rotated[0].read_text(encoding="utf-8").count("before") == 1000
    assert log.read_text(encoding="utf-8") == '{"event": "after"}\n'  # appended at 0: not a sparse file


def test_status_times_carry_the_offset(tmp_path: Path) -> None:
    """`fednode status` (stopped node) writes certificate ends and key ends with +08:00, as the logs do."""
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:1])
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    p = subprocess.run([sys.executable, "-m", "node.interfaces.cli", "status", str(homes["320000"].dir), "--json"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["certificates"] and all(v.endswith(OFFSET) for v in data["certificates"].values()), data
    assert all(k["not_after"].endswith(OFFSET) for k in data["keys"]), data["keys"]
