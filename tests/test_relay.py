"""The relay cache (node/streams.py RelayCache): a city forwards what its child just sent without reading
it back, and what it forwards is exactly what reading the store would have sent."""

from __future__ import annotations

from node.core.records import BULK
from node.link.protocol import LOG, Want
from node.link.streams import HeldBatch, RelayCache, apply_batch, read_batch
from tests.conftest import Tree
from tests.test_reconcile import fill


def _segments_bytes(batch: object) -> list[bytes]:
    return [s.SerializeToString() for s in batch.segments]  # type: ignore[attr-defined]


def test_city_forwards_the_childs_segments_as_the_store_would_send_them(tree: Tree) -> None:
    county, city, province = tree.county.ledger(), tree.city.ledger(), tree.province.ledger()
    fill(county, 2600)  # checkpoints every 500 records and at the end: segments cut there
    relay = RelayCache()
    after = 0
    while True:
        batch, parts = read_batch(county, [Want((LOG, "320303", BULK), after, 1000)], "320300")
        if not parts:
            break
        ack = apply_batch(city, batch, peer="320303", from_child=True, relay=relay)
        assert ack.ok, ack.error
        after = parts[-1].last
    assert after == 2600

    up_after = 0
    while up_after < 2600:
        want = [Want((LOG, "320303", BULK), up_after, 1000)]
        from_store, parts_store = read_batch(city, want, "320000")
        hits = relay.hits
        relayed, parts_relay = read_batch(city, want, "320000", relay)
        assert relay.hits == hits + 1, "every segment the county sent starts where the uplink's cursor is"
        assert _segments_bytes(relayed) == _segments_bytes(from_store)
        assert parts_relay == parts_store
        ack = apply_batch(province, relayed, peer="320300", from_child=True)
        assert ack.ok, ack.error
        up_after = parts_relay[-1].last
    assert province.store.head("320303", BULK).seq == 2600
    # each entry is used once: a second read (say after an error ack rewound the cursor) reads the store
    again, _ = read_batch(city, [Want((LOG, "320303", BULK), 0, 1000)], "320000", relay)
    assert relay.hits == hits + 1
    assert again.segments[0].records[0].body == city.store.bodies("320303", BULK, 1, 1)[0][0]


def test_resent_segments_are_not_relayed_oversized_ones_are_whole(tree: Tree) -> None:
    county, city = tree.county.ledger(), tree.city.ledger()
    fill(county, 400)
    relay = RelayCache()
    batch, _ = read_batch(county, [Want((LOG, "320303", BULK), 0, 1000)], "320300")
    assert apply_batch(city, batch, peer="320303", from_child=True, relay=relay).ok
    # the same batch again (a resend after a lost ack): nothing new, so nothing is cached for it twice
    relay2 = RelayCache()
    assert apply_batch(city, batch, peer="320303", from_child=True, relay=relay2).ok
    assert relay2.take("320303", BULK, 0, 1000) is None
    # an entry longer than the uplink's budget goes whole: the store holds no checkpoint inside a segment
    # that was wholly new here, so reading it would cut the same records at the same checkpoint
    # (refusing it made every later entry of that log miss, a cost per child in a fan-in)
    from_store = city.read_segment("320303", BULK, 0, 100)
    got = relay.take("320303", BULK, 0, 100)
    assert got is not None and from_store is not None and relay.hits == 1
    assert got.SerializeToString() == from_store.SerializeToString()


