"""Which Ed25519 keys may sign for which node, and up to which position of its logs.

Rules of this module:

- Admission. A key enters the keyring only with its certificate chain, validated up to this node's
  root CA with the subtree rule (node.pki.validate_chain) *at the time of admission*: every
  certificate of the chain must be inside its validity now (``not_before - CLOCK_SKEW <= now <=
  not_after``). A certificate that ended seconds ago, or that becomes valid only in ten days, is
  refused, and so are the records it signed (they arrive signed by an unknown key; the reason the
  certificate was refused is kept and named in that error). The certificate's node code is the only
  origin the key may sign for.
- Revocation is by position, not by time: the ``key.revoke`` record names, per channel, the last seq of
  the owner's logs the key may have signed (``revoked_through``: the revoker's heads when it revoked).
  A revoked key keeps verifying what it signed up to there and nothing beyond, whatever time the signer
  writes into its checkpoint — the holder of a leaked key controls that time, so a time rule alone
  could be defeated by backdating. (Revocations without positions fall back to the time rule.)
  Several revocations of one key: the most restrictive position wins.
- The end of a certificate is also turned into a position, for the same reason. A key that carries a
  revocation position already (its owner retires a key by a self-revocation when it rotates before
  the end, node.enrol.recover_own_keys) is bounded by that position alone. Otherwise, the first time
  this node sees the key's certificate ended (``Keyring.fix_ended``, called by the ledger before it
  verifies anything), it fixes the owner's heads it holds at that moment as the key's last positions
  (``ended_through``), and records or checkpoints of the key beyond them are refused (ExpiredKey).
  This is sound without storing the positions: everything beyond them signed by the key is refused
  from then on, so after a restart the heads (fixed again, on first use) hold nothing more signed by
  the key; between the end and the first verification nothing is accepted, because the ledger fixes
  positions before every verification. At rest (``fednode verify``), a key whose position was never
  fixed verifies what is held: all of it was admitted by the rules above. The judge is this node's
  clock: if it jumped past a certificate's end and comes back, the position is lifted again (a wrong
  clock refuses records for as long as it is wrong, never for good; the owner re-sends them).
- Renewal: a new certificate for a key already known (same key, e.g. re-issued by `pki install` of a
  new bundle) replaces the stored one when it is valid now and ends later; it lifts a fixed end
  position (the CA vouches for the key again). Links carry the renewed certificate from then on.
- One keyring per running node (``NodeRuntime.ledger.keyring``): links, reconciliation and admin
  operations (``pki revoke``/``rotate``/``install`` through the admin socket) all read and change this
  one object, on the node's database thread, so a change applies to the very next record verified.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.core import pki
from node.core.crypto import public_from_raw, public_raw
from node.core.errors import CertificateError, KeyNotForOrigin, RevokedKey, UnknownKey, UsageError
from node.core.records import CHANNEL_NAMES, channel_number
from proto.fednode.v1 import fednode_pb2 as pb

MAX_REFUSED = 1000  # reasons kept for refused certificates (named in UnknownKey errors)
NEVER = 1 << 62


class ExpiredKey(RevokedKey):
    """A record or checkpoint beyond the position where the key's certificate ended (see the module rules)."""

    code = "expired_key"


@dataclass
class KeyInfo:
    key_id: bytes
    code: str
    public: Ed25519PublicKey
    not_after_us: int
    certificate: bytes  # serialised KeyCertificate
    revoked_us: int | None = None
    revoked_reason: str = ""
    revoked_through: dict[int, int] | None = None  # channel -> last seq the key may have signed
    ended_through: dict[int, int] | None = None  # fixed when this node first saw the certificate ended

    def limited(self) -> bool:
        """Whether a position bounds what this key may have signed."""
        return self.revoked_through is not None or self.ended_through is not None


