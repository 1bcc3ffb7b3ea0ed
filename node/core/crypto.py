"""Hashes, the signature encoding and Ed25519 keys: the only place that touches raw crypto.

Rules of this module:
- signatures are over a DSSE-style pre-authentication encoding (PAE) of (payload type, bytes), so a
  signature made for one purpose (a record) can never be replayed as another (a checkpoint);
- a key id is SHA-256 of the raw 32-byte public key;
- the chain is ``chain[n] = SHA256(chain[n-1] || SHA256(body[n]))`` with ``chain[0]`` all zeros.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RECORD_TYPE = b"fednode/record/v1"
CHECKPOINT_TYPE = b"fednode/checkpoint/v1"
GENESIS = bytes(32)

_sha256 = hashlib.sha256


def entry_hash(body: bytes) -> bytes:
    return _sha256(body).digest()


def chain_step(previous: bytes, body: bytes) -> bytes:
    return _sha256(previous + _sha256(body).digest()).digest()


def chain_over(previous: bytes, bodies: list[bytes]) -> list[bytes]:
    """The chain value after each body, starting from ``previous``."""
    out = []
    h = _sha256
    for body in bodies:
        previous = h(previous + h(body).digest()).digest()
        out.append(previous)
    return out


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> bytes:
    return _sha256(public_raw(key)).digest()


class Signer:
    """An Ed25519 private key with its key id."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, payload_type: bytes, payload: bytes) -> bytes:
        return self.private.sign(pae(payload_type, payload))


def verify(public: Ed25519PublicKey, payload_type: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, pae(payload_type, payload))
    except InvalidSignature:
        return False
    return True


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)
