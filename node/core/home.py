"""A node's home directory: node.toml, keys/, the SQLite store by default.

Rules of this module:
- the home and keys/ are 0700; node.toml (database passwords), every key and the SQLite store files
  (every log, ticket and quarantined row; -wal and -shm take the database file's mode) are 0600 from
  birth: ``write_secret``, ``config.write`` and ``prepare_sqlite`` create them so, never chmod after;
- ``exposed_secrets`` lists the secrets another local user could read or change; ``fednode run`` and
  ``fednode check`` refuse such a home (exit 2, the fix is the `chmod 600` to type);
- one process per home: ``HomeLock`` (flock on DIR/run.lock, the holder's pid inside) is held for the
  life of ``fednode run``; a second one is refused naming that pid, and never touches admin.sock.

Layout:

    DIR/node.toml          configuration (node.config)
    DIR/store.db           the SQLite store (unless store.url points elsewhere)
    DIR/keys/tls.key       ECDSA P-256, TLS client and server key
    DIR/keys/ca.key        ECDSA P-256, this node's intermediate CA for its subtree
    DIR/keys/sign.key      Ed25519, signs this node's records and checkpoints
    DIR/keys/*.crt         the certificates issued for those keys; chain.pem (issuer first); root.crt
    DIR/keys/root.key      the province only: the root CA key (keep a copy offline)
    DIR/keys/retired/      signing keys replaced by rotation (their records stay verifiable)
    DIR/run.lock           held (flock) by the running node; holds its pid
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from cryptography import x509

from node.core import config as config_mod
from node.core import pki
from node.core.crypto import Signer
from node.core.errors import UsageError
from node.core.ledger import Ledger
from node.core.store import Store
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


SECRET_MODE = 0o600
DIR_MODE = 0o700
LOCK_NAME = "run.lock"


def sqlite_path(url: str, base_dir: Path) -> Path | None:
    """The database file of a SQLite store URL (relative to the node home), None for other stores."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    db = Path(u.database)
    return db if db.is_absolute() else Path(base_dir) / db


def sqlite_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def prepare_sqlite(url: str, base_dir: Path) -> None:
    """Create a new SQLite database file 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the database file's mode): the store is never readable by others, not even for a moment."""
    db = sqlite_path(url, base_dir)
    if db is None or db.exists() or not db.parent.is_dir():
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE))


def secret_files(home: Home) -> list[Path]:
    """The files of a home that must stay private: node.toml, every key, the SQLite store, the push token."""
    out = [home.config.path]
    if home.keys.is_dir():
        out += sorted(home.keys.glob("*.key")) + sorted((home.keys / "retired").glob("*.key"))
    db = sqlite_path(home.config.store_url, home.dir)
    if db is not None:
        out += sqlite_files(db)
    push = (home.config.sections.get("adapters") or {}).get("push")
    if isinstance(push, dict):
        token = Path(str(push.get("token_file") or "push.token"))
        out.append(token if token.is_absolute() else home.dir / token)
    return out


def exposed_secrets(home: Home) -> list[tuple[Path, int]]:
    """(path, mode) of each secret that a group or other users may read or write."""
    out = []
    for path in secret_files(home):
        try:
            st = path.stat()
        except OSError:
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            out.append((path, stat.S_IMODE(st.st_mode)))
    return out


def check_secret_modes(home: Home) -> None:
    """Refuse (exit 2) a home whose secrets another local user could read: the fix is the chmod to type."""
    exposed = exposed_secrets(home)
    if exposed:
        listed = ", ".join(f"{p} ({m:04o})" for p, m in exposed)
        raise UsageError(
            f"secrets of {home.dir} are readable by other local users: {listed}",
            fix=f"chmod 600 {' '.join(str(p) for p, _m in exposed)}"
            + (f" && chmod 700 {home.dir}" if stat.S_IMODE(home.dir.stat().st_mode) & 0o077 else ""),
        )


def tighten_dirs(home: Home) -> list[str]:
    """Make the home and keys/ 0700 (only their owner may list them). Returns what was changed."""
    changed = []
    for d in (home.dir, home.keys):
        try:
            mode = stat.S_IMODE(d.stat().st_mode)
            if mode & 0o077:
                os.chmod(d, DIR_MODE)
                changed.append(f"{d}: {mode:04o} -> 0700")
        except OSError:
            continue
    return changed


class HomeLock:
    """One process per home: an exclusive flock on DIR/run.lock, held as long as this object lives (the
    kernel drops it when the process ends, however it ends). The holder writes its pid in the file."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> HomeLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self.holder()
            raise UsageError(
                f"{self.path.parent} is in use by another fednode process"
                + (f" (pid {holder})" if holder else "") + ": one process per node home",
                fix=(f"stop it first (`systemctl stop fednode`, or `kill {holder}`)" if holder
                     else "stop the running node first (`systemctl stop fednode`)")
                + "; `fednode status` talks to the running node",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def holder(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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

    def store(self, migrate: bool | None = None) -> Store:
        """The store, opened once. ``migrate=True`` (`fednode run`, `fednode migrate`) upgrades an older
        schema; otherwise an older one is refused with the command that upgrades it (node/core/migrate.py)."""
        if self._store is None:
            prepare_sqlite(self.config.store_url, self.dir)
            self._store = Store.open(self.config.store_url, base_dir=self.dir, migrate=migrate)
        return self._store

    def ledger(self) -> Ledger:
        return Ledger(self.store(), self.code, self.signer(), self.root())

    # own-heads.json: this node's own log heads as it last saw them, kept outside the store, so that a
    # store restored from an older copy can be told from a restart (node/runtime/process.py)
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