class Keyring:
    def __init__(self, root: x509.Certificate | None) -> None:
        self.root = root
        self.keys: dict[bytes, KeyInfo] = {}
        self.refused: dict[bytes, str] = {}  # key id -> why its certificate was refused
        self.limited_codes: set[str] = set()  # owners with a position-limited key (cheap test for the ledger)
        self.next_end_us = NEVER  # earliest end of a certificate whose position is not fixed yet
        self.ended_ids: set[bytes] = set()  # keys bounded by ``ended_through`` now (looked at on every call)
        self.lifted: list[KeyInfo] = []  # end positions lifted because the clock went back (drained by the ledger)
        self.judged: set[bytes] = set()  # leaf certificates of known keys already compared (renewals)

    @classmethod
    def from_rows(cls, root: x509.Certificate | None, rows: list) -> Keyring:  # type: ignore[type-arg]
        ring = cls(root)
        for r in rows:
            ring.add(KeyInfo(
                bytes(r.key_id), r.code, public_from_raw(bytes(r.public_key)), r.not_after_us,
                bytes(r.certificate), r.revoked_us, r.revoked_reason or "",
                _through(getattr(r, "revoked_through", None)),
            ))
        return ring

    def lookup(self, key_id: bytes, origin: str, at_us: int, *, channel: str = "", seq: int = 0) -> Ed25519PublicKey:
        info = self.keys.get(key_id)
        where = {"origin": origin, "channel": channel, "seq": seq}
        if info is None:
            why = self.refused.get(key_id)
            raise UnknownKey(
                f"{origin}/{channel} seq {seq} is signed by unknown key {key_id.hex()[:16]}"
                + (f": its certificate was refused ({why})" if why else ""),
                fix="the signer must rotate to a key whose certificate is valid now (`fednode pki rotate`)" if why else
                "the key's certificate must reach this node first (links send it with each batch); "
                "if the signer is not a node of this tree, this is a forgery",
                **where,  # type: ignore[arg-type]
            )
        if info.code != origin:
            raise KeyNotForOrigin(
                f"{origin}/{channel} seq {seq} is signed by key {key_id.hex()[:16]} of {info.code}, which may "
                f"only sign for {info.code}",
                fix="a node signs only its own records; check the sender for tampering",
                **where,  # type: ignore[arg-type]
            )
        if info.revoked_us is not None:
            through = info.revoked_through
            if through is not None and channel:
                if seq > through.get(channel_number(channel), 0):
                    raise RevokedKey(
                        f"{origin}/{channel} seq {seq} is signed by key {key_id.hex()[:16]}, revoked after seq "
                        f"{through.get(channel_number(channel), 0)} since {_utc(info.revoked_us)} "
                        f"({info.revoked_reason or 'no reason given'})",
                        fix=f"{origin} must sign with its current key: a running node rotates and re-signs by itself "
                        "(see `fednode pki keys`); a stopped one does so at `fednode run` or `fednode pki rotate`",
                        **where,  # type: ignore[arg-type]
                    )
            elif at_us >= info.revoked_us:
                raise RevokedKey(
                    f"{origin}/{channel} seq {seq} is signed by key {key_id.hex()[:16]}, revoked since "
                    f"{_utc(info.revoked_us)} ({info.revoked_reason or 'no reason given'})",
                    fix=f"{origin} must sign with its current key (`fednode pki rotate`)",
                    **where,  # type: ignore[arg-type]
                )
        ended = info.ended_through
        if ended is not None and channel and seq > ended.get(channel_number(channel), 0):
            raise ExpiredKey(
                f"{origin}/{channel} seq {seq} is signed by key {key_id.hex()[:16]}, whose certificate ended "
                f"{_utc(info.not_after_us)}; this node holds what it signed up to seq "
                f"{ended.get(channel_number(channel), 0)} and accepts nothing of it beyond",
                fix=f"{origin} must sign with a key whose certificate is valid (`fednode pki rotate` there)",
                **where,  # type: ignore[arg-type]
            )
        return info.public

    def admit(self, kc: pb.KeyCertificate, *, at: dt.datetime | None = None) -> KeyInfo:
        """Validate a key certificate against the root and the subtree rule, inside its validity at ``at``
        (default: now). Does not store it. A refusal is remembered (``refused``) for the error of the
        records the key signed."""
        if self.root is None:
            raise CertificateError("this node has no root certificate yet", fix="run `fednode pki install` first")
        try:
            leaf = x509.load_der_x509_certificate(kc.certificate)
            chain = [x509.load_der_x509_certificate(c) for c in kc.chain]
        except ValueError as e:
            raise CertificateError(f"key certificate is not DER X.509 ({e})") from None
        key_id = pki.signing_key_id(leaf)
        try:
            pki.validate_chain(leaf, chain, self.root, at=at or dt.datetime.now(dt.UTC))
        except CertificateError as e:
            self._refuse(key_id, e.message)
            raise CertificateError(f"signing key {key_id.hex()[:16]}: {e.message}", fix=e.fix) from None
        if kc.key_id and kc.key_id != key_id:
            raise CertificateError(f"key certificate says key id {kc.key_id.hex()[:16]} but holds {key_id.hex()[:16]}")
        pub = leaf.public_key()
        assert isinstance(pub, Ed25519PublicKey)
        info = KeyInfo(
            key_id, pki.code_of_cert(leaf), pub, int(leaf.not_valid_after_utc.timestamp() * 1e6),
            pb.KeyCertificate(key_id=key_id, certificate=kc.certificate, chain=list(kc.chain)).SerializeToString(),
        )
        existing = self.keys.get(key_id)
        if existing is not None:
            info.revoked_us, info.revoked_reason = existing.revoked_us, existing.revoked_reason
            info.revoked_through, info.ended_through = existing.revoked_through, existing.ended_through
        self.refused.pop(key_id, None)
        return info

    def _refuse(self, key_id: bytes, why: str) -> None:
        if len(self.refused) >= MAX_REFUSED:
            self.refused.pop(next(iter(self.refused)))
        self.refused[key_id] = why

    def add(self, info: KeyInfo) -> None:
        self.keys[info.key_id] = info
        if info.limited():
            self.limited_codes.add(info.code)
        else:
            self.next_end_us = min(self.next_end_us, info.not_after_us)

    def revoke(self, key_id: bytes, at_us: int, reason: str, through: dict[int, int] | None = None) -> None:
        info = self.keys.get(key_id)
        if info is None:
            return
        if info.revoked_us is None or at_us < info.revoked_us:
            info.revoked_us, info.revoked_reason = at_us, reason
        if through is not None:  # several revocations: the most restrictive position wins
            old = info.revoked_through
            info.revoked_through = {c: min(s, old.get(c, s)) for c, s in through.items()} if old else dict(through)
            self.limited_codes.add(info.code)

    def fix_ended(self, now_us: int, read_heads: Callable[[], Mapping[tuple[str, int], Any]]) -> list[KeyInfo]:
        """Fix the last positions of keys whose certificate has ended and that no revocation bounds yet:
        the owner's heads held here (``read_heads()``: (origin, channel) -> Head, read only when a key
        ends now). Returns the keys fixed now."""
        fixed = []
        heads: Mapping[tuple[str, int], Any] | None = None
        nxt = NEVER
        for info in self.keys.values():
            if info.revoked_through is not None:
                continue
            if info.ended_through is not None:
                if info.not_after_us >= now_us:  # our clock went back (it had jumped past the end): lift it
                    info.ended_through = None
                    self.lifted.append(info)
                    nxt = min(nxt, info.not_after_us)
                else:
                    self.ended_ids.add(info.key_id)
                continue
            if info.not_after_us < now_us:
                heads = read_heads() if heads is None else heads
                info.ended_through = {c: (heads[(info.code, c)].seq if (info.code, c) in heads else 0)
                                      for c in CHANNEL_NAMES}
                self.limited_codes.add(info.code)
                self.ended_ids.add(info.key_id)
                fixed.append(info)
            else:
                nxt = min(nxt, info.not_after_us)
        self.ended_ids -= {i.key_id for i in self.lifted}
        self.next_end_us = nxt
        return fixed

    def position_of(self, info: KeyInfo) -> dict[int, int] | None:
        """The key's last positions (revocation, else end of certificate), or None when unbounded."""
        return info.revoked_through if info.revoked_through is not None else info.ended_through

    def certificate(self, key_id: bytes) -> pb.KeyCertificate | None:
        info = self.keys.get(key_id)
        return pb.KeyCertificate.FromString(info.certificate) if info else None


