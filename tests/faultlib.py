"""Shared tools of the fault and security suites (tests/test_fault_suite.py, tests/test_security_suite.py).

- ``Cluster``: node homes built by ``node.demo.build_tree``, each node its own ``fednode run`` process;
  kill -9, restart, graceful stop; on failure the tail of every node.log is printed; processes are
  always stopped however the block ends.
- ``TcpProxy``: a TCP proxy on 127.0.0.1 with a delay per chunk, ``cut()`` (abort every connection
  now) and, with ``cut_every``, cuts of its own at random intervals (a flaky link); mutual TLS goes
  through it unchanged, the node names its parent by code, not by address.
- ``Schedule``: every random choice of a test comes from one ``random.Random(seed)``; the seed is
  printed, and ``FEDNODE_FAULT_SEED=N`` replays the schedule.
- ``small_filesystem``: a tmpfs (or, failing that, a loop-mounted ext4 image) of a few MiB, unmounted
  in ``finally``; ``None`` when this sandbox cannot mount.
- ``FakeClock``: a wall clock the test moves for a node process, without LD_PRELOAD: a
  ``sitecustomize`` on the node's PYTHONPATH shifts ``time.time``/``time.time_ns`` by the offset written
  in a file the test controls. Only what the node computes from ``time.time*`` moves (record and
  checkpoint times); TLS in gRPC's C core and ``datetime.now`` keep the real clock.
- ``hello_after_listening``: say Hello on a Link a test opened by hand, without racing a refusal.
- ``everything_arrived``: the invariant of every fault test: the province holds every record born
  below it, none twice, and every chain verifies there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.demo import LINKS_ONLY, build_tree, root_counts, start, stop_all, wait_admin
from node.core import admin_client as admin
from node.core import codes, config
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.keyring import Keyring
from node.core.store import Store

Tree = list[tuple[str, str, str, str | None]]

PROVINCE, CITY, COUNTY, OTHER = "320000", "320300", "320303", "320311"
CHAIN: Tree = [
    (PROVINCE, "江苏省", "province", None),
    (CITY, "徐州市", "city", PROVINCE),
    (COUNTY, "云龙区", "county", CITY),
]


# ---- the random schedule -----------------------------------------------------------------------------


class Schedule(random.Random):
    """``random.Random`` seeded from FEDNODE_FAULT_SEED, or a fresh seed that is printed for replay."""

    def __init__(self, label: str) -> None:
        env = os.environ.get("FEDNODE_FAULT_SEED")
        self.seed_value = int(env) if env else random.SystemRandom().randrange(1 << 31)
        super().__init__(self.seed_value)
        print(f"\n[{label}] seed {self.seed_value} (replay with FEDNODE_FAULT_SEED={self.seed_value})")

    def __str__(self) -> str:
        return f"seed {self.seed_value}"


# ---- a running tree ----------------------------------------------------------------------------------


def wait_for(cond: Callable[[], bool], timeout: float, what: Callable[[], str] | str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting until {what() if callable(what) else what}")


async def hello_after_listening(call: Any, hello: Any, listen_s: float = 2.0) -> asyncio.Future[Any]:
    """Write ``hello`` on a Link ``call`` unless the server ends the stream first; return the pending
    first read (its result is the server's first message, or ``grpc.aio.EOF``).

    A node refuses a peer as the stream opens, before reading anything. A Hello written at that moment
    can meet the closed stream, and grpc then reports the failed write (INTERNAL, "Internal error from
    Core") in place of the server's status (seen in a loaded CI run). Listening first for a moment lets
    a refusal arrive as the end of the stream with its status; a server that waits for the Hello gets it
    after that moment. The read is never cancelled: cancelling a read cancels the call."""
    first = asyncio.ensure_future(call.read())
    await asyncio.wait({first}, timeout=listen_s)
    if not first.done():
        await call.write(hello)
    return first


def open_store(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def own_heads(home: Home, origin: str | None = None) -> dict[tuple[str, int], int]:
    """Seq of every log born in ``origin``'s subtree (default: the node's own subtree) held by ``home``."""
    origin = origin or home.code
    store = open_store(home)
    try:
        return {k: h.seq for k, h in store.heads().items() if codes.within(k[0], origin)}
    finally:
        store.close()


class Cluster:
    """A tree of node processes. Use as a context manager: everything is stopped on exit, and on
    failure the last lines of every node.log are printed."""

    def __init__(self, base: Path, tree: Tree = CHAIN, dbs: dict[str, str] | None = None) -> None:
        self.tree = tree
        self.homes = build_tree(base, tree, extra_config=LINKS_ONLY, dbs=dbs)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.starts: dict[str, int] = {c: 0 for c, *_ in tree}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None:
                print("\n" + self.log_tails(), file=sys.stderr)
        finally:
            stop_all(self.procs)

    @property
    def codes(self) -> list[str]:
        return [c for c, *_ in self.tree]

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for code, home in self.homes.items():
            p = home.dir / "node.log"
            text = p.read_text(encoding="utf-8", errors="replace").splitlines() if p.exists() else ["(no node.log)"]
            out.append(f"----- {code}: last {min(lines, len(text))} lines of {p} -----")
            out += text[-lines:]
        return "\n".join(out)

    def start(self, *nodes: str, wait: bool = True) -> None:
        for c in nodes or tuple(self.codes):
            assert self.procs.get(c) is None or self.procs[c].poll() is not None, f"{c} is already running"
            self.procs[c] = start(self.homes[c].dir, self.env.get(c))
            self.starts[c] += 1
        if wait:
            for c in nodes or tuple(self.codes):
                wait_admin(self.homes[c], timeout=60)

    def kill9(self, node: str) -> int:
        p = self.procs[node]
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        return p.pid

    def stop(self, *nodes: str) -> None:
        procs = {c: self.procs.pop(c) for c in nodes}
        stop_all(procs)
        for c, p in procs.items():
            assert p.returncode == 0, f"{c} did not stop cleanly on SIGTERM (exit {p.returncode})"

    def stop_all(self) -> None:
        stop_all(self.procs)

    def set_config(self, node: str, section: str, key: str, value: Any) -> None:
        """Change one field of ``node``'s node.toml (before it starts) and reload its Home."""
        config.set_field(self.homes[node].config.path, section, key, value)
        self.homes[node] = Home(self.homes[node].dir)

    def alive(self, node: str) -> bool:
        p = self.procs.get(node)
        return p is not None and p.poll() is None

    def call(self, node: str, req: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        resp = admin.call(self.homes[node], req, timeout=timeout)
        assert resp is not None, f"{node} is not running (no admin socket)"
        return dict(resp["result"])

    def ingest(self, node: str, n: int, seed: int) -> int:
        return int(self.call(node, {"op": "ingest", "synthetic": n, "seed": seed})["ingested"])

    def status(self, node: str) -> dict[str, Any]:
        return self.call(node, {"op": "status"}, timeout=30)

    def uplink(self, node: str) -> dict[str, Any]:
        return next(ln for ln in self.status(node)["links"] if ln["direction"] == "up")

    def addr(self, node: str) -> str:
        return self.homes[node].config.listen

    def port(self, node: str) -> int:
        return int(self.addr(node).rsplit(":", 1)[1])

    def events(self, node: str, event: str, **match: Any) -> list[dict[str, Any]]:
        """The structured log lines of ``node``'s node.log with this event (and these field values)."""
        out: list[dict[str, Any]] = []
        p = self.homes[node].dir / "node.log"
        if not p.exists():
            return out
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def log_text(self, node: str) -> str:
        p = self.homes[node].dir / "node.log"
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""


@dataclass
class Arrival:
    born: int
    at_root: int
    distinct: int
    lost: int
    logs: int

    @property
    def duplicated(self) -> int:
        return self.at_root - self.distinct


def everything_arrived(cl: Cluster, origins: list[str], schedule: Schedule | str, timeout: float = 120,
                       root: str = PROVINCE) -> Arrival:
    """Wait until the province holds every log born at ``origins`` up to its head there; stop every node;
    then assert nothing is lost or duplicated and verify every chain at the province (and elsewhere).

    The nodes' own services (the rules engine...) may append records at any time, so "born" is the
    snapshot of the origins' heads taken when the province caught up: each of those records must be at
    the province exactly once. A tail appended after that snapshot may not have left yet when the
    nodes stop; it is reported, not counted as lost."""
    t0 = time.monotonic()

    def want() -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for o in origins:
            out.update({k: v for k, v in own_heads(cl.homes[o], o).items() if k[0] == o})
        return out

    snapshot: dict[tuple[str, int], int] = {}

    def caught_up() -> bool:
        w = want()
        have = own_heads(cl.homes[root], root)
        snapshot.clear()
        snapshot.update(w)
        return all(have.get(k, 0) >= v for k, v in w.items())

    wait_for(caught_up, timeout, lambda: f"{schedule}: the province holds every record born at {origins}: "
             f"born {want()}, province {own_heads(cl.homes[root], root)}", every=0.25)
    elapsed = time.monotonic() - t0
    cl.stop_all()
    heads, total, distinct = root_counts(cl.homes[root], list(snapshot))
    born = sum(snapshot.values())
    lost = sum(max(0, v - heads.get(k, 0)) for k, v in snapshot.items())
    tail = sum(want().values()) - sum(heads.get(k, 0) for k in snapshot)
    print(f"  converged in {elapsed:.1f}s: born {born} records in {len(snapshot)} logs at {origins}; the province "
          f"holds {total} ({distinct} distinct seqs); appended since and not yet sent: {max(tail, 0)}")
    assert lost == 0, f"{schedule}: {lost} records lost: born {snapshot}, province {heads}"
    assert total == distinct, f"{schedule}: {total - distinct} duplicated records at the province"
    assert total == sum(heads.get(k, 0) for k in snapshot) >= born, \
        f"{schedule}: the province holds {total} records of logs whose heads say {heads}"
    for code in (root, *[c for c in cl.codes if c != root]):
        problems = verify_home(cl.homes[code])
        assert not problems, f"{schedule}: chains at {code} do not verify: {problems}"
    return Arrival(born, total, distinct, lost, len(snapshot))


def verify_home(home: Home) -> list[Any]:
    """node.integrity.verify_store on a STOPPED node's store; the problems, [] when every chain verifies."""
    h = Home(home.dir)
    try:
        store = h.store()
        report = verify_store(store, Keyring.from_rows(h.root(), store.keys()))
        incidents = store.incidents()
    finally:
        h.close()
    return [*report.problems, *[f"incident {i.kind} {i.origin}/{i.channel} seq {i.seq}: {i.detail}" for i in incidents]]


# ---- a TCP proxy that cuts and delays ----------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:port → 127.0.0.1:target_port. ``delay_ms``: (lo, hi) added before each forwarded chunk;
    ``cut()`` aborts every open connection; ``cut_every``: (lo, hi) seconds, the proxy also cuts on its
    own, at intervals drawn from ``rng`` (a flaky link); ``blocked = True`` refuses new connections (the
    link is down until it is False again). Runs its own asyncio loop in a thread."""

    def __init__(self, target_port: int, rng: random.Random, delay_ms: tuple[float, float] = (0.0, 0.0),
                 cut_every: tuple[float, float] | None = None) -> None:  # fmt: skip
        self.target_port = target_port
        self.rng = rng
        self.delay_ms = delay_ms
        self.cut_every = cut_every
        self.blocked = False
        self.port = 0
        self.cuts = 0
        self.connections = 0
        self.refused = 0
        self.bytes = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the proxy did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def cut(self) -> int:
        """Abort every open connection now; returns how many were open."""
        assert self._loop is not None
        done = threading.Event()
        n = [0]

        def abort() -> None:
            n[0] = self._abort_all()
            done.set()

        self._loop.call_soon_threadsafe(abort)
        done.wait(5)
        return n[0]

    def _abort_all(self) -> int:
        """(On the proxy's loop.) Abort every open connection; a cut is counted when one was open."""
        n = len(self._writers)
        for w in list(self._writers):
            w.transport.abort()
        if n:
            self.cuts += 1
        return n

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            while not self._stop.is_set():
                pause = self.rng.uniform(*self.cut_every) if self.cut_every else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)
                if not self._stop.is_set():
                    self._abort_all()  # a scheduled cut
            for w in list(self._writers):
                w.transport.abort()
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, uwriter}
        pipes = [asyncio.create_task(self._pipe(reader, uwriter)), asyncio.create_task(self._pipe(ureader, writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pipes:
                t.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (writer, uwriter):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                lo, hi = self.delay_ms
                if hi > 0:
                    await asyncio.sleep(self.rng.uniform(lo, hi) / 1000)
                writer.write(data)
                await writer.drain()
                self.bytes += len(data)


# ---- a small filesystem --------------------------------------------------------------------------------


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0


@contextlib.contextmanager
def small_filesystem(where: Path, size_mib: int) -> Iterator[str | None]:
    """Mount a filesystem of ``size_mib`` MiB at ``where``: tmpfs if this sandbox allows it, else an ext4
    image on a loop device. Yields what was mounted ("tmpfs", "loop") or None when neither works (not
    root, no mount capability). Always unmounted on exit."""
    where.mkdir(parents=True, exist_ok=True)
    kind: str | None = None
    image = where.with_name(where.name + ".img")
    if os.geteuid() == 0 and shutil.which("mount"):
        if _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(where)):
            kind = "tmpfs"
        elif shutil.which("mkfs.ext4") and _run("truncate", "-s", f"{size_mib}M", str(image)) and \
                _run("mkfs.ext4", "-q", "-F", str(image)) and _run("mount", "-o", "loop", str(image), str(where)):
            kind = "loop"
    try:
        yield kind
    finally:
        if kind is not None and not _run("umount", str(where)):
            _run("umount", "-l", str(where))
        image.unlink(missing_ok=True)


def fill(directory: Path, leave_bytes: int, name: str = "ballast") -> Path:
    """Fill the filesystem holding ``directory`` until only ``leave_bytes`` are free."""
    path = directory / name
    free = shutil.disk_usage(directory).free
    with open(path, "wb") as f:
        remaining = max(0, free - leave_bytes)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            n = min(remaining, len(block))
            try:
                f.write(block[:n])
                f.flush()
            except OSError:
                break
            remaining -= n
    return path


# ---- a fake wall clock for a node process --------------------------------------------------------------


SITECUSTOMIZE = '''\
"""Test shim (tests/faultlib.py FakeClock): shift this process's wall clock by the offset, in seconds,
written in $FEDNODE_TEST_CLOCK_FILE. Re-read at most every 50 ms."""
import os as _os
import time as _time

_path = _os.environ.get("FEDNODE_TEST_CLOCK_FILE")
if _path:
    _real_ns, _real, _mono = _time.time_ns, _time.time, _time.monotonic
    _state = [0.0, -1.0]

    def _offset():
        now = _mono()
        if now - _state[1] > 0.05:
            _state[1] = now
            try:
                with open(_path) as f:
                    _state[0] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state[0]

    _time.time_ns = lambda: _real_ns() + int(_offset() * 1e9)
    _time.time = lambda: _real() + _offset()
'''


class FakeClock:
    """The wall clock of the node processes started with ``env``: real time + an offset set by ``jump``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        self.file = directory / "clock-offset"
        self.file.write_text("0", encoding="utf-8")
        self.offset_s = 0.0
        path = os.environ.get("PYTHONPATH", "")
        self.env = {"FEDNODE_TEST_CLOCK_FILE": str(self.file),
                    "PYTHONPATH": str(directory) + (os.pathsep + path if path else "")}

    def jump(self, offset_s: float) -> None:
        """Set the node's wall clock to real time + ``offset_s`` (within 50 ms in the node)."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(repr(offset_s), encoding="utf-8")
        tmp.replace(self.file)
        self.offset_s = offset_s


__all__ = ["CHAIN", "CITY", "COUNTY", "OTHER", "PROVINCE", "Arrival", "Cluster", "FakeClock", "Schedule", "TcpProxy",
           "everything_arrived", "fill", "own_heads", "small_filesystem", "verify_home", "wait_for"]
