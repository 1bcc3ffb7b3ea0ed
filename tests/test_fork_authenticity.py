"""A fork incident only from authenticated data (the security suite's fuzzed frame, seed 1803375805).

A fork (a different record at a seq already held) is a red integrity incident with the conflicting bytes
as evidence, so it must be something the origin's key really signed: the records must hash, from the
chain held before them, to the chain of the segment's signed checkpoint. A segment that carries a valid
checkpoint over records of which one was altered (one byte of a replayed frame overwritten: the fuzzer
did exactly this, on the kind of record 1 of a batch the city already held) is a chain mismatch, refused
with nothing recorded; a validly signed different history is still a fork.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.core.errors import ChainMismatch, ForkDetected
from node.core.ledger import Ledger
from node.core.records import BULK
from node.core.store import Store
from proto.fednode.v1 import fednode_pb2 as pb
from tests.conftest import Tree
from tests.test_store import case_events

COUNTY = "320303"


@pytest.fixture
def city(store_url: str, tree: Tree) -> Iterator[Ledger]:
    """The city's ledger on the parametrised store, holding the county's key."""
    store = Store.open(store_url)
    ledger = Ledger(store, "320300", None, tree.province.root())
    county = tree.county.ledger()
    ledger.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    yield ledger
    store.close()


def altered(seg: pb.Segment, index: int) -> pb.Segment:
    """The segment with one byte of one record's kind overwritten; its signed checkpoint untouched."""
    bad = pb.Segment()
    bad.CopyFrom(seg)
    body = pb.RecordBody.FromString(bad.records[index].body)
    body.kind = "\x00" + body.kind[1:]
    bad.records[index].body = body.SerializeToString()
    return bad


def accept(city: Ledger, seg: pb.Segment) -> Exception | None:
    """Through the link's path (node/streams.py apply_batch → Ledger.accept_many)."""
    _, errors = city.accept_many([seg], sender_subtree=COUNTY, source=f"link:{COUNTY}")
    return errors.get((seg.origin, int(seg.channel)))


@pytest.mark.parametrize("held, index", [(60, 0), (60, 59), (20, 4)], ids=["first", "last", "held-then-new"])
def test_altered_record_under_a_valid_checkpoint_is_no_fork(tree: Tree, city: Ledger, held: int, index: int) -> None:
    county = tree.county.ledger()
    county.append(case_events(held))
    assert accept(city, county.read_segment(COUNTY, BULK, 0, 1000)) is None  # type: ignore[arg-type]
    county.append(case_events(60 - held, 1000))
    seg = county.read_segment(COUNTY, BULK, 0, 1000)
    assert seg is not None and len(seg.records) == 60
    err = accept(city, altered(seg, index))
    assert isinstance(err, ChainMismatch), err
    assert city.store.incidents() == [], "unauthenticated bytes were recorded as a fork"
    assert city.store.head(COUNTY, BULK).seq == held
    # the genuine segment still goes through
    assert accept(city, seg) is None and city.store.head(COUNTY, BULK).seq == 60


def test_validly_signed_different_history_is_still_a_fork(tree: Tree, city: Ledger, tmp_path: Path) -> None:
    county = tree.county.ledger()
    county.append(case_events(10))
    county.append(case_events(20, 10))
    assert accept(city, county.read_segment(COUNTY, BULK, 0, 1000)) is None  # type: ignore[arg-type]
    # the county restored from an empty backup, signing a different history with the same key
    twin = Ledger(Store.open(f"sqlite:///{tmp_path / 'twin.db'}"), COUNTY, county.signer, tree.province.root())
    twin.admit_keys(county.key_certificates_for([county.signer.key_id]))  # type: ignore[union-attr]
    # it recovered the first ten records (up to a checkpoint) before appending: the histories part at 11
    assert twin.accept_segment(county.read_segment(COUNTY, BULK, 0, 10)).appended == 10  # type: ignore[arg-type]
    twin.append(case_events(25, 5000))
    forked = twin.read_segment(COUNTY, BULK, 0, 1000)
    assert forked is not None
    err = accept(city, forked)
    assert isinstance(err, ForkDetected) and err.seq == 11, err
    incidents = city.store.incidents()
    assert [(i.kind, i.seq) for i in incidents] == [("fork", 11)]
    assert pb.SignedRecord.FromString(incidents[0].evidence).body == forked.records[10].body
    assert city.store.head(COUNTY, BULK).seq == 30
