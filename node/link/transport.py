"""gRPC shells around the link protocol: mutual TLS, the Federation service, the child's dialler.

Rules of this module:
- the peer's identity is the URI SAN of its TLS client certificate (auth_context), never anything it
  says in a message; a child must be a direct child of this node in the certificate tree, and the whole
  chain it presented must pass ``pki.validate_chain`` (each CA certifies only its own subtree) against
  this node's root: the TLS stack only proves the chain reaches the root, and any node's CA reaches it;
- a child dials its parent by the parent's hierarchical DNS name (node/core/pki.py), falling back to the
  flat legacy name when the handshake fails, so parents whose certificates predate the scheme answer;
- ports are opened exclusively (``grpc.so_reuseport`` 0): a second node on a busy port fails to bind;
- a link session reads at most ``INBOX_BATCHES`` batches ahead of what it has applied (several that
  wait are applied in one transaction, ``APPLY_BYTES`` at most, each acked on its own), and all the
  node's sessions together hold at most the node's receive budget (``rt.receive_budget``,
  node/link/budget.py: ``[link] receive_budget_mb``, granted in turn so no child starves): past either
  a session stops reading and the peer is held back by HTTP/2 flow control, whose window per stream is
  fixed (``STREAM_WINDOW``: gRPC's BDP probing would grow it to megabytes per link, outside the budget);
  once a batch is applied nothing of the session keeps it (no loop's frame holds the last one);
- batches travel compressed when both sides agree in Hello (node/link/packing.py: the child offers,
  the parent picks); a packed batch is decoded, bounded by ``MAX_MESSAGE``, before anything in it is
  verified, and one that decodes to more than it says or than the limit ends the link
  (``packed_batch_refused`` in the log, the link's error in status); the node goes on;
- grpc.aio objects are created inside the running loop; blocking store work goes to the runtime's
  database thread (``rt.db``);
- a session wakes on change, not on a timer: it takes the heads it may send from the store's heads
  view once, when the link comes up, and then follows the changes the writer announces (``changed``);
  an idle link costs nothing but keepalives (and, from a child, a report every ``REPORT_EVERY_S``);
- keepalive: the client pings every 20 s; the server permits pings every 10 s, so links never drop
  with too_many_pings; message limits are explicit on both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from cryptography import x509

from node.core import pki
from node.core.errors import FednodeError, OutsideSubtree
from node.core.records import BULK, now_us
from node.core.store import HeadChange
from node.link import packing, streams
from node.link.protocol import DOWN, LOG, Outbox, Queued, StreamKey, next_group
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg

if TYPE_CHECKING:
    from node.runtime.process import LinkState, NodeRuntime

log = structlog.get_logger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024
# HTTP/2 receive window of every stream, fixed: with BDP probing gRPC grows it to max(4 MB, 2 x BDP) per
# connection, so each child could park its whole window of batches (~1 MB of frames) in this node's gRPC
# buffers, outside the receive budget: 45 MB of a city's peak with 50 children. A read that is waiting
# opens the window to the whole message anyway, so a link that reads keeps its pace.
STREAM_WINDOW = 64 * 1024
FLOW_CONTROL = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW)]
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    *FLOW_CONTROL,
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC sets SO_REUSEPORT by default: a second node on a busy port would bind it and share connections
    ("grpc.so_reuseport", 0),
    *FLOW_CONTROL,
]
REPORT_EVERY_S = 5.0
# the longest an idle session sleeps without a change, an ack or a pause ending (a safety net only)
IDLE_WAKE_S = 30.0
# the dialler's longest wait between attempts (before jitter, x0.5..1.5): after an outage the backlog
# starts draining within ~10 s of the parent's return; a hundred children redialling that often cost a
# down parent's host nothing worth saving (30 s made the catch-up bench wait 17-19 s for its reconnect)
MAX_BACKOFF_S = 10.0
# batches a session holds received but not yet applied. A peer keeping to the link protocol has at most
# its window (at most 16, node/core/config.py) + the priority slot unacknowledged, so it is never held back;
# one that floods is, by HTTP/2 flow control, instead of growing this node's memory without bound.
INBOX_BATCHES = 16 + 1
# received batches applied together, in one transaction and one hop to the database thread, when several
# wait (protocol.next_group): at most this many of their bytes, about two 4,000-record batches, so the
# rows being verified stay a few megabytes and a priority batch waits behind little more than one apply
APPLY_BYTES = 4 * 1024 * 1024
# (see ``DbTurns``) the node's turns on its database thread, per runtime
_DB_TURNS: weakref.WeakKeyDictionary[Any, DbTurns] = weakref.WeakKeyDictionary()
# how long a validated peer chain is trusted before it is checked again
PEER_CHAIN_CACHE_S = 60.0
PEER_CHAIN_CACHE_MAX = 256


def server_credentials(rt: NodeRuntime) -> grpc.ServerCredentials:
    h = rt.home
    chain = h.key_path("tls.crt").read_bytes() + h.key_path("chain.pem").read_bytes()
    return grpc.ssl_server_credentials(
        [(h.key_path("tls.key").read_bytes(), chain)],
        root_certificates=h.key_path("root.crt").read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(rt: NodeRuntime) -> grpc.ChannelCredentials:
    h = rt.home
    chain = h.key_path("tls.crt").read_bytes() + h.key_path("chain.pem").read_bytes()
    return grpc.ssl_channel_credentials(
        root_certificates=h.key_path("root.crt").read_bytes(),
        private_key=h.key_path("tls.key").read_bytes(),
        certificate_chain=chain,
    )


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        return None
    return pki.cert_from_pem(pem[0])


class PeerChains:
    """Validates the chain a peer presented in TLS with ``pki.validate_chain`` against this node's root,
    caching the outcome a short while per presented chain (the same peer calls Heads/Fetch/Chains often)."""

    def __init__(self, root: x509.Certificate) -> None:
        self.root = root
        self._cache: dict[tuple[bytes, bytes], tuple[float, str | None, str]] = {}

    def check(self, context: grpc.aio.ServicerContext) -> tuple[str | None, str, str]:
        """(path or None, who, why): the peer's validated tree path; else None, the path its leaf
        claims (or a description) and why it is refused."""
        auth = context.auth_context()
        leaf_pem = b"".join(auth.get("x509_pem_cert") or [])
        chain_pem = b"".join(auth.get("x509_pem_cert_chain") or [])
        if not leaf_pem:
            return None, "a peer without a certificate", "it presented no client certificate"
        key = (leaf_pem, chain_pem)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < PEER_CHAIN_CACHE_S:
            return hit[1], hit[2], ""
        path, who, why = self._validate(leaf_pem, chain_pem)
        if len(self._cache) >= PEER_CHAIN_CACHE_MAX:
            self._cache.clear()
        if path is not None:
            self._cache[key] = (now, path, who)
        return path, who, why

    def _validate(self, leaf_pem: bytes, chain_pem: bytes) -> tuple[str | None, str, str]:
        try:
            leaf = pki.cert_from_pem(leaf_pem)
        except ValueError as e:
            return None, "a peer with an unreadable certificate", str(e)
        try:
            who = pki.path_of_cert(leaf)
        except pki.CertificateError as e:
            return None, leaf.subject.rfc4514_string(), e.message
        try:
            presented = pki.certs_from_pem(chain_pem)
            chain = pki.chain_from_presented(leaf, presented, self.root)
            return pki.validate_chain(leaf, chain, self.root), who, ""
        except FednodeError as e:
            return None, who, e.message
        except ValueError as e:
            return None, who, f"unreadable certificate chain: {e}"


class DbTurns:
    """Turns of the links on the node's one database thread: children's applies go there one at a time,
    in arrival order, and none while the uplink reads a batch (issue 26).

    The thread serves whatever was submitted first. Each child's link kept an apply queued there, so with
    N children sending the uplink's read waited behind N applies, and the parent got one batch per N
    applies: in a fan-in of 10 children of 5,000 records the province held nothing new for the first
    2.4 s of the drain and trailed the city by 3.3-3.6 s; with 50, it got the records only once the city
    held them all. Now the uplink's read waits behind the one apply being done, and the next child's
    apply waits for the read, so the uplink forwards a batch per apply (about what an apply stores:
    relayed segments go whole). What a waiting child holds stays in its inbox, charged to the receive
    budget as before; nothing is read, applied or acked in any other order within a link."""

    def __init__(self) -> None:
        self._applies = asyncio.Lock()  # fair: granted in arrival order
        self._uplink_idle = asyncio.Event()
        self._uplink_idle.set()
        self._uplink_reads = 0

    @contextlib.asynccontextmanager
    async def apply(self) -> AsyncIterator[None]:
        """Around a child's apply on the database thread."""
        async with self._applies:
            await self._uplink_idle.wait()
            yield

    @contextlib.contextmanager
    def uplink_read(self) -> Iterator[None]:
        """Around the uplink's read on the database thread: no child's apply is submitted meanwhile."""
        self._uplink_reads += 1
        self._uplink_idle.clear()
        try:
            yield
        finally:
            self._uplink_reads -= 1
            if not self._uplink_reads:
                self._uplink_idle.set()

    @staticmethod
    def of(rt: Any) -> DbTurns:
        turns = _DB_TURNS.get(rt)
        if turns is None:
            turns = _DB_TURNS[rt] = DbTurns()
        return turns


