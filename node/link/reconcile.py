"""Reconciliation between a child and its parent: compare heads, repair the shorter side, locate forks.

Rules of this module:
- The child runs a reconciliation against its parent; the parent only answers (Heads, Fetch, Chains,
  and the Link stream for pushed tails). The comparison is ONE Heads round trip: the request carries
  the child's heads of every log of its subtree and its downward cursors, the reply the parent's.
- Per upward log (origin in the child's subtree), with child head (m, C) and parent head (p, P):

      m == p, C == P              equal: identical logs, nothing to do
      m == p, C != P              fork somewhere in 1..m
      m >  p, chain_child[p] == P parent behind: the child pushes m-p records (verified by the parent)
      m >  p, chain_child[p] != P fork somewhere in 1..p
      m <  p                      child behind: the child asks Chains([m]); equal -> Fetch the tail,
                                  different -> fork somewhere in 1..m

  Per downward log (an ancestor's log, records addressed into the child's subtree): the parent's
  highest seq addressed into the subtree above the child's cursor -> Fetch from the cursor.
- A fork is located by k-ary bisection on the stored chain hashes (Chains): chains agree at ``lo``
  and differ at ``hi``; each round trip asks for k probes between them. The first differing seq is
  ``hi`` when ``hi == lo + 1``.
- A fork is never repaired: nothing is overwritten. The conflicting branch (the parent's records from
  the fork seq up to its next checkpoint, exact bytes) is kept as the incident's evidence, and a red
  ``incident.fork`` alert record is appended to our own monitor log, so it travels up. The parent,
  which sees forks in the heads (equal seq or its own chain at the child's seq), writes its own alert
  with ``dest`` = the child, so it travels down too (and up, in the parent's own log).
- A known incident (same log, seq and peer) is reported again but not raised twice.
- Every run, on both sides, leaves a row in ``reconcile_reports``.
- All store work goes through a ``db(fn, *args)`` runner: direct in the CLI and in tests, the node's
  single database thread when the node runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, select

from node.core import codes, schema
from node.core.errors import FednodeError, OutsideSubtree
from node.core.records import MONITOR, SIGNED_CHANNELS, channel_name, now_us
from node.core.schema.reconcile import reports
from proto.fednode.v1 import fednode_pb2 as pb

# node.schema imports this module (for its table) and node.store/node.ledger import node.schema, so
# those two are imported where they are used, never at module level
if TYPE_CHECKING:
    from node.core.ledger import Ledger
    from node.core.store import Head, LogKey
    from node.runtime.process import NodeRuntime


def _head(seq: int = 0, chain: bytes | None = None) -> Head:
    from node.core.store import EMPTY_HEAD, Head

    return EMPTY_HEAD if chain is None else Head(seq, chain)

PROBES_PER_ROUND = 16  # bisection fan-out: log16(n) Chains round trips locate a fork
MAX_CHAINS_PER_REQUEST = 1024
FETCH_RECORDS = 2000  # records per Fetch batch (cut at checkpoints, like the links)
PUSH_BATCH_RECORDS = 10_000  # records per pushed batch, over several logs: each batch costs the parent a commit
DOWN_FETCH_LIMIT = 2000

Db = Callable[..., Any]


def direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class ReconcileError(FednodeError):
    code = "reconcile"


def log_name(key: LogKey) -> str:
    return f"{key[0]}/{channel_name(key[1])}"


# ---- sans I/O: the comparison table and the bisection ----------------------------------------------------

EQUAL, PUSH, PULL, FORK = "equal", "push", "pull", "fork"


@dataclass(frozen=True)
class LogPlan:
    key: LogKey
    action: str
    mine: Head
    theirs: Head
    fork_hi: int = 0  # FORK: chains are known to differ at this seq (and agree at 0)


def compare(mine: dict[LogKey, Head], theirs: dict[LogKey, Head],
            my_chain_at: dict[LogKey, bytes]) -> list[LogPlan]:
    """The table at the top of the module. ``my_chain_at[key]``: our chain at the peer's (shorter) seq,
    for every log where we are ahead (the shell reads them before calling)."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        empty = _head()
        m, p = mine.get(key, empty), theirs.get(key, empty)
        if m.seq == p.seq:
            out.append(LogPlan(key, EQUAL if m.chain == p.chain else FORK, m, p, fork_hi=m.seq))
        elif m.seq > p.seq:
            agree = p.seq == 0 or my_chain_at.get(key) == p.chain
            out.append(LogPlan(key, PUSH if agree else FORK, m, p, fork_hi=p.seq))
        else:
            out.append(LogPlan(key, PULL, m, p, fork_hi=m.seq))
    return out


