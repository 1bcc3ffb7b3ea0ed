"""Creating a node home and enrolling it in the tree (the `init` and `pki` commands).

Enrolment is CSR → parent signs → child installs. The province creates the root CA and enrols itself
against it. After `install`, the node's signing key is registered in its keyring and announced in its
control log (`key.announce`), so every node that receives its records can verify them.

Key operations take the ledger they work on: the running node passes its own (``NodeRuntime.ledger``,
through the admin socket: node/app/keys.py), so the live keyring and signer change at once; the
CLI on a stopped node passes none and a fresh ledger on the store is used.

``recover_own_keys`` is what a node does about its own keys (the running node, at start and whenever
one of its keys is revoked; ``pki rotate``/``pki revoke`` on a stopped node): rotate when the current
signing key is revoked, or when its certificate ends within ``RENEW_BEFORE`` (then the old key is
retired by a self-revocation at the current heads, so every node knows its exact last positions
before the certificate ends), and re-sign what revoked keys signed beyond their positions
(node/core/ledger.py, ``Ledger.resign_revoked``).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from node.core import config as config_mod
from node.core import pki
from node.core.codes import parse_code
from node.core.errors import CertificateError, UsageError
from node.core.home import Home, write_public, write_secret
from node.core.ledger import Ledger
from node.core.records import now_us

RENEW_BEFORE = dt.timedelta(days=30)  # a node rotates its signing key this long before its certificate ends


def init(directory: Path, *, code: str, name: str, level: str, parent: str = "", listen: str = "",
         db: str = "") -> Home:
    directory = Path(directory)
    code = parse_code(code).text
    if (directory / config_mod.CONFIG_NAME).exists():
        raise UsageError(f"{directory} is already a node home", fix="use another directory")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config_mod.Config(path=directory / config_mod.CONFIG_NAME, code=code, name=name, level=level,
                            parent=parent, listen=listen)
    if db:
        cfg.store_url = db
    config_mod.write(cfg)
    try:
        home = Home(directory)  # validates what we wrote
    except Exception:
        # a refused init leaves nothing behind, so the corrected command can simply be run again
        cfg.path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    write_secret(home.key_path("tls.key"), pki.key_to_pem(pki.new_tls_key()))
    write_secret(home.key_path("ca.key"), pki.key_to_pem(pki.new_tls_key()))
    write_secret(home.key_path("sign.key"), pki.key_to_pem(pki.new_signing_key()))
    home.store()
    home.record_own_heads({})  # a new node: its store can never be behind this
    return home


def init_root(home: Home) -> pki.Bundle:
    """Province: create the root CA and enrol the province against it."""
    if parse_code(home.code).level != "province":
        raise UsageError(f"{home.code} is not a province: only the province holds the root CA",
                         fix="run `fednode pki request` on this node and have its parent sign it")
    if home.has("root.crt"):
        raise UsageError(f"{home.key_path('root.crt')} already exists", fix="the root CA is created once")
    root_key = pki.new_tls_key()
    root = pki.create_root(home.code, home.config.name, root_key)
    write_secret(home.key_path("root.key"), pki.key_to_pem(root_key))
    req = request(home)
    bundle = pki.sign_request(req, signer_code=home.code, signer_path=home.code, signer_ca_cert=root,
                              signer_ca_key=root_key, signer_chain=[], root=root, self_enrol=True)
    install(home, bundle)
    return bundle


def request(home: Home) -> pki.Request:
    return pki.make_request(
        home.code, home.config.name, home.config.level,
        home.load_key("tls.key"), home.load_key("ca.key"), home.load_key("sign.key"),  # type: ignore[arg-type]
    )


class FingerprintMismatch(UsageError):
    code = "fingerprint_mismatch"


def sign(home: Home, req: pki.Request, fingerprint: str | None = None) -> pki.Bundle:
    """Parent: issue certificates for a child inside this node's subtree. ``fingerprint``: the request's key
    fingerprint as the child's IT staff read it out; a request with other keys is refused, unsigned."""
    if fingerprint is not None:
        actual = pki.request_fingerprint(req)
        if not pki.fingerprint_matches(fingerprint, actual):
            raise FingerprintMismatch(
                f"请求文件的密钥指纹是 {actual}，与所给的 {fingerprint} 不符，未签发 / the request's key fingerprint is "
                f"{actual}, not {fingerprint}: nothing was signed",
                fix=f"不要签发：请求文件不是 {req.code} 本机生成的那一份（或读错了）。请对方重新运行 `fednode pki request` 并"
                    "通过电话核对指纹 / do not sign: this file is not the request the node made (or the digits were misheard); "
                    "ask the child's IT staff to read the fingerprint again")
    if not home.has("ca.crt"):
        raise UsageError(f"{home.code} has no CA certificate yet", fix="install this node's own bundle first")
    root = home.root()
    assert root is not None
    ca_key = home.load_key("ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return pki.sign_request(
        req, signer_code=home.code, signer_path=home.path(), signer_ca_cert=home.load_cert("ca.crt"),
        signer_ca_key=ca_key, signer_chain=home.chain(), root=root,
    )