class ProtocolViolation(ConnectionError):
    """The peer broke the link protocol (no Hello first, a second Hello): the stream ends with INVALID_ARGUMENT."""


class Session:
    """One connected link, either side. The outbox decides; this moves messages."""

    def __init__(self, rt: NodeRuntime, state: LinkState, read: Callable[[], Awaitable[Any]],
                 write: Callable[[pb.LinkMessage], Awaitable[None]]) -> None:
        self.rt = rt
        self.state = state
        self.peer = state.peer
        self.is_child_side = state.direction == "up"  # we are the child; we send our logs up
        self._read = read
        self._write_raw = write
        self._write_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.outbox = Outbox(window=rt.window, max_records=rt.batch_records)
        self.heads: dict[StreamKey, int] = {}  # what we may send: from the heads view, then its changes
        # logs of the batch being applied: the peer holds them, the writer must not echo them back before
        # ``_apply`` has moved their cursors
        self._applying: set[StreamKey] = set()
        self.sent_at: dict[int, float] = {}
        self.established = False  # Hello exchanged: the dialler resets its backoff
        self.codec = ""  # the compression chosen in Hello ("" = plain batches)
        self.budget = rt.receive_budget
        self.turns = DbTurns.of(rt)
        state.outbox = self.outbox

    async def write(self, msg: pb.LinkMessage) -> None:
        async with self._write_lock:
            await self._write_raw(msg)
        self.state.last_out_us = now_us()

    async def local_heads(self) -> dict[StreamKey, int]:
        """What this link may send, from the heads view: our subtree's logs (to the parent); the child's
        subtree's logs and what is addressed into it (to a child)."""
        if self.is_child_side:
            return await self.rt.db(streams.up_heads, self.rt.ledger)

        def both() -> dict[StreamKey, int]:
            h = streams.subtree_heads(self.rt.ledger, self.peer)
            h.update(streams.down_heads_for(self.rt.ledger, self.peer))
            return h

        return await self.rt.db(both)

    def changed(self, changes: list[HeadChange]) -> None:
        """(On the loop.) Committed changes: move the heads this link follows, wake it if one moved."""
        moved = False
        for ch in changes:
            k = streams.interested(ch, self.rt.code, self.peer, uplink=self.is_child_side)
            if k is not None and ch.seq > self.heads.get(k, 0):
                self.heads[k] = ch.seq
                moved = True
        if moved:
            self.wake.set()

    async def hello(self) -> pb.Hello:
        setting = self.rt.home.config.compression
        if self.is_child_side:
            heads = await self.rt.db(streams.up_heads, self.rt.ledger)
            down = await self.rt.db(streams.held_down_heads, self.rt.ledger)
            offers = packing.offered(setting)
            await self.write(pb.LinkMessage(hello=pb.Hello(node_code=self.rt.code, heads=streams.to_heads_pb(heads),
                                                           down_heads=streams.to_heads_pb(down),
                                                           software="fednode", compressions=offers)))
            msg = await self._read()
            if msg is grpc.aio.EOF or msg is None or not msg.HasField("hello"):
                raise ConnectionError("the parent closed the link before its Hello")
            chosen = msg.hello.compression
            if chosen and chosen not in offers:
                raise ProtocolViolation(f"the parent {self.peer} chose compression {chosen!r}, which this node "
                                        f"did not offer ({', '.join(offers) or 'none'})")
            self._set_codec(chosen)
            return msg.hello
        msg = await self._read()
        if msg is grpc.aio.EOF or msg is None:
            raise ConnectionError("the child closed the link before its Hello")
        if not msg.HasField("hello"):
            raise ProtocolViolation(f"{self.peer} must open the link with Hello, not {msg.WhichOneof('msg')}")
        heads = await self.rt.db(streams.subtree_heads, self.rt.ledger, self.peer)
        chosen = packing.choose(msg.hello.compressions, setting)
        await self.write(pb.LinkMessage(hello=pb.Hello(node_code=self.rt.code, heads=streams.to_heads_pb(heads),
                                                       software="fednode", compression=chosen)))
        self._set_codec(chosen)
        return msg.hello

    def _set_codec(self, codec: str) -> None:
        self.codec = codec
        self.state.compression = codec or "none"

    async def run(self) -> None:
        peer_hello = await self.hello()
        peer_heads = streams.from_heads_pb(peer_hello.heads, LOG)
        peer_heads.update(streams.from_heads_pb(peer_hello.down_heads, DOWN))
        self.outbox.reset(peer_heads)
        self.established = True
        self.state.connected(peer_heads)
        if self.is_child_side:
            await self.rt.after_hello(peer_heads)
        self.rt.sessions.add(self)  # from here on it hears every change; the snapshot merges with them
        for k, seq in (await self.local_heads()).items():
            if seq > self.heads.get(k, 0):
                self.heads[k] = seq
        self.state.local_heads = self.heads
        reader = asyncio.create_task(self._reader())
        try:
            await self._writer(reader)
        finally:
            self.rt.sessions.discard(self)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _writer(self, reader: asyncio.Task[None]) -> None:
        last_report = 0.0
        while not reader.done():
            if self.outbox.can_send:
                heads = self.heads if not self._applying else \
                    {k: v for k, v in self.heads.items() if k not in self._applying}
                wants = self.outbox.wants(heads, time.monotonic())
                if wants:
                    # read straight into the message that goes out: LinkMessage(batch=...) copies every record
                    msg = pb.LinkMessage()
                    with self.turns.uplink_read() if self.is_child_side else contextlib.nullcontext():
                        batch, parts = await self.rt.db(streams.read_batch, self.rt.ledger, wants, self.peer,
                                                        self.rt.relay if self.is_child_side else None, msg.batch)
                    if parts:
                        batch.batch_id = self.outbox.sent(parts)
                        if batch.segments:
                            self.sent_at[batch.batch_id] = time.monotonic()
                            # on the loop, not in a pool thread: each pool thread's malloc arena would keep its
                            # own megabytes of frames (a few ms per 4,000-record batch)
                            packed = packing.packed_batch(batch, self.codec)
                            await self.write(msg if packed is None else pb.LinkMessage(packed=packed))
                            self.state.batches_out += 1
                            self.state.records_out += sum(len(s.records) for s in batch.segments)
                            self.state.last_records_us = now_us()
                            for seg in batch.segments:
                                out = self.state.channel_records_out
                                out[seg.channel] = out.get(seg.channel, 0) + len(seg.records)
                        else:
                            self.outbox.inflight.pop(batch.batch_id, None)
                        continue
            if self.is_child_side and time.monotonic() - last_report > REPORT_EVERY_S:
                last_report = time.monotonic()
                await self.write(pb.LinkMessage(report=pb.LinkReport(
                    node_code=self.rt.code, time_us=now_us(),
                    json=json.dumps(await self.rt.link_report(), ensure_ascii=False).encode())))
            self.wake.clear()
            waiter = asyncio.create_task(self.wake.wait())
            try:
                await asyncio.wait({waiter, reader}, timeout=self._sleep_for(last_report),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        reader.result()  # re-raise the reader's error, if any

    def _sleep_for(self, last_report: float) -> float:
        """Until the next thing a timer must do: a report (from a child), a paused stream's retry."""
        now = time.monotonic()
        until = now + IDLE_WAKE_S
        if self.is_child_side:
            until = min(until, last_report + REPORT_EVERY_S)
        for p in self.outbox.paused.values():
            until = min(until, p.until)
        return max(0.05, until - now)

    async def _reader(self) -> None:
        """Read messages and apply batches side by side, so a priority batch that arrives while bulk
        ones queue is applied as soon as the current apply ends (node/link/protocol.py ``next_to_apply``)."""
        self._inbox: list[tuple[Queued, pb.Batch, int]] = []  # with the bytes charged to the budget
        self._inbox_ready = asyncio.Event()
        self._inbox_room = asyncio.Event()  # set while the inbox holds fewer than INBOX_BATCHES
        self._inbox_room.set()
        self._peer_done = False  # the peer half-closed: apply and ack what it sent, then end
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop())
                tg.create_task(self._apply_loop())
        except BaseExceptionGroup as eg:  # the callers expect the error itself (ConnectionError, ...)
            raise eg.exceptions[0] from None
        finally:
            for _q, _b, n in self._inbox:
                self.budget.release(n)
            self._inbox.clear()

    async def _read_loop(self) -> None:
        while True:
            # back-pressure: with the inbox full, stop reading; what the peer sends waits in the transport
            while len(self._inbox) >= INBOX_BATCHES:
                self._inbox_room.clear()
                await self._inbox_room.wait()
            if not await self._receive():
                self._peer_done = True
                self._inbox_ready.set()
                return

    async def _receive(self) -> bool:
        """Read one message and act on it; False at the end of the stream. The message and the batch it
        carries are locals of this call only: held by the loop's frame, the last batch of every link
        stayed alive, applied and out of the budget, while the link waited for its next message (with 50
        children, 50 decoded batches of ~1.8 MB beside the budget's 8 MB)."""
        msg = await self._read()
        if msg is grpc.aio.EOF or msg is None:
            return False
        self.state.last_in_us = now_us()
        which = msg.WhichOneof("msg")
        if which in ("batch", "packed"):
            batch, n = await self._admit(msg)
            segs = batch.segments
            queued = Queued(priority=bool(segs) and all(int(s.channel) < BULK for s in segs),
                            logs=frozenset((s.origin, int(s.channel)) for s in segs))
            self._inbox.append((queued, batch, n))
            self._inbox_ready.set()
        elif which == "ack":
            self._on_ack(msg.ack)
        elif which == "report":
            try:
                self.rt.child_reports[self.peer] = json.loads(msg.report.json)
            except ValueError:
                log.warning("bad_link_report", peer=self.peer)
        elif which == "hello":
            raise ProtocolViolation(f"{self.peer} sent a second Hello")
        return True

    async def _admit(self, msg: pb.LinkMessage) -> tuple[pb.Batch, int]:
        """A received batch, its bytes charged to the node's receive budget (waiting, in turn, for room:
        meanwhile nothing more is read from this peer). A packed one is decoded once admitted, so what
        waits for room is only its compressed frame; one that is not what it says ends the link."""
        if msg.HasField("batch"):
            n = msg.batch.ByteSize()
            await self.budget.acquire(n)
            return msg.batch, n
        packed = msg.packed
        try:
            packing.check(packed, self.codec, MAX_MESSAGE)
        except packing.PackRefused as e:
            raise self._refused(packed, e) from None
        n = int(packed.size)
        await self.budget.acquire(n)
        try:
            return packing.unpack(packed, self.codec, MAX_MESSAGE), n  # on the loop: see ``_writer``
        except packing.PackRefused as e:
            self.budget.release(n)
            raise self._refused(packed, e) from None
        except BaseException:
            self.budget.release(n)
            raise

    def _refused(self, packed: pb.PackedBatch, e: packing.PackRefused) -> ProtocolViolation:
        log.error("packed_batch_refused", peer=self.peer, codec=packed.codec, size=int(packed.size),
                  frame_bytes=len(packed.data), limit=MAX_MESSAGE, reason=str(e))
        return ProtocolViolation(f"{self.peer} sent {e}: refused, the link is ended (fix: a peer that "
                                 f"packs batches must send exactly what it declares, under {MAX_MESSAGE:,} bytes)")

    async def _apply_loop(self) -> None:
        while True:
            await self._inbox_ready.wait()
            if not self._inbox:
                if self._peer_done:
                    raise ConnectionError(f"{self.peer} closed the link")
                self._inbox_ready.clear()
                continue
            await self._apply_next()

    async def _apply_next(self) -> None:
        """Apply the next group of the inbox and give its bytes back to the budget. The group is a local
        of this call (see ``_receive``): the loop's frame kept it alive while the link waited for more."""
        picked = next_group([q for q, _b, _n in self._inbox], [n for _q, _b, n in self._inbox], APPLY_BYTES)
        group = [self._inbox[i] for i in picked]
        for i in sorted(picked, reverse=True):
            del self._inbox[i]
        self._inbox_room.set()
        try:
            await self._apply([b for _q, b, _n in group], [n for _q, _b, n in group])
        finally:
            for _q, _b, n in group:
                self.budget.release(n)

    async def _apply(self, batches: list[pb.Batch], sizes: list[int]) -> None:
        t0 = time.monotonic()
        self._applying = {(LOG, s.origin, int(s.channel)) for b in batches for s in b.segments if s.checkpoint.body}
        try:
            async with contextlib.nullcontext() if self.is_child_side else self.turns.apply():
                acks = await self.rt.db(streams.apply_batches, self.rt.ledger, batches, peer=self.peer,
                                        from_child=not self.is_child_side, relay=self.rt.relay, sizes=sizes)
        except BaseException:
            self._applying = set()
            raise
        self.rt.instruments.applied(self.peer, self.state.direction, time.monotonic() - t0)
        got, n = self.state.channel_records_in, 0
        for seg in (s for b in batches for s in b.segments):
            got[seg.channel] = got.get(seg.channel, 0) + len(seg.records)
            n += len(seg.records)
        self.state.records_in += n
        if n:
            self.state.last_records_us = now_us()
        # the peer evidently holds what it just sent us: never echo it back
        for ack in acks:
            for h in ack.heads:
                c = self.outbox.cursor((LOG, h.origin, int(h.channel)))
                c.acked = max(c.acked, h.seq)
                c.sent = max(c.sent, c.acked)
        self._applying = set()
        self.wake.set()  # what else moved meanwhile on those logs goes now
        for ack in acks:
            if ack.errors:
                for e in ack.errors:
                    log.warning("batch_refused", peer=self.peer, origin=e.origin, channel=int(e.channel),
                                code=e.error_code, error=e.error)
                self.state.last_error = ack.error
            await self.write(pb.LinkMessage(ack=ack))
        self.rt.notify()

    def _on_ack(self, ack: pb.Ack) -> None:
        now = time.monotonic()
        sent = self.sent_at.pop(ack.batch_id, None)
        if sent is not None:
            self.state.rtt_ms = (now - sent) * 1000
            self.rt.instruments.committed(self.peer, self.state.direction, now - sent)
        heads = streams.from_heads_pb(ack.heads, LOG)
        heads.update(streams.from_heads_pb(ack.down_heads, DOWN))
        errors: dict[StreamKey, tuple[str, str]] = {}
        for e in ack.errors:
            for kind in (LOG, DOWN):
                errors[(kind, e.origin, int(e.channel))] = (e.error_code, e.error)
        if not ack.ok and not ack.errors:
            # the whole batch was refused (e.g. a key certificate): retry every stream in it later
            for p in self.outbox.inflight.get(ack.batch_id, []):
                errors[p.stream] = (ack.error_code, ack.error)
        self.outbox.acked(ack.batch_id, heads, errors, now)
        if ack.error:
            self.state.last_error = f"refused by {self.peer}: {ack.error}"
            log.warning("peer_refused", peer=self.peer, code=ack.error_code, error=ack.error)
        self.wake.set()


