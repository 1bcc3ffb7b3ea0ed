"""Property-based tests (hypothesis, stateful) of the signed logs, on SQLite and on the real PostgreSQL.

A state machine drives a freshly enrolled county 320303 (sender, its own home) and a city-side
receiver ledger through random sequences of:

- appends on the three channels in one transaction, 1..700 records per channel (so the checkpoint
  every 500 records is crossed often);
- shipping segments to the receiver with random max batch sizes, one segment per transaction or
  several in one (``accept_segments``), sometimes stopping part-way;
- key rotations (``node.enrol.rotate`` on the county home) and revocations of retired keys;
- duplicate re-sends of already shipped segments, re-sends that overlap the receiver's head, direct
  re-appends of stored rows to the store, and a different record at a held seq (a fork);
- at-rest verification (``node.integrity.verify_store``) of both stores.

Invariants checked: the receiver's heads equal the sender's after a full shipment; every store
verifies; appends are idempotent (and a different record is a fork, never an overwrite); checkpoints
fall every 500 records and at the end of each append, so no segment exceeds max(batch, 500); each
record carries the key id that was current when it was appended (bulk records, which carry no
signature of their own, are covered by a checkpoint signed with that key).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import create_engine, text

from node.app import enrol
from node.core.errors import ForkDetected
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.ledger import CHECKPOINT_EVERY, Ledger, NewRecord
from node.core.records import BULK, CONTROL, MONITOR, SIGNED_CHANNELS, build_body
from node.core.store import Row, Store
from proto.fednode.v1 import fednode_pb2 as pb
from tests.conftest import PG_ADMIN_URL, _pg_admin_url, enrol_child

COUNTY = "320303"
CHANNELS = (CONTROL, MONITOR, BULK)
KIND = {CONTROL: "audit.note", MONITOR: "alert", BULK: "case.step"}


@pytest.fixture(scope="module")
def upper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, Home]]:
    """Province 320000 and city 320300, enrolled once; each example enrols a fresh county under them."""
    base = tmp_path_factory.mktemp("upper")
    province = enrol.init(base / "320000", code="320000", name="江苏省", level="province")
    enrol.init_root(province)
    city = enrol_child(province, base / "320300", "320300", "徐州市", "city")
    yield province, city
    province.close()
    city.close()


def _records(channel: int, n: int, tag: int) -> list[NewRecord]:
    kind = KIND[channel]
    return [NewRecord(kind, {"n": tag, "i": i, "note": "x" * (i % 50)}, channel=channel) for i in range(n)]


def _pg_create() -> str:
    name = f"fednode_p_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _pg_drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the machine broken while a rule runs, so teardown does not mask a rule's failure."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.broken = True
        out = fn(self, *args, **kwargs)
        self.broken = False
        return out

    return wrapper


def make_machine(province: Home, city: Home, backend: str) -> type[RuleBasedStateMachine]:
    root = province.root()

    class LogMachine(RuleBasedStateMachine):
        shipped = Bundle("shipped")

        def __init__(self) -> None:
            super().__init__()
            self.tmp = Path(tempfile.mkdtemp(prefix="fednode-prop-"))
            self.pg_urls: list[str] = []
            if backend == "postgres":
                self.pg_urls = [_pg_create(), _pg_create()]
                county_db, receiver_url = self.pg_urls
            else:
                county_db, receiver_url = "", f"sqlite:///{self.tmp / 'receiver.db'}"
            self.home = enrol_child(city, self.tmp / COUNTY, COUNTY, "云龙区", "county", db=county_db)
            self.sender = self.home.ledger()
            self.receiver = Ledger(Store.open(receiver_url), "320300", None, root)
            assert self.sender.signer is not None
            self.current = self.sender.signer.key_id
            # model: per channel, the key id current when each record (seq = index + 1) was appended
            self.keys: dict[int, list[bytes]] = {CONTROL: [self.current], MONITOR: [], BULK: []}
            self.retired: list[bytes] = []
            self.revoked: set[bytes] = set()
            self.tag = 0
            self.broken = False

        def teardown(self) -> None:
            try:
                if not self.broken:  # a failed rule has already reported
                    self.ship_everything_and_check()
            finally:
                self.receiver.store.close()
                self.home.close()
                shutil.rmtree(self.tmp, ignore_errors=True)
                for url in self.pg_urls:
                    _pg_drop(url)

        # -- helpers ------------------------------------------------------------------------------

        def head(self, ledger: Ledger, channel: int) -> int:
            return ledger.store.head(COUNTY, channel).seq

        def admit_sender_keys(self) -> None:
            self.receiver.admit_keys(self.sender.key_certificates_for(self.sender.keyring.keys))

        def segments(self, channel: int, after: int, max_records: int, limit: int | None) -> list[pb.Segment]:
            out: list[pb.Segment] = []
            while limit is None or len(out) < limit:
                seg = self.sender.read_segment(COUNTY, channel, after, max_records)
                if seg is None:
                    break
                cp = pb.CheckpointBody.FromString(seg.checkpoint.body)
                # a segment ends exactly at its checkpoint, and checkpoints fall at least every 500
                # records, so no segment is longer than the batch asked for or 500
                assert len(seg.records) == cp.seq - after
                assert len(seg.records) <= max(max_records, CHECKPOINT_EVERY), (len(seg.records), max_records)
                out.append(seg)
                after = cp.seq
            return out

        def ship_everything_and_check(self) -> None:
            self.admit_sender_keys()
            for channel in CHANNELS:
                for seg in self.segments(channel, self.head(self.receiver, channel), 1000, None):
                    self.receiver.accept_segment(seg, sender_subtree=COUNTY)
            assert self.receiver.store.heads() == self.sender.store.heads()
            self.check_verifies()
            self.check_key_ids()

        def check_verifies(self) -> None:
            for ledger in (self.sender, self.receiver):
                report = verify_store(ledger.store, ledger.keyring)
                assert report.ok, report.problems
                assert report.records == sum(self.head(ledger, ch) for ch in CHANNELS)

        def check_key_ids(self) -> None:
            for channel in CHANNELS:
                sent = self.sender.store.records(COUNTY, channel)
                assert [r.seq for r in sent] == list(range(1, len(self.keys[channel]) + 1))
                if channel in SIGNED_CHANNELS:
                    assert [bytes(r.key_id) for r in sent] == self.keys[channel]
                else:
                    assert {bytes(r.key_id) for r in sent} <= {b""}
                    # each bulk record is authenticated by the next checkpoint, made in the same append
                    cps = self.sender.store.checkpoints(COUNTY, channel)
                    i = 0
                    for seq, kid in enumerate(self.keys[channel], start=1):
                        while cps[i].seq < seq:
                            i += 1
                        assert cps[i].key_id == kid, f"bulk seq {seq}"
                        assert pb.CheckpointBody.FromString(cps[i].body).key_id == kid
                got = self.receiver.store.records(COUNTY, channel)
                assert [(r.seq, bytes(r.body), bytes(r.signature), bytes(r.key_id)) for r in got] == [
                    (r.seq, bytes(r.body), bytes(r.signature), bytes(r.key_id)) for r in sent[: len(got)]
                ]

        # -- rules ---------------------------------------------------------------------------------

        @rule(sizes=st.dictionaries(st.sampled_from(CHANNELS), st.integers(1, 700), min_size=1, max_size=3))
        @step
        def append(self, sizes: dict[int, int]) -> None:
            self.tag += 1
            before = {ch: self.head(self.sender, ch) for ch in sizes}
            items = [r for ch, n in sorted(sizes.items()) for r in _records(ch, n, self.tag)]
            results = self.sender.append(items)
            assert set(results) == set(sizes)
            for ch, n in sizes.items():
                res = results[ch]
                h = before[ch]
                assert (res.appended, res.duplicates, res.head.seq) == (n, 0, h + n)
                expected_cps = sorted({h + k for k in range(CHECKPOINT_EVERY, n + 1, CHECKPOINT_EVERY)} | {h + n})
                assert [c.seq for c in res.checkpoints] == expected_cps
                assert {c.key_id for c in res.checkpoints} == {self.current}
                self.keys[ch].extend([self.current] * n)

        @rule()
        @step
        def rotate(self) -> None:
            old, new = enrol.rotate(self.home)
            assert old == self.current and new != old
            self.sender = self.home.ledger()
            assert self.sender.signer is not None and self.sender.signer.key_id == new
            self.retired.append(old)
            self.current = new
            self.keys[CONTROL].append(new)  # the key.announce of the new key, signed by it

        @precondition(lambda self: any(k not in self.revoked for k in self.retired))
        @rule(data=st.data())
        @step
        def revoke_retired_key(self, data: st.DataObject) -> None:
            kid = data.draw(st.sampled_from([k for k in self.retired if k not in self.revoked]))
            self.sender.revoke_key(kid, "retired by the property test")
            self.revoked.add(kid)
            self.keys[CONTROL].append(self.current)

        @rule(
            target=shipped,
            channel=st.sampled_from(CHANNELS),
            max_records=st.integers(1, 1500),
            limit=st.none() | st.integers(1, 3),
            together=st.booleans(),
        )
        @step
        def ship(self, channel: int, max_records: int, limit: int | None, together: bool) -> Any:
            self.admit_sender_keys()
            start = self.head(self.receiver, channel)
            segs = self.segments(channel, start, max_records, limit)
            if together:
                results = self.receiver.accept_segments(segs, sender_subtree=COUNTY) if segs else []
            else:
                results = [self.receiver.accept_segment(s, sender_subtree=COUNTY) for s in segs]
            assert [(r.appended, r.duplicates) for r in results] == [(len(s.records), 0) for s in segs]
            sent = sum(len(s.records) for s in segs)
            assert self.head(self.receiver, channel) == start + sent
            if limit is None:
                assert self.receiver.store.head(COUNTY, channel) == self.sender.store.head(COUNTY, channel)
            return segs[-1] if segs else None

        @rule(seg=consumes(shipped))
        @step
        def resend_shipped_segment(self, seg: pb.Segment | None) -> None:
            if seg is None:
                return
            heads = self.receiver.store.heads()
            count = self.receiver.store.count()
            res = self.receiver.accept_segment(seg, sender_subtree=COUNTY)
            assert (res.appended, res.duplicates) == (0, len(seg.records))
            assert self.receiver.store.heads() == heads
            assert self.receiver.store.count() == count

        @rule(channel=st.sampled_from(CHANNELS), max_records=st.integers(1, 1500), data=st.data())
        @step
        def resend_overlapping(self, channel: int, max_records: int, data: st.DataObject) -> None:
            held = self.head(self.receiver, channel)
            if held == 0:
                return
            self.admit_sender_keys()
            after = data.draw(st.integers(0, held - 1), label="after")
            segs = self.segments(channel, after, max_records, 1)
            assert segs, "the sender holds what the receiver holds"
            last = after + len(segs[0].records)
            res = self.receiver.accept_segment(segs[0], sender_subtree=COUNTY)
            assert (res.appended, res.duplicates) == (max(0, last - held), min(last, held) - after)
            assert self.head(self.receiver, channel) == max(held, last)

        @rule(channel=st.sampled_from(CHANNELS), data=st.data(), on_receiver=st.booleans())
        @step
        def reappend_stored_rows(self, channel: int, data: st.DataObject, on_receiver: bool) -> None:
            """The store itself: the same rows again are a no-op; a different row at a held seq is a fork."""
            ledger = self.receiver if on_receiver else self.sender
            held = self.head(ledger, channel)
            if held == 0:
                return
            lo = data.draw(st.integers(1, held), label="lo")
            hi = data.draw(st.integers(lo, min(held, lo + 600)), label="hi")
            stored = ledger.store.records(COUNTY, channel, lo, hi)
            rows = [Row(r.seq, bytes(r.body), bytes(r.signature), bytes(r.key_id), r.kind, r.dest, r.time_us)
                    for r in stored]
            heads, count = ledger.store.heads(), ledger.store.count()
            with ledger.store.write() as tx:
                res = tx.append(COUNTY, channel, rows)
            assert (res.appended, res.duplicates) == (0, hi - lo + 1)
            assert ledger.store.heads() == heads and ledger.store.count() == count
            # a different record at a held seq: a fork, recorded, nothing overwritten
            at = data.draw(st.integers(lo, hi), label="fork_at")
            other = build_body(origin=COUNTY, channel=channel, seq=at, kind=KIND[channel], payload=b'{"forged":1}')
            forged = [*rows[: at - lo], Row(at, other, b"", b"", KIND[channel], "", 1)]
            incidents = len(ledger.store.incidents())
            with pytest.raises(ForkDetected) as e, ledger.store.write() as tx:
                tx.append(COUNTY, channel, forged, source="property-test")
            assert e.value.seq == at
            assert [bytes(r.body) for r in ledger.store.records(COUNTY, channel, lo, hi)] == [r.body for r in rows]
            assert ledger.store.heads() == heads
            assert len(ledger.store.incidents()) == incidents + 1

        @rule()
        @step
        def verify_at_rest(self) -> None:
            self.check_verifies()
            self.check_key_ids()

        @invariant()
        def receiver_holds_a_prefix(self) -> None:
            for channel in CHANNELS:
                assert self.head(self.receiver, channel) <= self.head(self.sender, channel)

    return LogMachine


SETTINGS = {
    "sqlite": settings(max_examples=30, stateful_step_count=10, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    "postgres": settings(max_examples=8, stateful_step_count=6, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_log_properties(backend: str, upper: tuple[Home, Home], request: pytest.FixtureRequest) -> None:
    if backend == "postgres" and not request.getfixturevalue("pg_ok"):  # fails under FEDNODE_REQUIRE_PG=1
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} does not answer")
    province, city = upper
    run_state_machine_as_test(make_machine(province, city, backend), settings=SETTINGS[backend])
