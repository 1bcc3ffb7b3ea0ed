"""CaseIndexService: keeps the case index (node/features/cases/index.py) near the change feed.

Reads (`cases show|list`, `alerts show|list`) and acts (a disposal, an automatic ticket) catch up
themselves before they read it; this service only spares them the wait. It folds on the background
thread a page at a time and, while the links move records, leaves them most of the time (as the
statistics fold does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog

from node.features.cases import index as cix
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)


class CaseIndexService(Service):
    name = "cases"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.indexed = 0
        self.last_error = ""

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def on_stored(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=30.0)
            self._wake.clear()
            try:
                while True:
                    t0 = time.monotonic()
                    try:
                        n = await self.rt.bg(cix.fold_once, self.rt.ledger.store, 2000)
                    except cix.Raced:
                        continue
                    if n == 0:
                        break
                    self.indexed += n
                    took = time.monotonic() - t0
                    await asyncio.sleep(max(0.05, 9 * took) if self.rt.links_busy() else 0.01)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — retried on the next wake, never kills the node
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("case_index_failed", error=self.last_error)
            await asyncio.sleep(1.0)  # one fold for a burst of notifications

    def status(self) -> dict[str, Any] | None:
        return {"cursor": cix.cursor(self.rt.ledger.store), "indexed": self.indexed, "last_error": self.last_error}


SERVICES = [CaseIndexService]
