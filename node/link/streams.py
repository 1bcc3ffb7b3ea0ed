"""The store side of links: which streams a link carries, reading batches for them, applying batches.

Synchronous (it runs on the node's database thread); node/link/transport.py calls it through the runtime.
What a link may send is read from the store's in-memory heads view (``Store.heads_view``), never from a
scan of the heads table; ``interested`` says which stream of a link a committed change moves.
Every batch is verified with the node's one live keyring (``ledger.keyring``), so a key operation
through the admin socket applies to the next batch; a key certificate the keyring refuses (not valid
now, outside the tree) refuses only the segments its key signed, never the whole batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import and_, select
from sqlalchemy.exc import DBAPIError

from node.core import codes, schema
from node.core.errors import FednodeError, MissingCheckpoint
from node.core.ledger import Ledger
from node.core.records import SIGNED_CHANNELS, channel_name
from node.core.store import HeadChange, within
from node.link.protocol import DOWN, LOG, Part, StreamKey, Want
from proto.fednode.v1 import fednode_pb2 as pb

log = structlog.get_logger(__name__)

MAX_BATCH_BYTES = 16 * 1024 * 1024


class RelayCache:
    """Segments from children, just verified and committed here, kept so the uplink forwards them as
    they are instead of reading them back from the store (a relay otherwise reads every record it has
    just written). An entry is used at most once, only when it starts exactly where the uplink's cursor
    is; anything else (a rewind after an error ack, a restart, an evicted entry) reads the store as
    before. An entry longer than the uplink's budget still goes whole: it was wholly new here, so the
    only checkpoint the store holds in its range is its last one, and ``Ledger.read_segment`` would cut
    the very same records (refusing it dropped the entry and made every later one of that log miss).

    Bounded in bytes (``max_bytes``). What an entry costs is the whole received batch it came from: a
    segment of a parsed message keeps the message's memory alive (upb keeps one arena per parsed
    message), so a batch's bytes are counted once while any of its segments is cached and given back
    when the last one leaves. When full, a new entry is refused, not an old one evicted: while the uplink
    lags (a fan-in), the old entries are the ones its cursors reach next, and evicting them for newer
    ones made the cache hold batches it then threw away unused. An entry the uplink's cursor has passed
    (it read that log from the store past it) can never be used: it goes at that log's next ``take``.
    (Bounded by records, 2 x window x batch records, the cache held ~20 MB of batches beside an 8 MB
    receive budget at a 50-child city.) Used on the database thread only."""

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._segments: dict[tuple[str, int, int], tuple[pb.Segment, HeldBatch]] = {}
        self._starts: dict[tuple[str, int], set[int]] = defaultdict(set)  # per log, where its entries start
        self.bytes = 0  # of the batches kept alive by cached segments
        self.hits = 0
        self.refused = 0  # entries not kept: the cache was full
        self.passed = 0  # entries dropped unused: the uplink's cursor had gone past them

    def put(self, seg: pb.Segment, after: int, held: HeldBatch) -> None:
        """Keep ``seg`` (its records start after ``after``) if there is room; ``held``: the batch it belongs
        to, one object shared by every segment of that batch that is put here."""
        key = (seg.origin, int(seg.channel), after)
        self._drop(key)
        grows = held.size if held.cached == 0 else 0
        if grows and self.bytes and self.bytes + grows > self.max_bytes:
            self.refused += 1
            return
        self._segments[key] = (seg, held)
        self._starts[key[:2]].add(after)
        held.cached += 1
        self.bytes += grows

    def take(self, origin: str, channel: int, after: int, limit: int) -> pb.Segment | None:
        """The entry that starts at the uplink's cursor ``after``, if any; entries of that log before the
        cursor go (the cursor only moves on, but for a rewind, which reads the store anyway)."""
        seg = self._drop((origin, channel, after))
        if seg is not None:
            self.hits += 1
        self.forwarded(origin, channel, after)
        return seg

    def forwarded(self, origin: str, channel: int, upto: int) -> None:
        """The uplink has read the log up to ``upto``: its entries that start before can never be used."""
        for start in [a for a in self._starts.get((origin, channel), ()) if a < upto]:
            self._drop((origin, channel, start))
            self.passed += 1

    def _drop(self, key: tuple[str, int, int]) -> pb.Segment | None:
        entry = self._segments.pop(key, None)
        if entry is None:
            return None
        starts = self._starts[key[:2]]
        starts.discard(key[2])
        if not starts:
            del self._starts[key[:2]]
        seg, held = entry
        held.cached -= 1
        if held.cached == 0:
            self.bytes -= held.size
        return seg

    def status(self) -> dict[str, int]:
        return {"segments": len(self._segments), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "refused": self.refused, "passed": self.passed}


class HeldBatch:
    """A received batch as the relay cache counts it: its size, and how many of its segments are cached."""

    __slots__ = ("size", "cached")

    def __init__(self, size: int) -> None:
        self.size = size
        self.cached = 0


def up_heads(ledger: Ledger) -> dict[StreamKey, int]:
    """Our logs that go up: every log we hold whose origin is in our subtree."""
    return {(LOG, o, c): s for (o, c), s in ledger.store.heads_view().logs_within(ledger.code).items()}


def subtree_heads(ledger: Ledger, child: str) -> dict[StreamKey, int]:
    """Logs we hold that were born in ``child``'s subtree (what a child should hold too)."""
    return {(LOG, o, c): s for (o, c), s in ledger.store.heads_view().logs_within(child).items()}


