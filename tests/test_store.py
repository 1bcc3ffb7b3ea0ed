"""The signed log and the store invariants, on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from node.app import enrol
from node.core import schema
from node.core.crypto import Signer
from node.core.errors import (
    BadSignature,
    ChainMismatch,
    ForkDetected,
    KeyNotForOrigin,
    MissingRecord,
    OutOfOrder,
    OutsideSubtree,
    RevokedKey,
    UnknownKey,
)
from node.core.integrity import verify_store
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK, CONTROL, MONITOR, parse_body
from node.core.store import Store
from proto.fednode.v1 import fednode_pb2 as pb
from tests.conftest import Tree


def case_events(n: int, start: int = 0) -> list[NewRecord]:
    return [NewRecord("case.step", {"case_no": f"C{start + i:06d}", "step_no": 1, "note": "x" * 40}) for i in range(n)]


@pytest.fixture
def receiver(store_url: str, tree: Tree) -> Iterator[Ledger]:
    """A city-side ledger on the parametrised store, receiving from the county of ``tree``."""
    store = Store.open(store_url)
    ledger = Ledger(store, "320300", None, tree.province.root())
    yield ledger
    store.close()


def ship(sender: Ledger, receiver: Ledger, channel: int = BULK, max_records: int = 1000) -> int:
    """Send everything the receiver lacks of the sender's own log, segment by segment."""
    receiver.admit_keys(sender.key_certificates_for(k.key_id for k in sender.keyring.keys.values()))
    n = 0
    while True:
        have = receiver.store.head(sender.code, channel).seq
        seg = sender.read_segment(sender.code, channel, have, max_records)
        if seg is None:
            return n
        n += receiver.accept_segment(seg, sender_subtree="320303").appended