@dataclass
class Bisection:
    """Chains agree at ``lo`` and differ at ``hi``; narrow until they are adjacent."""

    lo: int
    hi: int
    rounds: int = 0

    @property
    def done(self) -> bool:
        return self.hi <= self.lo + 1

    @property
    def first_different(self) -> int:
        return self.hi

    def probes(self, k: int = PROBES_PER_ROUND) -> list[int]:
        span = self.hi - self.lo
        if span <= k + 1:
            return list(range(self.lo + 1, self.hi))
        return sorted({self.lo + (span * i) // (k + 1) for i in range(1, k + 1)} - {self.lo, self.hi})

    def narrow(self, mine: dict[int, bytes], theirs: dict[int, bytes]) -> None:
        self.rounds += 1
        for s in sorted(mine):
            if not (self.lo < s < self.hi):
                continue
            if mine.get(s) == theirs.get(s) and theirs.get(s):
                self.lo = s
            else:
                self.hi = s
                break


# ---- the report -------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    peer: str
    role: str  # child | parent
    trigger: str = "demand"
    started_us: int = field(default_factory=now_us)
    finished_us: int = 0
    logs_compared: int = 0
    down_logs_compared: int = 0
    logs_equal: int = 0
    pushed: dict[str, int] = field(default_factory=dict)  # "origin/channel" -> records the peer accepted
    fetched: dict[str, int] = field(default_factory=dict)  # records we recovered from the peer
    down_fetched: dict[str, int] = field(default_factory=dict)
    peer_behind: dict[str, int] = field(default_factory=dict)  # parent role: what the child said it will push
    incidents: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    heads_round_trips: int = 0
    heads_bytes: int = 0  # serialised HeadsRequest + HeadsReply
    other_round_trips: int = 0  # Chains, Fetch and push calls
    elapsed_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)  # where the time went

    @property
    def records_repaired(self) -> int:
        return sum(self.pushed.values()) + sum(self.fetched.values()) + sum(self.down_fetched.values())

    @property
    def ok(self) -> bool:
        return not self.incidents and not self.errors

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ok=self.ok, records_repaired=self.records_repaired)
        return d


def save_report(ledger: Ledger, rep: RunReport) -> int:
    with ledger.store.write() as tx:
        res = tx.conn.execute(reports.insert().values(
            started_us=rep.started_us, finished_us=rep.finished_us or now_us(), peer=rep.peer, role=rep.role,
            trigger=rep.trigger, ok=1 if rep.ok else 0, logs_compared=rep.logs_compared + rep.down_logs_compared,
            records_repaired=rep.records_repaired, incidents=len(rep.incidents),
            report=json.dumps(rep.as_dict(), ensure_ascii=False),
        ))
        return int(res.inserted_primary_key[0])  # type: ignore[index]


def last_reports(ledger: Ledger, role: str | None = None, limit: int = 1) -> list[dict[str, Any]]:
    q = select(reports.c.report).order_by(reports.c.id.desc()).limit(limit)
    if role is not None:
        q = q.where(reports.c.role == role)
    with ledger.store.read() as conn:
        return [json.loads(r.report) for r in conn.execute(q)]


