"""Every error a node reports on purpose.

Rules of this module:
- each failure an operator or a peer can cause has its own class and a stable ``code`` (used in
  JSON output, in link acks and in tests), so callers never parse messages;
- every message says what is wrong and, through ``fix``, what to do about it.
"""

from __future__ import annotations


class FednodeError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``fix`` tells the operator what to do."""

    code = "error"
    exit_status = 1

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "error": self.message, "fix": self.fix}


class UsageError(FednodeError):
    code = "usage"
    exit_status = 2


class ConfigError(FednodeError):
    """A configuration file is wrong. The message names the file and the field."""

    code = "config"
    exit_status = 2


# ---- verification: each way a log can be wrong has its own error ---------------------------------


class VerificationError(FednodeError):
    code = "verification"

    def __init__(
        self, message: str, *, origin: str = "", channel: str = "", seq: int = 0, fix: str = ""
    ) -> None:
        super().__init__(message, fix=fix)
        self.origin = origin
        self.channel = channel
        self.seq = seq

    def as_dict(self) -> dict[str, str]:
        d = super().as_dict()
        d.update({"origin": self.origin, "channel": self.channel, "seq": str(self.seq)})
        return d


class MalformedRecord(VerificationError):
    code = "malformed_record"


class ChainMismatch(VerificationError):
    """The recomputed chain does not match the signed checkpoint: some body was altered."""

    code = "chain_mismatch"


class MissingRecord(VerificationError):
    """A gap: the records do not continue the log where it ends."""

    code = "missing_record"


class OutOfOrder(VerificationError):
    """Records are present but not in ascending seq order."""

    code = "out_of_order"


class WrongLog(VerificationError):
    """A record claims another origin or channel than the log it is delivered in."""

    code = "wrong_log"


class UnknownKey(VerificationError):
    code = "unknown_key"


class RevokedKey(VerificationError):
    code = "revoked_key"


class KeyNotForOrigin(VerificationError):
    """The key is valid but certified for another node than the record's origin."""

    code = "key_not_for_origin"


class BadSignature(VerificationError):
    """A signature does not verify: a forged record or checkpoint."""

    code = "bad_signature"


class MissingCheckpoint(VerificationError):
    code = "missing_checkpoint"


class ForkDetected(VerificationError):
    """A different record at a seq that is already stored. Recorded as an incident, never applied."""

    code = "fork"
    evidence: bytes | None = None  # the conflicting SignedRecord, exact bytes
    source: str = ""  # where it came from


class OutsideSubtree(VerificationError):
    """A peer sent something whose origin or destination lies outside what it may send."""

    code = "outside_subtree"


# ---- PKI --------------------------------------------------------------------------------------------


class CertificateError(FednodeError):
    code = "certificate"


class CertificateOutsideSubtree(CertificateError):
    code = "certificate_outside_subtree"


class NotFound(FednodeError):
    code = "not_found"


class StoreError(FednodeError):
    code = "store"
