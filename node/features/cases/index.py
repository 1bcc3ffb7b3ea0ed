"""The case index: which records held here name a case, an alert, a handler (table ``cases_index``).

Rules of this module:
- CURSOR. The last ``local_seq`` indexed is store meta ``cases.cursor``; it moves first thing in the
  transaction that writes the rows, as a compare-and-set, so the running node's service and a CLI that
  catches up before it reads never index a record twice (the loser of a race retries, ``Raced``).
- WHAT IS INDEXED (``rows_of``, pure): a ``case.*`` event under its case (with its handler for
  ``case.accept`` and ``case.step``), an ``alert`` and the ``alert.*`` records under their alert (and its
  case), a ``ticket.issue`` under each case and alert it cites, a ``complaint.register`` under
  ``complaint:NO`` (and its case when it names one), an ``item`` under ``item:DIVISION/ITEM_CODE``.
- Only where the records are: the rows point at ``local_seq``; ``fetch`` reads the records themselves.
  Nothing here decides anything about them (node/features/cases/view.py, node/features/alerts).
- Bad input never stops it: a record whose payload cannot be read is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from node.core import schema as t
from node.core.schema import cases as ci
from node.core.store import Change, Store

KINDS = ("case.", "alert", "ticket.issue", "item", "complaint.register")
ITEM_REF = "item:"
COMPLAINT_REF = "complaint:"


class Raced(Exception):
    """The cursor moved between reading the batch and writing it (a concurrent fold)."""


def _s(v: Any, n: int) -> str:
    return v[:n] if isinstance(v, str) else ""


def rows_of(kind: str, p: Mapping[str, Any], local_seq: int) -> list[dict[str, Any]]:
    """The index rows of one record (pure)."""
    keys: list[tuple[str, str, str]] = []  # (case_no, ref, handler)
    if kind.startswith("case."):
        handler = p.get("handler") if kind in ("case.accept", "case.step") else ""
        keys.append((_s(p.get("case_no"), 128), "", _s(handler, 128)))
    elif kind == "alert" or kind.startswith("alert."):
        keys.append((_s(p.get("case_no"), 128), _s(p.get("alert_id"), 256), ""))
    elif kind == "ticket.issue":
        for c in p.get("case_nos") or []:
            keys.append((_s(c, 128), "", ""))
        for a in p.get("alert_ids") or []:
            keys.append(("", _s(a, 256), ""))
        if p.get("complaint_no"):
            keys.append(("", _s(COMPLAINT_REF + str(p["complaint_no"]), 256), ""))
    elif kind == "complaint.register":
        keys.append((_s(p.get("case_no"), 128), _s(COMPLAINT_REF + str(p.get("complaint_no", "")), 256), ""))
    elif kind == "item":
        keys.append(("", _s(f"{ITEM_REF}{p.get('division', '')}/{p.get('item_code', '')}", 256), ""))
    out, seen = [], set()
    for case_no, ref, handler in keys:
        if (not case_no and not ref) or (case_no, ref) in seen:
            continue
        seen.add((case_no, ref))
        out.append({"case_no": case_no, "ref": ref, "local_seq": local_seq, "kind": kind[:64], "handler": handler})
    return out


def cursor(store: Store) -> int:
    return int(store.get_meta(ci.CURSOR_KEY, "0") or 0)


def fold_once(store: Store, limit: int = 5000) -> int:
    """Index the next page of the change feed; the number of records read (0: nothing new)."""
    after = cursor(store)
    changes, mark = store.feed(after, limit, kinds=KINDS)
    if not changes:
        if mark > after:  # nothing we index in between: skip it for good
            with store.write() as tx:
                _claim(tx.conn, after, mark)
        return 0
    rows: list[dict[str, Any]] = []
    for c in changes:
        try:
            p = c.payload()
        except Exception:  # noqa: BLE001 — an unreadable body is skipped, never fatal
            continue
        if isinstance(p, dict):
            rows.extend(rows_of(c.kind, p, c.local_seq))
    with store.write() as tx:
        _claim(tx.conn, after, changes[-1].local_seq)
        if rows:
            tx.conn.execute(ci.index.insert(), rows)
    return len(changes)


def fold_all(store: Store, limit: int = 5000) -> int:
    """Catch up with the feed (a CLI before it reads, the running node's service on its own)."""
    total = 0
    while True:
        try:
            n = fold_once(store, limit)
        except Raced:
            continue
        if n == 0:
            return total
        total += n


def _claim(conn: Any, after: int, new: int) -> None:
    from sqlalchemy.exc import IntegrityError

    moved = conn.execute(t.meta.update().where(and_(t.meta.c.key == ci.CURSOR_KEY, t.meta.c.value == str(after)))
                         .values(value=str(new))).rowcount
    if moved == 1:
        return
    if after == 0 and conn.execute(select(t.meta.c.value).where(t.meta.c.key == ci.CURSOR_KEY)).scalar() is None:
        try:
            conn.execute(t.meta.insert().values(key=ci.CURSOR_KEY, value=str(new)))
            return
        except IntegrityError:
            pass
    raise Raced()


# ---- lookups -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A record held here, as the index finds it."""

    kind: str
    payload: Any
    origin: str
    channel: int
    seq: int
    local_seq: int
    time_us: int
    down: bool

    @property
    def ref(self) -> str:
        from node.core.records import channel_name

        return f"{self.origin}/{channel_name(self.channel)}/{self.seq}"


def seqs_of(conn: Any, *, case_no: str | None = None, refs: Iterable[str] = (),
            kinds: tuple[str, ...] = ()) -> list[int]:
    """The local_seqs of the records indexed under ``case_no`` or any of ``refs`` (of these kinds)."""
    conds = []
    if case_no is not None:
        conds.append(ci.index.c.case_no == case_no[:128])
    refs = [r[:256] for r in refs if r]
    if refs:
        conds.append(ci.index.c.ref.in_(refs))
    if not conds:
        return []
    q = select(ci.index.c.local_seq).where(or_(*conds)).distinct()
    if kinds:
        q = q.where(or_(*[ci.index.c.kind == k if not k.endswith((".", "*")) else
                          ci.index.c.kind.startswith(k.rstrip("*")) for k in kinds]))
    return sorted(int(r[0]) for r in conn.execute(q))


def seqs_of_kinds(conn: Any, kinds: tuple[str, ...]) -> list[int]:
    """The local_seqs of every record of these kinds (prefixes end with '.'), through the kind index."""
    conds = [ci.index.c.kind.startswith(k) if k.endswith(".") else ci.index.c.kind == k for k in kinds]
    q = select(ci.index.c.local_seq).where(or_(*conds)).distinct()
    return sorted(int(r[0]) for r in conn.execute(q))


def handlers_of(conn: Any, case_no: str) -> list[str]:
    q = select(ci.index.c.handler).where(and_(ci.index.c.case_no == case_no[:128], ci.index.c.handler != "")).distinct()
    return sorted(str(r[0]) for r in conn.execute(q))


def cases_of_handler(conn: Any, handler: str) -> list[str]:
    q = select(ci.index.c.case_no).where(ci.index.c.handler == handler[:128]).distinct()
    return sorted(str(r[0]) for r in conn.execute(q))


def fetch(conn: Any, seqs: Iterable[int]) -> list[Held]:
    """The records at these local_seqs, in feed order (unreadable payloads come back as None)."""
    wanted = sorted(set(seqs))
    out: list[Held] = []
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        for table, down in ((t.records, False), (t.down_records, True)):
            q = select(table.c.local_seq, table.c.origin, table.c.channel, table.c.seq, table.c.kind, table.c.dest,
                       table.c.time_us, table.c.body).where(table.c.local_seq.in_(chunk))
            for r in conn.execute(q):
                ch = Change(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5], int(r[6]), bytes(r[7]), down)
                try:
                    payload = ch.payload()
                except Exception:  # noqa: BLE001
                    payload = None
                out.append(Held(ch.kind, payload, ch.origin, ch.channel, ch.seq, ch.local_seq, ch.time_us, down))
    out.sort(key=lambda h: h.local_seq)
    return out
