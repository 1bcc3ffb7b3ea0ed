"""`fednode reconcile` on a stopped node, and the one-run-at-a-time lock every runner takes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.app.remote import via_node_or_store
from node.core.home import Home
from node.link.client import GrpcParent
from node.link.reconcile import last_per_peer, reconcile_with_parent

# ---- one run at a time ---------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(home_dir: Path) -> Iterator[bool]:
    """Exclusive, non-blocking: yields False when another process holds it."""
    fd = os.open(home_dir / "reconcile.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason}


def run_direct(home: Home, trigger: str = "demand") -> dict[str, Any]:
    """The node is not running: dial the parent ourselves."""
    with run_lock(home.dir) as got:
        if not got:
            return skipped(f"another process holds {home.dir / 'reconcile.lock'}")
        ledger = home.ledger()
        if not (home.config.parent and home.config.parent_code):
            return {"report": None, "children": last_per_peer(ledger, "parent"),
                    "note": "no parent: the children reconcile with this node"}
        parent = GrpcParent(home)
        try:
            rep = reconcile_with_parent(ledger, parent, trigger=trigger)
        finally:
            parent.close()
        return {"report": rep.as_dict(), "children": last_per_peer(ledger, "parent")}


def reconcile(home: Home, timeout: float = 600.0) -> dict[str, Any]:
    """`fednode reconcile`: asked of the running node (op ``reconcile``), else run here (``mode`` "direct")."""
    data: dict[str, Any] = via_node_or_store(home, {"op": "reconcile"}, lambda: {**run_direct(home), "mode": "direct"},
                                             timeout=timeout)[0]
    return data
