"""The store: per-origin logs and everything else a node keeps, on SQLite (WAL) or PostgreSQL.

Rules of this module (the store enforces them itself, whoever calls it):
- per (origin, channel) the store holds the contiguous prefix 1..n of the log and chain[n]; an append
  must continue exactly at n+1 (a gap raises MissingRecord);
- the store computes the chain itself; when the caller knows the signed chain (a checkpoint), a
  mismatch raises ChainMismatch and nothing is written;
- appending a record that is already held is a no-op; a different record at a held seq raises
  ForkDetected and is recorded as an incident (with the conflicting bytes) after the rollback:
  no body, chain value or seq is ever overwritten; with a signed chain, only when the rows hash to it
  (what the signature does not cover is a ChainMismatch, never an incident);
- the one exception is a signature, and only after a revocation: ``resign`` (the owner re-signs its
  own records and checkpoints that a revoked key signed beyond its position) and ``refresh_stale`` (a
  receiver takes re-signed copies of bodies it holds, where its own copy's signature no longer
  verifies) replace signatures, key ids and checkpoints, never bodies, chains or the change feed
  (node/core/ledger.py explains the decision);
- every write runs in one transaction: ``BEGIN IMMEDIATE`` on SQLite (pysqlite's deferred
  transactions lose read-modify-write updates across threads), a row lock on the head on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from google.protobuf.message import DecodeError
from sqlalchemy import Connection, Engine, and_, create_engine, delete, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from node.core import codes
from node.core import schema as t
from node.core.crypto import GENESIS, chain_over, chain_step, entry_hash
from node.core.errors import ChainMismatch, ForkDetected, MissingRecord, OutOfOrder, StoreError
from node.core.records import SIGNED_CHANNELS, channel_name, now_us, parse_body
from proto.fednode.v1 import fednode_pb2 as pb

log = structlog.get_logger(__name__)

LogKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    chain: bytes


EMPTY_HEAD = Head(0, GENESIS)


class Row(NamedTuple):
    """A record to append (upward logs) or to hold (downward records). A NamedTuple: verification builds
    one per record received, at a third of a frozen dataclass's cost."""

    seq: int
    body: bytes
    signature: bytes
    key_id: bytes
    kind: str
    dest: str
    time_us: int


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    origin: str
    channel: int
    seq: int
    body: bytes
    signature: bytes
    key_id: bytes

    def to_pb(self) -> pb.Checkpoint:
        return pb.Checkpoint(body=self.body, signature=self.signature, key_id=self.key_id)


class Change(NamedTuple):
    """One entry of the change feed (see ``Store.changes``). A NamedTuple: services read the feed in
    pages of thousands, and building one costs half of a frozen dataclass."""

    local_seq: int
    origin: str
    channel: int
    seq: int
    kind: str
    dest: str
    time_us: int
    body: bytes
    down: bool  # held from an ancestor (down_records), not part of a contiguous log here

    def payload(self) -> Any:
        """The body's JSON payload (MalformedRecord if the body does not parse)."""
        try:
            raw = pb.RecordBody.FromString(self.body).payload
        except DecodeError:
            parse_body(self.body)  # raises MalformedRecord, with the reason
            raise
        return json.loads(raw) if raw else None


@dataclass
class AppendResult:
    appended: int
    duplicates: int
    head: Head
    checkpoints: list[CheckpointRow] = field(default_factory=list)


def _sqlite_url_for(url: str, base_dir: Path | None) -> str:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and base_dir is not None:
        db = Path(u.database)
        if not db.is_absolute():
            return str(u.set(database=str((base_dir / db).resolve())))
    return url


class HeadChange(NamedTuple):
    """What a committed write moved: a log's head (``dest`` empty), or the top of the records of a
    signed channel addressed to ``dest`` (a downward stream into ``dest``'s subtree)."""

    origin: str
    channel: int
    seq: int
    dest: str = ""


_WITHIN: dict[tuple[str, str], bool] = {}


def within(code: str, ancestor: str) -> bool:
    """``codes.within``, memoised: the links ask it for the same few pairs on every change."""
    key = (code, ancestor)
    hit = _WITHIN.get(key)
    if hit is None:
        if len(_WITHIN) > 100_000:
            _WITHIN.clear()
        hit = _WITHIN[key] = codes.within(code, ancestor)
    return hit