def _utc(us: int) -> str:
    return f"{dt.datetime.fromtimestamp(us / 1e6, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _through(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    return {int(c): int(s) for c, s in json.loads(text).items()}


def through_json(through: dict[int, int] | None) -> str | None:
    return json.dumps({str(c): s for c, s in through.items()}) if through is not None else None


def raw_public(info: KeyInfo) -> bytes:
    return public_raw(info.public)


KEYS_FIX = "`fednode pki keys DIR` lists every key this node knows, with its full id"


def check_key_id(text: str) -> str:
    """The key id (or prefix) as lower-case hex; UsageError (exit 2) when it cannot be one."""
    t = text.strip().lower()
    if len(t) < 4 or len(t) > 64 or any(ch not in "0123456789abcdef" for ch in t):
        raise UsageError(f"{text!r} is not a key id: key ids are hexadecimal, 64 digits (a unique prefix of at "
                         "least 4 will do)", fix=KEYS_FIX)
    return t


def resolve_key_id(keyring: Keyring, text: str) -> bytes:
    """A key id as the operator typed it: the full hex id or a unique prefix (at least 4 hex digits).
    UsageError (exit 2) for anything else."""
    t = check_key_id(text)
    fix = KEYS_FIX
    hits = [k for k in keyring.keys if k.hex().startswith(t)]
    if not hits:
        raise UsageError(f"key {text} is not known here", fix=fix)
    if len(hits) > 1:
        raise UsageError(f"key id prefix {text} is ambiguous: {', '.join(sorted(k.hex()[:16] for k in hits))}…",
                         fix="type more digits of the id; " + fix)
    return hits[0]