def last_per_peer(ledger: Ledger, role: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with ledger.store.read() as conn:
        for r in conn.execute(select(reports.c.peer, reports.c.report).where(reports.c.role == role)
                              .order_by(reports.c.id.desc()).limit(200)):
            out.setdefault(r.peer, json.loads(r.report))
    return out


# ---- store reads both sides use ---------------------------------------------------------------------------


def subtree_heads(ledger: Ledger, subtree: str) -> dict[LogKey, Head]:
    return {k: h for k, h in ledger.store.heads().items() if codes.within(k[0], subtree)}


def held_down_cursors(ledger: Ledger) -> dict[LogKey, int]:
    from node.link.streams import held_down_heads

    return {(o, c): s for (_k, o, c), s in held_down_heads(ledger).items()}


def down_cursors_for(ledger: Ledger, child: str) -> dict[LogKey, int]:
    from node.link.streams import down_heads_for

    return {(o, c): s for (_k, o, c), s in down_heads_for(ledger, child).items()}


def heads_to_pb(heads: dict[LogKey, Head]) -> list[pb.LogHead]:
    return [pb.LogHead(origin=o, channel=c, seq=h.seq, chain=h.chain)  # type: ignore[arg-type]
            for (o, c), h in sorted(heads.items())]


def cursors_to_pb(cursors: dict[LogKey, int]) -> list[pb.LogHead]:
    return [pb.LogHead(origin=o, channel=c, seq=s) for (o, c), s in sorted(cursors.items())]  # type: ignore[arg-type]


def heads_from_pb(heads: Sequence[pb.LogHead]) -> dict[LogKey, Head]:
    return {(h.origin, int(h.channel)): _head(int(h.seq), bytes(h.chain)) for h in heads}


def _segment_keys(ledger: Ledger, segs: Sequence[pb.Segment]) -> list[pb.KeyCertificate]:
    kids: set[bytes] = set()
    for s in segs:
        if s.checkpoint.key_id:
            kids.add(s.checkpoint.key_id)
        if int(s.channel) in SIGNED_CHANNELS:
            kids.update(r.key_id for r in s.records if r.key_id)
    return ledger.key_certificates_for(kids)


def read_tail(ledger: Ledger, origin: str, channel: int, after: int,
              max_records: int = FETCH_RECORDS) -> pb.Batch | None:
    """One batch of an upward log after ``after``, ending at a checkpoint (the receiver verifies it)."""
    seg = ledger.read_segment(origin, channel, after, max_records)
    if seg is None or not seg.records:
        return None
    return pb.Batch(segments=[seg], keys=_segment_keys(ledger, [seg]))


def tails_batch(ledger: Ledger, pending: dict[LogKey, int], max_records: int = PUSH_BATCH_RECORDS) -> pb.Batch | None:
    """One batch carrying the next segment of several logs (``pending[key]`` = what the peer holds),
    so a repair of many short tails costs few round trips. Logs with nothing more are dropped."""
    segs: list[pb.Segment] = []
    n = 0
    for key in list(pending):
        if n >= max_records:
            break
        seg = ledger.read_segment(key[0], key[1], pending[key], max_records - n)
        if seg is None or not seg.records:
            del pending[key]
            continue
        segs.append(seg)
        n += len(seg.records)
    if not segs:
        return None
    return pb.Batch(segments=segs, keys=_segment_keys(ledger, segs))


def after_ack(ack: pb.Ack, pending: dict[LogKey, int], out: dict[LogKey, int]) -> bool:
    """Move the push cursors by the parent's ack; a refused log, or one that did not move, stops (the
    report names it). False when the whole batch was refused (e.g. a key certificate)."""
    refused = {(e.origin, int(e.channel)) for e in ack.errors}
    for h in ack.heads:
        key = (h.origin, int(h.channel))
        if key in pending:
            out[key] = int(h.seq)
            if key in refused or int(h.seq) <= pending[key]:
                del pending[key]
            else:
                pending[key] = int(h.seq)
    return ack.ok or bool(ack.errors)


# ---- incidents ----------------------------------------------------------------------------------------------


def incident_id(origin: str, channel: int, seq: int, a: str, b: str) -> str:
    pair = "|".join(sorted((a, b)))
    return hashlib.sha256(f"fork|{origin}|{channel}|{seq}|{pair}".encode()).hexdigest()[:24]


def _known_incident(ledger: Ledger, origin: str, channel: int, seq: int | None, source: str) -> bool:
    t = schema.incidents
    q = select(t.c.id).where(and_(t.c.kind == "fork", t.c.origin == origin, t.c.channel == channel,
                                  t.c.source == source))
    if seq is not None:
        q = q.where(t.c.seq == seq)
    with ledger.store.read() as conn:
        return conn.execute(q.limit(1)).first() is not None


def raise_fork(ledger: Ledger, *, origin: str, channel: int, seq: int, peer: str, detail: str, evidence: bytes,
               dest: str = "", extra: dict[str, Any] | None = None, same_log_is_known: bool = False) -> dict[str, Any]:
    """Record a fork: an incident row with the conflicting bytes and a red alert record in our own
    monitor log (``dest`` set: it also travels down to that node), in ONE transaction. Idempotent:
    per (log, seq, peer), or per (log, peer) with ``same_log_is_known`` (the parent's view, where the
    seq is only an upper bound that moves while the child appends on its branch)."""
    source = f"reconcile:{peer}"
    inc = {"incident_id": incident_id(origin, channel, seq, ledger.code, peer), "kind": "fork", "level": "red",
           "category": "integrity", "origin": origin, "channel": channel_name(channel), "seq": seq,
           "peer": peer, "detected_by": ledger.code, "detail": detail, **(extra or {})}
    if _known_incident(ledger, origin, channel, None if same_log_is_known else seq, source):
        return {**inc, "known": True}

    def write_incident(tx: Any) -> None:
        tx.conn.execute(schema.incidents.insert().values(
            kind="fork", origin=origin, channel=channel, seq=seq, source=source, detail=detail,
            evidence=evidence, created_us=now_us()))

    from node.core.ledger import NewRecord

    ledger.append([NewRecord("incident.fork", {**inc, "detected_us": now_us()}, dest=dest, channel=MONITOR)],
                  also=write_incident)
    return {**inc, "known": False}


# ---- the parent's side: the three RPCs, synchronous (they run on the store thread) ----------------------


def _require_subtree(origin: str, child: str) -> None:
    if not codes.within(origin, child):
        raise OutsideSubtree(f"{child} asked for {origin}, which is outside its subtree", origin=origin,
                             fix="a child may read only its own subtree's logs and records addressed into it")


def heads_reply(ledger: Ledger, child: str, request: pb.HeadsRequest, *, save: bool = True) -> pb.HeadsReply:
    """Answer a child's heads exchange; note forks we can see ourselves, and what we are behind on."""
    mine = subtree_heads(ledger, child)
    reply = pb.HeadsReply(heads=heads_to_pb(mine), down_heads=cursors_to_pb(down_cursors_for(ledger, child)))
    rep = RunReport(peer=child, role="parent", trigger="peer")
    theirs = {k: h for k, h in heads_from_pb(request.heads).items() if codes.within(k[0], child)}
    rep.logs_compared = len(set(mine) | set(theirs))
    rep.down_logs_compared = len(reply.down_heads)
    rep.heads_round_trips = 1
    rep.heads_bytes = request.ByteSize() + reply.ByteSize()
    need_chain = {k: t.seq for k, t in theirs.items() if mine.get(k, _head()).seq > t.seq > 0}
    my_chain_at = {k: ledger.store.chains_at(k[0], k[1], [s]).get(s, b"") for k, s in need_chain.items()}
    # compare() from our side: PUSH means the child is behind, PULL means we are
    for plan in compare(mine, theirs, my_chain_at):
        if plan.action == EQUAL:
            rep.logs_equal += 1
        elif plan.action == PULL:
            rep.peer_behind[log_name(plan.key)] = plan.theirs.seq - plan.mine.seq
        elif plan.action == FORK:
            o, c = plan.key
            try:
                rep.incidents.append(raise_fork(
                    ledger, origin=o, channel=c, seq=plan.fork_hi, peer=child, dest=child,
                    detail=f"{child} holds a different {log_name(plan.key)} at or before seq {plan.fork_hi} "
                           f"(heads: ours {plan.mine.seq}, theirs {plan.theirs.seq})",
                    evidence=pb.LogHead(origin=o, channel=c, seq=plan.theirs.seq,  # type: ignore[arg-type]
                                        chain=plan.theirs.chain).SerializeToString(),
                    extra={"at_or_before": True}, same_log_is_known=True))
            except FednodeError as e:
                rep.errors.append(str(e))
    rep.finished_us = now_us()
    if save:
        save_report(ledger, rep)
    return reply


def fetch_batches(ledger: Ledger, child: str, request: pb.FetchRequest) -> Iterator[pb.Batch]:
    """What a child may fetch: a log of its subtree (segments ending at checkpoints), or an ancestor's
    log (ours or above), restricted to the records addressed into the child's subtree."""
    origin, channel = request.origin, int(request.channel)
    start = max(1, int(request.from_seq))
    end = int(request.to_seq) or None
    if codes.within(origin, child):
        after = start - 1
        while end is None or after < end:
            batch = read_tail(ledger, origin, channel, after)
            if batch is None:
                return
            yield batch
            after = int(pb.CheckpointBody.FromString(batch.segments[0].checkpoint.body).seq)
        return
    if not codes.within(ledger.code, origin) or channel not in SIGNED_CHANNELS:
        _require_subtree(origin, child)
    after = start - 1
    while True:
        recs, last = _down_records(ledger, origin, channel, after, end, child)
        if recs:
            seg = pb.Segment(origin=origin, channel=channel, records=recs)  # type: ignore[arg-type]
            yield pb.Batch(downward=True, segments=[seg], keys=_segment_keys(ledger, [seg]))
        if last <= after:
            return
        after = last


def _down_records(ledger: Ledger, origin: str, channel: int, after: int, end: int | None,
                  child: str) -> tuple[list[pb.SignedRecord], int]:
    """The next records of an ancestor's (or our own) log after ``after`` that are addressed into the
    child's subtree, and the last seq looked at. Our own log is in ``records``; an ancestor's records
    are held in ``down_records`` only."""
    table = schema.records if origin == ledger.code else schema.down_records
    q = (select(table.c.seq, table.c.dest, table.c.body, table.c.signature, table.c.key_id)
         .where(and_(table.c.origin == origin, table.c.channel == channel, table.c.seq > after, schema.addressed(table)))
         .order_by(table.c.seq).limit(DOWN_FETCH_LIMIT))
    if end is not None:
        q = q.where(table.c.seq <= end)
    out: list[pb.SignedRecord] = []
    last = after
    with ledger.store.read() as conn:
        for r in conn.execute(q):
            last = int(r.seq)
            if codes.within(r.dest, child):
                out.append(pb.SignedRecord(body=bytes(r.body), signature=bytes(r.signature), key_id=bytes(r.key_id)))
    return out, last


def chains_reply(ledger: Ledger, child: str, request: pb.ChainsRequest) -> pb.ChainsReply:
    _require_subtree(request.origin, child)
    seqs = [int(s) for s in request.seqs[:MAX_CHAINS_PER_REQUEST]]
    got = ledger.store.chains_at(request.origin, int(request.channel), seqs)
    return pb.ChainsReply(chains=[got.get(s, b"") for s in seqs])


async def serve_heads(rt: NodeRuntime, child: str, request: pb.HeadsRequest) -> pb.HeadsReply:
    reply = await rt.db(heads_reply, rt.ledger, child, request)
    rt.notify()  # an incident alert may have been appended
    return reply


async def serve_fetch(rt: NodeRuntime, child: str, request: pb.FetchRequest) -> AsyncIterator[pb.Batch]:
    it = fetch_batches(rt.ledger, child, request)
    while True:
        batch = await rt.db(next, it, None)
        if batch is None:
            return
        yield batch


async def serve_chains(rt: NodeRuntime, child: str, request: pb.ChainsRequest) -> pb.ChainsReply:
    return await rt.db(chains_reply, rt.ledger, child, request)


# ---- the child's side -------------------------------------------------------------------------------------


class Parent(Protocol):
    """The parent as the reconciliation sees it (in-process for tests, gRPC otherwise)."""

    code: str

    def heads(self, request: pb.HeadsRequest) -> pb.HeadsReply: ...

    def fetch(self, request: pb.FetchRequest) -> Iterator[pb.Batch]: ...

    def chains(self, request: pb.ChainsRequest) -> pb.ChainsReply: ...

    def push(self, ledger: Ledger, db: Db, tails: dict[LogKey, int]) -> dict[LogKey, int]:
        """Send our records after ``tails[key]`` for each log; return the parent's heads afterwards."""
        ...


class LocalParent:
    """The parent's ledger in the same process, through the same functions the RPCs call."""

    def __init__(self, ledger: Ledger, child: str) -> None:
        self.ledger = ledger
        self.child = child
        self.code = ledger.code

    def heads(self, request: pb.HeadsRequest) -> pb.HeadsReply:
        return heads_reply(self.ledger, self.child, pb.HeadsRequest.FromString(request.SerializeToString()))

    def fetch(self, request: pb.FetchRequest) -> Iterator[pb.Batch]:
        return fetch_batches(self.ledger, self.child, request)

    def chains(self, request: pb.ChainsRequest) -> pb.ChainsReply:
        return chains_reply(self.ledger, self.child, request)

    def push(self, ledger: Ledger, db: Db, tails: dict[LogKey, int]) -> dict[LogKey, int]:
        from node.link.streams import apply_batch

        out: dict[LogKey, int] = {}
        pending = dict(tails)
        while pending:
            batch = db(tails_batch, ledger, pending)
            if batch is None:
                break
            if not after_ack(apply_batch(self.ledger, batch, peer=self.child, from_child=True), pending, out):
                break
        return out


def _chains_at(ledger: Ledger, key: LogKey, seqs: list[int]) -> dict[int, bytes]:
    return ledger.store.chains_at(key[0], key[1], seqs)


def _accept_fetched(ledger: Ledger, batch: pb.Batch, parent: str, source: str) -> list[str]:
    errors: list[str] = []
    ledger.admit_keys(batch.keys, strict=False)  # a refused certificate refuses only what its key signed
    up = [s for s in batch.segments if s.checkpoint.body]
    down = [s for s in batch.segments if not s.checkpoint.body]
    if up:
        _res, errs = ledger.accept_many(up, sender_subtree=ledger.code, source=source)
        errors += [f"{log_name(k)}: {e}" for k, e in errs.items()]
    for s in down:
        try:
            ledger.accept_down(s.records, sender=parent, source=source)
        except FednodeError as e:
            errors.append(f"{s.origin}/{channel_name(int(s.channel))} (down): {e}")
    return errors


def reconcile_with_parent(ledger: Ledger, parent: Parent, *, db: Db = direct, trigger: str = "demand",
                          save: bool = True) -> RunReport:
    """One run against our parent: compare, repair both ways, locate and raise forks, persist the report."""
    t0 = time.monotonic()
    rep = RunReport(peer=parent.code, role="child", trigger=trigger)
    source = f"reconcile:{parent.code}"
    mine: dict[LogKey, Head] = db(subtree_heads, ledger, ledger.code)
    cursors: dict[LogKey, int] = db(held_down_cursors, ledger)
    request = pb.HeadsRequest(heads=heads_to_pb(mine), down_heads=cursors_to_pb(cursors))
    try:
        reply = parent.heads(request)
    except FednodeError as e:  # the parent is unreachable: the failed run is reported too
        rep.errors.append(str(e))
        rep.finished_us, rep.elapsed_s = now_us(), round(time.monotonic() - t0, 3)
        if save:
            db(save_report, ledger, rep)
        return rep
    rep.phases_s["heads"] = round(time.monotonic() - t0, 3)
    rep.heads_round_trips = 1
    rep.heads_bytes = request.ByteSize() + reply.ByteSize()
    theirs = {k: h for k, h in heads_from_pb(reply.heads).items() if codes.within(k[0], ledger.code)}
    ahead = {k: t.seq for k, t in theirs.items() if mine.get(k, _head()).seq > t.seq > 0}
    my_chain_at = {k: db(_chains_at, ledger, k, [s]).get(s, b"") for k, s in ahead.items()}
    plans = compare(mine, theirs, my_chain_at)
    rep.logs_compared = len(plans)

    forks: list[LogPlan] = []
    pushes: dict[LogKey, int] = {}
    for plan in plans:
        if plan.action == EQUAL:
            rep.logs_equal += 1
        elif plan.action == FORK:
            forks.append(plan)
        elif plan.action == PUSH:
            pushes[plan.key] = plan.theirs.seq
        elif plan.action == PULL:
            if plan.mine.seq > 0:
                rep.other_round_trips += 1
                got = parent.chains(pb.ChainsRequest(origin=plan.key[0], channel=plan.key[1],  # type: ignore[arg-type]
                                                     seqs=[plan.mine.seq]))
                if not got.chains or got.chains[0] != plan.mine.chain:
                    forks.append(LogPlan(plan.key, FORK, plan.mine, plan.theirs, fork_hi=plan.mine.seq))
                    continue
            _pull(ledger, parent, db, plan.key, plan.mine.seq, rep, source)

    rep.phases_s["compare_and_pull"] = round(time.monotonic() - t0 - sum(rep.phases_s.values()), 3)
    if pushes:
        rep.other_round_trips += 1
        try:
            after = parent.push(ledger, db, pushes)
        except FednodeError as e:
            rep.errors.append(str(e))
            after = {}
        for key, before in pushes.items():
            got_to = after.get(key, before)
            if got_to > before:
                rep.pushed[log_name(key)] = got_to - before
            if got_to < mine[key].seq:
                rep.errors.append(f"{log_name(key)}: the parent holds {got_to} of {mine[key].seq} records after the "
                                  "push; see its incidents and `fednode status` there")

    rep.phases_s["push"] = round(time.monotonic() - t0 - sum(rep.phases_s.values()), 3)
    for key, their_seq in heads_from_pb(reply.down_heads).items():
        rep.down_logs_compared += 1
        have = cursors.get(key, 0)
        if their_seq.seq > have:
            _pull_down(ledger, parent, db, key, have, rep, source)

    for plan in forks:
        try:
            rep.incidents.append(_locate_and_raise(ledger, parent, db, plan, rep))
        except FednodeError as e:
            rep.errors.append(f"{log_name(plan.key)}: {e}")
    rep.phases_s["down_and_forks"] = round(time.monotonic() - t0 - sum(rep.phases_s.values()), 3)
    rep.finished_us = now_us()
    rep.elapsed_s = round(time.monotonic() - t0, 3)
    if save:
        db(save_report, ledger, rep)
    return rep


def _pull(ledger: Ledger, parent: Parent, db: Db, key: LogKey, have: int, rep: RunReport, source: str) -> None:
    rep.other_round_trips += 1
    start = have
    for batch in parent.fetch(pb.FetchRequest(origin=key[0], channel=key[1], from_seq=have + 1)):  # type: ignore[arg-type]
        errs = db(_accept_fetched, ledger, batch, parent.code, source)
        if errs:
            rep.errors += errs
            break
    now_have = db(ledger.store.head, key[0], key[1]).seq
    if now_have > start:
        rep.fetched[log_name(key)] = now_have - start


def _pull_down(ledger: Ledger, parent: Parent, db: Db, key: LogKey, have: int, rep: RunReport, source: str) -> None:
    rep.other_round_trips += 1
    n = 0
    for batch in parent.fetch(pb.FetchRequest(origin=key[0], channel=key[1], from_seq=have + 1)):  # type: ignore[arg-type]
        before = db(ledger.store.count, "down_records")
        errs = db(_accept_fetched, ledger, batch, parent.code, source)
        n += db(ledger.store.count, "down_records") - before
        if errs:
            rep.errors += errs
            break
    if n:
        rep.down_fetched[log_name(key)] = n


def _locate_and_raise(ledger: Ledger, parent: Parent, db: Db, plan: LogPlan, rep: RunReport) -> dict[str, Any]:
    o, c = plan.key
    b = Bisection(0, plan.fork_hi)
    while not b.done:
        probes = b.probes()
        rep.other_round_trips += 1
        got = parent.chains(pb.ChainsRequest(origin=o, channel=c, seqs=probes))  # type: ignore[arg-type]
        theirs = {s: bytes(ch) for s, ch in zip(probes, got.chains, strict=False)}
        b.narrow(db(_chains_at, ledger, plan.key, probes), theirs)
    seq = b.first_different
    # the conflicting branch: the parent's records from the fork seq to its next checkpoint, exact bytes
    evidence = pb.Segment(origin=o, channel=c)  # type: ignore[arg-type]
    rep.other_round_trips += 1
    for batch in parent.fetch(pb.FetchRequest(origin=o, channel=c, from_seq=seq, to_seq=seq)):  # type: ignore[arg-type]
        if batch.segments:
            evidence = batch.segments[0]
        break
    ours = db(_chains_at, ledger, plan.key, [seq]).get(seq, b"")
    detail = (f"fork in {o}/{channel_name(c)} at seq {seq}: this node ({ledger.code}) and {parent.code} hold "
              f"different records there (heads: ours {plan.mine.seq}, theirs {plan.theirs.seq}); nothing was "
              f"overwritten, the other branch is kept as evidence")
    return dict(db(lambda: raise_fork(ledger, origin=o, channel=c, seq=seq, peer=parent.code, detail=detail,
                                      evidence=evidence.SerializeToString(),
                                      extra={"bisection_round_trips": b.rounds, "our_chain": ours.hex(),
                                             "our_head": plan.mine.seq, "their_head": plan.theirs.seq})))
