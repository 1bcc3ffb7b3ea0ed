"""The desk's shared values are served stale while they are fetched again (issue 17).

The overview shows the subtree's links from the node's status, an admin op that runs on the store
thread: the thread a catch-up drain applies its batches on. In the 1M-case bench the overview's p95
was 5.3 s while a drain ran, every page that found the status older than 5 s waiting behind the drain's
applies. Now (``backend.Revalidated``) only the first page waits; later pages get the kept status at
once and one refresh runs in the background. The same holds for the overview's aggregated figures
(``app.desk.Shared``), computed on the desk's reader threads: while one thread counts them again, the
others get the previous figures.

The clock is injected; the waits are real (an ``asyncio.Event`` or a ``threading.Event`` holding the
fetch), so a ``get`` that waited on the fetch would hang and fail on the timeout.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from node.app.desk import Shared
from node.core.calendar import CST
from node.interfaces.desk.backend import SCANNERS, Desk, Revalidated
from node.runtime.process import NodeRuntime
from node.runtime.services.desk import DeskSettings
from tests.conftest import Tree

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=CST)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_stale_status_is_served_at_once_and_fetched_again_once_in_the_background() -> None:
    async def run() -> None:
        clock, fetches, release = Clock(), [], asyncio.Event()

        async def fetch() -> dict[str, int]:
            fetches.append(clock.t)
            if len(fetches) > 1:
                await release.wait()  # the store thread busy with a drain's applies
            return {"n": len(fetches)}

        status = Revalidated(fetch, ttl_s=5.0, clock=clock)
        first = await asyncio.gather(*(status.get() for _ in range(5)))  # before any answer: one fetch, shared
        assert first == [{"n": 1}] * 5 and len(fetches) == 1
        clock.t += 4.0
        assert await status.get() == {"n": 1} and len(fetches) == 1  # fresh: no fetch
        clock.t += 2.0
        # stale: 20 pages each answered at once with the kept value, while the one refresh waits
        got = await asyncio.wait_for(asyncio.gather(*(status.get() for _ in range(20))), 1.0)
        assert got == [{"n": 1}] * 20
        await asyncio.sleep(0)
        assert len(fetches) == 2, "exactly one refresh runs, however many pages found the value stale"
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert await status.get() == {"n": 2}  # the refreshed value, at the next page

    asyncio.run(run())


def test_a_failed_refresh_keeps_the_value_and_tries_again_after_the_ttl() -> None:
    async def run() -> None:
        clock, calls = Clock(), []

        async def fetch() -> str:
            calls.append(clock.t)
            if len(calls) == 2:
                raise TimeoutError("the admin op answered late")
            return f"v{len(calls)}"

        value = Revalidated(fetch, ttl_s=5.0, clock=clock, what="test")
        assert await value.get() == "v1"
        clock.t += 6.0
        assert await value.get() == "v1"
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(calls) == 2
        assert await value.get() == "v1" and len(calls) == 2, "a failure is not retried on every page"
        clock.t += 6.0
        assert await value.get() == "v1"
        for _ in range(5):
            await asyncio.sleep(0)
        assert await value.get() == "v3"

    asyncio.run(run())


def test_a_first_fetch_that_fails_fails_the_page_and_the_next_page_tries_again() -> None:
    async def run() -> None:
        calls: list[int] = []

        async def fetch() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("the node is starting")
            return "up"

        value = Revalidated(fetch, ttl_s=5.0, clock=Clock())
        with pytest.raises(ConnectionError):
            await value.get()
        assert await value.get() == "up"

    asyncio.run(run())


def test_shared_figures_are_served_stale_while_one_thread_counts_them_again() -> None:
    clock, counting, release = Clock(), threading.Event(), threading.Event()
    made: list[int] = []

    def make() -> int:
        made.append(1)
        if len(made) == 2:
            counting.set()
            assert release.wait(10)
        return len(made)

    shared = Shared(ttl_s=5.0, clock=clock)
    assert shared.get("alerts", make, NOW) == (1, NOW)
    clock.t += 6.0
    later = NOW.replace(minute=5)
    with ThreadPoolExecutor(max_workers=1) as pool:
        recount = pool.submit(shared.get, "alerts", make, later)
        assert counting.wait(10)
        # another session, meanwhile: the previous figures and when they were counted, at once
        assert shared.get("alerts", make, later) == (1, NOW)
        assert len(made) == 2
        release.set()
        assert recount.result(10) == (2, later)
    assert shared.get("alerts", make, later) == (2, later)
    assert len(made) == 2


def test_shared_first_figures_are_waited_for_and_counted_once() -> None:
    made: list[int] = []
    started = threading.Event()

    def make() -> int:
        made.append(1)
        started.set()
        threading.Event().wait(0.2)
        return 7

    shared = Shared(ttl_s=5.0, clock=Clock())
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda _: shared.get("k", make, NOW), range(4)))
    assert got == [(7, NOW)] * 4 and len(made) == 1


def test_a_short_read_never_queues_behind_searches(tree: Tree) -> None:
    """Every page signs its person in, reads and renders on the desk's reader threads; a case search over
    a million cases takes them for hundreds of ms. Searches (``Desk.scan``) have threads of their own:
    with both of theirs held (and two more searches waiting), a short read still answers at once."""
    async def run() -> None:
        desk = Desk(NodeRuntime(tree.county), DeskSettings())
        held = threading.Event()
        try:
            searches = [asyncio.ensure_future(desk.scan(held.wait, 30)) for _ in range(SCANNERS + 2)]
            await asyncio.sleep(0.1)
            assert await asyncio.wait_for(desk.read(lambda: "one case"), 5.0) == "one case"
            assert await asyncio.wait_for(desk.run(lambda: "a page rendered"), 5.0) == "a page rendered"
            assert not any(s.done() for s in searches)
            held.set()
            assert await asyncio.wait_for(asyncio.gather(*searches), 10) == [True] * (SCANNERS + 2)
        finally:
            held.set()
            desk.close()

    asyncio.run(run())