def down_heads_for(ledger: Ledger, child: str) -> dict[StreamKey, int]:
    """For each issuer log (us or our ancestors), the highest seq addressed into ``child``'s subtree."""
    return {(DOWN, o, c): s for (o, c), s in ledger.store.heads_view().down_tops(child, ledger.code).items()}


def held_down_heads(ledger: Ledger) -> dict[StreamKey, int]:
    """Downward cursors we announce to our parent: highest seq held per issuer log."""
    return {(DOWN, o, c): s for (o, c), s in ledger.store.heads_view().held_down().items()}


def interested(change: HeadChange, here: str, peer: str, *, uplink: bool) -> StreamKey | None:
    """The stream of a link that a committed change moves, or None. The uplink carries our subtree's logs;
    a link to ``peer`` (a child) the logs of its subtree and the downward streams of our issuer logs
    (ours, our ancestors') addressed into it (as ``up_heads``, ``subtree_heads``, ``down_heads_for``)."""
    if not change.dest:
        return (LOG, change.origin, change.channel) if within(change.origin, here if uplink else peer) else None
    if uplink or not within(change.dest, peer) or not within(here, change.origin):
        return None
    return (DOWN, change.origin, change.channel)


def to_heads_pb(heads: dict[StreamKey, int], ledger: Ledger | None = None) -> list[pb.LogHead]:
    return [pb.LogHead(origin=o, channel=c, seq=s) for (_k, o, c), s in heads.items()]  # type: ignore[arg-type]


def from_heads_pb(heads: Any, kind: str) -> dict[StreamKey, int]:
    return {(kind, h.origin, int(h.channel)): int(h.seq) for h in heads}


