"""Chinese text stored in a Western character set (the classic mojibake): found, decoded, or refused.

Local systems of 2009-2012 often wrote GBK bytes into MySQL ``latin1`` columns (the connection said
latin1, the application sent GBK). MySQL keeps the bytes and, read through a UTF-8 connection, hands
back each byte as one Western character: 张三 arrives as ``ÕÅÈý``. Oracle ``WE8ISO8859P1`` databases and
SQL Server ``Latin1_General`` varchar columns give the same picture.

Rules of this module (pure, no I/O):
- a text value is *suspect* when it is not ASCII and every character of it is one that MySQL's latin1
  (cp1252 with five undefined bytes kept as C1 controls) or ISO-8859-1 gives for a single byte. Real
  Chinese text always has characters above U+00FF, so it is never suspect, and ASCII never is;
- a suspect value is turned back into its bytes and decoded as GB18030 (a superset of GBK and
  GB2312), strictly. It is taken when that works and gives no control or private-use character: the
  value becomes the decoded text;
- a suspect value that does not decode is never passed on garbled: the row is quarantined with the
  column, the value's bytes in hex, and the fix. (A source that really holds Western text — ``café`` —
  sets ``legacy_text = "off"`` on its adapter and its values are taken as they are.)
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Sequence
from typing import Any

MODES = ("gb18030", "off")

# the byte each character stands for, as MySQL latin1 (= cp1252 + 0x81 0x8D 0x8F 0x90 0x9D) and ISO-8859-1 give it
_BYTE_OF: dict[str, int] = {chr(b): b for b in range(256)}
for _b in range(0x80, 0xA0):
    with contextlib.suppress(UnicodeDecodeError):  # 0x81 0x8D 0x8F 0x90 0x9D: undefined in cp1252
        _BYTE_OF[bytes([_b]).decode("cp1252")] = _b
_SINGLE = frozenset(_BYTE_OF)


_TOP = max(_SINGLE)  # U+2122: real Chinese text has a character above it


def is_suspect(s: str) -> bool:
    """Text that is only single-byte Western characters, some above ASCII: bytes of another encoding."""
    if s.isascii():
        return False
    top = max(s)  # C speed; Chinese text stops here
    if top < "\u0100":
        return True
    return top <= _TOP and all(c in _SINGLE for c in s)


def _plausible(text: str) -> bool:
    for ch in text:
        if ch in "\t\r\n":
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Co", "Cn", "Cs"):
            return False
    return True


def repair(s: str) -> tuple[str | None, bytes]:
    """(decoded text, original bytes) of a suspect value; (None, bytes) when it is not valid GB18030."""
    raw = bytes(_BYTE_OF[ch] for ch in s)
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return None, raw
    return (text if _plausible(text) else None), raw


class Mojibake(ValueError):
    """A value that is bytes of another encoding and does not decode as GB18030."""

    def __init__(self, column: str, raw: bytes) -> None:
        self.column, self.raw = column, raw
        super().__init__(
            f"column {column!r} holds text that is bytes of another encoding read as latin1 (mojibake), and the "
            f"bytes {raw[:60].hex(' ')}{' ...' if len(raw) > 60 else ''} are not valid GB18030/GBK "
            "(fix: correct the value in the source system; if the column really holds Western text, set "
            "legacy_text = \"off\" on this adapter)")


def repair_row(row: Sequence[Any], columns: Sequence[str]) -> tuple[Any, ...] | None:
    """The row with every suspect text value decoded; None when nothing needed decoding. Raises Mojibake."""
    out: list[Any] | None = None
    for i, v in enumerate(row):
        if type(v) is str and is_suspect(v):
            text, raw = repair(v)
            if text is None:
                raise Mojibake(columns[i], raw)
            if out is None:
                out = list(row)
            out[i] = text
    return tuple(out) if out is not None else None
