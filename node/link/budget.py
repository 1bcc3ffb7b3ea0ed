"""The node's receive budget: bytes of received, not yet applied batches, shared by all its links.

Rules of this module:
- one budget per node (``NodeRuntime.receive_budget``), not per link: with N children the memory held
  for batches waiting to be applied stays under ``capacity`` (plus, per link, the one message it has
  read and waits to admit), whatever N and whatever their backlogs;
- a link charges a batch's bytes after reading it and before reading the next message; it releases
  them once the batch is applied (or the link ends). While a link waits for room it reads nothing, so
  its peer is held back by HTTP/2 flow control;
- fair: requests are granted in arrival order and a request never overtakes an earlier waiting one,
  so a flooding child cannot starve the others: as soon as one of its batches is applied, the next
  link in line gets the room;
- a batch bigger than the whole budget is admitted when nothing else is held, so it never waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any


class ReceiveBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.held_back = 0  # requests that had to wait for room
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.capacity

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    async def acquire(self, n: int) -> None:
        """Wait for room for ``n`` bytes, in turn."""
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        self.held_back += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as the waiter was cancelled
            else:
                with contextlib.suppress(ValueError):  # already dropped by ``_grant``
                    self._waiters.remove(entry)
                self._grant()  # the next in line may fit now
            raise

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if fut.done():
                continue
            self._take(n)
            fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def status(self) -> dict[str, Any]:
        return {"capacity_bytes": self.capacity, "used_bytes": self.used, "peak_bytes": self.peak,
                "waiting_links": self.waiting, "held_back": self.held_back}
