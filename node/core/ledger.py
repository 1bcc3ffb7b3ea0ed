"""The ledger: a node's logs with its signer and keyring. Every write of records goes through here.

- ``append``: records born here (our own logs), signed and checkpointed, in one transaction
  (together with whatever ``also`` writes, e.g. an adapter's source position);
- ``accept_segment``: upward records from a child, verified (node.verify), then appended;
- ``accept_down``: records from an ancestor addressed into our subtree, verified one by one;
- key records (``key.announce``, ``key.revoke``) take effect when they are stored, wherever they came
  from, so revocations travel like any other record. A revocation of a descendant's key is addressed
  (``dest``) to that descendant: it travels down to the key's owner as well as up to the root.
- before anything is verified, keys whose certificate has ended get their last positions fixed
  (node/core/keyring.py); the keyring is the one the whole node uses.

What happens to records a revoked key signed beyond its revocation position (the decision):

- They are refused everywhere by position, including by the owner's own ``fednode verify``: nobody can
  tell the owner's from a thief's once the key is revoked.
- The owner, when it learns that one of its keys is revoked through P (per channel), rotates if that key
  is its current signer (its own CA certifies the new key) and *re-signs* its own records beyond P that
  the revoked key signed (``resign_revoked``): the same bodies, seqs and chain values, new checkpoints
  and, on control and monitor, new per-record signatures by its current key. No seq ever carries
  different content, so there is no fork, nothing is re-appended twice, and every log stays
  contiguous; the change feed is untouched (services do not see the records again). It then appends
  a ``key.resign`` control record naming the key, the new key, the positions and the re-signed
  ranges, and logs ``records_resigned``; the links resend from P, so the parent accepts them.
  Re-appending the records as new records citing the refused ones would also have worked, but it
  leaves refused seqs in the owner's log for ever (its own ``verify`` could never be clean) and
  doubles the records every service reads.
- A node between the owner and the revoker may hold records beyond P that it accepted before it
  learned of the revocation. When re-signed copies of the same bodies arrive, it replaces the stale
  signatures and checkpoints (``WriteTx.refresh_stale``: only where the held one no longer verifies
  and the incoming one does) and resends from P to its own parent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from cryptography import x509

from node.core import codes
from node.core.crypto import CHECKPOINT_TYPE, RECORD_TYPE, Signer
from node.core.errors import CertificateError, FednodeError, ForkDetected, UsageError, VerificationError
from node.core.keyring import KeyInfo, Keyring, through_json
from node.core.records import (
    CHANNEL_NAMES,
    CONTROL,
    SIGNED_CHANNELS,
    build_body,
    channel_name,
    channel_of_kind,
    encode_payload,
    now_us,
    parse_body,
)
from node.core.store import AppendResult, CheckpointRow, LogKey, Row, Store, WriteTx
from node.core.verify import VerifiedSegment, verify_down_record, verify_segment
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
        # work for node.commands.pki.KeyService (the running node): one of our own keys was revoked
        # (re-sign what it signed beyond the position), and logs to resend to our parent from a seq
        self.own_key_revoked = any(i.code == code and i.revoked_us is not None for i in self.keyring.keys.values())
        self.resend_from: dict[LogKey, int] = {}

    def set_signer(self, signer: Signer | None) -> None:
        """Sign with another key from now on (rotation; the key must be in the keyring)."""
        self.signer = signer

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
        self._require_signer()
        with self.store.write() as tx:
            results = self._append_in(tx, items)
            if also is not None:
                also(tx)
        return results

    def _append_in(self, tx: WriteTx, items: Sequence[NewRecord]) -> dict[int, AppendResult]:
        signer = self._require_signer()
        by_channel: dict[int, list[NewRecord]] = {}
        for it in items:
            by_channel.setdefault(it.channel or channel_of_kind(it.kind), []).append(it)
        results: dict[int, AppendResult] = {}
        t0 = now_us()
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
        return results

    # -- records from elsewhere -------------------------------------------------------------------------

    def admit_keys(self, certs: Iterable[pb.KeyCertificate], *, strict: bool = True) -> list[KeyInfo]:
        """Validate and store key certificates a peer sent with its batch. ``strict=False`` (links): a
        refused certificate is logged and skipped, so only the records its key signed are refused
        (UnknownKey, naming why), not the whole batch with every other log in it."""
        fresh, renewed = [], []
        for kc in certs:
            known = self.keyring.keys.get(kc.key_id) if kc.key_id else None
            if known is not None:
                info = self._renewal(known, kc)
                if info is not None:
                    renewed.append(info)
                continue
            try:
                fresh.append(self.keyring.admit(kc))
            except CertificateError as e:
                if strict:
                    raise
                log.warning("key_certificate_refused", key_id=kc.key_id.hex(), error=str(e))
        if fresh or renewed:
            with self.store.write() as tx:
                for info in fresh:
                    self._store_key(tx, info)
                for info in renewed:
                    tx.renew_key(info.key_id, info.certificate, info.not_after_us)
        for info in [*fresh, *renewed]:
            self.keyring.add(info)
        for info in renewed:
            log.info("key_certificate_renewed", key_id=info.key_id.hex(), code=info.code,
                     not_after_us=info.not_after_us)
        return fresh

    def _renewal(self, known: KeyInfo, kc: pb.KeyCertificate) -> KeyInfo | None:
        """A certificate for a key we know: the renewed KeyInfo if it is a valid one ending later, else None.
        Each certificate is judged once (links send the same one with every batch)."""
        judged = self.keyring.judged
        if not kc.certificate or kc.certificate in judged:
            return None
        if len(judged) > 10_000:
            judged.clear()
        judged.add(kc.certificate)
        if kc.certificate == pb.KeyCertificate.FromString(known.certificate).certificate:
            return None
        try:
            info = self.keyring.admit(kc)
        except CertificateError as e:
            log.warning("key_certificate_refused", key_id=kc.key_id.hex(), error=str(e), renewal=True)
            return None
        if info.not_after_us <= known.not_after_us:
            return None
        info.ended_through = None
        return info

    @staticmethod
    def _store_key(tx: WriteTx, info: KeyInfo) -> None:
        from node.core.keyring import raw_public

        tx.put_key(info.key_id, info.code, raw_public(info), info.certificate, info.not_after_us)

    def fix_ended_keys(self) -> None:
        """Fix the last positions of keys whose certificate has ended (node/core/keyring.py): before any
        verification. One comparison when no certificate has ended since the last call."""
        now = now_us()
        if now < self.keyring.next_end_us and not self.keyring.ended_ids:
            return
        for info in self.keyring.fix_ended(now, self.store.heads):
            log.warning("key_certificate_ended", key_id=info.key_id.hex(), code=info.code,
                        through={channel_name(c): s for c, s in (info.ended_through or {}).items()})
        lifted, self.keyring.lifted = self.keyring.lifted, []
        for info in lifted:
            log.warning("key_certificate_end_lifted", key_id=info.key_id.hex(), code=info.code,
                        reason="this node's clock is before the certificate's end again (it had jumped)")

    def verify_segment(self, seg: pb.Segment, *, sender_subtree: str | None = None) -> VerifiedSegment:
        self.fix_ended_keys()
        return verify_segment(seg, self.keyring, sender_subtree=sender_subtree)

    def accept_segment(
        self, seg: pb.Segment, *, sender_subtree: str | None = None, source: str = "peer"
    ) -> AppendResult:
        v = self.verify_segment(seg, sender_subtree=sender_subtree)
        with self.store.write() as tx:
            return self._append_verified(tx, v, source)

    def accept_segments(
        self, segs: Sequence[pb.Segment], *, sender_subtree: str | None = None, source: str = "peer"
    ) -> list[AppendResult]:
        """Verify all segments, then append them in ONE transaction (one commit per batch)."""
        verified = [self.verify_segment(s, sender_subtree=sender_subtree) for s in segs]
        with self.store.write() as tx:
            return [self._append_verified(tx, v, source) for v in verified]

    def accept_many(
        self, segs: Sequence[pb.Segment], *, sender_subtree: str | None, source: str
    ) -> tuple[dict[tuple[str, int], AppendResult], dict[tuple[str, int], FednodeError]]:
        """Accept what can be accepted of a batch (``accept_each``), by log: what each log's segment
        appended, and the refused segments with their error; the rest is committed."""
        results: dict[tuple[str, int], AppendResult] = {}
        errors: dict[tuple[str, int], FednodeError] = {}
        for s, got in zip(segs, self.accept_each(segs, sender_subtree=sender_subtree, source=source), strict=True):
            if isinstance(got, FednodeError):
                errors[(s.origin, int(s.channel))] = got
            else:
                results[(s.origin, int(s.channel))] = got
        return results, errors

    def accept_each(
        self, segs: Sequence[pb.Segment], *, sender_subtree: str | None, source: str
    ) -> list[AppendResult | FednodeError]:
        """Accept what can be accepted of ``segs``, in their order (a log may come in several segments, e.g.
        from several batches of a link): verify every segment, append the good ones in one transaction,
        and fall back to one transaction per segment, in order, if that one fails. Each segment's result,
        or the error that refused it, in its place."""
        out: list[AppendResult | FednodeError | None] = [None] * len(segs)
        verified: list[tuple[int, VerifiedSegment]] = []
        for i, s in enumerate(segs):
            try:
                verified.append((i, self.verify_segment(s, sender_subtree=sender_subtree)))
            except FednodeError as e:
                out[i] = e
        current: tuple[int, VerifiedSegment] | None = None
        forked: tuple[tuple[int, VerifiedSegment] | None, ForkDetected] | None = None
        try:
            with self.store.write() as tx:
                for current in verified:
                    out[current[0]] = self._append_verified(tx, current[1], source)
            return cast(list[AppendResult | FednodeError], out)  # every place is filled
        except FednodeError as e:
            # a fork is recorded as an incident once, by the store: the segment is not tried again
            forked = (current, e) if isinstance(e, ForkDetected) else None
        for item in verified:
            i, v = item
            if forked is not None and item is forked[0]:
                out[i] = forked[1]
                continue
            try:
                with self.store.write() as tx:
                    out[i] = self._append_verified(tx, v, source)
            except FednodeError as e:
                out[i] = e
        return cast(list[AppendResult | FednodeError], out)

    def _append_verified(self, tx: WriteTx, v: VerifiedSegment, source: str) -> AppendResult:
        res = tx.append(v.origin, v.channel, v.rows, expected_chain=v.expected_chain, checkpoint=v.checkpoint,
                        source=source)
        if v.channel == CONTROL and res.appended:
            self._apply_key_records(tx, v.origin, v.rows[res.duplicates :])
        if res.duplicates and v.origin in self.keyring.limited_codes:
            # re-signed copies of records held here with a signature that no longer verifies
            n = tx.refresh_stale(v.origin, v.channel, v.rows[: res.duplicates], v.checkpoint,
                                 self._stale(v.origin, v.channel))
            if n:
                first = v.rows[0].seq
                log.warning("stale_signatures_replaced", origin=v.origin, channel=channel_name(v.channel),
                            first=first, last=v.rows[res.duplicates - 1].seq, replaced=n, source=source)
                key = (v.origin, v.channel)
                self.resend_from[key] = min(self.resend_from.get(key, first - 1), first - 1)
        return res

    def _stale(self, origin: str, channel: int) -> Callable[[bytes, int], bool]:
        ch = channel_name(channel)

        def stale(key_id: bytes, seq: int) -> bool:
            try:
                self.keyring.lookup(key_id, origin, 0, channel=ch, seq=seq)
            except VerificationError:
                return True
            return False

        return stale

    def accept_down(self, records: Sequence[pb.SignedRecord], *, sender: str, source: str = "parent") -> int:
        """Hold records from an ancestor, addressed into our subtree. Returns how many were new."""
        self.fix_ended_keys()
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
                    log.warning("key_revoked", key_id=key_id.hex(), by=origin, code=target.code,
                                through=self.keyring.keys[key_id].revoked_through)
                    if target.code == self.code:
                        self.own_key_revoked = True  # node.commands.pki.KeyService rotates and re-signs

    def announce_key(self, kc: pb.KeyCertificate) -> None:
        """Write our signing key's certificate into our control log (it must be in the keyring first)."""
        self.append([NewRecord("key.announce", {"certificate": kc.SerializeToString().hex(),
                                                "key_id": kc.key_id.hex()})])

    def revoke_key(self, key_id: bytes, reason: str, effective_us: int = 0) -> dict[int, int]:
        """Revoke a key by position: it may have signed the owner's logs up to the heads we hold now and
        nothing after (see node/core/keyring.py). Only the key's own node or one of its ancestors may revoke
        it. The record is addressed to the owner when that is a descendant, so it travels down to it
        (which then re-signs, see the module rules) as well as up. Returns the positions."""
        info = self.keyring.keys.get(key_id)
        if info is None:
            raise UsageError(f"key {key_id.hex()} is not known here",
                             fix="`fednode pki keys DIR` lists every key this node knows")
        owner = info.code
        if not codes.within(owner, self.code):
            raise UsageError(
                f"key {key_id.hex()[:16]} belongs to {owner}, outside the subtree of {self.code}: only {owner} and "
                "its ancestors may revoke it", fix=f"ask {owner}'s operator or one of its ancestors' to revoke it")
        heads = self.store.heads()
        through = {c: (heads[(owner, c)].seq if (owner, c) in heads else 0) for c in CHANNEL_NAMES}
        self.append([NewRecord("key.revoke", {"key_id": key_id.hex(), "reason": reason,
                                              "effective_us": effective_us or now_us(),
                                              "through": {str(c): s for c, s in through.items()}},
                               dest=owner if owner != self.code else "")])
        return through

    def resign_revoked(self) -> dict[str, Any] | None:
        """Re-sign our own records and checkpoints that a revoked key of ours signed beyond its revocation
        position, with the current key (see the module rules), and append a ``key.resign`` record saying
        what was re-signed, in one transaction. None when there was nothing to re-sign."""
        signer = self._require_signer()
        current = self.keyring.keys.get(signer.key_id)
        if current is None or current.revoked_us is not None:
            raise UsageError(f"the signing key of {self.code} is itself revoked: it cannot re-sign",
                             fix="rotate first: `fednode pki rotate DIR` (a running node does it by itself)")
        revoked = [i for i in self.keyring.keys.values()
                   if i.code == self.code and i.revoked_through is not None and i.key_id != signer.key_id]
        if not revoked:
            return None
        out: dict[str, Any] = {}
        with self.store.write() as tx:
            for info in revoked:
                assert info.revoked_through is not None
                ranges: dict[str, list[int]] = {}
                for channel in sorted(CHANNEL_NAMES):
                    after = info.revoked_through.get(channel, 0)
                    sign = (lambda body: (signer.sign(RECORD_TYPE, body), signer.key_id)) \
                        if channel in SIGNED_CHANNELS else None
                    n_rec, n_cp, lo, hi = tx.resign(self.code, channel, info.key_id, after, sign=sign,
                                                    checkpoint_at=self._checkpoint_maker(channel))
                    if n_rec or n_cp:
                        ranges[channel_name(channel)] = [lo, hi, n_rec, n_cp]
                        key = (self.code, channel)
                        self.resend_from[key] = min(self.resend_from.get(key, after), after)
                if ranges:
                    out[info.key_id.hex()] = {"through": {channel_name(c): s for c, s in info.revoked_through.items()},
                                              "reason": info.revoked_reason, "resigned": ranges}
            if out:
                for old, what in out.items():
                    self._append_in(tx, [NewRecord("key.resign", {
                        "key_id": old, "new_key_id": signer.key_id.hex(), **what,
                        "note": "records beyond the revocation position signed by the revoked key: same bodies, "
                                "seqs and chain, signed again by the current key"})])
        for old, what in out.items():
            log.warning("records_resigned", key_id=old, new_key_id=signer.key_id.hex(), **what)
        return out or None

    def read_segment(self, origin: str, channel: int, after_seq: int, max_records: int = 1000,
                     into: pb.Segment | None = None) -> pb.Segment | None:
        """The next upward segment of a log after ``after_seq``: records up to a stored checkpoint.

        Cut at the last checkpoint within ``max_records`` (or the first one after it, if none is within),
        so the receiver can authenticate the segment by that checkpoint alone. ``into``: an empty segment
        to fill (one just added to a batch: appending a built one would copy every record)."""
        cps = self.store.checkpoints(origin, channel, after_seq + 1, after_seq + max_records)
        cp = cps[-1] if cps else self.store.first_checkpoint_at_or_after(origin, channel, after_seq + 1)
        if cp is None:
            return None
        seg = pb.Segment() if into is None else into
        seg.origin, seg.channel = origin, channel  # type: ignore[assignment]
        seg.checkpoint.body, seg.checkpoint.signature, seg.checkpoint.key_id = cp.body, cp.signature, cp.key_id
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
