"""Acceptance (issue 24, points 4 and 8): a local system that writes the drop directory or pushes cannot
turn the node's own adapters against it.

Real `fednode run` processes (node.demo.start) on a one-node tree, the adapters configured in node.toml;
the operator's view is the real CLI (`fednode quarantine list|show --json`), memory is the node's
VmHWM from /proc. Attacks:

- symbolic links in the drop directory to a file outside, to the node's own keys/sign.key and to
  /etc/shadow (and a named pipe): never read, quarantined by name only, moved unread to the archive;
  no byte of what they point at reaches quarantine, the CLI, node.log or the store;
- a hard link to a file outside: refused the same way (O_NOFOLLOW does not see hard links; a file with
  more than one name is not read);
- a symlinked archive directory, then a symlinked day directory inside a real one: the node stops
  archiving with an error naming the path; no directory is created and no file moved outside; once
  the link is gone the file is archived where it belongs;
- a 1 GiB line (a sparse file): read in bounded pieces, quarantined with its first 64 KiB only, the
  next line arrives, and the node's peak RSS stays under 300 MB (at HEAD ~2.2 GB);
- a push with a wrong token and a 60 MB body: UNAUTHENTICATED before the body is read (what crossed a
  counting TCP proxy and the node's peak RSS both show it); a 20 MB push with the right token is over
  the message limit; the push port is not shared with a second server (no SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from bench import demo
from bench.harness import _rss_peak_mb
from node.core import admin_client as admin
from node.core import schema
from node.core.home import Home
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.faultlib import TcpProxy, open_store, wait_for

pytestmark = pytest.mark.slow

SINGLE: list[tuple[str, str, str, str | None]] = [("320000", "江苏省", "province", None)]
DROP = '[adapters.drop]\ntype = "filedrop"\ndir = "drop"\nsettle_seconds = 0\ninterval = 0.2\n'
SECRET = b"SECRET-3f9c1e line that must never be read\nroot:$6$saltsalt$SECRET-hash-77a1:19000:0:99999:7:::\n"


def step(i: int) -> dict[str, Any]:
    return {"case_no": f"3203032025{i:08d}", "item_code": "320303-XK-001", "division": "320303",
            "dept": "320303-SJ", "time": "2025-10-09T10:00:00+08:00", "step_no": 1, "step_code": "SL",
            "step_name": "受理", "handler": "张三", "post": "窗口", "action": "pass",
            "started_at": "2025-10-09T09:30:00+08:00"}


def step_line(i: int) -> bytes:
    return json.dumps({"kind": "case.step", **step(i)}, ensure_ascii=False).encode() + b"\n"


def node_home(tmp_path: Path, config: str) -> Home:
    h = demo.build_tree(tmp_path / "tree", SINGLE)["320000"]
    (h.dir / "drop").mkdir()
    with (h.dir / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + config)
    return h


@contextmanager
def running(h: Home) -> Iterator[subprocess.Popen[bytes]]:
    p = demo.start(h.dir)
    try:
        demo.wait_admin(h)
        yield p
    finally:
        demo.stop_all({"n": p})


def drop_file(drop: Path, name: str, body: bytes) -> None:
    tmp = drop / f".{name}.tmp"
    tmp.write_bytes(body)
    os.rename(tmp, drop / name)


def n_steps(h: Home) -> int:
    store = open_store(h)
    try:
        with store.read() as conn:
            t = schema.records
            return int(conn.execute(select(func.count()).select_from(t).where(t.c.kind == "case.step")).scalar_one())
    finally:
        store.close()


def cli_json(*args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "node.interfaces.cli", *args, "--json"], capture_output=True, check=True,
                         timeout=120)
    return json.loads(out.stdout)


def quarantine_rows(h: Home) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli_json("quarantine", "list", str(h.dir))["rows"]
    return rows


def adapter_status(h: Home, name: str = "drop") -> dict[str, Any]:
    resp = admin.call(h, {"op": "status"}, timeout=30)
    assert resp is not None
    out: dict[str, Any] = resp["result"].get("adapters", {}).get(name, {})
    return out


def what_the_operator_and_the_store_see(h: Home) -> bytes:
    """The CLI's quarantine output (list, and show for every row), node.log, and every byte of the store's
    files (the SQLite database and its WAL), links not followed."""
    rows = quarantine_rows(h)
    seen = [json.dumps(rows).encode()]
    for r in rows:
        seen.append(json.dumps(cli_json("quarantine", "show", str(h.dir), str(r["id"]))).encode())
    seen.append((h.dir / "node.log").read_bytes())
    for p in h.dir.iterdir():
        if p.is_file() and not p.is_symlink() and ".db" in p.name:
            seen.append(p.read_bytes())
    return b"\n".join(seen)


def secret_pieces(*contents: bytes) -> list[bytes]:
    """Lines of the secret files long enough to be recognised (a PEM's base64 lines, shadow entries)."""
    return [line for c in contents for line in c.splitlines() if len(line) >= 16 and not line.startswith(b"-----")]


# ---- drop directory: links ------------------------------------------------------------------------------


def test_symlinks_in_the_drop_directory_are_never_read(tmp_path: Path) -> None:
    h = node_home(tmp_path, DROP)
    drop = h.dir / "drop"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(SECRET)
    sign_key = h.dir / "keys" / "sign.key"
    links = {"secret.jsonl": secret, "key.jsonl": sign_key, "shadow.csv": Path("/etc/shadow")}
    with running(h):
        for name, target in links.items():
            (drop / name).symlink_to(target)
        os.mkfifo(drop / "pipe.jsonl")
        drop_file(drop, "good.jsonl", step_line(1))
        wait_for(lambda: n_steps(h) == 1 and not any((drop / name).exists() for name in [*links, "good.jsonl"]), 60,
                 lambda: f"the good record and the links handled; drop: {sorted(os.listdir(drop))}")
        wait_for(lambda: len(quarantine_rows(h)) >= len(links) + 1, 10, lambda: f"the pipe: {quarantine_rows(h)}")
        rows = quarantine_rows(h)
        seen = what_the_operator_and_the_store_see(h)
    shadow = Path("/etc/shadow").read_bytes() if os.access("/etc/shadow", os.R_OK) else b""
    for piece in secret_pieces(SECRET, sign_key.read_bytes(), shadow):
        assert piece not in seen, f"{piece[:40]!r} reached the quarantine, the CLI, node.log or the store"
    by_position = {r["position"]: r for r in rows}
    assert set(by_position) == {*links, "pipe.jsonl"}, rows
    for name in links:
        assert "symbolic link" in by_position[name]["reason"] and "fix:" in by_position[name]["reason"]
    assert "named pipe" in by_position["pipe.jsonl"]["reason"]
    # the links were moved, as links, into the archive: never followed, never lost
    archived = {p.name: p for p in (drop / "archive").rglob("*")}
    assert all(archived[name].is_symlink() for name in links) and "good.jsonl" in archived
    assert secret.read_bytes() == SECRET and sign_key.exists()


def test_a_hard_link_in_the_drop_directory_is_not_read(tmp_path: Path) -> None:
    """O_NOFOLLOW does not see a hard link (it is the file itself under a second name): a file with more
    than one name is refused, so a link to another file of the machine (possible where
    fs.protected_hardlinks = 0) is never read."""
    h = node_home(tmp_path, DROP)
    drop = h.dir / "drop"
    secret = tmp_path / "secret.txt"  # same file system as the drop directory, as a hard link needs
    secret.write_bytes(SECRET)
    with running(h):
        os.link(secret, drop / "hard.jsonl")
        drop_file(drop, "good.jsonl", step_line(2))
        wait_for(lambda: n_steps(h) == 1 and not (drop / "hard.jsonl").exists(), 60,
                 lambda: f"the good record and the hard link handled; drop: {sorted(os.listdir(drop))}")
        rows = quarantine_rows(h)
        seen = what_the_operator_and_the_store_see(h)
    for piece in secret_pieces(SECRET):
        assert piece not in seen, f"{piece[:40]!r} reached the quarantine, the CLI, node.log or the store"
    assert [r["position"] for r in rows] == ["hard.jsonl"]
    assert "2 hard links" in rows[0]["reason"] and "not a hard link" in rows[0]["reason"]


def test_a_symlinked_archive_directory_is_refused_nothing_moves_outside(tmp_path: Path) -> None:
    h = node_home(tmp_path, DROP)
    drop = h.dir / "drop"
    elsewhere, elsewhere2 = tmp_path / "elsewhere", tmp_path / "elsewhere2"
    elsewhere.mkdir()
    elsewhere2.mkdir()
    (drop / "archive").symlink_to(elsewhere)
    with running(h):
        drop_file(drop, "f1.jsonl", step_line(3))
        wait_for(lambda: n_steps(h) == 1 and ("archive" in adapter_status(h).get("last_error", "")
                                              or not (drop / "f1.jsonl").exists()), 60,
                 lambda: f"the record read and the file archived or refused; status: {adapter_status(h)}")
        assert list(elsewhere.rglob("*")) == [] and (drop / "f1.jsonl").exists()
        err = adapter_status(h)["last_error"]
        assert str(drop / "archive") in err and "symbolic link" in err
        # a real archive directory, but today's directory in it a link out: refused the same way
        (drop / "archive").unlink()
        day = time.strftime("%Y%m%d")
        (drop / "archive").mkdir()
        (drop / "archive" / day).symlink_to(elsewhere2)
        wait_for(lambda: str(drop / "archive" / day) in adapter_status(h).get("last_error", ""), 90,
                 lambda: f"the day directory refused; status: {adapter_status(h)}")
        assert list(elsewhere2.iterdir()) == [] and (drop / "f1.jsonl").exists()
        # the operator removes the link: the file is archived where it belongs, read once
        (drop / "archive" / day).unlink()
        wait_for(lambda: (drop / "archive" / day / "f1.jsonl").is_file(), 120,
                 lambda: f"the file archived; status: {adapter_status(h)}")
        assert n_steps(h) == 1 and not (drop / "f1.jsonl").exists()
    assert list(elsewhere.iterdir()) == [] and list(elsewhere2.iterdir()) == []


# ---- drop directory: a line of 1 GiB ---------------------------------------------------------------------


def test_a_one_gib_line_is_not_read_whole(tmp_path: Path) -> None:
    h = node_home(tmp_path, DROP)
    drop = h.dir / "drop"
    big = drop / ".big.jsonl.tmp"
    head = b'{"kind": "case.step", "opinion": "'
    with big.open("wb") as f:  # sparse: 1 GiB of NUL bytes inside a JSON string, written in no time
        f.write(head)
        f.seek(1 << 30)
        f.write(b'"}\n' + step_line(4))
    length = (1 << 30) + 2  # the long line, without its newline
    with running(h) as p:
        base_mb = _rss_peak_mb(p.pid)
        os.rename(big, drop / "big.jsonl")
        wait_for(lambda: n_steps(h) == 1 and not (drop / "big.jsonl").exists(), 180,
                 lambda: f"the line after the long one; status: {adapter_status(h)}")
        peak_mb = _rss_peak_mb(p.pid)
        rows = quarantine_rows(h)
        shown = cli_json("quarantine", "show", str(h.dir), str(rows[0]["id"]))
    print(f"\nnode peak RSS: {base_mb:.0f} MB after start, {peak_mb:.0f} MB after a {length}-byte line")
    assert peak_mb < 300, f"the node's peak RSS reached {peak_mb:.0f} MB reading one long line"
    assert [r["position"] for r in rows] == ["big.jsonl:1"]
    assert "line longer than the limit of 1048576 bytes" in rows[0]["reason"] and str(length) in rows[0]["reason"]
    assert shown["raw_bytes"] <= 64 * 1024 and shown["raw_text"].startswith(head.decode())


# ---- push ------------------------------------------------------------------------------------------------


def push_home(tmp_path: Path) -> tuple[Home, int]:
    port = demo.free_port()
    return node_home(tmp_path, f'[adapters.push]\nlisten = "127.0.0.1:{port}"\n'), port


def test_push_with_a_wrong_token_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    h, port = push_home(tmp_path)
    body = pb.IngestRequest(source="attacker", items=[pb.IngestItem(kind="case.step", payload=b"x" * (60 << 20),
                                                                     source_position="1")])
    assert body.ByteSize() > 60 << 20

    async def push(target: int, req: pb.IngestRequest, token: str) -> tuple[grpc.StatusCode, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target}",
                                             options=[("grpc.max_send_message_length", 100 << 20)]) as ch:
            t0 = time.monotonic()
            try:
                await pbg.IngestStub(ch).Push(req, metadata=[("authorization", f"Bearer {token}")], timeout=60)
                return grpc.StatusCode.OK, time.monotonic() - t0
            except grpc.aio.AioRpcError as e:
                return e.code(), time.monotonic() - t0

    with running(h) as p:
        wait_for(lambda: adapter_status(h, "push").get("state") == "ok", 30, "the push service listening")
        token = (h.dir / "push.token").read_text().strip()
        base_mb = _rss_peak_mb(p.pid)
        with TcpProxy(port, random.Random(24)) as proxy:
            code, took = asyncio.run(push(proxy.port, body, "wrong-" + token))
            crossed = proxy.bytes
        peak_mb = _rss_peak_mb(p.pid)
        print(f"\nwrong token, {body.ByteSize()} bytes sent: {code.name} in {took:.2f} s, {crossed} bytes crossed "
              f"the proxy; node peak RSS {base_mb:.0f} -> {peak_mb:.0f} MB")
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert crossed < 16 << 20, f"{crossed} bytes of an unauthenticated request were taken in"
        assert peak_mb - base_mb < 40, f"the node's peak RSS grew by {peak_mb - base_mb:.0f} MB"
        # the right token: an ordinary push is accepted; a 20 MB one is over the message limit
        item = pb.IngestItem(kind="case.step", payload=json.dumps(step(5)).encode(), source_position="1")
        small = pb.IngestRequest(source="sys", items=[item])
        assert asyncio.run(push(port, small, token))[0] == grpc.StatusCode.OK
        big = pb.IngestRequest(source="sys", items=[pb.IngestItem(kind="case.step", payload=b"y" * (20 << 20))])
        assert asyncio.run(push(port, big, token))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert n_steps(h) == 1


def test_the_push_port_is_not_shared_with_a_second_server(tmp_path: Path) -> None:
    """gRPC binds with SO_REUSEPORT unless told not to: a second server on the same port would take half
    the calls. The node's push port is bound exclusively, so a second server cannot bind it."""
    from adapters import push

    h, port = push_home(tmp_path)
    with running(h):
        wait_for(lambda: adapter_status(h, "push").get("state") == "ok", 30, "the push service listening")

        async def second() -> str:
            async def never(source: str, prepared: list[Any]) -> Any:
                raise AssertionError("the second server got a call")

            try:
                server = push.make_server(f"127.0.0.1:{port}", push.IngestServicer("t", never, lambda o, p: None))
            except RuntimeError as e:
                return str(e)
            await server.stop(None)
            return "bound"

        assert "Failed to bind" in asyncio.run(second())
