"""A node's home directory: node.toml, keys/, the SQLite store by default.

Layout (key files are written 0600, keys/ is 0700):

    DIR/node.toml          configuration (node.config)
    DIR/store.db           the SQLite store (unless store.url points elsewhere)
    DIR/keys/tls.key       ECDSA P-256, TLS client and server key
    DIR/keys/ca.key        ECDSA P-256, this node's intermediate CA for its subtree
    DIR/keys/sign.key      Ed25519, signs this node's records and checkpoints
    DIR/keys/*.crt         the certificates issued for those keys; chain.pem (issuer first); root.crt
    DIR/keys/root.key      the province only: the root CA key (keep a copy offline)
    DIR/keys/retired/      signing keys replaced by rotation (their records stay verifiable)
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from node import config as config_mod
from node import pki
from node.crypto import Signer
from node.errors import UsageError
from node.ledger import Ledger
from node.store import Store
from proto.fednode.v1 import fednode_pb2 as pb


def write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)


def resolve_dir(d: str | None) -> Path:
    value = d or os.environ.get("FEDNODE_HOME")
    if not value:
        raise UsageError("no node home given", fix="pass DIR, or set FEDNODE_HOME")
    return Path(value)


class Home:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.config = config_mod.load(self.dir / config_mod.CONFIG_NAME)
        self.keys = self.dir / "keys"
        self._store: Store | None = None

    @property
    def code(self) -> str:
        return self.config.code

    def key_path(self, name: str) -> Path:
        return self.keys / name

    def has(self, name: str) -> bool:
        return self.key_path(name).exists()

    def load_key(self, name: str) -> object:
        path = self.key_path(name)
        if not path.exists():
            raise UsageError(f"{path} is missing", fix="run `fednode init` for this node home, or restore keys/ from backup")
        return pki.key_from_pem(path.read_bytes())

    def load_cert(self, name: str) -> x509.Certificate:
        path = self.key_path(name)
        if not path.exists():
            raise UsageError(
                f"{path} is missing: this node is not enrolled yet",
                fix="run `fednode pki request`, have the parent `pki sign` it, then `fednode pki install` "
                "(the province: `fednode pki init-root`)",
            )
        return pki.cert_from_pem(path.read_bytes())

    def chain(self) -> list[x509.Certificate]:
        p = self.key_path("chain.pem")
        return pki.certs_from_pem(p.read_bytes()) if p.exists() else []

    def root(self) -> x509.Certificate | None:
        return self.load_cert("root.crt") if self.has("root.crt") else None

    @property
    def enrolled(self) -> bool:
        return self.has("sign.crt") and self.has("root.crt")

    def path(self) -> str:
        return pki.path_of_cert(self.load_cert("tls.crt"))

    def signer(self) -> Signer | None:
        if not self.enrolled:
            return None
        return Signer(self.load_key("sign.key"))  # type: ignore[arg-type]

    def key_certificate(self) -> pb.KeyCertificate:
        leaf = self.load_cert("sign.crt")
        chain = self.chain()
        # a signing key made by rotation is issued by our own CA, which then heads the chain
        if self.has("ca.crt") and leaf.issuer == self.load_cert("ca.crt").subject:
            chain = [self.load_cert("ca.crt"), *chain]
        der = pki.serialization.Encoding.DER
        return pb.KeyCertificate(
            key_id=pki.signing_key_id(leaf),
            certificate=leaf.public_bytes(der),
            chain=[c.public_bytes(der) for c in chain],
        )

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.config.store_url, base_dir=self.dir)
        return self._store

    def ledger(self) -> Ledger:
        return Ledger(self.store(), self.code, self.signer(), self.root())

    # own-heads.json: this node's own log heads as it last saw them, kept outside the store, so that a
    # store restored from an older copy can be told from a restart (node/runtime.py)
    OWN_HEADS = "own-heads.json"

    def recorded_own_heads(self) -> dict[str, int] | None:
        """The recorded heads ("origin/channel" → seq), or None when there is no readable record."""
        import json

        try:
            data = json.loads((self.dir / self.OWN_HEADS).read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    def record_own_heads(self, heads: dict[str, int]) -> None:
        import json

        tmp = self.dir / (self.OWN_HEADS + ".tmp")
        tmp.write_text(json.dumps(heads, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.dir / self.OWN_HEADS)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