def test_append_ship_and_verify(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    county.append(case_events(1234))
    county.append([NewRecord("alert", {"alert_id": "a1", "level": 3})])
    assert ship(county, receiver) == 1234
    assert ship(county, receiver, MONITOR) == 1
    assert ship(county, receiver, CONTROL) == 1  # the key announcement
    heads = receiver.store.heads()
    assert heads[("320303", BULK)] == county.store.head("320303", BULK)
    report = verify_store(receiver.store, receiver.keyring)
    assert report.ok, report.problems
    assert report.records == 1236


def _segment(county: Ledger, n: int = 50) -> pb.Segment:
    county.append(case_events(n))
    seg = county.read_segment("320303", BULK, 0, 1000)
    assert seg is not None and len(seg.records) == n
    return seg


def test_flipped_byte_in_any_body_is_refused(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county, 40)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    for index in range(len(seg.records)):
        bad = pb.Segment()
        bad.CopyFrom(seg)
        body = bytearray(bad.records[index].body)
        payload_at = bytes(body).index(b"C0")  # inside the payload, so the body still parses
        body[payload_at + random.randrange(6)] ^= 0x01
        bad.records[index].body = bytes(body)
        with pytest.raises(ChainMismatch):
            receiver.accept_segment(bad)
    assert receiver.store.head("320303", BULK).seq == 0
    assert receiver.accept_segment(seg).appended == 40


def test_missing_record_is_refused(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    bad = pb.Segment()
    bad.CopyFrom(seg)
    del bad.records[17]
    with pytest.raises(MissingRecord) as e:
        receiver.accept_segment(bad)
    assert e.value.seq == 18
    # a segment that starts after the receiver's head is a gap too
    later = county.read_segment("320303", BULK, 0, 1000)
    county.append(case_events(10, 100))
    tail = county.read_segment("320303", BULK, 50, 1000)
    assert later is not None and tail is not None
    with pytest.raises(MissingRecord):
        receiver.accept_segment(tail)


def test_reordered_pair_is_refused(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    bad = pb.Segment()
    bad.CopyFrom(seg)
    a, b = pb.SignedRecord(), pb.SignedRecord()
    a.CopyFrom(bad.records[10])
    b.CopyFrom(bad.records[11])
    bad.records[10].CopyFrom(b)
    bad.records[11].CopyFrom(a)
    with pytest.raises(OutOfOrder):
        receiver.accept_segment(bad)


def test_unknown_key_is_refused(tree: Tree, receiver: Ledger) -> None:
    seg = _segment(tree.county.ledger())
    with pytest.raises(UnknownKey):  # the receiver never got the county's key certificate
        receiver.accept_segment(seg)


def test_forged_checkpoint_is_refused(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    # an attacker without the key rewrites a body and signs a checkpoint over the new chain with its own key
    bad = pb.Segment()
    bad.CopyFrom(seg)
    cpb = pb.CheckpointBody.FromString(bad.checkpoint.body)
    cpb.chain = bytes(32)
    forged_body = cpb.SerializeToString()
    bad.checkpoint.body = forged_body
    bad.checkpoint.signature = Signer.generate().sign(b"fednode/checkpoint/v1", forged_body)
    with pytest.raises(BadSignature):
        receiver.accept_segment(bad)


def test_key_of_another_node_is_refused(tree: Tree, receiver: Ledger) -> None:
    """320311's valid key signing a checkpoint for 320303's log."""
    county, other = tree.county.ledger(), tree.other.ledger()
    seg = _segment(county)
    receiver.admit_keys(other.key_certificates_for([other.signer.key_id]))  # type: ignore[union-attr]
    cpb = pb.CheckpointBody.FromString(seg.checkpoint.body)
    cpb.key_id = other.signer.key_id  # type: ignore[union-attr]
    body = cpb.SerializeToString()
    seg.checkpoint.body = body
    seg.checkpoint.key_id = cpb.key_id
    seg.checkpoint.signature = other.signer.sign(b"fednode/checkpoint/v1", body)  # type: ignore[union-attr]
    with pytest.raises(KeyNotForOrigin):
        receiver.accept_segment(seg)


def test_origin_outside_sender_subtree_is_refused(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    with pytest.raises(OutsideSubtree):
        receiver.accept_segment(seg, sender_subtree="320311")


def test_revoked_key_is_refused(tree: Tree, receiver: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    county = tree.county.ledger()
    old_key = county.signer.key_id  # type: ignore[union-attr]
    old_signer = county.signer
    receiver.admit_keys(county.key_certificates_for([old_key]))
    seg_before = _segment(county, 10)
    enrol.rotate(tree.county)
    county = tree.county.ledger()
    county.revoke_key(old_key, "key file leaked")
    assert ship(county, receiver, CONTROL) == 3  # announce, announce of the new key, revoke
    info = receiver.keyring.keys[old_key]
    assert info.revoked_us is not None and info.revoked_through == {CONTROL: 2, MONITOR: 0, BULK: 10}
    # what the old key signed before the revocation still verifies
    assert receiver.accept_segment(seg_before).appended == 10
    # the holder of the leaked key signs records 11..15, with a checkpoint backdated before the revocation:
    # refused, because revocation is by position, not by the time the signer writes
    forger = Ledger(Store.open(f"sqlite:///{tmp_path / 'forger.db'}"), "320303", old_signer, tree.province.root())
    forger.admit_keys(county.key_certificates_for([old_key]))
    forger.append(case_events(15, 900))
    forged = forger.read_segment("320303", BULK, 10, 1000)
    assert forged is not None
    cpb = pb.CheckpointBody.FromString(forged.checkpoint.body)
    cpb.time_us = info.revoked_us - 3_600_000_000  # type: ignore[operator]
    body = cpb.SerializeToString()
    forged.checkpoint.body = body
    forged.checkpoint.signature = old_signer.sign(b"fednode/checkpoint/v1", body)  # type: ignore[union-attr]
    with pytest.raises(RevokedKey):
        receiver.accept_segment(forged)
    assert receiver.store.head("320303", BULK).seq == 10
    # the revocation persists in the store (a restart keeps it)
    again = Ledger(receiver.store, "320300", None, tree.province.root())
    assert again.keyring.keys[old_key].revoked_through == {CONTROL: 2, MONITOR: 0, BULK: 10}


def test_same_record_twice_is_a_noop(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    seg = _segment(county, 30)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    first = receiver.accept_segment(seg)
    second = receiver.accept_segment(seg)
    assert (first.appended, first.duplicates) == (30, 0)
    assert (second.appended, second.duplicates) == (0, 30)
    assert receiver.store.count("records") == 30


def test_different_record_at_same_seq_is_a_fork_never_an_overwrite(tree: Tree, receiver: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    county = tree.county.ledger()
    seg = _segment(county, 20)
    receiver.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    receiver.accept_segment(seg)
    stored = [bytes(r.body) for r in receiver.store.records("320303", BULK)]
    # the county is restored from an old backup (empty) and appends different records: same seqs
    twin = Ledger(Store.open(f"sqlite:///{tmp_path / 'twin.db'}"), "320303", county.signer, tree.province.root())
    twin.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    twin.append(case_events(25, 5000))
    forked = twin.read_segment("320303", BULK, 0, 1000)
    assert forked is not None
    with pytest.raises(ForkDetected) as e:
        receiver.accept_segment(forked)
    assert e.value.seq == 1
    assert [bytes(r.body) for r in receiver.store.records("320303", BULK)] == stored
    incidents = receiver.store.incidents()
    assert len(incidents) == 1 and incidents[0].kind == "fork" and incidents[0].seq == 1
    evidence = pb.SignedRecord.FromString(incidents[0].evidence)
    assert evidence.body == forked.records[0].body


def test_rotation_old_records_verify_new_ones_carry_new_key(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    county.append([NewRecord("alert", {"alert_id": f"a{i}", "level": 1}) for i in range(5)])
    old, new = enrol.rotate(tree.county)
    county = tree.county.ledger()
    county.append([NewRecord("alert", {"alert_id": f"b{i}", "level": 2}) for i in range(5)])
    monitor = county.store.records("320303", MONITOR)
    assert {bytes(r.key_id) for r in monitor[:5]} == {old}
    assert {bytes(r.key_id) for r in monitor[5:]} == {new}
    for channel in (CONTROL, MONITOR):
        ship(county, receiver, channel)
    report = verify_store(receiver.store, receiver.keyring)
    assert report.ok, report.problems
    assert verify_store(county.store, county.keyring).ok


def test_at_rest_tamper_is_named_by_verify(tree: Tree, receiver: Ledger) -> None:
    county = tree.county.ledger()
    county.append(case_events(300))
    ship(county, receiver)
    body = bytes(receiver.store.records("320303", BULK, 123, 123)[0].body)
    i = body.index(b"C0")
    tampered = body[:i] + b"X" + body[i + 1 :]
    with receiver.store.write() as tx:
        tx.conn.execute(
            update(schema.records)
            .where((schema.records.c.origin == "320303") & (schema.records.c.seq == 123))
            .values(body=tampered)
        )
    report = verify_store(receiver.store, receiver.keyring)
    assert not report.ok
    assert report.problems[0]["code"] == "chain_mismatch"
    assert report.problems[0]["origin"] == "320303" and report.problems[0]["seq"] == "123"


def test_store_refuses_gap_and_wrong_chain_directly(store_url: str) -> None:
    """The invariants hold in the store itself, whoever calls it."""
    from node.core.store import Row

    store = Store.open(store_url)
    try:
        row = Row(2, b"x", b"", b"", "k", "", 1)
        with pytest.raises(MissingRecord), store.write() as tx:
            tx.append("320303", BULK, [row])
        with pytest.raises(ChainMismatch), store.write() as tx:
            tx.append("320303", BULK, [Row(1, b"x", b"", b"", "k", "", 1)], expected_chain=bytes(32))
        assert store.head("320303", BULK).seq == 0
        assert parse_body  # imported for the module's users
    finally:
        store.close()
