"""Key operations (use cases): key_rows, rotate, revoke, install.

The rules below are the feature's; its parts: node/interfaces/admin/keys.py (ops pki.*),
node/interfaces/cli/pki.py, node/runtime/services/keys.py (KeyService).

Rules of this module:
- While the node runs, every key operation goes through the admin socket (ops ``pki.rotate``,
  ``pki.revoke``, ``pki.install``, ``pki.keys``) and runs on the node's database thread against the
  node's own ledger: the live keyring and signer change at once, so the very next record a link, a
  reconciliation or a local append handles is judged (or signed) by the new keyring. When the node is
  stopped, the CLI does the same on the store.
- Key ids are shown in full (64 hex digits) everywhere; a unique prefix of at least 4 digits is
  accepted (node.keyring.resolve_key_id); anything else is a usage error (exit 2).
- A node may revoke its own keys (not the one it signs with: rotate first) and its descendants' keys;
  the revocation is by position (node/core/keyring.py) and travels up to the root and down to the owner.
- KeyService (in the running node): when one of the node's own keys is revoked (the record may come
  from an ancestor, down the link), or its signing certificate is about to end, it rotates if needed
  and re-signs what the revoked key signed beyond its position (node.enrol.recover_own_keys,
  node/core/ledger.py), then makes the uplink resend those logs from the position at once (it clears the
  link's pause after the parent refused them). It logs ``own_keys_recovered`` and shows the last
  recovery in `fednode status` (section ``key_recovery``); the ``key.resign`` control record keeps it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography import x509

from node.app import enrol
from node.app.remote import via_node_or_store
from node.core import pki
from node.core.errors import UsageError
from node.core.home import Home
from node.core.keyring import Keyring, check_key_id, resolve_key_id
from node.core.ledger import Ledger
from node.core.records import channel_name
from node.core.times import iso, iso_us
from proto.fednode.v1 import fednode_pb2 as pb

# ---- the work, shared by the admin ops and the CLI on a stopped node -------------------------------------


def _iso(us: int | None) -> str | None:
    return iso_us(us)


def key_rows(keyring: Keyring, signer_id: bytes | None, code: str | None = None) -> list[dict[str, Any]]:
    """Every key of the keyring (of ``code`` only, if given): id, owner, state, validity, fingerprint."""
    now = dt.datetime.now(dt.UTC)
    out = []
    for info in keyring.keys.values():
        if code is not None and info.code != code:
            continue
        kc = pb.KeyCertificate.FromString(info.certificate)
        leaf = x509.load_der_x509_certificate(kc.certificate)
        if info.revoked_us is not None:
            state = "revoked"
        elif info.ended_through is not None or leaf.not_valid_after_utc < now:
            state = "expired"
        elif leaf.not_valid_before_utc - pki.CLOCK_SKEW > now:
            state = "not yet valid"
        else:
            state = "valid"
        out.append({
            "key_id": info.key_id.hex(), "code": info.code, "state": state, "current": info.key_id == signer_id,
            "not_before": iso(leaf.not_valid_before_utc), "not_after": iso(leaf.not_valid_after_utc),
            "cert_sha256": hashlib.sha256(kc.certificate).hexdigest(),
            "revoked_at": _iso(info.revoked_us), "revoked_reason": info.revoked_reason or None,
            "revoked_through": {channel_name(c): s for c, s in info.revoked_through.items()}
            if info.revoked_through is not None else None,
            "ended_through": {channel_name(c): s for c, s in info.ended_through.items()}
            if info.ended_through is not None else None,
        })
    out.sort(key=lambda r: (r["code"], r["not_before"], r["key_id"]))
    return out


def revoke(ledger: Ledger, key_text: str, reason: str) -> dict[str, Any]:
    key_id = resolve_key_id(ledger.keyring, key_text)
    if ledger.signer is not None and key_id == ledger.signer.key_id:
        raise UsageError(f"key {key_id.hex()} is this node's current signing key",
                         fix="rotate first (`fednode pki rotate DIR`), then revoke the old key by the id it prints")
    through = ledger.revoke_key(key_id, reason)
    info = ledger.keyring.keys[key_id]
    return {"revoked": key_id.hex(), "code": info.code, "reason": reason,
            "through": {channel_name(c): s for c, s in through.items()}}


def rotate(home: Home, ledger: Ledger) -> dict[str, Any]:
    old, new = enrol.rotate(home, ledger)
    return {"old_key_id": old.hex(), "new_key_id": new.hex(), "recovery": enrol.recover_own_keys(home, ledger)}


def install(home: Home, ledger: Ledger | None, bundle: pki.Bundle) -> dict[str, Any]:
    names = ("tls.crt", "chain.pem", "root.crt")
    before = {n: home.key_path(n).read_bytes() if home.has(n) else b"" for n in names}
    parent_before = home.config.parent_code
    enrol.install(home, bundle, ledger)
    changed = [n for n in names if (home.key_path(n).read_bytes() if home.has(n) else b"") != before[n]]
    return {"code": home.code, "path": bundle.path, "parent_code": bundle.parent_code,
            "key_id": home.key_certificate().key_id.hex(), "changed": changed,
            "parent_changed": home.config.parent_code != parent_before}


# ---- the use cases: through the running node, else on the stopped store --------------------------------


def install_bundle(home: Home, text: str, source: str) -> dict[str, Any]:
    """`fednode pki install`: the bundle's text (checked here first), installed by the node or on the store."""
    bundle = pki.Bundle.from_json(text, source=source)
    data, via = via_node_or_store(home, {"op": "pki.install", "bundle": text, "source": source},
                                  lambda: install(home, None, bundle))
    data["via"] = via
    data["bundle_fingerprint"] = pki.bundle_fingerprint(bundle)  # the one the parent's `pki sign` printed
    return dict(data)


def rotate_key(home: Home) -> dict[str, Any]:
    """`fednode pki rotate`: a new signing key, by the running node or on the store."""
    data, via = via_node_or_store(home, {"op": "pki.rotate"}, lambda: rotate(home, home.ledger()))
    data["via"] = via
    return dict(data)


def revoke_key(home: Home, key_text: str, reason: str) -> dict[str, Any]:
    """`fednode pki revoke`: by the running node, or on the store (then the node's own keys recovered)."""
    check_key_id(key_text)

    def local() -> dict[str, Any]:
        ledger = home.ledger()
        data = revoke(ledger, key_text, reason)
        if data["code"] == home.code:
            data["recovery"] = enrol.recover_own_keys(home, ledger)
        return data

    data, via = via_node_or_store(home, {"op": "pki.revoke", "key_id": key_text, "reason": reason}, local)
    data["via"] = via
    return dict(data)


def list_keys(home: Home, code: str | None) -> list[dict[str, Any]]:
    """`fednode pki keys`: every key the node knows (of ``code`` only, if given)."""

    def local() -> list[dict[str, Any]]:
        ledger = home.ledger()
        return key_rows(ledger.keyring, ledger.signer.key_id if ledger.signer else None, code or None)

    rows: list[dict[str, Any]] = via_node_or_store(home, {"op": "pki.keys", "code": code or ""}, local)[0]
    return rows
