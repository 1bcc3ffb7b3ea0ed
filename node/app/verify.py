"""`fednode verify` and `fednode proof`: every chain of a home checked at rest, a proof exported or checked.

Rules of this module: reads only (it never writes the store); the checks themselves are node/core/integrity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.core import integrity, pki
from node.core.errors import UsageError
from node.core.home import Home
from node.core.records import channel_number


def verify_home(home: Home, progress: Callable[[int, int], None] | None = None) -> integrity.Report:
    """Every chain and checkpoint of the home's store, against its ledger's keyring."""
    ledger = home.ledger()
    return integrity.verify_store(home.store(), ledger.keyring, progress)


def check_proof(text: str, root_pem: bytes | None = None, home: Home | None = None) -> dict[str, Any]:
    """A proof file's text checked on its own; against ``root_pem`` or the home's root when given."""
    trusted = None
    if root_pem is not None:
        trusted = pki.cert_from_pem(root_pem)
    elif home is not None:
        trusted = home.root()
    return integrity.verify_proof(integrity.proof_from_text(text), trusted)


def export_proof(home: Home, origin: str, channel: str, seq: int) -> dict[str, Any]:
    """A self-contained proof of one record, as JSON."""
    root = home.root()
    if root is None:
        raise UsageError("this node is not enrolled", fix="install its bundle first")
    proof = integrity.export_proof(home.store(), home.ledger().keyring, root, origin, channel_number(channel), seq)
    return integrity.proof_to_json(proof)
