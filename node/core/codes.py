"""Node codes and the jurisdiction tree.

A node is named by its 6-digit administrative division code (行政区划代码), optionally followed by
department suffixes: ``320000`` (province), ``320300`` (city), ``320303`` (district/county),
``320300-GA`` (a city department). Who is inside whose subtree follows from the codes alone:

- a province ``PP0000`` holds every code starting with ``PP``;
- a city ``PPCC00`` holds every code starting with ``PPCC``;
- a county ``PPCCDD`` holds itself and its departments;
- a department ``X-SUF`` holds itself and ``X-SUF-...``.

The same rule bounds what a parent may certify (``pki sign``) and what a child may send up, so the
certificate tree and the data tree cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.core.errors import UsageError

_CODE_RE = re.compile(r"^(\d{6})((?:-[A-Z0-9]{1,16})*)$")

LEVELS = ("province", "city", "county", "department")


@dataclass(frozen=True, slots=True)
class NodeCode:
    base: str
    suffixes: tuple[str, ...]

    @property
    def text(self) -> str:
        return "-".join((self.base, *self.suffixes))

    @property
    def level(self) -> str:
        if self.suffixes:
            return "department"
        if self.base[2:] == "0000":
            return "province"
        if self.base[4:] == "00":
            return "city"
        return "county"


def parse_code(text: str) -> NodeCode:
    """Parse a node code, raising UsageError that says what a valid code looks like."""
    m = _CODE_RE.match(text.strip().upper())
    if not m:
        raise UsageError(
            f"{text!r} is not a node code",
            fix="use a 6-digit division code such as 320303, or a department such as 320300-GA",
        )
    suffixes = tuple(s for s in m.group(2).split("-") if s)
    return NodeCode(m.group(1), suffixes)


def is_code(text: str) -> bool:
    return bool(_CODE_RE.match(text))


def within(code: str, ancestor: str) -> bool:
    """True if ``code`` is ``ancestor`` itself or lies in its subtree."""
    if code == ancestor:
        return True
    if not (is_code(code) and is_code(ancestor)):
        return False
    c, a = parse_code(code), parse_code(ancestor)
    if a.suffixes:
        return c.base == a.base and c.suffixes[: len(a.suffixes)] == a.suffixes
    if a.level == "province":
        return c.base[:2] == a.base[:2]
    if a.level == "city":
        return c.base[:4] == a.base[:4]
    return c.base == a.base


def strictly_within(code: str, ancestor: str) -> bool:
    return code != ancestor and within(code, ancestor)


def natural_parent(code: str) -> str | None:
    """The parent a code has in the administrative hierarchy (None for a province)."""
    c = parse_code(code)
    if c.suffixes:
        return "-".join((c.base, *c.suffixes[:-1]))
    if c.level == "province":
        return None
    if c.level == "city":
        return c.base[:2] + "0000"
    return c.base[:4] + "00"


def path_of(code: str) -> str:
    """The tree path from the province down to ``code``: ``320000/320300/320303``."""
    parts = [code]
    parent = natural_parent(code)
    while parent is not None:
        parts.append(parent)
        parent = natural_parent(parent)
    return "/".join(reversed(parts))


def child_toward(node: str, target: str, children: list[str]) -> str | None:
    """Which of ``children`` (of ``node``) holds ``target`` in its subtree; None if none does."""
    for child in children:
        if within(target, child):
            return child
    return None