def read_batch(ledger: Ledger, wants: list[Want], peer: str,
               relay: RelayCache | None = None, into: pb.Batch | None = None) -> tuple[pb.Batch, list[Part]]:
    """Read what ``wants`` asks for, cutting log streams at checkpoints (or forwarding a segment just
    received from a child, when ``relay`` holds the one that starts at the cursor). ``into``: an empty
    batch to fill, e.g. ``LinkMessage().batch``, so sending it copies no record
    (``LinkMessage(batch=batch)`` copies every one)."""
    batch = pb.Batch() if into is None else into
    parts: list[Part] = []
    key_ids: set[bytes] = set()
    size = 0
    for w in wants:
        if size > MAX_BATCH_BYTES:
            break
        kind, origin, channel = w.stream
        if kind == LOG:
            cached = relay.take(origin, channel, w.after, w.limit) if relay is not None else None
            if cached is not None:
                batch.segments.append(cached)
                seg = batch.segments[-1]
            else:  # read straight into the batch: appending a built segment would copy every record
                seg = batch.segments.add()
                if ledger.read_segment(origin, channel, w.after, w.limit, into=seg) is None or not seg.records:
                    del batch.segments[-1]
                    continue
                if relay is not None:  # what it read past is gone from the cache, not kept till a later take
                    relay.forwarded(origin, channel, w.after + len(seg.records))
            key_ids.add(seg.checkpoint.key_id)
            if channel in SIGNED_CHANNELS:
                key_ids.update(r.key_id for r in seg.records)
            last = w.after + len(seg.records)
        else:
            down, last = _read_down(ledger, origin, channel, w.after, w.limit, peer)
            if down is None:
                parts.append(Part(w.stream, w.after, last, 0))  # nothing for this peer up to `last`
                continue
            key_ids.update(r.key_id for r in down.records)
            batch.segments.append(down)
            seg = batch.segments[-1]
        size += seg.ByteSize()
        parts.append(Part(w.stream, w.after, last, len(seg.records)))
    batch.downward = any(p.stream[0] == DOWN for p in parts)
    batch.keys.extend(ledger.key_certificates_for(k for k in key_ids if k))
    return batch, parts


def _read_down(ledger: Ledger, origin: str, channel: int, after: int, limit: int,
               peer: str) -> tuple[pb.Segment | None, int]:
    rows = []
    last = after
    for table in (schema.records, schema.down_records):
        with ledger.store.read() as conn:
            q = (
                select(table.c.seq, table.c.dest, table.c.body, table.c.signature, table.c.key_id)
                .where(and_(table.c.origin == origin, table.c.channel == channel, table.c.seq > after,
                            schema.addressed(table)))
                .order_by(table.c.seq)
                .limit(limit * 4)
            )
            for r in conn.execute(q):
                last = max(last, r.seq)
                if codes.within(r.dest, peer):
                    rows.append(r)
        if rows:
            break
    if not rows:
        return None, last
    rows.sort(key=lambda r: r.seq)
    rows = rows[:limit]
    seg = pb.Segment(origin=origin, channel=channel,  # type: ignore[arg-type]
                     records=[pb.SignedRecord(body=bytes(r.body), signature=bytes(r.signature), key_id=bytes(r.key_id))
                              for r in rows])
    return seg, rows[-1].seq


def apply_batch(ledger: Ledger, batch: pb.Batch, *, peer: str, from_child: bool,
                relay: RelayCache | None = None, size: int | None = None) -> pb.Ack:
    """Verify and commit what a peer sent; the ack names what was committed and what was refused.
    Segments from a child that were wholly new here go to ``relay``, for the uplink to forward.

    A store that cannot write (disk full, database down) answers with an error ack: the sender pauses and
    resends by itself, and this node keeps running."""
    return apply_batches(ledger, [batch], peer=peer, from_child=from_child, relay=relay,
                         sizes=None if size is None else [size])[0]


def apply_batches(ledger: Ledger, batches: Sequence[pb.Batch], *, peer: str, from_child: bool,
                  relay: RelayCache | None = None, sizes: Sequence[int] | None = None) -> list[pb.Ack]:
    """``apply_batch`` for several batches of one link, in their order, their log segments appended in one
    transaction (one commit for all; ``Ledger.accept_each`` falls back to one per segment, in order, if it
    fails): one ack per batch, each as it would be had the batches been applied one after the other,
    except that a head it names may already include a later batch's records. Only for batches without
    control records (``protocol.next_group``): a key record changes how every batch after it is verified.
    ``sizes``: each batch's bytes as received (what the relay cache counts for a batch it keeps a segment
    of); without them a batch that has a segment cached is measured (``ByteSize``, ~1.5 ms per 4,000 records)."""
    try:
        return _apply_batches(ledger, batches, peer=peer, from_child=from_child, relay=relay, sizes=sizes)
    except DBAPIError as e:
        log.error("store_write_failed", peer=peer, error=str(e.orig))
        return [pb.Ack(batch_id=b.batch_id, ok=False, error_code="store_unavailable",
                       error=f"{ledger.code} cannot write its store ({e.orig}) (fix: free disk space or restore the "
                       f"database at {ledger.code}; the sender resends by itself)") for b in batches]


