"""One time convention for what people and log readers see: ISO 8601 with the +08:00 offset.

Rules of this module:
- Every time a person reads (log lines, `fednode status`, `pki keys`, alerts) is written by ``iso``:
  ``2026-11-28T09:27:35+08:00`` (Asia/Shanghai; China has kept no daylight saving time since 1991, so
  the offset is fixed, node/core/domain.py ``CST``). Never UTC with ``Z``, never a local time without
  its offset: a screenshot, a log excerpt and an alert can be put side by side.
- Stored times stay what they are (microseconds since the epoch, UTC); this module only writes them.
"""

from __future__ import annotations

import datetime as dt

from node.core.domain import CST

__all__ = ["CST", "iso", "iso_us", "now_iso"]


def iso(t: dt.datetime, timespec: str = "seconds") -> str:
    """``t`` (aware; a naive time is taken as +08:00) in ISO 8601 with the +08:00 offset."""
    return (t if t.tzinfo else t.replace(tzinfo=CST)).astimezone(CST).isoformat(timespec=timespec)


def iso_us(us: int | float | None, timespec: str = "seconds") -> str | None:
    """Microseconds since the epoch in ISO 8601 with the +08:00 offset; None for 0 or None (never happened)."""
    if not us:
        return None
    return dt.datetime.fromtimestamp(us / 1e6, CST).isoformat(timespec=timespec)


def now_iso(timespec: str = "milliseconds") -> str:
    return dt.datetime.now(CST).isoformat(timespec=timespec)
