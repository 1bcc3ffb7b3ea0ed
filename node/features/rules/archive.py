"""Where the rules service keeps the cases it took out of memory (table ``rules_cases``, migration 0006).

Rules of this module:
- A row is one case the engine evicted (``RulesEngine.evict``): closed, or with no deadline left to
  watch. ``state`` is the engine's merged view of the case's records plus the alert ids and card levels
  already known for it (``RulesEngine.case_state``, compact JSON), so a record about the case that
  comes later brings it back exactly as it was (``RulesEngine.restore_case``), and an alert raised once
  is never raised again, however long ago the case closed.
- ``through``: every input record (not alert) about the case with a ``local_seq`` up to it is merged
  into ``state``; a rebuild skips those records instead of bringing the case back for each (unless
  the rules configuration changed: then every case is evaluated again).
- ``waits_item`` = 1 when the case's item was not known when it left memory: the item's arrival brings
  such cases back to evaluate the rules that need the item (order independence).
- Rows change only in the transaction that moves the rules cursor or appends the alerts they imply, so
  the table never claims an alert the log does not hold. It is a cache of what the log already says:
  a lost or empty table only costs the time to rebuild it from the records.
- The table is defined on ``node.schema.metadata`` (node/core/schema/ imports this module), so the
  migration and ``compare_metadata`` agree, and ``fednode store copy`` carries it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from node.core.schema.rules import cases

# keys per lookup: a batch of the feed names a few hundred cases; SQLite allows 32766 parameters
_LOOKUP_CHUNK = 500

Row = tuple[str, str, bool, int, str]  # case_key, item_code, waits_item, through, state (JSON text)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(state: Sequence[Any]) -> str:
    return _encoder.encode(state)


def decode(text: str) -> list[Any]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("rules_cases.state is not a JSON array")
    return value


def load(conn: Connection, keys: Iterable[str]) -> dict[str, tuple[bool, int, str]]:
    """``key -> (waits_item, through, state)`` of those of ``keys`` that are archived."""
    out: dict[str, tuple[bool, int, str]] = {}
    todo = list(keys)
    for i in range(0, len(todo), _LOOKUP_CHUNK):
        q = select(cases.c.case_key, cases.c.waits_item, cases.c.through, cases.c.state).where(
            cases.c.case_key.in_(todo[i : i + _LOOKUP_CHUNK])
        )
        out.update((r[0], (bool(r[1]), int(r[2]), r[3])) for r in conn.execute(q))
    return out


def waiting(conn: Connection, item_code: str, after: str = "", limit: int = 500) -> list[str]:
    """Keys of archived cases that wait for ``item_code``, in order after ``after`` (keyset pages)."""
    q = (
        select(cases.c.case_key)
        .where(cases.c.waits_item == 1, cases.c.item_code == item_code, cases.c.case_key > after)
        .order_by(cases.c.case_key)
        .limit(limit)
    )
    return [r[0] for r in conn.execute(q)]


def put(conn: Connection, rows: Sequence[Row]) -> None:
    """Insert or replace rows, in the caller's transaction."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    ins = dialect.insert(cases)
    stmt = ins.on_conflict_do_update(
        index_elements=["case_key"],
        set_={"item_code": ins.excluded.item_code, "waits_item": ins.excluded.waits_item,
              "through": ins.excluded.through, "state": ins.excluded.state},
    )  # fmt: skip
    conn.execute(stmt, [{"case_key": k, "item_code": i, "waits_item": int(w), "through": n, "state": s}
                        for k, i, w, n, s in rows])  # fmt: skip


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(cases)).scalar_one())
