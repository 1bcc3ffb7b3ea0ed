"""Reading and validating a source's batches in a child process, beside the node's store thread.

Why: ``poll`` + ``prepare`` cost ~25 us of Python per row, the commit ~20 us. On a thread of the node
they hold the same GIL as the commit, so reading the next batch while one commits gained nothing
(measured: the pipelined rate equalled reading and committing in turn); in a child process they run
at the same time, and the node's links and services keep the GIL they would otherwise wait for.

Rules of this module:
- only adapters that say ``prefetch = True`` run here (their ``poll(cursor)`` reads the source and
  nothing else, e.g. SQL poll); the child builds its own instance from the same ``[adapters.<name>]``
  section, through the same entry points, and keeps it (connections, round-robin) between batches;
- the child reads and validates and never writes the store. What comes back is the batch's cursor and
  ``done`` note and the prepared rows (Accepted / Rejected, with the rejected rows' source rows), not
  the raw rows: ``after_commit`` of a prefetch adapter gets a Batch without rows;
- nothing is lost whatever dies: the parent commits records, keys and cursor in one transaction, and
  a child that dies (or is killed) is started again at the next read, from the committed cursor. The
  child follows its parent: it exits within half a second of the parent's death (kill -9 included),
  and ignores Ctrl-C, which the parent handles;
- ``[adapters.<name>] reader = "thread"`` keeps the old way (read on a worker thread of the node).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from adapters.base import Accepted, Batch, Rejected, make_adapter, prepare
from node.core.errors import ConfigError

READERS = ("process", "thread")

_adapter: Any = None  # the child's own adapter instance
_config: tuple[str, dict[str, Any], Path] | None = None


def reads_in_process(name: str, section: dict[str, Any], adapter: Any) -> bool:
    """Whether ``[adapters.<name>]`` is read in a child process (the default for prefetch adapters)."""
    how = section.get("reader", "process")
    if how not in READERS:
        raise ConfigError(f"[adapters.{name}]: reader = {how!r} is not one of {', '.join(READERS)}",
                          fix='use reader = "process" (the default) or "thread"')
    return how == "process" and bool(getattr(adapter, "prefetch", False))


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # re-parented: the node is gone (a kill -9 runs no cleanup)
            os._exit(0)


def _start(name: str, section: dict[str, Any], home_dir: str, parent: int) -> None:
    global _config
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    _config = (name, section, Path(home_dir))


def _the_adapter() -> Any:
    # built on first use, not in the initializer: an error then reaches the node with its own message
    # (an initializer's error only breaks the pool)
    global _adapter
    if _adapter is None:
        assert _config is not None
        _adapter = make_adapter(*_config)
        # this process does one job: what exists now (modules, the adapter) lives as long as it does, so
        # the collector need not scan it again on every full collection while batches come and go
        gc.freeze()
    return _adapter


def _ready() -> int:
    _the_adapter()
    return os.getpid()


_Packed = tuple[list[tuple[Any, ...]], list[tuple[int, Rejected]]]


def _pack(prepared: list[Accepted | Rejected]) -> _Packed:
    """Accepted rows as six columns (pickled ~3x faster than one object a row), rejected ones by index."""
    accepted = [p for p in prepared if isinstance(p, Accepted)]
    rejected = [(i, p) for i, p in enumerate(prepared) if not isinstance(p, Accepted)]
    return list(zip(*accepted, strict=True)), rejected


def _unpack(packed: _Packed) -> list[Accepted | Rejected]:
    columns, rejected = packed
    out: list[Accepted | Rejected] = [Accepted(*row) for row in zip(*columns, strict=True)]
    for i, r in rejected:  # ascending indices: each lands where prepare put it
        out.insert(i, r)
    return out


def _read(cursor: Any) -> tuple[Batch | None, _Packed | None]:
    batch = _the_adapter().poll(cursor)
    if batch is None:
        return None, None
    return Batch([], batch.cursor, batch.done), _pack(prepare(batch.rows))


class ProcessReader:
    """One child process reading one adapter's source: ``read(cursor)`` → future of (batch, prepared)."""

    def __init__(self, name: str, section: dict[str, Any], home_dir: Path) -> None:
        self._args = (name, dict(section), str(home_dir), os.getpid())
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self, restart: bool = False) -> ProcessPoolExecutor:
        with self._lock:
            if restart and self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._pool is None:
                # spawn, not fork: the node has threads (gRPC, the store) that a fork would copy mid-flight
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start, initargs=self._args)
            return self._pool

    def start(self) -> Future[int]:
        """Start the child now (imports, the adapter's setup), so the first batch does not wait for it.
        The future gives the child's pid, or the adapter's error."""
        return self._submit(_ready)

    def read(self, cursor: Any) -> Future[tuple[Batch | None, list[Accepted | Rejected] | None]]:
        out: Future[tuple[Batch | None, list[Accepted | Rejected] | None]] = Future()

        def unpack(done: Future[tuple[Batch | None, _Packed | None]]) -> None:
            try:
                batch, packed = done.result()
                out.set_result((batch, _unpack(packed) if packed is not None else None))
            except BaseException as e:  # the child's error (or its death) is the reader's
                out.set_exception(e)

        out.set_running_or_notify_cancel()
        self._submit(_read, cursor).add_done_callback(unpack)
        return out

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        try:
            return self._executor().submit(fn, *args)
        except BrokenProcessPool:  # the child died (killed, out of memory): a new one resumes from the cursor
            return self._executor(restart=True).submit(fn, *args)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
