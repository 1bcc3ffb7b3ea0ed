"""At-rest verification of a whole store (`fednode verify`) and single-record proofs (`fednode proof`).

verify_store recomputes every chain from the stored bodies, compares it with the stored chain values
and with every signed checkpoint, checks every signature on the signed channels and every downward
record, and reports each problem with its origin, channel and seq. It never stops at the first
problem of the store (only at the first of each log, since everything after it is suspect). Keys are
judged by the keyring's rules (node/core/keyring.py): a revoked key verifies nothing beyond its position,
on this node's own logs too (the owner re-signs those, node/core/ledger.py).

A proof (verify_proof) admits its key as valid at the time the proof's checkpoint says it was signed,
since proofs outlive certificates; a revocation cannot be checked offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from sqlalchemy import and_, select

from node.core import pki, schema
from node.core.crypto import GENESIS, RECORD_TYPE, chain_step, entry_hash, verify
from node.core.errors import (
    BadSignature,
    ChainMismatch,
    FednodeError,
    MalformedRecord,
    MissingCheckpoint,
    MissingRecord,
    VerificationError,
    WrongLog,
)
from node.core.keyring import Keyring
from node.core.records import SIGNED_CHANNELS, channel_name, channel_number, parse_body
from node.core.store import Store
from node.core.verify import parse_checkpoint, verify_checkpoint
from proto.fednode.v1 import fednode_pb2 as pb

CHUNK = 5000


@dataclass
class Report:
    logs: int = 0
    records: int = 0
    checkpoints: int = 0
    down_records: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, e: VerificationError) -> None:
        self.problems.append(e.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "logs": self.logs, "records": self.records, "checkpoints": self.checkpoints,
                "down_records": self.down_records, "problems": self.problems}


def verify_store(store: Store, keyring: Keyring, progress: Callable[[int, int], None] | None = None) -> Report:
    report = Report()
    heads = store.heads()
    total = sum(h.seq for h in heads.values())
    done = 0
    for (origin, channel), head in sorted(heads.items()):
        report.logs += 1
        try:
            n = _verify_log(store, keyring, origin, channel, head.seq, head.chain, report)
        except VerificationError as e:
            report.add(e)
            n = head.seq
        done += n
        if progress:
            progress(done, total)
    _verify_down(store, keyring, report)
    return report


def _verify_log(store: Store, keyring: Keyring, origin: str, channel: int, head_seq: int, head_chain: bytes,
                report: Report) -> int:
    ch = channel_name(channel)
    cps = {c.seq: c for c in store.checkpoints(origin, channel)}
    prev, expected_seq = GENESIS, 1
    t = schema.records
    with store.read() as conn:
        while expected_seq <= head_seq:
            rows = conn.execute(
                select(t.c.seq, t.c.body, t.c.signature, t.c.key_id, t.c.chain)
                .where(and_(t.c.origin == origin, t.c.channel == channel, t.c.seq >= expected_seq,
                            t.c.seq <= head_seq))  # the node may append meanwhile: verify what the head covers
                .order_by(t.c.seq).limit(CHUNK)
            ).all()
            if not rows:
                break
            for r in rows:
                if r.seq != expected_seq:
                    raise MissingRecord(f"{origin}/{ch}: seq {expected_seq} is missing from the store",
                                        origin=origin, channel=ch, seq=expected_seq)
                body = bytes(r.body)
                try:
                    b = parse_body(body, origin=origin, channel=ch, seq=r.seq)
                except MalformedRecord:
                    raise ChainMismatch(f"{origin}/{ch} seq {r.seq}: the stored body is damaged (not a record)",
                                        origin=origin, channel=ch, seq=r.seq,
                                        fix="repair it from the parent or a child with `fednode reconcile`") from None
                prev = chain_step(prev, body)
                if prev != bytes(r.chain):
                    raise ChainMismatch(
                        f"{origin}/{ch} seq {r.seq}: the stored record does not hash to its chain value: the body "
                        "or the chain was altered at rest",
                        origin=origin, channel=ch, seq=r.seq,
                        fix="repair it from the parent or a child with `fednode reconcile`",
                    )
                if b.origin != origin or b.channel != channel or b.seq != r.seq:
                    raise WrongLog(f"{origin}/{ch} seq {r.seq}: the body says {b.origin}/{b.channel}/{b.seq}",
                                   origin=origin, channel=ch, seq=r.seq)
                if channel in SIGNED_CHANNELS:
                    public = keyring.lookup(bytes(r.key_id), origin, b.time_us, channel=ch, seq=r.seq)
                    if not verify(public, RECORD_TYPE, body, bytes(r.signature)):
                        raise BadSignature(f"{origin}/{ch} seq {r.seq}: the record's signature does not verify",
                                           origin=origin, channel=ch, seq=r.seq)
                cp = cps.get(r.seq)
                if cp is not None:
                    cpb = verify_checkpoint(cp.to_pb(), keyring, origin, channel)
                    if cpb.chain != prev:
                        raise ChainMismatch(f"{origin}/{ch} seq {r.seq}: the signed checkpoint does not match the "
                                            "recomputed chain", origin=origin, channel=ch, seq=r.seq)
                    report.checkpoints += 1
                report.records += 1
                expected_seq += 1
    if expected_seq <= head_seq:
        raise MissingRecord(f"{origin}/{ch}: the head says {head_seq} records but the store ends at {expected_seq - 1}",
                            origin=origin, channel=ch, seq=expected_seq)
    if prev != head_chain:
        raise ChainMismatch(f"{origin}/{ch}: the stored head does not match the recomputed chain",
                            origin=origin, channel=ch, seq=head_seq)
    if head_seq and max(cps, default=0) < head_seq:
        raise MissingCheckpoint(f"{origin}/{ch}: records {max(cps, default=0) + 1}..{head_seq} have no checkpoint",
                                origin=origin, channel=ch, seq=head_seq)
    return head_seq


def _verify_down(store: Store, keyring: Keyring, report: Report) -> None:
    t = schema.down_records
    with store.read() as conn:
        for r in conn.execute(select(t)):
            ch = channel_name(r.channel)
            body = bytes(r.body)
            report.down_records += 1
            if entry_hash(body) != bytes(r.entry):
                report.add(ChainMismatch(f"downward record {r.origin}/{ch} seq {r.seq} was altered at rest",
                                         origin=r.origin, channel=ch, seq=r.seq))
                continue
            try:
                b = parse_body(body)
                public = keyring.lookup(bytes(r.key_id), r.origin, b.time_us, channel=ch, seq=r.seq)
                if not verify(public, RECORD_TYPE, body, bytes(r.signature)):
                    raise BadSignature(f"downward record {r.origin}/{ch} seq {r.seq}: signature does not verify",
                                       origin=r.origin, channel=ch, seq=r.seq)
            except VerificationError as e:
                report.add(e)


# ---- proofs ---------------------------------------------------------------------------------------------


def export_proof(store: Store, keyring: Keyring, root: x509.Certificate, origin: str, channel: int | str,
                 seq: int) -> pb.RecordProof:
    channel = channel_number(channel)
    ch = channel_name(channel)
    recs = store.records(origin, channel, seq, seq)
    if not recs:
        raise MissingRecord(f"{origin}/{ch} seq {seq} is not held by this node", origin=origin, channel=ch, seq=seq,
                            fix="check `fednode status --json` for the logs and heads this node holds")
    cp = store.first_checkpoint_at_or_after(origin, channel, seq)
    if cp is None:
        raise MissingCheckpoint(f"no checkpoint covers {origin}/{ch} seq {seq} yet", origin=origin, channel=ch, seq=seq)
    following = [bytes(r.body) for r in store.records(origin, channel, seq + 1, cp.seq)]
    prev = store.chains_at(origin, channel, [seq - 1])[seq - 1]
    r = recs[0]
    kc = keyring.certificate(cp.key_id)
    if kc is None:
        raise FednodeError(f"the key of the checkpoint at {origin}/{ch} seq {cp.seq} is not in the keyring")
    return pb.RecordProof(
        record=pb.SignedRecord(body=bytes(r.body), signature=bytes(r.signature), key_id=bytes(r.key_id)),
        following_bodies=following, previous_chain=prev, checkpoint=cp.to_pb(), key=kc,
        root_certificate=root.public_bytes(pki.serialization.Encoding.DER),
    )


def proof_to_json(proof: pb.RecordProof) -> dict[str, Any]:
    b = parse_body(proof.record.body)
    cpb = pb.CheckpointBody.FromString(proof.checkpoint.body)
    return {
        "fednode_proof": 1,
        "origin": b.origin, "channel": channel_name(b.channel), "seq": b.seq, "kind": b.kind, "dest": b.dest,
        "time_us": b.time_us, "payload": b.payload.decode("utf-8", "replace"),
        "checkpoint_seq": cpb.seq, "key_id": proof.checkpoint.key_id.hex(),
        "proof": base64.b64encode(proof.SerializeToString()).decode(),
    }


def proof_from_text(text: str) -> pb.RecordProof:
    """Read a proof file. The readable fields beside the proof must say exactly what the proof says:
    a reader trusts what is shown, so an edited field is refused, not ignored."""
    try:
        doc = json.loads(text)
        proof = pb.RecordProof.FromString(base64.b64decode(doc["proof"]))
        shown = proof_to_json(proof)
    except (ValueError, KeyError, TypeError, MalformedRecord) as e:
        raise FednodeError(f"not a fednode proof file ({e})", fix="create one with `fednode proof DIR ORIGIN CHANNEL SEQ > P`") from None
    altered = sorted(k for k, v in doc.items() if k in shown and shown[k] != v)
    if altered or set(doc) - set(shown):
        raise ChainMismatch(
            f"the proof file's readable fields do not match the signed proof: {', '.join(altered or sorted(set(doc) - set(shown)))}",
            fix="the file was edited after `fednode proof` wrote it; ask for a fresh proof",
        )
    return proof


def verify_proof(proof: pb.RecordProof, trusted_root: x509.Certificate | None = None) -> dict[str, Any]:
    """Check a proof on its own: the key chains to the root, the record chains to the signed checkpoint."""
    root = x509.load_der_x509_certificate(proof.root_certificate)
    if trusted_root is not None and root != trusted_root:
        raise pki.CertificateError("the proof's root CA is not this node's root CA",
                                   fix="verify it on a node of the same tree, or pass the right root")
    ring = Keyring(root)
    # a proof is kept for years: the key must have been valid when the checkpoint says it signed
    cp_time = dt.datetime.fromtimestamp(parse_checkpoint(proof.checkpoint).time_us / 1e6, dt.UTC)
    ring.add(ring.admit(proof.key, at=cp_time))
    b = parse_body(proof.record.body)
    ch = channel_name(b.channel)
    cpb = verify_checkpoint(proof.checkpoint, ring, b.origin, b.channel)
    if cpb.seq != b.seq + len(proof.following_bodies):
        raise MissingRecord(f"the proof carries {len(proof.following_bodies)} following records but the checkpoint is "
                            f"at {cpb.seq}", origin=b.origin, channel=ch, seq=b.seq)
    chain = chain_step(proof.previous_chain, proof.record.body)
    for i, body in enumerate(proof.following_bodies, start=1):
        fb = parse_body(body)
        if fb.seq != b.seq + i or fb.origin != b.origin or fb.channel != b.channel:
            raise WrongLog("a following record of the proof is out of place", origin=b.origin, channel=ch, seq=fb.seq)
        chain = chain_step(chain, body)
    if chain != cpb.chain:
        raise ChainMismatch(f"{b.origin}/{ch} seq {b.seq}: the record does not chain to the signed checkpoint",
                            origin=b.origin, channel=ch, seq=b.seq)
    if b.channel in SIGNED_CHANNELS:
        pub = ring.lookup(proof.record.key_id, b.origin, b.time_us, channel=ch, seq=b.seq)
        if not verify(pub, RECORD_TYPE, proof.record.body, proof.record.signature):
            raise BadSignature(f"{b.origin}/{ch} seq {b.seq}: the record's signature does not verify",
                               origin=b.origin, channel=ch, seq=b.seq)
    return {"ok": True, "origin": b.origin, "channel": ch, "seq": b.seq, "kind": b.kind,
            "checkpoint_seq": cpb.seq, "signer": ring.keys[cpb.key_id].code,
            "root_trusted": trusted_root is not None,
            "root_sha256": hashlib.sha256(proof.root_certificate).hexdigest()}
