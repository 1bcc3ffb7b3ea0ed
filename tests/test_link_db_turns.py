"""Turns of the links on the node's database thread (issue 26, node/link/transport.py ``DbTurns``), asyncio
only, no processes: children's applies go one at a time in arrival order, none starts while the uplink
reads, and the uplink's read waits behind the one apply already under way, not behind every child's.
"""

from __future__ import annotations

import asyncio

from node.link.transport import DbTurns


def test_applies_one_at_a_time_in_order_and_none_while_the_uplink_reads() -> None:
    async def main() -> list[str]:
        turns = DbTurns()
        events: list[str] = []
        first_in = asyncio.Event()

        async def child(name: str) -> None:
            async with turns.apply():
                events.append(f"{name} in")
                first_in.set()
                await asyncio.sleep(0.02)
                events.append(f"{name} out")

        kids = [asyncio.create_task(child(f"c{i}")) for i in range(4)]
        await first_in.wait()  # c0 is applying; c1..c3 wait in line
        with turns.uplink_read():
            events.append("up in")
            await asyncio.sleep(0.05)  # longer than c0's apply: c1 must still wait for the read
            events.append("up out")
        await asyncio.gather(*kids)
        return events

    events = asyncio.run(main())
    assert events == ["c0 in", "up in", "c0 out", "up out", "c1 in", "c1 out", "c2 in", "c2 out", "c3 in", "c3 out"]

def test_a_waiting_apply_cancelled_gives_its_turn_away() -> None:
    async def main() -> bool:
        turns = DbTurns()
        hold = asyncio.Event()

        async def child(wait: asyncio.Event | None) -> None:
            async with turns.apply():
                if wait is not None:
                    await wait.wait()

        first = asyncio.create_task(child(hold))
        await asyncio.sleep(0)
        second = asyncio.create_task(child(None))
        await asyncio.sleep(0)
        second.cancel()
        hold.set()
        await first
        third = asyncio.create_task(child(None))
        await asyncio.wait_for(third, 1.0)
        return second.cancelled()

    assert asyncio.run(main())
