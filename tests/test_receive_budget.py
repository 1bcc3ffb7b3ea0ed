"""The receive budget is the node's, not each link's (issue 26): all links together hold at most
``[link] receive_budget_mb`` of received, unapplied batches, and the room is granted in turn.

- the budget alone (asyncio, no processes): a request never overtakes an earlier waiting one, so a link
  that keeps asking (a flooding child) cannot starve another; a batch bigger than the whole budget
  still gets in when nothing else is held; a link that ends while waiting gives its turn away;
- a link's session, in-process: once a batch is applied and its bytes given back, the session keeps
  nothing of it while it waits for the next message (the budget counts all that a link holds);
- real `fednode run` processes: a child floods the city (ten 4,000-record batches written without
  waiting for acks, past its window) with a 1 MB budget; the city's peak of held bytes stays at one
  batch, the flood is held back, and the other child's records are applied while the flood goes on.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.demo import TREE
from node.core import config as config_mod
from node.core.home import Home
from node.core.records import BULK
from node.link import transport
from node.link.budget import ReceiveBudget
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.conftest import Tree
from tests.test_link_security import (
    CITY,
    COUNTY,
    OTHER,
    PROVINCE,
    Cluster,
    channel_to,
    credentials_of,
    heads_of,
    incidents_of,
    offline_ingest,
    wait_for,
    wait_same_heads,
)

# ---- the budget alone ------------------------------------------------------------------------------------


def test_a_flooding_link_cannot_overtake_another_waiting_one() -> None:
    async def scenario() -> list[str]:
        budget = ReceiveBudget(10)
        granted: list[str] = []

        async def take(who: str, n: int) -> None:
            await budget.acquire(n)
            granted.append(who)

        await budget.acquire(10)  # the flooder holds the whole budget
        flood2 = asyncio.create_task(take("flood-2", 5))
        await asyncio.sleep(0)
        other = asyncio.create_task(take("other", 5))
        await asyncio.sleep(0)
        flood3 = asyncio.create_task(take("flood-3", 5))
        await asyncio.sleep(0)
        assert granted == [] and budget.waiting == 3
        budget.release(10)  # one of the flooder's batches applied
        await asyncio.sleep(0)
        assert granted == ["flood-2", "other"], granted  # in turn: the other link before the flooder's third
        budget.release(5)
        await asyncio.gather(flood2, other, flood3)
        assert budget.used == 10 and budget.peak == 10 and budget.held_back == 3
        return granted

    assert asyncio.run(scenario()) == ["flood-2", "other", "flood-3"]


def test_a_batch_bigger_than_the_budget_gets_in_when_nothing_is_held_and_a_cancelled_waiter_gives_way() -> None:
    async def scenario() -> None:
        budget = ReceiveBudget(10)
        await budget.acquire(4)
        big = asyncio.create_task(budget.acquire(25))
        small = asyncio.create_task(budget.acquire(3))
        await asyncio.sleep(0)
        assert not big.done() and not small.done()  # the small one waits behind the big one (in turn)
        big.cancel()  # its link ended: the next in line gets the room
        await asyncio.wait_for(small, 1)
        assert big.cancelled() and budget.used == 7 and budget.waiting == 0
        budget.release(7)
        await budget.acquire(25)  # nothing held: a batch over the whole budget is admitted
        assert budget.used == 25
        budget.release(25)
        assert budget.used == 0

    asyncio.run(scenario())



# ---- a link's session ------------------------------------------------------------------------------------


def _live_batches() -> list[int]:
    """Batch ids of every received batch still alive in this process (a Batch, or a LinkMessage carrying one)."""
    gc.collect()
    ids = [o.batch_id for o in gc.get_objects() if type(o) is pb.Batch]
    ids += [o.batch.batch_id for o in gc.get_objects() if type(o) is pb.LinkMessage and o.HasField("batch")]
    return sorted(i for i in ids if i)


def test_a_link_keeps_no_batch_it_has_applied_while_it_waits_for_the_next(tmp_path: Path) -> None:
    """The budget counts everything a link holds: once a batch is applied and its bytes are given back,
    the session lets it go. Left in the read loop's frame, every link's last batch stayed alive while it
    waited for its next message, outside the budget (with 50 children, ~50 decoded batches of ~1.8 MB
    at the city's peak)."""
    from node.runtime.process import LinkState, NodeRuntime

    tree = Tree(tmp_path)
    n = 4

    async def run() -> list[list[int]]:
        rt = NodeRuntime(tree.city)
        acks: list[int] = []
        held: list[list[int]] = []
        sent = 0

        async def read() -> Any:
            nonlocal sent
            if sent:
                async with asyncio.timeout(30):
                    while len(acks) < sent:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # the apply loop has given the bytes back and waits again
                held.append(_live_batches())
            if sent == n:
                return grpc.aio.EOF
            sent += 1
            return pb.LinkMessage(batch=pb.Batch(batch_id=sent))

        async def write(msg: pb.LinkMessage) -> None:
            acks.append(msg.ack.batch_id)

        session = transport.Session(rt, LinkState(COUNTY, "down"), read, write)
        try:
            with pytest.raises(ConnectionError, match="closed the link"):
                await session._reader()
        finally:
            rt._executor.shutdown(wait=True)
            rt._bg_executor.shutdown(wait=True)
        assert acks == list(range(1, n + 1))
        assert session.budget.used == 0
        return held

    try:
        held = asyncio.run(run())
    finally:
        tree.close()
    print(f"\n  batches alive while the link waited for message 2..{n + 1}: {held}")
    assert held == [[]] * n, f"applied batches still alive while the link waited for the next message: {held}"

# ---- real processes ----------------------------------------------------------------------------------------


def flood_batches(home: Home, count: int, size: int) -> list[pb.Batch]:
    h = Home(home.dir)
    try:
        ledger = h.ledger()
        out, after = [], 0
        for i in range(count):
            seg = ledger.read_segment(home.code, BULK, after, size)
            assert seg is not None and seg.records
            after += len(seg.records)
            out.append(pb.Batch(batch_id=i + 1, segments=[seg],
                                keys=ledger.key_certificates_for([seg.checkpoint.key_id])))
        return out
    finally:
        h.close()


async def flood(cl: Cluster, batches: list[pb.Batch], while_flooding: Any, most: int = 400) -> tuple[int, int, Any]:
    """Speak for the county as an old child (plain batches): write batches (``batches`` over and over:
    the repeats are duplicates at the city) without waiting for acks, not keeping to any window, until
    ``while_flooding(acked)`` returns (or ``most`` were written); returns the batches written, the acks
    received and what ``while_flooding`` returned."""
    county = cl.homes[COUNTY]
    async with channel_to(cl, CITY, credentials_of(county)) as ch:
        call = pbg.FederationStub(ch).Link(timeout=300)
        await call.write(pb.LinkMessage(hello=pb.Hello(node_code=COUNTY, software="flood")))
        reply = await asyncio.wait_for(call.read(), 30)
        assert reply is not grpc.aio.EOF and reply.HasField("hello")

        stop = asyncio.Event()
        sent = acks = 0

        async def write_all() -> None:
            nonlocal sent
            while not stop.is_set() and sent < most:
                b = pb.Batch()
                b.CopyFrom(batches[sent % len(batches)])
                b.batch_id = sent + 1
                await call.write(pb.LinkMessage(batch=b))
                sent += 1

        async def read_acks() -> None:
            nonlocal acks
            while not (stop.is_set() and acks >= sent) and acks < most:
                msg = await call.read()
                assert msg is not grpc.aio.EOF, "the city ended the flooding link"
                if msg.HasField("ack"):
                    assert msg.ack.ok, msg.ack
                    acks += 1

        writer, reader = asyncio.create_task(write_all()), asyncio.create_task(read_acks())
        try:
            result = await while_flooding(lambda: (sent, acks))
        finally:
            stop.set()
        await asyncio.wait_for(asyncio.gather(writer, reader), 240)
        await call.done_writing()
        return sent, acks, result


@pytest.mark.slow
def test_a_flooding_child_is_held_to_the_node_budget_and_the_other_child_is_applied_meanwhile(tmp_path: Path) -> None:
    with Cluster(tmp_path, TREE[:4]) as cl:
        city = cl.homes[CITY]
        config_mod.set_field(city.config.path, "link", "receive_budget_mb", 1)
        config_mod.set_field(city.config.path, "link", "compression", "none")  # budget counts plain batches here
        offline_ingest(cl.homes[COUNTY], 24_000, seed=1)
        batches = flood_batches(cl.homes[COUNTY], 6, 4000)
        biggest = max(b.ByteSize() for b in batches)
        total = sum(len(b.segments[0].records) for b in batches)
        cl.start(PROVINCE, CITY, OTHER)
        wait_for(lambda: any(ln["peer"] == OTHER and ln["state"] == "connected" for ln in cl.status(CITY)["links"]),
                 60, lambda: f"{OTHER} linked to the city")

        async def other_child(acked: Any) -> dict[str, Any]:
            await asyncio.sleep(0.5)  # the flood is under way: the budget is exhausted
            before = await asyncio.to_thread(cl.status, CITY)
            await asyncio.to_thread(cl.ingest, OTHER, 300, 2)
            other = heads_of(cl.homes[OTHER], OTHER)
            await asyncio.to_thread(wait_for, lambda: heads_of(city, OTHER) == other, 60,
                                    lambda: f"{OTHER}'s records at the city while the flood goes on (flood "
                                            f"written/acked {acked()}, {cl.status(CITY)['receive_budget']})")
            return {"flood_when_other_applied": acked(), "budget_before": before["receive_budget"]}

        sent, acks, got = asyncio.run(flood(cl, batches, other_child))
        budget = cl.status(CITY)["receive_budget"]
        print(f"\nflood: {sent} batches of ~{biggest:,} B with a {budget['capacity_bytes']:,} B budget; "
              f"while flooding {got['budget_before']}; after {budget}; {OTHER} applied when the flood had "
              f"written/acked {got['flood_when_other_applied']}")
        assert acks == sent
        assert heads_of(city, COUNTY)[(COUNTY, BULK)][0] == total
        # the flood was held back, and what the city held never went past one batch of it (not a window of them)
        assert budget["held_back"] >= 1, budget
        assert budget["peak_bytes"] <= max(budget["capacity_bytes"], biggest) + 64 * 1024, budget
        assert budget["used_bytes"] == 0 and budget["waiting_links"] == 0, budget
        # the other child was not starved: its records were applied before the flood ended
        assert got["budget_before"]["used_bytes"] > 0, got  # the flood held the budget when the other came
        written, acked = got["flood_when_other_applied"]
        assert acked < written < 400, got  # the flood was still going on (batches in flight, unapplied)
        wait_same_heads(cl.homes[PROVINCE], cl.homes[OTHER], OTHER)
        assert incidents_of(city) == []
