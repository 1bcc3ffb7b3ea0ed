"""Which Ed25519 keys may sign for which node, and since/until when.

A key enters the keyring only with its certificate chain, validated up to this node's root CA with the
subtree rule (node.pki.validate_chain); the certificate's node code is the only origin the key may
sign for.

Revocation is by position, not by time: the `key.revoke` record names, per channel, the last seq of the
owner's logs the key may have signed (``revoked_through``: the revoker's heads when it revoked). A
revoked key keeps verifying what it signed up to there and nothing beyond, whatever time the signer
writes into its checkpoint — the holder of a leaked key controls that time, so a time rule alone
could be defeated by backdating. (Revocations without positions fall back to the time rule.)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node import pki
from node.crypto import public_from_raw, public_raw
from node.errors import CertificateError, KeyNotForOrigin, RevokedKey, UnknownKey
from node.records import channel_number
from proto.fednode.v1 import fednode_pb2 as pb


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


class Keyring:
    def __init__(self, root: x509.Certificate | None) -> None:
        self.root = root
        self.keys: dict[bytes, KeyInfo] = {}

    @classmethod
    def from_rows(cls, root: x509.Certificate | None, rows: list) -> Keyring:  # type: ignore[type-arg]
        ring = cls(root)
        for r in rows:
            ring.keys[bytes(r.key_id)] = KeyInfo(
                bytes(r.key_id), r.code, public_from_raw(bytes(r.public_key)), r.not_after_us,
                bytes(r.certificate), r.revoked_us, r.revoked_reason or "",
                _through(getattr(r, "revoked_through", None)),
            )
        return ring

    def lookup(self, key_id: bytes, origin: str, at_us: int, *, channel: str = "", seq: int = 0) -> Ed25519PublicKey:
        info = self.keys.get(key_id)
        where = {"origin": origin, "channel": channel, "seq": seq}
        if info is None:
            raise UnknownKey(
                f"{origin}/{channel} seq {seq} is signed by unknown key {key_id.hex()[:16]}",
                fix="the key's certificate must reach this node first (links send it with each batch); "
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
        if info.revoked_us is not None and (
            seq > info.revoked_through.get(channel_number(channel), 0) if info.revoked_through is not None and channel
            else at_us >= info.revoked_us
        ):
            raise RevokedKey(
                f"{origin}/{channel} seq {seq} is signed by key {key_id.hex()[:16]}, revoked "
                f"{'after seq ' + str(info.revoked_through.get(channel_number(channel), 0)) + ' ' if info.revoked_through is not None and channel else ''}since "
                f"{dt.datetime.fromtimestamp(info.revoked_us / 1e6, dt.UTC):%Y-%m-%d %H:%M:%S} UTC "
                f"({info.revoked_reason or 'no reason given'})",
                fix=f"{origin} must sign with its current key (`fednode pki rotate`)",
                **where,  # type: ignore[arg-type]
            )
        return info.public

    def admit(self, kc: pb.KeyCertificate) -> KeyInfo:
        """Validate a key certificate against the root and the subtree rule. Does not store it."""
        if self.root is None:
            raise CertificateError("this node has no root certificate yet", fix="run `fednode pki install` first")
        try:
            leaf = x509.load_der_x509_certificate(kc.certificate)
            chain = [x509.load_der_x509_certificate(c) for c in kc.chain]
        except ValueError as e:
            raise CertificateError(f"key certificate is not DER X.509 ({e})") from None
        pki.validate_chain(leaf, chain, self.root, at=leaf.not_valid_before_utc + pki.CLOCK_SKEW)
        key_id = pki.signing_key_id(leaf)
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
            info.revoked_through = existing.revoked_through
        return info

    def add(self, info: KeyInfo) -> None:
        self.keys[info.key_id] = info

    def revoke(self, key_id: bytes, at_us: int, reason: str, through: dict[int, int] | None = None) -> None:
        info = self.keys.get(key_id)
        if info is None:
            return
        if info.revoked_us is None or at_us < info.revoked_us:
            info.revoked_us, info.revoked_reason = at_us, reason
        if through is not None:  # several revocations: the most restrictive position wins
            old = info.revoked_through
            info.revoked_through = {c: min(s, old.get(c, s)) for c, s in through.items()} if old else dict(through)

    def certificate(self, key_id: bytes) -> pb.KeyCertificate | None:
        info = self.keys.get(key_id)
        return pb.KeyCertificate.FromString(info.certificate) if info else None


def _through(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    return {int(c): int(s) for c, s in json.loads(text).items()}


def through_json(through: dict[int, int] | None) -> str | None:
    return json.dumps({str(c): s for c, s in through.items()}) if through is not None else None


def raw_public(info: KeyInfo) -> bytes:
    return public_raw(info.public)
