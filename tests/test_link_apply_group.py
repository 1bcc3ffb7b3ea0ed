"""Batches of one link applied together (node/link/streams.py ``apply_batches``, one transaction for the
queued batches ``protocol.next_group`` picks): each batch gets its own ack, what is committed is what
applying them one after the other commits, and a bad batch in a group refuses only what it refuses
alone (nothing lost, nothing applied twice)."""

from __future__ import annotations

from node.core.records import BULK
from node.link.protocol import LOG, Want
from node.link.streams import RelayCache, apply_batch, apply_batches, read_batch
from tests.conftest import Tree
from tests.test_reconcile import fill


def _batches(county: object, total: int, per: int) -> list:
    out, after = [], 0
    while after < total:
        batch, parts = read_batch(county, [Want((LOG, "320303", BULK), after, per)], "320300")  # type: ignore[arg-type]
        batch.batch_id = len(out) + 1
        out.append(batch)
        after = parts[-1].last
    return out


def test_a_group_commits_what_one_batch_after_the_other_commits_with_one_ack_each(tree: Tree) -> None:
    county, city, other = tree.county.ledger(), tree.city.ledger(), tree.other.ledger()
    fill(county, 1500)  # checkpoints every 500 records: three batches of one log
    batches = _batches(county, 1500, 500)
    assert len(batches) == 3
    relay = RelayCache()
    acks = apply_batches(city, batches, peer="320303", from_child=True, relay=relay)
    assert [a.batch_id for a in acks] == [1, 2, 3] and all(a.ok for a in acks), acks
    assert [a.heads[0].seq for a in acks][-1] == 1500 and all(a.heads[0].seq >= 500 * (i + 1) for i, a in enumerate(acks))
    assert city.store.head("320303", BULK).seq == 1500
    # each wholly new segment is there for the uplink, at its own start
    assert [relay.take("320303", BULK, after, 1000) is not None for after in (0, 500, 1000)] == [True] * 3
    # the same group again (the acks were lost): nothing applied twice, every ack still ok
    again = apply_batches(city, batches, peer="320303", from_child=True)
    assert all(a.ok for a in again) and city.store.head("320303", BULK).seq == 1500
    assert len(city.store.bodies("320303", BULK, 1, 1500)) == 1500
    # what the group committed is byte for byte what one batch after the other commits
    for b in batches:
        assert apply_batch(other, b, peer="320303", from_child=True).ok
    assert city.store.head("320303", BULK) == other.store.head("320303", BULK)


def test_a_tampered_batch_in_a_group_refuses_itself_and_what_follows_on_its_log_only(tree: Tree) -> None:
    county, city = tree.county.ledger(), tree.city.ledger()
    fill(county, 1500)
    batches = _batches(county, 1500, 500)
    body = bytearray(batches[1].segments[0].records[7].body)
    body[-2] ^= 1  # a byte the checkpoint's chain covers
    batches[1].segments[0].records[7].body = bytes(body)
    relay = RelayCache()
    acks = apply_batches(city, batches, peer="320303", from_child=True, relay=relay)
    assert acks[0].ok and not acks[1].ok and not acks[2].ok
    assert acks[1].errors[0].error_code == "chain_mismatch", acks[1]
    assert acks[2].errors[0].error_code == "missing_record", acks[2]  # its records start after a gap
    # the first batch is committed, nothing of the altered one or after it
    assert city.store.head("320303", BULK).seq == 500
    assert relay.take("320303", BULK, 0, 1000) is not None and relay.take("320303", BULK, 500, 1000) is None
    # the sender resends from the acked head, the good bytes: all of it arrives once
    good = _batches(county, 1500, 500)
    assert all(a.ok for a in apply_batches(city, good[1:], peer="320303", from_child=True))
    assert city.store.head("320303", BULK).seq == 1500