def install(home: Home, bundle: pki.Bundle, ledger: Ledger | None = None) -> None:
    """Child: check the bundle against our own keys and the root, then install it. ``ledger``: the
    running node's (its keyring and signer take the installed key at once)."""
    if bundle.code != home.code:
        raise CertificateError(f"the bundle is for {bundle.code}, this node is {home.code}",
                               fix="install the bundle issued for this node's request")
    for label, cert, keyname in (("tls", bundle.tls_cert, "tls.key"), ("ca", bundle.ca_cert, "ca.key"),
                                 ("sign", bundle.sign_cert, "sign.key")):
        key = home.load_key(keyname)
        if cert.public_key().public_bytes(pki.serialization.Encoding.DER, pki.serialization.PublicFormat.SubjectPublicKeyInfo) != \
                key.public_key().public_bytes(pki.serialization.Encoding.DER, pki.serialization.PublicFormat.SubjectPublicKeyInfo):  # type: ignore[attr-defined]
            raise CertificateError(f"the bundle's {label} certificate is not for this node's {keyname}",
                                   fix="the bundle answers another request; sign this node's current request")
        pki.validate_chain(cert, bundle.chain, bundle.root)
    write_public(home.key_path("root.crt"), pki.cert_to_pem(bundle.root))
    write_public(home.key_path("chain.pem"), b"".join(pki.cert_to_pem(c) for c in bundle.chain))
    write_public(home.key_path("tls.crt"), pki.cert_to_pem(bundle.tls_cert))
    write_public(home.key_path("ca.crt"), pki.cert_to_pem(bundle.ca_cert))
    write_public(home.key_path("sign.crt"), pki.cert_to_pem(bundle.sign_cert))
    if bundle.parent_code and bundle.parent_code != home.code:
        config_mod.set_field(home.config.path, "link", "parent_code", bundle.parent_code)
        home.config = config_mod.load(home.config.path)
    _register_own_key(home, ledger)


def _register_own_key(home: Home, ledger: Ledger | None = None) -> None:
    ledger = ledger or home.ledger()
    kc = home.key_certificate()
    known = kc.key_id in ledger.keyring.keys
    ledger.admit_keys([kc])  # a new key, or a renewed certificate of the same key
    ledger.set_signer(home.signer())
    if not known:
        ledger.announce_key(kc)


def rotate(home: Home, ledger: Ledger | None = None) -> tuple[bytes, bytes]:
    """Replace the signing key by a new one certified by this node's own CA. Returns (old, new) key ids.
    ``ledger``: the running node's (it signs with the new key from the next record on)."""
    old = home.key_certificate().key_id
    new_key = pki.new_signing_key()
    ca_key = home.load_key("ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert = pki.issue_signing_cert(public_key=new_key.public_key(), code=home.code, path=home.path(),
                                  ca_cert=home.load_cert("ca.crt"), ca_key=ca_key)
    retired = home.keys / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    shutil.copy2(home.key_path("sign.key"), retired / f"sign-{old.hex()[:12]}-{stamp}.key")
    shutil.copy2(home.key_path("sign.crt"), retired / f"sign-{old.hex()[:12]}-{stamp}.crt")
    write_secret(home.key_path("sign.key"), pki.key_to_pem(new_key))
    write_public(home.key_path("sign.crt"), pki.cert_to_pem(cert))
    _register_own_key(home, ledger)
    return old, home.key_certificate().key_id


def recover_own_keys(home: Home, ledger: Ledger, *, now: int | None = None) -> dict[str, Any] | None:
    """Put this node's own keys right (see the module docstring): rotate away from a revoked or ending
    signing key, then re-sign what revoked keys of ours signed beyond their positions. Returns what was
    done, or None when there was nothing to do."""
    now = now or now_us()
    ledger.own_key_revoked = False
    signer = ledger.signer
    if signer is None:
        return None
    done: dict[str, Any] = {}
    info = ledger.keyring.keys.get(signer.key_id)
    ending = info is not None and info.not_after_us - now < RENEW_BEFORE.total_seconds() * 1e6
    if info is not None and (info.revoked_us is not None or ending):
        old, new = rotate(home, ledger)
        done["rotated"] = {"old_key_id": old.hex(), "new_key_id": new.hex(),
                           "why": "revoked" if info.revoked_us is not None else "certificate ends "
                           f"{dt.datetime.fromtimestamp(info.not_after_us / 1e6, dt.UTC):%Y-%m-%d}"}
        if info.revoked_us is None:  # retire the old key at our heads: its last positions are known everywhere
            ledger.revoke_key(old, f"retired: its certificate ends; replaced by {new.hex()[:16]}")
    resigned = ledger.resign_revoked()
    if resigned:
        done["resigned"] = resigned
    return done or None
