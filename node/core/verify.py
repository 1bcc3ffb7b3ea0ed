"""Verification of incoming records, sans I/O: messages in, verified rows out, or a specific error.

Rules of this module:
- upward segments are authenticated by their checkpoint: the checkpoint's signature is verified once,
  and the store then recomputes the chain and compares it with the signed chain (ChainMismatch);
- control and monitor records are also verified one by one (they carry their own signature);
- downward records are verified one by one only (the receiver holds a subset of the issuer's log);
- checks run in a fixed order, and each failure has its own error class (node.errors).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from node.core import codes
from node.core.crypto import CHECKPOINT_TYPE, RECORD_TYPE, verify
from node.core.errors import (
    BadSignature,
    MalformedRecord,
    MissingCheckpoint,
    MissingRecord,
    OutOfOrder,
    OutsideSubtree,
    WrongLog,
)
from node.core.keyring import Keyring
from node.core.records import CHANNEL_NAMES, SIGNED_CHANNELS, Body, channel_name, parse_body
from node.core.store import CheckpointRow, Row
from proto.fednode.v1 import fednode_pb2 as pb


@dataclass
class VerifiedSegment:
    origin: str
    channel: int
    rows: list[Row]
    checkpoint: CheckpointRow
    expected_chain: bytes


def parse_checkpoint(cp: pb.Checkpoint, origin: str = "", channel: str = "") -> pb.CheckpointBody:
    try:
        return pb.CheckpointBody.FromString(cp.body)
    except DecodeError:
        raise MalformedRecord("checkpoint body is not a valid CheckpointBody", origin=origin, channel=channel) from None


def verify_checkpoint(cp: pb.Checkpoint, keyring: Keyring, origin: str, channel: int) -> pb.CheckpointBody:
    ch = channel_name(channel)
    if not cp.body:
        raise MissingCheckpoint(
            f"records of {origin}/{ch} arrived without a checkpoint", origin=origin, channel=ch,
            fix="records are sent only up to a checkpoint; the sender is not a fednode peer or is broken",
        )
    b = parse_checkpoint(cp, origin, ch)
    if b.origin != origin or int(b.channel) != channel:
        raise WrongLog(
            f"checkpoint for {b.origin}/{channel_name(int(b.channel))} delivered with log {origin}/{ch}",
            origin=origin, channel=ch, seq=b.seq,
        )
    if cp.key_id != b.key_id:
        raise BadSignature("checkpoint key id differs from the signed key id", origin=origin, channel=ch, seq=b.seq)
    public = keyring.lookup(b.key_id, origin, b.time_us, channel=ch, seq=b.seq)
    if not verify(public, CHECKPOINT_TYPE, cp.body, cp.signature):
        raise BadSignature(
            f"forged checkpoint: the signature on {origin}/{ch} seq {b.seq} does not verify",
            origin=origin, channel=ch, seq=b.seq,
            fix="the batch was refused; the sender is not what it claims to be or the data was altered",
        )
    return b


def verify_record_signature(rec: pb.SignedRecord, body: Body, keyring: Keyring) -> None:
    ch = channel_name(body.channel)
    public = keyring.lookup(rec.key_id, body.origin, body.time_us, channel=ch, seq=body.seq)
    if not verify(public, RECORD_TYPE, rec.body, rec.signature):
        raise BadSignature(
            f"forged record: the signature on {body.origin}/{ch} seq {body.seq} does not verify",
            origin=body.origin, channel=ch, seq=body.seq,
        )


def verify_segment(seg: pb.Segment, keyring: Keyring, *, sender_subtree: str | None = None) -> VerifiedSegment:
    """Check one upward segment up to the chain comparison (which the store does)."""
    origin, channel = seg.origin, int(seg.channel)
    if channel not in CHANNEL_NAMES:
        raise WrongLog(f"unknown channel {channel} in segment of {origin}", origin=origin)
    ch = channel_name(channel)
    if sender_subtree is not None and not codes.within(origin, sender_subtree):
        raise OutsideSubtree(
            f"records of {origin} were sent by {sender_subtree}, but {origin} is outside its subtree",
            origin=origin, channel=ch,
            fix=f"{sender_subtree} may only forward records born in its own subtree",
        )
    if not seg.records:
        raise MissingRecord(f"empty segment for {origin}/{ch}", origin=origin, channel=ch)
    cp = verify_checkpoint(seg.checkpoint, keyring, origin, channel)
    # the hot path of every relay: each body read out of the message once, parsed once, straight into
    # its Row (no Body per record, no second copy of the bytes)
    from_string = pb.RecordBody.FromString
    rows: list[Row] = []
    add = rows.append
    signed = channel in SIGNED_CHANNELS
    bodies: list[pb.RecordBody] = []  # kept for the signatures of control and monitor records only
    for rec in seg.records:
        raw = rec.body
        try:
            b = from_string(raw)
        except DecodeError:
            parse_body(raw, origin=origin, channel=ch)  # raises MalformedRecord with the context
            raise
        if b.origin != origin or b.channel != channel:
            raise WrongLog(
                f"record {b.origin}/{channel_name(b.channel)} seq {b.seq} delivered inside log {origin}/{ch}",
                origin=origin, channel=ch, seq=b.seq,
            )
        add(Row(b.seq, raw, rec.signature, rec.key_id, b.kind, b.dest, b.time_us))
        if signed:
            bodies.append(b)
    seqs = [r.seq for r in rows]
    first = seqs[0]
    if seqs != list(range(first, first + len(seqs))):
        first = min(seqs)
        if sorted(seqs) == list(range(first, first + len(seqs))):
            bad = next(i for i, (a, b2) in enumerate(zip(seqs, seqs[1:], strict=False)) if b2 != a + 1)
            raise OutOfOrder(
                f"records of {origin}/{ch} are out of order: seq {seqs[bad + 1]} follows {seqs[bad]}",
                origin=origin, channel=ch, seq=seqs[bad + 1],
            )
        expected = first
        for s in sorted(set(seqs)):
            if s != expected:
                break
            expected += 1
        raise MissingRecord(
            f"records of {origin}/{ch} skip seq {expected}", origin=origin, channel=ch, seq=expected,
            fix="the sender must resend the whole range; links do this by themselves",
        )
    last = seqs[-1]
    if cp.seq > last:
        raise MissingRecord(
            f"checkpoint of {origin}/{ch} is at seq {cp.seq} but the records end at {last}",
            origin=origin, channel=ch, seq=last + 1,
        )
    if cp.seq < last:
        raise MissingCheckpoint(
            f"records of {origin}/{ch} run to seq {last}, past their checkpoint at {cp.seq}",
            origin=origin, channel=ch, seq=last,
        )
    if signed:
        for rec, b in zip(seg.records, bodies, strict=True):
            verify_record_signature(rec, Body(b.origin, int(b.channel), b.seq, b.kind, b.dest, b.time_us, b.payload),
                                    keyring)
    cprow = CheckpointRow(origin, channel, cp.seq, seg.checkpoint.body, seg.checkpoint.signature, seg.checkpoint.key_id)
    return VerifiedSegment(origin, channel, rows, cprow, bytes(cp.chain))


def verify_down_record(rec: pb.SignedRecord, keyring: Keyring, *, receiver: str, sender: str) -> tuple[Body, Row]:
    """A record travelling down: signed by an ancestor of the receiver (or by the sender itself), with a
    destination inside the receiver's subtree."""
    b = parse_body(rec.body)
    ch = channel_name(b.channel)
    if b.channel not in SIGNED_CHANNELS:
        raise WrongLog(f"downward record {b.origin}/{ch} seq {b.seq} is not on a signed channel",
                       origin=b.origin, channel=ch, seq=b.seq)
    if not codes.within(sender, b.origin) or b.origin == receiver:
        raise OutsideSubtree(
            f"downward record {b.origin}/{ch} seq {b.seq} sent by {sender} was not issued by {sender} or "
            f"one of its ancestors",
            origin=b.origin, channel=ch, seq=b.seq,
            fix="only ancestors may send records down; the parent forwarded something it should not",
        )
    if not codes.within(b.dest, receiver):
        raise OutsideSubtree(
            f"downward record {b.origin}/{ch} seq {b.seq} is addressed to {b.dest!r}, outside {receiver}",
            origin=b.origin, channel=ch, seq=b.seq,
        )
    verify_record_signature(rec, b, keyring)
    return b, Row(b.seq, rec.body, rec.signature, rec.key_id, b.kind, b.dest, b.time_us)
