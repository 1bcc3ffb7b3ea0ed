"""The ledger: a node's logs with its signer and keyring. Every write of records goes through here.

- ``append``: records born here (our own logs), signed and checkpointed, in one transaction
  (together with whatever ``also`` writes, e.g. an adapter's source position);
- ``accept_segment``: upward records from a child, verified (node.verify), then appended;
- ``accept_down``: records from an ancestor addressed into our subtree, verified one by one;
- key records (``key.announce``, ``key.revoke``) take effect when they are stored, wherever they came
  from, so revocations travel like any other record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography import x509

from node import codes
from node.crypto import CHECKPOINT_TYPE, RECORD_TYPE, Signer
from node.errors import CertificateError, FednodeError, UsageError
from node.keyring import KeyInfo, Keyring, through_json
from node.records import (
    CONTROL,
    SIGNED_CHANNELS,
    build_body,
    channel_of_kind,
    encode_payload,
    now_us,
    parse_body,
)
from node.store import AppendResult, CheckpointRow, Row, Store, WriteTx
from node.verify import VerifiedSegment, verify_down_record, verify_segment
from proto.fednode.v1 import fednode_pb2 as pb

log = structlog.get_logger(__name__)

CHECKPOINT_EVERY = 500  # relays cut batches at checkpoints, so no batch needs more than this many records


@dataclass
class NewRecord:
    kind: str
    payload: Any  # bytes (already encoded) or a JSON-able object
    dest: str = ""
    time_us: int = 0
    channel: int | None = None

    def payload_bytes(self) -> bytes:
        return self.payload if isinstance(self.payload, bytes) else encode_payload(self.payload)


class Ledger:
    def __init__(self, store: Store, code: str, signer: Signer | None, root: x509.Certificate | None) -> None:
        self.store = store
        self.code = code
        self.signer = signer
        self.keyring = Keyring.from_rows(root, store.keys())

    # -- our own logs ---------------------------------------------------------------------------------

    def _checkpoint_maker(self, channel: int) -> Callable[[int, bytes], CheckpointRow]:
        signer = self._require_signer()

        def make(seq: int, chain: bytes) -> CheckpointRow:
            body = pb.CheckpointBody(
                origin=self.code, channel=channel, seq=seq, chain=chain,  # type: ignore[arg-type]
                time_us=now_us(), key_id=signer.key_id,
            ).SerializeToString()
            return CheckpointRow(self.code, channel, seq, body, signer.sign(CHECKPOINT_TYPE, body), signer.key_id)

        return make

    def _require_signer(self) -> Signer:
        if self.signer is None:
            raise UsageError(
                f"node {self.code} has no signing key installed",
                fix="enrol the node first: `fednode pki request`, the parent's `pki sign`, then `pki install`",
            )
        return self.signer

    def append(
        self, items: Sequence[NewRecord], *, also: Callable[[WriteTx], None] | None = None
    ) -> dict[int, AppendResult]:
        """Append records born here, signed and checkpointed, in one transaction."""
        signer = self._require_signer()
        by_channel: dict[int, list[NewRecord]] = {}
        for it in items:
            by_channel.setdefault(it.channel or channel_of_kind(it.kind), []).append(it)
        results: dict[int, AppendResult] = {}
        t0 = now_us()
        with self.store.write() as tx:
            for channel in sorted(by_channel):
                head = tx.head(self.code, channel)
                rows = []
                sign = channel in SIGNED_CHANNELS
                for i, it in enumerate(by_channel[channel]):
                    seq = head.seq + 1 + i
                    body = build_body(
                        origin=self.code, channel=channel, seq=seq, kind=it.kind, dest=it.dest,
                        time_us=it.time_us or t0, payload=it.payload_bytes(),
                    )
                    sig, kid = (signer.sign(RECORD_TYPE, body), signer.key_id) if sign else (b"", b"")
                    rows.append(Row(seq, body, sig, kid, it.kind, it.dest, it.time_us or t0))
                results[channel] = tx.append(
                    self.code, channel, rows, checkpoint_at=self._checkpoint_maker(channel),
                    checkpoint_every=CHECKPOINT_EVERY,
                )
                if channel == CONTROL:
                    self._apply_key_records(tx, self.code, rows)
            if also is not None:
                also(tx)
        return results

    # -- records from elsewhere -------------------------------------------------------------------------

    def admit_keys(self, certs: Iterable[pb.KeyCertificate]) -> list[KeyInfo]:
        """Validate and store key certificates a peer sent with its batch."""
        fresh = []
        for kc in certs:
            if kc.key_id and kc.key_id in self.keyring.keys:
                continue
            fresh.append(self.keyring.admit(kc))
        if fresh:
            with self.store.write() as tx:
                for info in fresh:
                    self._store_key(tx, info)
        for info in fresh:
            self.keyring.add(info)
        return fresh

    @staticmethod
    def _store_key(tx: WriteTx, info: KeyInfo) -> None:
        from node.keyring import raw_public

        tx.put_key(info.key_id, info.code, raw_public(info), info.certificate, info.not_after_us)

    def verify_segment(self, seg: pb.Segment, *, sender_subtree: str | None = None) -> VerifiedSegment:
        return verify_segment(seg, self.keyring, sender_subtree=sender_subtree)

    def accept_segment(
        self, seg: pb.Segment, *, sender_subtree: str | None = None, source: str = "peer"
    ) -> AppendResult:
        v = self.verify_segment(seg, sender_subtree=sender_subtree)
        with self.store.write() as tx:
            res = tx.append(v.origin, v.channel, v.rows, expected_chain=v.expected_chain, checkpoint=v.checkpoint,
                            source=source)
            if v.channel == CONTROL and res.appended:
                self._apply_key_records(tx, v.origin, v.rows[res.duplicates :])
        return res

    def accept_segments(
        self, segs: Sequence[pb.Segment], *, sender_subtree: str | None = None, source: str = "peer"
    ) -> list[AppendResult]:
        """Verify all segments, then append them in ONE transaction (one commit per batch)."""
        verified = [self.verify_segment(s, sender_subtree=sender_subtree) for s in segs]
        out = []
        with self.store.write() as tx:
            for v in verified:
                res = tx.append(v.origin, v.channel, v.rows, expected_chain=v.expected_chain,
                                checkpoint=v.checkpoint, source=source)
                if v.channel == CONTROL and res.appended:
                    self._apply_key_records(tx, v.origin, v.rows[res.duplicates :])
                out.append(res)
        return out

    def accept_many(
        self, segs: Sequence[pb.Segment], *, sender_subtree: str | None, source: str
    ) -> tuple[dict[tuple[str, int], AppendResult], dict[tuple[str, int], FednodeError]]:
        """Accept what can be accepted of a batch: verify every segment, append the good ones in one
        transaction, and fall back to one transaction per segment if that one fails. Refused segments
        come back with their error; the rest is committed."""
        errors: dict[tuple[str, int], FednodeError] = {}
        verified: list[VerifiedSegment] = []
        for s in segs:
            try:
                verified.append(self.verify_segment(s, sender_subtree=sender_subtree))
            except FednodeError as e:
                errors[(s.origin, int(s.channel))] = e
        results: dict[tuple[str, int], AppendResult] = {}
        try:
            with self.store.write() as tx:
                for v in verified:
                    results[(v.origin, v.channel)] = self._append_verified(tx, v, source)
            return results, errors
        except FednodeError:
            results.clear()
        for v in verified:
            try:
                with self.store.write() as tx:
                    results[(v.origin, v.channel)] = self._append_verified(tx, v, source)
            except FednodeError as e:
                errors[(v.origin, v.channel)] = e
        return results, errors

    def _append_verified(self, tx: WriteTx, v: VerifiedSegment, source: str) -> AppendResult:
        res = tx.append(v.origin, v.channel, v.rows, expected_chain=v.expected_chain, checkpoint=v.checkpoint,
                        source=source)
        if v.channel == CONTROL and res.appended:
            self._apply_key_records(tx, v.origin, v.rows[res.duplicates :])
        return res

    def accept_down(self, records: Sequence[pb.SignedRecord], *, sender: str, source: str = "parent") -> int:
        """Hold records from an ancestor, addressed into our subtree. Returns how many were new."""
        grouped: dict[tuple[str, int], list[Row]] = {}
        for rec in records:
            body, row = verify_down_record(rec, self.keyring, receiver=self.code, sender=sender)
            grouped.setdefault((body.origin, body.channel), []).append(row)
        new = 0
        with self.store.write() as tx:
            for (origin, channel), rows in grouped.items():
                n, _ = tx.hold_down(origin, channel, rows, source=source)
                new += n
                if channel == CONTROL:
                    self._apply_key_records(tx, origin, rows)
        return new

    # -- key records ----------------------------------------------------------------------------------

    def _apply_key_records(self, tx: WriteTx, origin: str, rows: Sequence[Row]) -> None:
        for r in rows:
            if r.kind == "key.announce":
                payload = json.loads(parse_body(r.body).payload)
                kc = pb.KeyCertificate.FromString(bytes.fromhex(payload["certificate"]))
                try:
                    info = self.keyring.admit(kc)
                except CertificateError as e:
                    log.warning("key_announce_rejected", origin=origin, seq=r.seq, error=str(e))
                    continue
                if info.code == origin or codes.within(info.code, origin):
                    self._store_key(tx, info)
                    self.keyring.add(info)
            elif r.kind == "key.revoke":
                payload = json.loads(parse_body(r.body).payload)
                key_id = bytes.fromhex(payload["key_id"])
                target = self.keyring.keys.get(key_id)
                # only the key's own node or one of its ancestors may revoke it
                if target is not None and codes.within(target.code, origin):
                    at = int(payload.get("effective_us") or r.time_us)
                    raw = payload.get("through")
                    through = {int(c): int(s) for c, s in raw.items()} if isinstance(raw, dict) else None
                    self.keyring.revoke(key_id, at, payload.get("reason", ""), through)
                    tx.revoke_key(key_id, at, payload.get("reason", ""),
                                  through_json(self.keyring.keys[key_id].revoked_through))
                    log.warning("key_revoked", key_id=key_id.hex()[:16], by=origin, code=target.code)

    def announce_key(self, kc: pb.KeyCertificate) -> None:
        """Write our signing key's certificate into our control log (it must be in the keyring first)."""
        self.append([NewRecord("key.announce", {"certificate": kc.SerializeToString().hex(),
                                                "key_id": kc.key_id.hex()})])

    def revoke_key(self, key_id: bytes, reason: str, effective_us: int = 0) -> None:
        """Revoke a key by position: it may have signed the owner's logs up to the heads we hold now and
        nothing after (see node/keyring.py)."""
        info = self.keyring.keys.get(key_id)
        owner = info.code if info is not None else self.code
        through = {str(c): h.seq for (o, c), h in self.store.heads().items() if o == owner}
        for c in (1, 2, 3):
            through.setdefault(str(c), 0)
        self.append([NewRecord("key.revoke", {"key_id": key_id.hex(), "reason": reason,
                                              "effective_us": effective_us or now_us(), "through": through})])

    def read_segment(self, origin: str, channel: int, after_seq: int, max_records: int = 1000) -> pb.Segment | None:
        """The next upward segment of a log after ``after_seq``: records up to a stored checkpoint.

        Cut at the last checkpoint within ``max_records`` (or the first one after it, if none is within),
        so the receiver can authenticate the segment by that checkpoint alone."""
        cps = self.store.checkpoints(origin, channel, after_seq + 1, after_seq + max_records)
        cp = cps[-1] if cps else self.store.first_checkpoint_at_or_after(origin, channel, after_seq + 1)
        if cp is None:
            return None
        seg = pb.Segment(origin=origin, channel=channel, checkpoint=cp.to_pb())  # type: ignore[arg-type]
        add = seg.records.add
        for body, sig, kid in self.store.bodies(origin, channel, after_seq + 1, cp.seq):
            if sig:
                add(body=body, signature=sig, key_id=kid)
            else:
                add(body=body)
        return seg

    def key_certificates_for(self, key_ids: Iterable[bytes]) -> list[pb.KeyCertificate]:
        out = []
        for kid in set(key_ids):
            kc = self.keyring.certificate(kid)
            if kc is not None:
                out.append(kc)
        return out