class HeadsView:
    """Every log's head and the tops of the downward streams, in memory, kept current by the store's
    writers (``Store.heads_view``), so links never scan the heads table (issue 26).

    - The store updates it after a write transaction commits, under its write lock; a rolled-back
      transaction changes nothing. What it holds only grows (logs are append-only), so a reader merging
      ``HeadChange``s with max() may take them in any order.
    - Listeners (``subscribe``) hear the changes of each commit on the writer's thread, after the write
      lock is released: they must only hand them over (``loop.call_soon_threadsafe``).
    - A write by another process is noticed by ``Store.sync_view`` (the change feed's counter moved
      without this view): the view is reloaded and the differences announced.
    - Thread-safe: every reader gets a copy, taken under the view's lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[LogKey, Head] = {}
        self._held_down: dict[LogKey, int] = {}  # highest seq held in down_records per issuer log
        self._addressed: dict[LogKey, dict[str, int]] = {}  # signed channels: dest → highest seq addressed to it
        self._subtrees: dict[str, set[LogKey]] = {}  # code → logs born in its subtree (filled when first asked)
        self._listeners: list[Callable[[list[HeadChange]], None]] = []
        self.feed_seq = 0  # the change feed's counter (meta local_seq) as this view reflects it

    # -- reads ----------------------------------------------------------------------------------------

    def head(self, origin: str, channel: int) -> Head:
        return self._logs.get((origin, channel), EMPTY_HEAD)

    def heads(self) -> dict[LogKey, Head]:
        with self._lock:
            return dict(self._logs)

    def logs_within(self, code: str) -> dict[LogKey, int]:
        """Seq of every log held whose origin lies in ``code``'s subtree."""
        with self._lock:
            keys = self._subtrees.get(code)
            if keys is None:
                keys = self._subtrees[code] = {k for k in self._logs if within(k[0], code)}
            return {k: self._logs[k].seq for k in keys}

    def held_down(self) -> dict[LogKey, int]:
        with self._lock:
            return dict(self._held_down)

    def held_down_seq(self, origin: str, channel: int) -> int:
        return self._held_down.get((origin, channel), 0)

    def down_tops(self, child: str, here: str) -> dict[LogKey, int]:
        """For each issuer log of ``here`` or an ancestor, the highest seq addressed into ``child``'s
        subtree (what a link to ``child`` may send it down)."""
        with self._lock:
            out: dict[LogKey, int] = {}
            for key, dests in self._addressed.items():
                if not within(here, key[0]):
                    continue
                top = max((s for d, s in dests.items() if within(d, child)), default=0)
                if top:
                    out[key] = top
            return out

    # -- listeners ------------------------------------------------------------------------------------

    def subscribe(self, fn: Callable[[list[HeadChange]], None]) -> None:
        self._listeners.append(fn)

    def unsubscribe(self, fn: Callable[[list[HeadChange]], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def announce(self, changes: list[HeadChange]) -> None:
        if not changes:
            return
        for fn in list(self._listeners):
            try:
                fn(changes)
            except Exception:  # a listener's bug must not fail the write that already committed
                log.exception("heads_listener_failed")

    # -- writes (the store, under its write lock) ------------------------------------------------------

    def apply(self, logs: dict[LogKey, Head], held: dict[LogKey, int], addressed: dict[tuple[str, int, str], int],
              feed_seq: int | None) -> list[HeadChange]:
        changes: list[HeadChange] = []
        with self._lock:
            for key, h in logs.items():
                old = self._logs.get(key)
                if old is not None and old.seq >= h.seq:
                    continue
                self._logs[key] = h
                changes.append(HeadChange(key[0], key[1], h.seq))
                if old is None:
                    for code, keys in self._subtrees.items():
                        if within(key[0], code):
                            keys.add(key)
            for key, seq in held.items():
                if seq > self._held_down.get(key, 0):
                    self._held_down[key] = seq
            for (origin, channel, dest), seq in addressed.items():
                dests = self._addressed.setdefault((origin, channel), {})
                if seq > dests.get(dest, 0):
                    dests[dest] = seq
                    changes.append(HeadChange(origin, channel, seq, dest))
            if feed_seq is not None:
                self.feed_seq = max(self.feed_seq, feed_seq)
        return changes

    def load(self, conn: Connection) -> list[HeadChange]:
        """(Re)read everything from the store; the changes against what the view held."""
        feed = int(conn.execute(select(t.meta.c.value).where(t.meta.c.key == "local_seq")).scalar() or 0)
        logs = {(r.origin, r.channel): Head(r.seq, bytes(r.chain))
                for r in conn.execute(select(t.heads.c.origin, t.heads.c.channel, t.heads.c.seq, t.heads.c.chain))}
        d = t.down_records
        held = {(o, c): s for o, c, s in conn.execute(
            select(d.c.origin, d.c.channel, func.max(d.c.seq)).group_by(d.c.origin, d.c.channel))}
        addressed: dict[tuple[str, int, str], int] = {}
        for table in (t.records, t.down_records):
            q = (select(table.c.origin, table.c.channel, table.c.dest, func.max(table.c.seq))
                 .where(and_(t.addressed(table), table.c.channel.in_(list(SIGNED_CHANNELS))))
                 .group_by(table.c.origin, table.c.channel, table.c.dest))
            for o, c, dest, s in conn.execute(q):
                addressed[(o, c, dest)] = max(addressed.get((o, c, dest), 0), s)
        return self.apply(logs, held, addressed, feed)


class WriteTx:
    """One write transaction. Obtain it from ``Store.write()``."""

    def __init__(self, store: Store, conn: Connection) -> None:
        self.store = store
        self.conn = conn
        # what this transaction moved, for the heads view once it commits
        self._heads: dict[LogKey, Head] = {}
        self._held: dict[LogKey, int] = {}
        self._addressed: dict[tuple[str, int, str], int] = {}
        self._feed_seq: int | None = None

    # -- heads --------------------------------------------------------------------------------------

    def head(self, origin: str, channel: int) -> Head:
        """The head of a log, locked for the rest of this transaction on PostgreSQL."""
        q = select(t.heads.c.seq, t.heads.c.chain).where(
            and_(t.heads.c.origin == origin, t.heads.c.channel == channel)
        )
        if self.store.is_postgres:
            q = q.with_for_update()
        row = self.conn.execute(q).first()
        return Head(row.seq, bytes(row.chain)) if row else EMPTY_HEAD

    def _set_head(self, origin: str, channel: int, head: Head) -> None:
        values = {"origin": origin, "channel": channel, "seq": head.seq, "chain": head.chain, "updated_us": now_us()}
        ins = (postgresql.insert if self.store.is_postgres else sqlite.insert)(t.heads).values(**values)
        self.conn.execute(
            ins.on_conflict_do_update(
                index_elements=["origin", "channel"],
                set_={"seq": head.seq, "chain": head.chain, "updated_us": values["updated_us"]},
            )
        )

    # -- the append ---------------------------------------------------------------------------------

    def append(
        self,
        origin: str,
        channel: int,
        rows: Sequence[Row],
        *,
        expected_chain: bytes | None = None,
        checkpoint: CheckpointRow | None = None,
        checkpoint_at: Callable[[int, bytes], CheckpointRow] | None = None,
        checkpoint_every: int = 0,
        source: str = "local",
    ) -> AppendResult:
        """Append ``rows`` (ascending, contiguous) to a log, enforcing the store invariants.

        ``expected_chain``: the signed chain at the last row (from a checkpoint); ``checkpoint``: that
        checkpoint, stored with the rows. ``checkpoint_at(seq, chain)``: called to make checkpoints for
        our own logs, every ``checkpoint_every`` rows and at the end.
        """
        head = self.head(origin, channel)
        if not rows:
            return AppendResult(0, 0, head)
        ch = channel_name(channel)
        first = rows[0].seq
        for i, r in enumerate(rows):
            if r.seq != first + i:
                raise OutOfOrder(
                    f"records of {origin}/{ch} are not contiguous and ascending at position {i} (seq {r.seq})",
                    origin=origin, channel=ch, seq=r.seq,
                )
        if first < 1 or first > head.seq + 1:
            raise MissingRecord(
                f"log {origin}/{ch} holds 1..{head.seq}, but the records start at {first}: "
                f"{first - head.seq - 1} record(s) missing before them",
                origin=origin, channel=ch, seq=head.seq + 1,
                fix="the sender must resend from the receiver's head; links and reconcile do this by themselves",
            )
        last = rows[-1].seq
        overlap = max(0, min(head.seq, last) - first + 1)
        prev = head.chain
        if overlap:
            stored = self.store._chains(self.conn, origin, channel, first - 1, first + overlap - 1)
            prev = stored[first - 1]
            for i, r in enumerate(rows[:overlap]):
                c = chain_step(prev, r.body)
                if c != stored[r.seq]:
                    # a fork only from what the checkpoint's signature covers: otherwise the bytes are
                    # merely altered (anyone relaying a valid checkpoint could forge the evidence)
                    if expected_chain is not None and chain_over(prev, [x.body for x in rows[i:]])[-1] != expected_chain:
                        raise ChainMismatch(
                            f"records {origin}/{ch} {first}..{last} do not hash to the signed checkpoint: seq {r.seq} "
                            "differs from the record held here and is not what the checkpoint signed",
                            origin=origin, channel=ch, seq=r.seq,
                            fix="the batch was refused and no fork was recorded; the sender's store may be damaged, "
                                "run `fednode verify` there",
                        )
                    exc = ForkDetected(
                        f"a different record at {origin}/{ch} seq {r.seq} than the one stored",
                        origin=origin, channel=ch, seq=r.seq,
                        fix="nothing was overwritten; see `fednode verify` and the incident list",
                    )
                    raise _with_evidence(exc, r, source)
                prev = c
        new = rows[overlap:]
        if not new:
            if expected_chain is not None and prev != expected_chain:
                raise ChainMismatch(
                    f"checkpoint of {origin}/{ch} at seq {last} does not match the stored chain",
                    origin=origin, channel=ch, seq=last,
                )
            return AppendResult(0, overlap, head)
        chains = chain_over(head.chain, [r.body for r in new])
        if expected_chain is not None and chains[-1] != expected_chain:
            raise ChainMismatch(
                f"records {origin}/{ch} {new[0].seq}..{last} do not hash to the signed checkpoint: a body was "
                "altered or replaced",
                origin=origin, channel=ch, seq=last,
                fix="the batch was refused; the sender's store may be damaged, run `fednode verify` there",
            )
        stored_us = now_us()
        local = self.next_local_seq(len(new))
        # the hot path: plain DB-API executemany, without SQLAlchemy's per-row bind processing (~2x faster)
        self.conn.exec_driver_sql(
            self.store.insert_records_sql,
            [
                (origin, channel, r.seq, r.kind, r.dest, r.time_us, r.body, r.signature, r.key_id, c, stored_us,
                 local + i)
                for i, (r, c) in enumerate(zip(new, chains, strict=True))
            ],
        )
        made: list[CheckpointRow] = []
        if checkpoint_at is not None:
            every = checkpoint_every or len(new)
            for i in range(len(new)):
                if (i + 1) % every == 0 or i == len(new) - 1:
                    made.append(checkpoint_at(new[i].seq, chains[i]))
        if checkpoint is not None:
            made.append(checkpoint)
        if made:
            self.put_checkpoints(made)
        new_head = Head(last, chains[-1])
        self._set_head(origin, channel, new_head)
        self._heads[(origin, channel)] = new_head
        if channel in SIGNED_CHANNELS:
            for r in new:
                if r.dest:
                    self._addressed[(origin, channel, r.dest)] = r.seq
        return AppendResult(len(new), overlap, new_head, made)

    def put_checkpoints(self, cps: Sequence[CheckpointRow]) -> None:
        ins = (postgresql.insert if self.store.is_postgres else sqlite.insert)(t.checkpoints)
        self.conn.execute(
            ins.on_conflict_do_nothing(),
            [
                {"origin": c.origin, "channel": c.channel, "seq": c.seq, "body": c.body, "signature": c.signature,
                 "key_id": c.key_id}
                for c in cps
            ],
        )

    # -- downward records: a subset of an ancestor's log, each signed ---------------------------------

    def hold_down(self, origin: str, channel: int, rows: Sequence[Row], source: str = "parent") -> tuple[int, int]:
        """Hold records addressed into this subtree. Returns (new, duplicates)."""
        if not rows:
            return 0, 0
        seqs = [r.seq for r in rows]
        existing = {
            r.seq: bytes(r.entry)
            for r in self.conn.execute(
                select(t.down_records.c.seq, t.down_records.c.entry).where(
                    and_(t.down_records.c.origin == origin, t.down_records.c.channel == channel,
                         t.down_records.c.seq.in_(seqs))
                )
            )
        }
        fresh = []
        for r in rows:
            e = entry_hash(r.body)
            if r.seq in existing:
                if existing[r.seq] != e:
                    exc = ForkDetected(
                        f"a different downward record at {origin}/{channel_name(channel)} seq {r.seq}",
                        origin=origin, channel=channel_name(channel), seq=r.seq,
                    )
                    raise _with_evidence(exc, r, source)
                continue
            fresh.append((r, e))
        if fresh:
            stored_us = now_us()
            local = self.next_local_seq(len(fresh))
            self.conn.execute(
                t.down_records.insert(),
                [
                    {"origin": origin, "channel": channel, "seq": r.seq, "kind": r.kind, "dest": r.dest,
                     "time_us": r.time_us, "body": r.body, "signature": r.signature, "key_id": r.key_id,
                     "entry": e, "stored_us": stored_us, "local_seq": local + i}
                    for i, (r, e) in enumerate(fresh)
                ],
            )
            key = (origin, channel)
            for r, _e in fresh:
                self._held[key] = max(self._held.get(key, 0), r.seq)
                if r.dest and channel in SIGNED_CHANNELS:
                    a = (origin, channel, r.dest)
                    self._addressed[a] = max(self._addressed.get(a, 0), r.seq)
        return len(fresh), len(rows) - len(fresh)

    def next_local_seq(self, n: int) -> int:
        """Reserve ``n`` numbers of the change feed; returns the first. Runs inside the write lock."""
        cur = self.conn.execute(select(t.meta.c.value).where(t.meta.c.key == "local_seq")).scalar()
        first = int(cur or 0) + 1
        self.set_meta("local_seq", str(first + n - 1))
        self._feed_seq = first + n - 1
        return first

    # -- keys, quarantine, meta -----------------------------------------------------------------------

    def put_key(self, key_id: bytes, code: str, public_key: bytes, certificate: bytes, not_after_us: int) -> bool:
        ins = (postgresql.insert if self.store.is_postgres else sqlite.insert)(t.keys).values(
            key_id=key_id, code=code, public_key=public_key, certificate=certificate,
            not_after_us=not_after_us, added_us=now_us(),
        )
        return bool(self.conn.execute(ins.on_conflict_do_nothing()).rowcount)

    def renew_key(self, key_id: bytes, certificate: bytes, not_after_us: int) -> None:
        """A renewed certificate for a known key (the keyring validated it): the only update of a key's row
        besides its revocation."""
        self.conn.execute(update(t.keys).where(t.keys.c.key_id == key_id)
                          .values(certificate=certificate, not_after_us=not_after_us))

    def revoke_key(self, key_id: bytes, revoked_us: int, reason: str, through: str | None = None) -> None:
        """Record a revocation; ``through`` is the keyring's merged position (JSON), stored as given."""
        self.conn.execute(
            update(t.keys)
            .where(and_(t.keys.c.key_id == key_id,
                        (t.keys.c.revoked_us.is_(None)) | (t.keys.c.revoked_us > revoked_us)))
            .values(revoked_us=revoked_us, revoked_reason=reason)
        )
        if through is not None:
            self.conn.execute(update(t.keys).where(t.keys.c.key_id == key_id).values(revoked_through=through))

    # -- re-signing after a revocation (see the module rules) -------------------------------------------

    def resign(
        self, origin: str, channel: int, key_id: bytes, after: int, *,
        sign: Callable[[bytes], tuple[bytes, bytes]] | None,
        checkpoint_at: Callable[[int, bytes], CheckpointRow],
    ) -> tuple[int, int, int, int]:
        """Sign again, with ``sign`` (body -> (signature, key id)) and ``checkpoint_at``, what ``key_id``
        signed in this log beyond seq ``after``: the records' own signatures (``sign`` is None for the
        bulk channel) and the checkpoints, at the same seqs over the same chain values. Returns
        (records, checkpoints, first seq, last seq) re-signed."""
        r, c = t.records.c, t.checkpoints.c
        seqs: list[int] = []
        n_rec = 0
        if sign is not None:
            rows = self.conn.execute(
                select(r.seq, r.body).where(and_(r.origin == origin, r.channel == channel, r.seq > after,
                                                 r.key_id == key_id)).order_by(r.seq)
            ).all()
            for seq, body in rows:
                sig, kid = sign(bytes(body))
                self.conn.execute(update(t.records).where(and_(r.origin == origin, r.channel == channel, r.seq == seq))
                                  .values(signature=sig, key_id=kid))
                seqs.append(seq)
            n_rec = len(rows)
        cps = [s for (s,) in self.conn.execute(
            select(c.seq).where(and_(c.origin == origin, c.channel == channel, c.seq > after, c.key_id == key_id)))]
        if cps:
            chains = self.store._chains(self.conn, origin, channel, min(cps), max(cps))
            for seq in cps:
                cp = checkpoint_at(seq, chains[seq])
                self.conn.execute(update(t.checkpoints).where(and_(c.origin == origin, c.channel == channel, c.seq == seq))
                                  .values(body=cp.body, signature=cp.signature, key_id=cp.key_id))
            seqs += cps
        if not seqs:
            return 0, 0, 0, 0
        return n_rec, len(cps), min(seqs), max(seqs)

    def refresh_stale(self, origin: str, channel: int, rows: Sequence[Row], checkpoint: CheckpointRow | None,
                      stale: Callable[[bytes, int], bool]) -> int:
        """``rows`` (verified, and already held here: same bodies) arrived again: where the held copy's
        signature no longer verifies (``stale(key_id, seq)``) and the incoming one differs, take the
        incoming signature; drop held checkpoints up to ``checkpoint`` that no longer verify and keep
        ``checkpoint`` (verified, it covers them). Returns how many signatures and checkpoints changed."""
        if not rows:
            return 0
        r, c = t.records.c, t.checkpoints.c
        lo, hi = rows[0].seq, rows[-1].seq
        n = 0
        if any(row.key_id for row in rows):
            held = {s: bytes(k) for s, k in self.conn.execute(
                select(r.seq, r.key_id).where(and_(r.origin == origin, r.channel == channel, r.seq >= lo, r.seq <= hi)))}
            for row in rows:
                kid = held.get(row.seq)
                if kid is not None and kid != row.key_id and stale(kid, row.seq):
                    self.conn.execute(update(t.records).where(and_(r.origin == origin, r.channel == channel,
                                                                   r.seq == row.seq))
                                      .values(signature=row.signature, key_id=row.key_id))
                    n += 1
        if checkpoint is not None and checkpoint.seq >= hi:
            gone = [s for s, k in self.conn.execute(
                select(c.seq, c.key_id).where(and_(c.origin == origin, c.channel == channel, c.seq >= lo,
                                                   c.seq <= checkpoint.seq))) if stale(bytes(k), s)]
            if gone:
                self.conn.execute(delete(t.checkpoints).where(and_(c.origin == origin, c.channel == channel,
                                                                   c.seq.in_(gone))))
                self.put_checkpoints([checkpoint])
                n += len(gone)
        return n

    def quarantine(self, *, source: str, position: str, kind: str, reason: str, raw: bytes) -> int:
        res = self.conn.execute(
            t.quarantine.insert().values(
                source=source, position=position, kind=kind, reason=reason, raw=raw, created_us=now_us()
            )
        )
        return int(res.inserted_primary_key[0])  # type: ignore[index]

    def set_meta(self, key: str, value: str) -> None:
        ins = (postgresql.insert if self.store.is_postgres else sqlite.insert)(t.meta).values(key=key, value=value)
        self.conn.execute(ins.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def _with_evidence(exc: ForkDetected, row: Row, source: str) -> ForkDetected:
    exc.evidence = pb.SignedRecord(body=row.body, signature=row.signature, key_id=row.key_id).SerializeToString()
    exc.source = source
    return exc


class Store:
    """A node's store. ``Store.open(url)`` creates the schema of a new store and refuses one at an older
    version; ``migrate=True`` upgrades it (node/core/migrate.py: only `fednode run` and `fednode migrate`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()  # one writer per store inside a process
        self._view: HeadsView | None = None
        mark = "%s" if self.is_postgres else "?"
        cols = "origin, channel, seq, kind, dest, time_us, body, signature, key_id, chain, stored_us, local_seq"
        self.insert_records_sql = f"INSERT INTO records ({cols}) VALUES ({', '.join([mark] * 12)})"

    @classmethod
    def open(cls, url: str, *, base_dir: Path | None = None, migrate: bool | None = None) -> Store:
        """``migrate``: True upgrades an older schema; None (default) creates a new store's schema and
        refuses an older one (``StoreOutdated``, exit 2, naming the command that upgrades it); False
        neither creates nor checks."""
        url = _sqlite_url_for(url, base_dir)
        backend = make_url(url).get_backend_name()
        if backend == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
            _configure_sqlite(engine)
        elif backend == "postgresql":
            if make_url(url).drivername == "postgresql":
                url = str(make_url(url).set(drivername="postgresql+psycopg"))
            engine = create_engine(url, pool_pre_ping=True)
        else:
            raise StoreError(
                f"unsupported store URL {url!r}",
                fix="use sqlite:///store.db (the default) or postgresql://user@host/dbname",
            )
        store = cls(engine)
        if migrate is not False:
            from node.core.migrate import ensure_current, upgrade

            try:
                if migrate:
                    upgrade(engine)
                else:
                    ensure_current(engine, base_dir)
            except BaseException:
                engine.dispose()
                raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        fork: ForkDetected | None = None
        changes: list[HeadChange] = []
        with self._write_lock:
            with self.engine.connect().execution_options(fednode_write=True) as conn:
                tx = WriteTx(self, conn)
                try:
                    with conn.begin():
                        yield tx
                except ForkDetected as e:
                    fork = e
            if fork is None and self._view is not None:  # committed: the view follows, in commit order
                changes = self._view.apply(tx._heads, tx._held, tx._addressed, tx._feed_seq)
            if fork is not None:
                self._record_fork(fork)
                raise fork
        if changes and self._view is not None:
            self._view.announce(changes)

    def heads_view(self) -> HeadsView:
        """The in-memory heads (see ``HeadsView``), read from the store on first use."""
        if self._view is None:
            with self._write_lock:
                if self._view is None:
                    view = HeadsView()
                    with self.read() as conn:
                        view.load(conn)
                    self._view = view
        return self._view

    def sync_view(self) -> bool:
        """Notice writes made outside this Store object (another process on the same database): when the
        change feed's counter is not the one the view last saw, reload the view and announce what moved.
        One read of one row; True when the view was reloaded."""
        view = self._view
        if view is None:
            return False
        with self._write_lock, self.read() as conn:
            feed = int(conn.execute(select(t.meta.c.value).where(t.meta.c.key == "local_seq")).scalar() or 0)
            if feed == view.feed_seq:
                return False
            changes = view.load(conn)
            view.feed_seq = feed
        log.info("heads_view_reloaded", feed_seq=feed, changes=len(changes))
        view.announce(changes)
        return True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _record_fork(self, e: ForkDetected) -> None:
        from node.core.records import channel_number

        with self.engine.connect().execution_options(fednode_write=True) as conn, conn.begin():
            conn.execute(
                t.incidents.insert().values(
                    kind="fork", origin=e.origin, channel=channel_number(e.channel), seq=e.seq,
                    source=e.source, detail=e.message, evidence=e.evidence,
                    created_us=now_us(),
                )
            )
        log.error("fork_detected", origin=e.origin, channel=e.channel, seq=e.seq, source=e.source)

    # -- reads --------------------------------------------------------------------------------------

    def _chains(self, conn: Connection, origin: str, channel: int, lo: int, hi: int) -> dict[int, bytes]:
        out = {0: GENESIS} if lo <= 0 else {}
        for r in conn.execute(
            select(t.records.c.seq, t.records.c.chain).where(
                and_(t.records.c.origin == origin, t.records.c.channel == channel,
                     t.records.c.seq >= max(lo, 1), t.records.c.seq <= hi)
            )
        ):
            out[r.seq] = bytes(r.chain)
        return out

    def chains_at(self, origin: str, channel: int, seqs: Sequence[int]) -> dict[int, bytes]:
        with self.read() as conn:
            out = {0: GENESIS} if 0 in seqs else {}
            for r in conn.execute(
                select(t.records.c.seq, t.records.c.chain).where(
                    and_(t.records.c.origin == origin, t.records.c.channel == channel,
                         t.records.c.seq.in_([s for s in seqs if s > 0]))
                )
            ):
                out[r.seq] = bytes(r.chain)
            return out

    def heads(self) -> dict[LogKey, Head]:
        with self.read() as conn:
            return {
                (r.origin, r.channel): Head(r.seq, bytes(r.chain))
                for r in conn.execute(select(t.heads.c.origin, t.heads.c.channel, t.heads.c.seq, t.heads.c.chain))
            }

    def head(self, origin: str, channel: int) -> Head:
        with self.read() as conn:
            r = conn.execute(
                select(t.heads.c.seq, t.heads.c.chain).where(
                    and_(t.heads.c.origin == origin, t.heads.c.channel == channel)
                )
            ).first()
            return Head(r.seq, bytes(r.chain)) if r else EMPTY_HEAD

    def records(self, origin: str, channel: int, lo: int = 1, hi: int | None = None,
                limit: int | None = None) -> list[Any]:
        q = select(t.records).where(
            and_(t.records.c.origin == origin, t.records.c.channel == channel, t.records.c.seq >= lo)
        )
        if hi is not None:
            q = q.where(t.records.c.seq <= hi)
        q = q.order_by(t.records.c.seq)
        if limit is not None:
            q = q.limit(limit)
        with self.read() as conn:
            return list(conn.execute(q))

    def bodies(self, origin: str, channel: int, lo: int, hi: int) -> list[tuple[bytes, bytes, bytes]]:
        """(body, signature, key_id) of seq lo..hi in order: the link's hot read path, without ORM rows."""
        mark = "%s" if self.is_postgres else "?"
        sql = (f"SELECT body, signature, key_id FROM records WHERE origin = {mark} AND channel = {mark} "
               f"AND seq >= {mark} AND seq <= {mark} ORDER BY seq")
        with self.read() as conn:
            # the driver's own cursor: SQLAlchemy's result rows cost more than the read itself here
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cur.execute(sql, (origin, channel, lo, hi))
                rows: list[tuple[bytes, bytes, bytes]] = list(cur.fetchall())
            finally:
                cur.close()
        if rows and type(rows[0][0]) is not bytes:  # a driver that hands out memoryviews: one copy each
            return [(bytes(b), bytes(s), bytes(k)) for b, s, k in rows]
        return rows

    def checkpoints(self, origin: str, channel: int, lo: int = 0, hi: int | None = None) -> list[CheckpointRow]:
        q = select(t.checkpoints).where(
            and_(t.checkpoints.c.origin == origin, t.checkpoints.c.channel == channel, t.checkpoints.c.seq >= lo)
        )
        if hi is not None:
            q = q.where(t.checkpoints.c.seq <= hi)
        with self.read() as conn:
            return [
                CheckpointRow(r.origin, r.channel, r.seq, bytes(r.body), bytes(r.signature), bytes(r.key_id))
                for r in conn.execute(q.order_by(t.checkpoints.c.seq))
            ]

    def first_checkpoint_at_or_after(self, origin: str, channel: int, seq: int) -> CheckpointRow | None:
        q = (
            select(t.checkpoints)
            .where(and_(t.checkpoints.c.origin == origin, t.checkpoints.c.channel == channel,
                        t.checkpoints.c.seq >= seq))
            .order_by(t.checkpoints.c.seq)
            .limit(1)
        )
        with self.read() as conn:
            r = conn.execute(q).first()
        return CheckpointRow(r.origin, r.channel, r.seq, bytes(r.body), bytes(r.signature), bytes(r.key_id)) if r else None

    def changes(self, after: int, limit: int = 5000, kinds: tuple[str, ...] | None = None, *,
                origin: str | None = None, any_origin_kinds: tuple[str, ...] = ()) -> list[Change]:
        """The change feed: records stored here (own, from children, from ancestors) after ``after``, in the
        order they arrived. ``kinds``: only kinds starting with one of these prefixes. ``origin``: only
        records born there, except kinds starting with one of ``any_origin_kinds`` (read from anywhere).
        Filtering happens in the database: a relay's services must not parse every record it relays."""
        return self.feed(after, limit, kinds, origin=origin, any_origin_kinds=any_origin_kinds)[0]

    def feed(self, after: int, limit: int = 5000, kinds: tuple[str, ...] | None = None, *,
             origin: str | None = None, any_origin_kinds: tuple[str, ...] = ()) -> tuple[list[Change], int]:
        """``changes`` plus where to resume: the last change's ``local_seq`` when the page is full, else
        the feed's high-water mark read *before* the query. Every row up to that mark is committed (the
        mark and its rows are written in one transaction), so a follower whose filter matches rarely
        skips what it has already scanned instead of scanning it again on every call."""
        out: list[Change] = []
        with self.read() as conn:
            high = int(conn.execute(select(t.meta.c.value).where(t.meta.c.key == "local_seq")).scalar() or 0)
            for table, down in ((t.records, False), (t.down_records, True)):
                q = select(table.c.local_seq, table.c.origin, table.c.channel, table.c.seq, table.c.kind,
                           table.c.dest, table.c.time_us, table.c.body).where(table.c.local_seq > after)
                if kinds:
                    q = q.where(or_(*[table.c.kind.startswith(k) for k in kinds]))
                if origin is not None:
                    q = q.where(or_(table.c.origin == origin, *[table.c.kind.startswith(k) for k in any_origin_kinds]))
                for r in conn.execute(q.order_by(table.c.local_seq).limit(limit)):
                    out.append(Change(*r[:7], bytes(r[7]), down))
        out.sort(key=lambda c: c.local_seq)
        out = out[:limit]
        if len(out) == limit:
            return out, out[-1].local_seq
        return out, max(high, after, out[-1].local_seq if out else 0)

    def incidents(self) -> list[Any]:
        with self.read() as conn:
            return list(conn.execute(select(t.incidents).order_by(t.incidents.c.id)))

    def keys(self, code: str | None = None) -> list[Any]:
        q = select(t.keys) if code is None else select(t.keys).where(t.keys.c.code == code)
        with self.read() as conn:
            return list(conn.execute(q))

    def count(self, table: str = "records") -> int:
        tbl = t.metadata.tables[table]
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(tbl)).scalar_one())

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.read() as conn:
            v = conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar()
        return v if v is not None else default


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see the module rules)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("fednode_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