class FederationService(pbg.FederationServicer):
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        root = rt.home.root()
        self.chains = PeerChains(root) if root is not None else None

    def _authorise_child(self, context: grpc.aio.ServicerContext) -> tuple[str | None, str, str]:
        """(child code or None, who, why refused). A child is a peer whose presented TLS chain passes
        ``pki.validate_chain`` against this node's root and whose path is this node's path + its code."""
        if self.chains is None:
            return None, "a peer", f"{self.rt.path} has no root certificate installed"
        path, who, why = self.chains.check(context)
        if path is None:
            return None, who, f"its certificate chain is refused: {why}"
        code = path.rsplit("/", 1)[-1]
        if path != f"{self.rt.path}/{code}":
            return None, who, f"{who} is not a direct child of {self.rt.path}; enrol it under its own parent"
        return code, who, ""

    async def _refuse_peer(self, context: grpc.aio.ServicerContext, rpc: str, who: str, why: str) -> None:
        log.warning("link_refused", peer=who, rpc=rpc, reason=why)
        self.rt.refused_peers[who] = now_us()
        self.rt.instruments.refused(rpc)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} refused by {self.rt.path}: {why}")

    async def Link(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        child, who, why = self._authorise_child(context)
        if child is None:
            await self._refuse_peer(context, "Link", who, why)
            return
        state = self.rt.child_state(child)
        state.set("connecting")
        session = Session(self.rt, state, context.read, context.write)
        try:
            await session.run()
        except ProtocolViolation as e:
            state.down(str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (ConnectionError, asyncio.CancelledError) as e:
            state.down(str(e) or type(e).__name__)
        except grpc.aio.AioRpcError as e:
            state.down(f"{e.code().name}: {e.details()}")
        except Exception as e:
            log.exception("link_failed", peer=child)
            state.down(f"{type(e).__name__}: {e}")

    # Reconciliation RPCs: the logic lives in node/link/reconcile.py (serve_heads, serve_fetch, serve_chains).

    async def _child_or_abort(self, context: grpc.aio.ServicerContext, rpc: str) -> str:
        child, who, why = self._authorise_child(context)
        if child is None:
            await self._refuse_peer(context, rpc, who, why)
        assert child is not None
        return child

    async def _refuse(self, context: grpc.aio.ServicerContext, e: FednodeError) -> None:
        code = grpc.StatusCode.PERMISSION_DENIED if isinstance(e, OutsideSubtree) else grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(e))

    async def Heads(self, request: pb.HeadsRequest, context: grpc.aio.ServicerContext) -> pb.HeadsReply:  # noqa: N802
        from node.link import reconcile

        child = await self._child_or_abort(context, "Heads")
        try:
            return await reconcile.serve_heads(self.rt, child, request)
        except FednodeError as e:
            await self._refuse(context, e)
            raise

    async def Fetch(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from node.link import reconcile

        child = await self._child_or_abort(context, "Fetch")
        try:
            async for batch in reconcile.serve_fetch(self.rt, child, request):
                yield batch
        except FednodeError as e:
            await self._refuse(context, e)

    async def Chains(self, request: pb.ChainsRequest, context: grpc.aio.ServicerContext) -> pb.ChainsReply:  # noqa: N802
        from node.link import reconcile

        child = await self._child_or_abort(context, "Chains")
        try:
            return await reconcile.serve_chains(self.rt, child, request)
        except FednodeError as e:
            await self._refuse(context, e)
            raise


# what grpc.aio reports when a message's write fails locally (the stream already closed by the peer)
LOCAL_WRITE_FAILED = "Internal error from Core"


def failure_details(code: grpc.StatusCode, details: str, established: bool) -> str:
    """What a failed link says of why. A parent refuses a child as the stream opens, before reading; when
    our Hello's write meets that closed stream, grpc reports the write (INTERNAL, ``LOCAL_WRITE_FAILED``)
    in place of the parent's status (about 1 in 300 refusals on this machine)."""
    if code is grpc.StatusCode.INTERNAL and details == LOCAL_WRITE_FAILED and not established:
        return ("the parent closed the link as it opened, before our Hello; most often a refusal, which the "
                "parent's log names (link_refused); the next attempt may show its answer")
    return details


def _tls_failure(error: str) -> bool:
    """Whether a failed dial looks like the TLS handshake or the server name check, not a down parent."""
    e = error.lower()
    return any(w in e for w in ("hostname", "peer name", "handshake", "certificate", "ssl", "tls"))


async def dial_parent(rt: NodeRuntime, state: LinkState) -> None:
    """Keep one link to the parent up, forever: reconnect with exponential backoff and jitter."""
    backoff = 0.5
    creds = channel_credentials(rt)
    # the parent's hierarchical name first; a parent whose certificate predates it answers to the flat
    # one. Trying both costs nothing in trust: which names a certificate may carry is bounded by its
    # issuers' NameConstraints (node/core/pki.py), not by the name asked for.
    names = pki.parent_server_names(rt.path)
    name_at, worked, failures = 0, False, 0
    while not rt.stopping.is_set():
        state.set("connecting")
        started = time.monotonic()
        options = [*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", names[name_at])]
        channel = grpc.aio.secure_channel(rt.home.config.parent, creds, options=options)
        session: Session | None = None
        try:
            call = pbg.FederationStub(channel).Link()
            session = Session(rt, state, call.read, call.write)
            await session.run()
        except grpc.aio.AioRpcError as e:
            refused = e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
            through = session is not None and session.established
            state.down(f"{e.code().name}: {failure_details(e.code(), e.details() or '', through)}"
                       + ("" if through else f" (server name {names[name_at]})"), refused=refused)
        except (ConnectionError, OSError) as e:
            state.down(str(e))
        except asyncio.InvalidStateError:
            # grpc.aio: a write after the RPC ended, i.e. the link was cut; report the real reason
            code, details = await call.code(), await call.details()
            through = session is not None and session.established
            state.down(f"{code.name}: {details}" + ("" if through else f" (server name {names[name_at]})"),
                       refused=code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED))
        except asyncio.CancelledError:
            state.down("stopping")
            await channel.close(grace=None)
            raise
        except Exception as e:
            log.exception("uplink_failed")
            state.down(f"{type(e).__name__}: {e}")
        finally:
            await channel.close(grace=None)
        if (session is not None and session.established) or time.monotonic() - started > 10:
            backoff = 0.5
        if session is not None and session.established:
            worked, failures = True, 0
        else:
            # not through: try the other name next time if this one may be the wrong one (never worked,
            # or the handshake failed); a name that worked is kept while the parent is merely down
            failures += 1
            if not worked or _tls_failure(state.last_error) or failures % 4 == 0:
                name_at, worked = (name_at + 1) % len(names), False
        delay = backoff * (0.5 + random.random())
        backoff = min(backoff * 2, MAX_BACKOFF_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stopping.wait(), delay)
