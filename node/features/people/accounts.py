"""Passwords, lockout and session tokens: the pure rules of signing in.

- Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher``, its default parameters, which
  follow RFC 9106's recommendations); a hash made with older parameters is rehashed at the next
  successful sign-in. Nothing here logs, prints or keeps a password.
- Lockout: ``max_failures`` failed sign-ins within ``window`` lock the account (default 5 in 15
  minutes, ``[people]``); only a 系统管理员 unlocks it (`fednode users unlock`). A success clears the
  failures. Failures older than the window are forgotten.
- Session tokens are 32 random bytes (``secrets``); the store keeps their SHA-256 only, so a copy of
  the store does not sign anybody in.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    session: timedelta = timedelta(hours=8)

    @classmethod
    def of_sections(cls, sections: Mapping[str, Any]) -> LoginPolicy:
        """From node.toml's ``[people]`` (already validated against node/core/configschema.py)."""
        from node.core.configschema import default

        section = sections.get("people", {}) or {}

        def get(key: str) -> Any:
            return section.get(key, default("people", key))

        return cls(max_failures=int(get("max_failures")), window=timedelta(minutes=float(get("lock_minutes"))),
                   session=timedelta(hours=float(get("session_hours"))))


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be set (None when it may). Length and not all one kind of character."""
    if len(password) < MIN_PASSWORD:
        return f"口令至少 {MIN_PASSWORD} 个字符"
    kinds = sum(any(test(c) for c in password) for test in (str.isdigit, str.islower, str.isupper,
                                                             lambda c: not c.isalnum()))
    if kinds < 2:
        return "口令须包含至少两类字符（数字、小写字母、大写字母、符号）"
    return None


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(stored_hash: str, password: str) -> tuple[bool, str | None]:
    """(matches, new hash to store or None). An empty or unreadable stored hash never matches."""
    if not stored_hash:
        return False, None
    try:
        _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, (_HASHER.hash(password) if _HASHER.check_needs_rehash(stored_hash) else None)


def recent_failures(failures: list[datetime], now: datetime, policy: LoginPolicy) -> list[datetime]:
    return [t for t in failures if now - t < policy.window]


def after_failure(failures: list[datetime], now: datetime, policy: LoginPolicy) -> tuple[list[datetime], bool]:
    """The failures to keep after one more, and whether the account locks now."""
    kept = [*recent_failures(failures, now, policy), now]
    return kept, len(kept) >= policy.max_failures


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
