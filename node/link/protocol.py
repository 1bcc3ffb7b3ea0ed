"""The link protocol, sans I/O: what to send next on one link, and what an ack means.

Rules of this module (the gRPC shell in node/link/transport.py only moves messages):
- A link carries streams. A stream is either an upward *log* (a contiguous log, sent in segments that
  end at a checkpoint) or a *down* stream (records of one ancestor's log addressed into the peer's
  subtree, each signed). Each stream has a cursor: ``acked`` (what the peer confirmed it committed)
  and ``sent`` (what is in flight). ``sent`` moves when a batch goes out; ``acked`` moves only on acks.
- After Hello both cursors start from the heads the peer announced: after any crash or cut, resuming
  from the peer's committed heads means nothing is lost and, with idempotent appends, nothing is
  applied twice.
- Priority: each batch is filled channel by channel, control before monitor before bulk, so a control
  record waits at most behind the batches already in flight, never behind a backlog. When the window
  is full, one more batch may go out if it carries only control and monitor records (the priority
  slot), so those do not even wait for an ack of bulk.
- Memory is bounded: at most ``window`` batches are in flight; a batch holds at most ``max_records``.
- The receiver applies batches in arrival order, except that a batch of control and monitor records
  only jumps the queue when no earlier queued batch touches any of its logs (``next_to_apply``): logs
  are independent of each other, so no log ever sees its records out of order. Consecutive queued
  batches without control records may be applied together, in order, in one transaction
  (``next_group``); each is still acked on its own.
- A stream the peer refused (an error in its ack) is paused with its error and retried after
  ``retry_after_s``; the other streams go on.
- An error ack rewinds ``sent`` to ``acked`` for that stream; acks of batches sent before the rewind
  cannot move a cursor backwards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from node.core.records import BULK, CONTROL  # BULK: the one channel that never takes the priority slot

LOG, DOWN = "log", "down"
StreamKey = tuple[str, str, int]  # (LOG | DOWN, origin, channel)


@dataclass
class Cursor:
    acked: int = 0
    sent: int = 0


@dataclass
class Paused:
    code: str
    error: str
    until: float


@dataclass
class Part:
    """One stream's share of a batch: records after ``after`` up to ``last`` (inclusive)."""

    stream: StreamKey
    after: int
    last: int
    count: int


@dataclass
class Want:
    """The shell should read up to ``limit`` records of ``stream`` after ``after``."""

    stream: StreamKey
    after: int
    limit: int


@dataclass
class Outbox:
    window: int = 4
    max_records: int = 2000
    retry_after_s: float = 30.0
    cursors: dict[StreamKey, Cursor] = field(default_factory=dict)
    inflight: OrderedDict[int, list[Part]] = field(default_factory=OrderedDict)
    paused: dict[StreamKey, Paused] = field(default_factory=dict)
    next_batch_id: int = 1

    def reset(self, peer_heads: dict[StreamKey, int]) -> None:
        """Start (or restart) from the heads the peer announced in its Hello."""
        self.cursors = {k: Cursor(v, v) for k, v in peer_heads.items()}
        self.inflight.clear()

    def cursor(self, stream: StreamKey) -> Cursor:
        c = self.cursors.get(stream)
        if c is None:
            c = self.cursors[stream] = Cursor()
        return c

    @property
    def can_send(self) -> bool:
        """A batch of any channel may go out (room in the window, or the priority slot is free)."""
        return len(self.inflight) < self.window + 1

    def wants(self, local_heads: dict[StreamKey, int], now: float) -> list[Want]:
        """Streams with something to send, in priority order, sharing one batch's record budget; with
        the window full, only control and monitor streams (the priority slot).

        ``local_heads``: for logs, our head seq; for down streams, the highest seq we hold that is
        addressed into the peer's subtree."""
        out: list[Want] = []
        if len(self.inflight) >= self.window + 1:
            return out
        priority_only = len(self.inflight) >= self.window
        budget = self.max_records
        for stream in sorted(local_heads, key=lambda s: (s[2], s[0] != DOWN, s[1])):
            if budget <= 0 or (priority_only and stream[2] >= BULK):
                break
            p = self.paused.get(stream)
            if p is not None:
                if now < p.until:
                    continue
                del self.paused[stream]
            c = self.cursor(stream)
            pending = local_heads[stream] - c.sent
            if pending > 0:
                n = min(pending, budget)
                out.append(Want(stream, c.sent, n))
                budget -= n
        return out

    def sent(self, parts: list[Part]) -> int:
        batch_id = self.next_batch_id
        self.next_batch_id += 1
        for p in parts:
            c = self.cursor(p.stream)
            c.sent = max(c.sent, p.last)
        self.inflight[batch_id] = parts
        return batch_id

    def acked(self, batch_id: int, peer_heads: dict[StreamKey, int], errors: dict[StreamKey, tuple[str, str]],
              now: float) -> list[Part]:
        """Apply an ack. Returns the parts of the batch that the peer committed."""
        parts = self.inflight.pop(batch_id, [])
        for stream, seq in peer_heads.items():
            c = self.cursor(stream)
            if seq > c.acked:
                c.acked = seq
            if c.sent < c.acked:
                c.sent = c.acked
        for stream, (code, error) in errors.items():
            c = self.cursor(stream)
            c.sent = c.acked  # resend from what the peer holds, once the pause ends
            self.paused[stream] = Paused(code, error, now + self.retry_after_s)
        return [p for p in parts if p.stream not in errors]

    def backlog(self, local_heads: dict[StreamKey, int]) -> dict[StreamKey, int]:
        return {s: h - self.cursor(s).acked for s, h in local_heads.items() if h > self.cursor(s).acked}


@dataclass(frozen=True)
class Queued:
    """A received batch waiting to be applied, as ``next_to_apply`` sees it."""

    priority: bool  # control and monitor records only
    logs: frozenset[tuple[str, int]]  # (origin, channel) of its segments


def next_to_apply(queue: Sequence[Queued]) -> int:
    """Index of the batch to apply next: the first priority batch none of whose logs an earlier queued
    batch touches, else the oldest."""
    earlier: set[tuple[str, int]] = set()
    for i, q in enumerate(queue):
        if q.priority and earlier.isdisjoint(q.logs):
            return i
        earlier |= q.logs
    return 0


def next_group(queue: Sequence[Queued], sizes: Sequence[int], max_bytes: int) -> list[int]:
    """Indexes of the batches to apply next, together: ``next_to_apply``'s pick and, when that is the
    oldest, the queued batches right after it while their ``sizes`` add up to at most ``max_bytes``.
    A batch with control records goes alone and ends a group: a key record it carries changes how every
    later batch is verified, so those are verified only once it is committed."""
    first = next_to_apply(queue)
    if first != 0 or _has_control(queue[0]):
        return [first]
    group, total = [0], sizes[0]
    for i in range(1, len(queue)):
        if _has_control(queue[i]) or total + sizes[i] > max_bytes:
            break
        group.append(i)
        total += sizes[i]
    return group


def _has_control(q: Queued) -> bool:
    return any(channel == CONTROL for _origin, channel in q.logs)
