"""What the running node hosts besides its links: rules, tickets, adapters, reconciliation, metrics.

A service is started after the links' server is up and stopped before it goes down. It gets the
runtime, which gives it the store threads (``rt.bg`` for long or periodic work — use it, in chunks, so
the links' thread ``rt.db`` stays free; ``rt.db`` for short admin-op work), the ledger, the scheduler (``rt.scheduler``,
APScheduler with its job store in the node's own database) and ``rt.notify()`` to wake the links
after it stored records. ``on_stored`` is called on the event loop whenever records were stored here
(local appends and records from peers alike): a service follows ``Store.changes`` with its own cursor
instead of being handed records, so a restart never skips or repeats anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


class Service:
    name = "service"

    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt

    def add_to_server(self, server: Any) -> None:
        """Add gRPC servicers to the node's (mutual-TLS) server, when the node listens."""

    async def start(self) -> None:
        """Start background work. Must not block the loop."""

    async def stop(self) -> None:
        """Stop; the store is still open."""

    def on_stored(self) -> None:
        """Records were stored here. Cheap: typically set an event your task waits on."""

    def status(self) -> dict[str, Any] | None:
        """A section for `fednode status` (runs on the store thread), or None."""
        return None
