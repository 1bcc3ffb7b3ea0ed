"""Certificates: the jurisdiction tree is the trust chain.

Rules of this module:
- TLS keys are ECDSA P-256 (grpcio's TLS rejects Ed25519); record-signing keys are Ed25519, certified
  by the same chain.
- Every certificate carries the node's tree path as a URI SAN ``fednode:320000/320300/320303``; the
  last element is the node code. That URI is the node's identity, on the link and in signing chains.
- TLS certificates also carry the path as a hierarchical DNS SAN, the path reversed, lower case:
  ``320303.320300.320000.fednode`` (``dns_name_of_path``). A child dials its parent with the parent's
  name (its own path minus its code) as the expected server name. Certificates issued before this
  scheme carry the flat ``<code>.fednode`` instead (``legacy_dns_name``); a dialler falls back to it.
- The one rule: a CA certifies only codes inside its own subtree (node.codes.within), below its own
  path. ``validate_chain`` applies it to every link of a chain and is what every check calls: the
  keyring for signing chains, the link (node/link/transport.py) for the chain a peer presents in TLS. It is
  also checked when a certificate is issued, so a rogue intermediate gains nothing.
- Defence in depth for standards-conforming TLS stacks (BoringSSL in gRPC, OpenSSL, cryptography's
  verifier): every CA certificate carries a critical NameConstraints extension whose only permitted
  subtree is the DNS name of its own path, and a path length. URI name constraints are NOT used:
  BoringSSL/OpenSSL reject a ``fednode:`` URI (no ``//`` authority) under a URI constraint as
  unsupported syntax and would fail every handshake, and cryptography's verifier refuses URI
  constraints outright. So the TLS stack bounds DNS names (who may answer as a server), while the URI
  identity of a client is bounded only by ``validate_chain``.
- Path length: a tree path has at most ``MAX_DEPTH`` (8) elements: province, city, county and five
  levels of departments (``320300-GA-X`` nests). The root carries pathLenConstraint ``MAX_DEPTH``; the
  CA of a node whose path has ``k`` elements carries ``MAX_DEPTH - k`` (the province's ``MAX_DEPTH - 1``,
  so a CA at the deepest level may still certify its own rotated signing keys but no child CA); a
  child deeper than ``MAX_DEPTH`` is refused at issue. ``validate_chain`` honours a path length where
  one is present (certificates issued before carry none).
- The province holds the root CA; each node holds an intermediate CA for its subtree, issued by its
  parent. A node's own TLS/CA/signing certificates are issued by its parent's CA (the root's, for the
  province); later signing keys (rotation) may be issued by the node's own CA.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.core.codes import parse_code, path_of, strictly_within, within
from node.core.crypto import key_id_of
from node.core.errors import CertificateError, CertificateOutsideSubtree, UsageError

URI_PREFIX = "fednode:"
CA_DAYS = 3650
LEAF_DAYS = 825
CLOCK_SKEW = dt.timedelta(minutes=5)
DNS_SUFFIX = "fednode"
MAX_DEPTH = 8  # elements of a tree path: province, city, county, five levels of departments

PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- keys -------------------------------------------------------------------------------------------


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_from_pem(data: bytes) -> Any:
    return serialization.load_pem_private_key(data, password=None)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes | str) -> x509.Certificate:
    if isinstance(data, str):
        data = data.encode()
    return x509.load_pem_x509_certificate(data)


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data) if data.strip() else []


# ---- reading identities from certificates -----------------------------------------------------------


def path_of_cert(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(
            f"certificate {cert.subject.rfc4514_string()} has no fednode URI SAN",
            fix="it was not issued by fednode pki; request a new one with `fednode pki request`",
        ) from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(URI_PREFIX):
            return uri[len(URI_PREFIX) :]
    raise CertificateError(
        f"certificate {cert.subject.rfc4514_string()} has no fednode URI SAN",
        fix="it was not issued by fednode pki; request a new one with `fednode pki request`",
    )


def code_of_cert(cert: x509.Certificate) -> str:
    return path_of_cert(cert).rsplit("/", 1)[-1]


def path_of_uri(uri: str) -> str | None:
    return uri[len(URI_PREFIX) :] if uri.startswith(URI_PREFIX) else None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


# ---- issuing ----------------------------------------------------------------------------------------


def _name(code: str, name: str, role: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, code), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]
    if name:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, name))
    return x509.Name(attrs)


def dns_name_of_path(path: str) -> str:
    """The DNS name of a node at ``path``: ``320000/320300/320303`` -> ``320303.320300.320000.fednode``.
    A CA's NameConstraints permit exactly this name and the names below it."""
    return ".".join([*reversed(path.lower().split("/")), DNS_SUFFIX])