def _apply_batches(ledger: Ledger, batches: Sequence[pb.Batch], *, peer: str, from_child: bool,
                   relay: RelayCache | None, sizes: Sequence[int] | None) -> list[pb.Ack]:
    acks = [pb.Ack(batch_id=b.batch_id, ok=True) for b in batches]
    errors: list[dict[tuple[str, int], FednodeError]] = [{} for _ in batches]
    admitted: list[int] = []
    for i, batch in enumerate(batches):
        try:
            # a refused key certificate (not valid now, outside the tree) refuses only what its key signed
            ledger.admit_keys(batch.keys, strict=False)
            admitted.append(i)
        except FednodeError as e:
            acks[i].ok, acks[i].error_code, acks[i].error = False, e.code, str(e)
    # a child may send only its own subtree's logs; a parent may repair only logs of our subtree
    subtree = peer if from_child else ledger.code
    log_segs = [(i, s) for i in admitted for s in batches[i].segments if s.checkpoint.body]
    if log_segs:
        got = ledger.accept_each([s for _i, s in log_segs], sender_subtree=subtree, source=peer)
        held: dict[int, HeldBatch] = {}
        for (i, s), res in zip(log_segs, got, strict=True):
            if isinstance(res, FednodeError):
                errors[i][(s.origin, int(s.channel))] = res
            elif relay is not None and from_child and res.duplicates == 0 and res.appended == len(s.records):
                if i not in held:
                    held[i] = HeldBatch(sizes[i] if sizes is not None else batches[i].ByteSize())
                relay.put(s, res.head.seq - res.appended, held[i])
    for i in admitted:
        down_segs = [s for s in batches[i].segments if not s.checkpoint.body]
        if from_child:
            for s in down_segs:
                errors[i][(s.origin, int(s.channel))] = MissingCheckpoint(
                    f"{peer} sent records of {s.origin} without a checkpoint", origin=s.origin,
                    channel=channel_name(int(s.channel)), fix="children send only checkpointed logs")
        else:
            for s in down_segs:
                try:
                    ledger.accept_down(s.records, sender=peer, source=peer)
                except FednodeError as e:
                    errors[i][(s.origin, int(s.channel))] = e
    view = ledger.store.heads_view()
    for i in admitted:
        ack = acks[i]
        for s in batches[i].segments:
            if s.checkpoint.body:
                h = view.head(s.origin, int(s.channel))
                ack.heads.append(pb.LogHead(origin=s.origin, channel=s.channel, seq=h.seq,
                                            chain=h.chain if h.seq else b""))
            else:
                ack.down_heads.append(pb.LogHead(origin=s.origin, channel=s.channel,
                                                 seq=view.held_down_seq(s.origin, int(s.channel))))
        for (origin, channel), err in errors[i].items():
            ack.errors.append(pb.SegmentError(origin=origin, channel=channel, error_code=err.code,  # type: ignore[arg-type]
                                              error=str(err)))
        if errors[i]:
            ack.ok = False
            first = next(iter(errors[i].values()))
            ack.error_code, ack.error = first.code, str(first)
    return acks


def oldest_pending_time(ledger: Ledger, stream: StreamKey, acked: int) -> int | None:
    kind, origin, channel = stream
    table = schema.records if kind == LOG else schema.down_records
    with ledger.store.read() as conn:
        return conn.execute(
            select(table.c.time_us).where(and_(table.c.origin == origin, table.c.channel == channel,
                                               table.c.seq > acked)).order_by(table.c.seq).limit(1)
        ).scalar()


def group_by_channel(backlog: dict[StreamKey, int]) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for (_k, _o, c), n in backlog.items():
        out[c] += n
    return dict(out)