def test_the_cache_is_bounded_in_bytes_and_keeps_what_the_uplink_reaches_first() -> None:
    """Full, it refuses new entries: the old ones are where a lagging uplink's cursors are (evicting them for
    newer ones threw batches away unused). An entry the cursor went past goes at that log's next take."""
    from proto.fednode.v1 import fednode_pb2 as pb

    def seg(origin: str) -> pb.Segment:
        return pb.Segment(origin=origin, channel=BULK, records=[pb.SignedRecord(body=b"x")] * 2)  # type: ignore[arg-type]

    relay = RelayCache(max_bytes=1000)
    for i in range(10):
        relay.put(seg("320303"), i * 2, HeldBatch(300))
    assert relay.bytes == 900 and relay.refused == 7
    assert relay.take("320303", BULK, 0, 10) is not None  # the oldest is kept: the uplink's next
    relay.put(seg("320311"), 0, HeldBatch(300))  # room again
    assert relay.bytes == 900
    # the uplink read 320303 from the store past the entry at 2 (its cursor is at 4): that one can never be used
    assert relay.take("320303", BULK, 4, 10) is not None
    assert relay.passed == 1 and relay.bytes == 300 and ("320303", BULK, 2) not in relay._segments
    assert relay.status() == {"segments": 1, "bytes": 300, "max_bytes": 1000, "hits": 2, "refused": 7, "passed": 1}
    relay.forwarded("320311", BULK, 1)  # the uplink read 320311 from the store past its entry
    assert relay.bytes == 0 and relay.passed == 2
    # a batch bigger than the whole cache still goes in when nothing is held
    empty = RelayCache(max_bytes=100)
    empty.put(seg("320303"), 0, HeldBatch(500))
    assert empty.bytes == 500 and empty.take("320303", BULK, 0, 10) is not None


def test_a_batch_counts_once_while_any_of_its_segments_is_cached() -> None:
    """A cached segment keeps its whole parsed batch alive (upb: one arena per parsed message), so the cache
    counts the batch, once, until the last of its segments leaves."""
    from proto.fednode.v1 import fednode_pb2 as pb

    relay = RelayCache(max_bytes=10_000)
    held = HeldBatch(4000)
    for after in (0, 100):
        relay.put(pb.Segment(origin="320303", channel=BULK), after, held)  # type: ignore[arg-type]
    assert relay.bytes == 4000
    assert relay.take("320303", BULK, 0, 10) is not None and relay.bytes == 4000
    assert relay.take("320303", BULK, 100, 10) is not None and relay.bytes == 0


def test_a_relay_holds_at_most_its_byte_budget_of_received_batches(tree: Tree) -> None:
    """Applied with the sizes they were received at, a child's batches are cached up to the budget and
    no further (the first ones: the uplink reaches them first), whatever the window and batch size (bounded by records, 2 x window x batch records,
    the cache held ~20 MB at a 50-child city beside its 8 MB receive budget)."""
    county, city = tree.county.ledger(), tree.city.ledger()
    fill(county, 3000)  # checkpoints every 500 records: six segments of 500, one per batch
    batches, after = [], 0
    while after < 3000:
        batch, parts = read_batch(county, [Want((LOG, "320303", BULK), after, 500)], "320300")
        batches.append(batch)
        after = parts[-1].last
    sizes = [b.ByteSize() for b in batches]
    budget = 2 * max(sizes) + max(sizes) // 2  # room for two batches
    relay = RelayCache(max_bytes=budget)
    for batch, size in zip(batches, sizes, strict=True):
        assert apply_batch(city, batch, peer="320303", from_child=True, relay=relay, size=size).ok
        assert relay.bytes <= budget
    kept = [a for a in range(0, 3000, 500) if ("320303", BULK, a) in relay._segments]
    assert kept == [0, 500] and relay.bytes == sum(sizes[:2]) and relay.refused == 4


def test_a_batch_read_into_a_message_is_the_batch_read_alone(tree: Tree) -> None:
    """``read_batch(into=LinkMessage().batch)`` fills the message in place (no copy of every record when
    it is sent) with exactly the batch a plain read gives, a segment read straight into it included."""
    from proto.fednode.v1 import fednode_pb2 as pb

    county = tree.county.ledger()
    fill(county, 1200)
    wants = [Want((LOG, "320303", BULK), 0, 1000), Want((LOG, "320303", BULK), 1000, 1000)]
    alone, parts = read_batch(county, wants, "320300")
    msg = pb.LinkMessage()
    into, parts2 = read_batch(county, wants, "320300", into=msg.batch)
    assert into is msg.batch or into == msg.batch
    assert msg.batch.SerializeToString() == alone.SerializeToString() and parts2 == parts
    assert [len(s.records) for s in msg.batch.segments] == [1000, 200]