def dns_name_for(code: str) -> str:
    """The DNS name of ``code`` in its natural place in the tree (node.codes.path_of). A node enrolled
    elsewhere (e.g. a county signed by the province directly) has ``dns_name_of_path`` of its real path."""
    return dns_name_of_path(path_of(code))


def legacy_dns_name(code: str) -> str:
    """The flat server name certificates carried before hierarchical names: ``320300.fednode``."""
    return f"{code.lower()}.{DNS_SUFFIX}"


def parent_server_names(path: str) -> list[str]:
    """The server names a node at ``path`` may expect of its parent, preferred first: the parent's
    hierarchical name, then (a parent whose certificate predates it) its flat legacy name."""
    parent = path.rsplit("/", 1)[0] if "/" in path else path
    return [dns_name_of_path(parent), legacy_dns_name(parent.rsplit("/", 1)[-1])]


def server_name_of(cert: x509.Certificate) -> str:
    """The server name a TLS certificate answers to (its first DNS SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names = san.get_values_for_type(x509.DNSName) if san is not None else []
    if not names:
        raise CertificateError(f"certificate for {path_of_cert(cert)} carries no DNS name",
                               fix="it is not a fednode TLS certificate; reinstall the bundle from the parent")
    return str(names[0])


def path_length_for(path: str) -> int:
    """pathLenConstraint of the CA certificate of the node at ``path`` (see the module docstring)."""
    return MAX_DEPTH - len(path.split("/"))


def check_issuable_path(path: str) -> None:
    """Refuse a tree path that the certificate profile cannot carry: too deep for the path length, or
    whose DNS name breaks DNS limits (63 characters a label, 253 a name)."""
    code = path.rsplit("/", 1)[-1]
    if len(path.split("/")) > MAX_DEPTH:
        raise CertificateOutsideSubtree(
            f"{path} is {len(path.split('/'))} levels deep; a tree is at most {MAX_DEPTH} levels "
            "(province, city, county, five levels of departments)",
            fix=f"enrol {code} higher in the tree, under a node of fewer levels",
        )
    name = dns_name_of_path(path)
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        raise UsageError(
            f"the DNS name of {path} ({name}) is longer than DNS allows (63 characters a label, 253 in all)",
            fix="use shorter department suffixes",
        )


def _build(
    *,
    subject: x509.Name,
    public_key: Any,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    path: str,
    role: str,
    days: int,
    now: dt.datetime | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """``path_length`` (CA only): default ``path_length_for(path)``; the root passes ``MAX_DEPTH``."""
    now = now or _now()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(URI_PREFIX + path)]
    if role == "tls":
        sans.append(x509.DNSName(dns_name_of_path(path)))
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if role == "ca":
        plen = path_length_for(path) if path_length is None else path_length
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=plen), critical=True)
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        b = b.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(dns_name_of_path(path))], excluded_subtrees=None),
            critical=True,
        )
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(
            x509.KeyUsage(True, False, role == "tls", False, False, False, False, False, False), critical=True
        )
        if role == "tls":
            b = b.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_cert is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    algorithm = None if isinstance(issuer_key, Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(issuer_key, algorithm)  # type: ignore[arg-type]


def create_root(code: str, name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    if parse_code(code).level != "province":
        raise UsageError(
            f"the root CA belongs to the province, and {code} is not a province code",
            fix="run `fednode pki init-root` on the province node (e.g. 320000) only",
        )
    return _build(
        subject=_name(code, f"{name} fednode root CA", "root"),
        public_key=key.public_key(),
        issuer_cert=None,
        issuer_key=key,
        path=code,
        role="ca",
        days=CA_DAYS * 2,
        path_length=MAX_DEPTH,
    )


# ---- enrolment: request and bundle documents -------------------------------------------------------


@dataclass
class Request:
    """What a child sends its parent: three CSRs, one per key, each signed by its key."""

    code: str
    name: str
    level: str
    tls_csr: x509.CertificateSigningRequest
    ca_csr: x509.CertificateSigningRequest
    sign_csr: x509.CertificateSigningRequest

    def to_json(self) -> str:
        pem = serialization.Encoding.PEM
        return json.dumps(
            {
                "fednode_request": 1,
                "code": self.code,
                "name": self.name,
                "level": self.level,
                "tls_csr": self.tls_csr.public_bytes(pem).decode(),
                "ca_csr": self.ca_csr.public_bytes(pem).decode(),
                "sign_csr": self.sign_csr.public_bytes(pem).decode(),
            },
            ensure_ascii=False,
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "request") -> Request:
        try:
            d = json.loads(text)
            req = cls(
                code=d["code"],
                name=d.get("name", ""),
                level=d.get("level", ""),
                tls_csr=x509.load_pem_x509_csr(d["tls_csr"].encode()),
                ca_csr=x509.load_pem_x509_csr(d["ca_csr"].encode()),
                sign_csr=x509.load_pem_x509_csr(d["sign_csr"].encode()),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(
                f"{source} is not a fednode certificate request ({type(e).__name__}: {e})",
                fix="create it on the child with `fednode pki request DIR > CHILD.csr` and pass that file",
            ) from None
        for label, csr in (("tls", req.tls_csr), ("ca", req.ca_csr), ("sign", req.sign_csr)):
            if not csr.is_signature_valid:
                raise CertificateError(
                    f"{source}: the {label} CSR's signature does not verify",
                    fix="the request was altered; create a new one with `fednode pki request`",
                )
            cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if not cn or cn[0].value != req.code:
                raise CertificateError(
                    f"{source}: the {label} CSR is for {cn[0].value if cn else '?'!r}, not {req.code!r}",
                    fix="create a new request with `fednode pki request`",
                )
        if not isinstance(req.tls_csr.public_key(), ec.EllipticCurvePublicKey) or not isinstance(
            req.ca_csr.public_key(), ec.EllipticCurvePublicKey
        ):
            raise CertificateError(f"{source}: TLS and CA keys must be ECDSA P-256", fix="use `fednode pki request`")
        if not isinstance(req.sign_csr.public_key(), Ed25519PublicKey):
            raise CertificateError(f"{source}: the signing key must be Ed25519", fix="use `fednode pki request`")
        return req


def make_request(
    code: str, name: str, level: str, tls_key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey,
    sign_key: Ed25519PrivateKey,
) -> Request:
    def csr(key: PrivateKey, role: str) -> x509.CertificateSigningRequest:
        algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
        return x509.CertificateSigningRequestBuilder().subject_name(_name(code, name, role)).sign(key, algorithm)  # type: ignore[arg-type]

    return Request(code, name, level, csr(tls_key, "tls"), csr(ca_key, "ca"), csr(sign_key, "sign"))


@dataclass
class Bundle:
    """What a parent returns: the child's certificates, the chain above them and the root."""

    code: str
    path: str
    parent_code: str
    ca_cert: x509.Certificate
    tls_cert: x509.Certificate
    sign_cert: x509.Certificate
    chain: list[x509.Certificate]  # issuer first, up to (excluding) the root
    root: x509.Certificate

    def to_json(self) -> str:
        return json.dumps(
            {
                "fednode_bundle": 1,
                "code": self.code,
                "path": self.path,
                "parent_code": self.parent_code,
                "ca_cert": cert_to_pem(self.ca_cert).decode(),
                "tls_cert": cert_to_pem(self.tls_cert).decode(),
                "sign_cert": cert_to_pem(self.sign_cert).decode(),
                "chain": [cert_to_pem(c).decode() for c in self.chain],
                "root": cert_to_pem(self.root).decode(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "bundle") -> Bundle:
        try:
            d = json.loads(text)
            return cls(
                code=d["code"],
                path=d["path"],
                parent_code=d.get("parent_code", ""),
                ca_cert=cert_from_pem(d["ca_cert"]),
                tls_cert=cert_from_pem(d["tls_cert"]),
                sign_cert=cert_from_pem(d["sign_cert"]),
                chain=[cert_from_pem(c) for c in d["chain"]],
                root=cert_from_pem(d["root"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"{source} is not a fednode certificate bundle ({type(e).__name__}: {e})",
                fix="ask the parent to run `fednode pki sign PARENT_DIR CHILD.csr > CHILD.bundle` and pass that file",
            ) from None


# ---- enrolment fingerprints: what the two IT officers read out to each other by phone ---------------------

FINGERPRINT_MIN_HEX = 16  # a prefix read out must be at least this long (64 bits: no key can be made to match)


def _spki(cert_or_csr: Any) -> bytes:
    return bytes(cert_or_csr.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))


def _grouped(digest: bytes) -> str:
    h = digest.hex()
    return " ".join(h[i:i + 4] for i in range(0, len(h), 4))


def request_fingerprint(req: Request) -> str:
    """SHA-256 over the request's three public keys (TLS, CA, signing; DER SubjectPublicKeyInfo, in that
    order), in groups of four hex digits. It names the keys, not the code or name anyone can copy."""
    h = hashes.Hash(hashes.SHA256())
    for csr in (req.tls_csr, req.ca_csr, req.sign_csr):
        der = _spki(csr)
        h.update(len(der).to_bytes(4, "big") + der)
    return _grouped(h.finalize())


def bundle_fingerprint(bundle: Bundle) -> str:
    """SHA-256 over the bundle's three certificates (TLS, CA, signing; DER), the same grouping: the parent's
    `pki sign` prints it, the child's `pki install` prints it again."""
    h = hashes.Hash(hashes.SHA256())
    for cert in (bundle.tls_cert, bundle.ca_cert, bundle.sign_cert):
        der = cert.public_bytes(serialization.Encoding.DER)
        h.update(len(der).to_bytes(4, "big") + der)
    return _grouped(h.finalize())


def fingerprint_matches(expected: str, actual: str) -> bool:
    """Whether ``expected`` (as read out: any case, spaces or colons, the whole or a prefix of at least
    ``FINGERPRINT_MIN_HEX`` hex digits) is ``actual``."""
    want = "".join(c for c in expected.lower() if c not in " :-\t")
    have = actual.replace(" ", "")
    if len(want) < FINGERPRINT_MIN_HEX or any(c not in "0123456789abcdef" for c in want):
        raise UsageError(f"--fingerprint {expected!r} is not a key fingerprint",
                         fix=f"give the fingerprint `fednode pki request` printed, at least its first {FINGERPRINT_MIN_HEX} "
                             "hex digits (e.g. 3f2a 91bc 07de 55a1)")
    return have.startswith(want)


def sign_request(
    req: Request,
    *,
    signer_code: str,
    signer_path: str,
    signer_ca_cert: x509.Certificate,
    signer_ca_key: ec.EllipticCurvePrivateKey,
    signer_chain: list[x509.Certificate],
    root: x509.Certificate,
    self_enrol: bool = False,
) -> Bundle:
    """Issue a child's certificates. Refuses any code outside the signer's subtree."""
    if self_enrol:
        if req.code != signer_code:
            raise CertificateOutsideSubtree(f"self-enrolment for {req.code} with the CA of {signer_code}")
        path = signer_path
        chain: list[x509.Certificate] = []
    else:
        if not strictly_within(req.code, signer_code):
            raise CertificateOutsideSubtree(
                f"{req.code} is not inside the subtree of {signer_code}; this node may only certify its own "
                "descendants",
                fix=f"send the request of {req.code} to the node whose subtree holds it",
            )
        path = f"{signer_path}/{req.code}"
        chain = [signer_ca_cert, *signer_chain]
    check_issuable_path(path)
    common = {"issuer_cert": signer_ca_cert, "issuer_key": signer_ca_key, "path": path}
    ca_cert = _build(subject=req.ca_csr.subject, public_key=req.ca_csr.public_key(), role="ca", days=CA_DAYS, **common)  # type: ignore[arg-type]
    tls_cert = _build(subject=req.tls_csr.subject, public_key=req.tls_csr.public_key(), role="tls", days=LEAF_DAYS, **common)  # type: ignore[arg-type]
    sign_cert = _build(subject=req.sign_csr.subject, public_key=req.sign_csr.public_key(), role="sign", days=LEAF_DAYS, **common)  # type: ignore[arg-type]
    return Bundle(req.code, path, signer_code, ca_cert, tls_cert, sign_cert, chain, root)


def issue_signing_cert(
    *, public_key: Ed25519PublicKey, code: str, path: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """A node certifies its own new signing key with its own CA (key rotation)."""
    return _build(
        subject=_name(code, "", "sign"), public_key=public_key, issuer_cert=ca_cert, issuer_key=ca_key,
        path=path, role="sign", days=LEAF_DAYS,
    )


# ---- validation -------------------------------------------------------------------------------------


def validate_chain(
    leaf: x509.Certificate, chain: list[x509.Certificate], root: x509.Certificate, *, at: dt.datetime | None = None
) -> str:
    """Check that ``leaf`` chains to ``root`` through ``chain`` and that every certificate stays inside
    its issuer's subtree. Returns the leaf's tree path."""
    at = at or _now()
    certs = [leaf, *chain]
    if not chain or chain[-1] != root:
        certs.append(root)
    for cert in certs:
        if not (cert.not_valid_before_utc - CLOCK_SKEW <= at <= cert.not_valid_after_utc):
            raise CertificateError(
                f"certificate for {path_of_cert(cert)} is not valid at {at:%Y-%m-%d %H:%M} UTC "
                f"(valid {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})",
                fix="renew it: a new `fednode pki request` signed by the parent",
            )
    for cert in certs:
        _check_dns_names(cert)
    for i, (child, issuer) in enumerate(zip(certs, certs[1:], strict=False)):
        if not is_ca(issuer):
            raise CertificateError(f"{path_of_cert(issuer)} is not a CA certificate but issued {path_of_cert(child)}")
        plen = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        below = sum(1 for c in certs[1 : i + 1] if c.issuer != c.subject)  # CAs between issuer and leaf
        if plen is not None and below > plen:
            raise CertificateError(
                f"the CA certificate of {path_of_cert(issuer)} allows {plen} CA levels below it, this chain "
                f"has {below}",
                fix="certificates must be issued by the parent of the node they name",
            )
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"certificate for {path_of_cert(child)} was not issued by {path_of_cert(issuer)}",
                fix="the chain is incomplete or forged; reinstall the bundle from the parent",
            ) from None
        cpath, ipath = path_of_cert(child), path_of_cert(issuer)
        ccode, icode = cpath.rsplit("/", 1)[-1], ipath.rsplit("/", 1)[-1]
        if not (within(ccode, icode) and (cpath == ipath or cpath.startswith(ipath + "/") or issuer == root)):
            raise CertificateOutsideSubtree(
                f"certificate for {cpath} was issued by {ipath}, outside that issuer's subtree",
                fix="certificates must be issued by the parent of the node they name",
            )
    if certs[-1] != root or certs[-1].issuer != certs[-1].subject:
        raise CertificateError("chain does not end at the root CA", fix="reinstall the bundle from the parent")
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError("the root CA certificate is not self-signed") from None
    return path_of_cert(leaf)


def _check_dns_names(cert: x509.Certificate) -> None:
    """A certificate's DNS names name the node of its URI path and nothing else: its hierarchical name,
    or (issued before those) its flat legacy name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    path = path_of_cert(cert)
    allowed = {dns_name_of_path(path), legacy_dns_name(path.rsplit("/", 1)[-1])}
    for name in san.get_values_for_type(x509.DNSName):
        if name.lower() not in allowed:
            raise CertificateOutsideSubtree(
                f"certificate for {path} also names the server {name}; a certificate names only its own node",
                fix="certificates must be issued by `fednode pki sign` on the parent of the node they name",
            )


MAX_PRESENTED = 16  # certificates a peer may present in its TLS chain; a real chain has at most MAX_DEPTH


def chain_from_presented(leaf: x509.Certificate, presented: list[x509.Certificate],
                         root: x509.Certificate) -> list[x509.Certificate]:
    """Order the certificates a peer presented (in any order, with or without the leaf and the root) into
    the issuer chain from ``leaf`` up to, excluding, ``root``, for ``validate_chain``. Each step takes a
    presented certificate whose key verifies the signature below it. Raises CertificateError when the
    presented certificates do not lead to ``root``."""
    if len(presented) > MAX_PRESENTED:
        raise CertificateError(f"the peer presented {len(presented)} certificates (at most {MAX_PRESENTED})")
    pool = [c for c in presented if c != leaf and c != root]
    chain: list[x509.Certificate] = []
    current = leaf
    for _ in range(len(pool) + 1):
        if current.issuer == root.subject:
            try:
                current.verify_directly_issued_by(root)
                return chain
            except (ValueError, TypeError, InvalidSignature):
                pass
        for cand in pool:
            if cand.subject != current.issuer or cand in chain:
                continue
            try:
                current.verify_directly_issued_by(cand)
            except (ValueError, TypeError, InvalidSignature):
                continue
            chain.append(cand)
            current = cand
            break
        else:
            break
    raise CertificateError(
        f"the chain presented for {path_of_cert(leaf)} does not lead to this tree's root CA",
        fix="present the certificates of keys/chain.pem after keys/tls.crt (reinstall the bundle from the parent)",
    )


def signing_key_id(cert: x509.Certificate) -> bytes:
    pk = cert.public_key()
    if not isinstance(pk, Ed25519PublicKey):
        raise CertificateError(f"certificate for {path_of_cert(cert)} does not hold an Ed25519 signing key")
    return key_id_of(pk)
