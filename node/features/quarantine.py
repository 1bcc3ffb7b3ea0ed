"""Quarantine: rows that failed validation, kept with their exact reason and source position until an
operator fixes and replays them (`fednode quarantine list|show|replay`).

Rules of this module:
- nothing is deleted: a replayed row stays, with ``replayed_us`` set, as the audit trail of the fix;
- ``raw`` is the offending item: the exact line for unreadable input and JSON Lines, or
  ``{"kind": K, "payload": {...}}`` for rows that came as objects (CSV, SQL, push). It is never more
  than ``adapters.base.MAX_RAW`` (64 KiB): a longer item is cut there and its reason says so (of a line
  over the file-drop limit only the first 64 KiB is ever held in memory). A drop-directory entry the node
  refuses to read (a link, not a regular file) is a row with its name and reason and an empty raw;
- replay = parse raw (or take the operator's payload), apply the operator's edits, validate, and in
  ONE transaction append the record, remember its natural key and mark the row replayed. A row that
  still fails stays pending and the new reason is reported; a row whose natural key is already in the
  log with the same payload is marked replayed without a second record.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from node.core import schema as t
from node.core.errors import FednodeError, NotFound
from node.core.ledger import Ledger
from node.core.records import now_us
from node.core.store import Store, WriteTx


class ReplayFailed(FednodeError):
    code = "replay_failed"


def _row_dict(r: Any, *, with_raw: bool = False) -> dict[str, Any]:
    d = {"id": r.id, "source": r.source, "position": r.position, "kind": r.kind, "reason": r.reason,
         "created_us": r.created_us, "replayed_us": r.replayed_us}
    if with_raw:
        raw = bytes(r.raw)
        d["raw_bytes"] = len(raw)
        try:
            d["raw_text"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            d["raw_text"] = None
        d["raw_b64"] = base64.b64encode(raw).decode()
    return d


def list_rows(store: Store, *, source: str | None = None, include_replayed: bool = False,
              limit: int = 100, after_id: int = 0) -> dict[str, Any]:
    q = select(t.quarantine.c.id, t.quarantine.c.source, t.quarantine.c.position, t.quarantine.c.kind,
               t.quarantine.c.reason, t.quarantine.c.created_us, t.quarantine.c.replayed_us)
    q = q.where(t.quarantine.c.id > after_id)
    if source:
        q = q.where(t.quarantine.c.source == source)
    if not include_replayed:
        q = q.where(t.quarantine.c.replayed_us.is_(None))
    with store.read() as conn:
        rows = [_row_dict(r) for r in conn.execute(q.order_by(t.quarantine.c.id).limit(limit))]
        from sqlalchemy import func

        pending = conn.execute(select(func.count()).select_from(t.quarantine)
                               .where(t.quarantine.c.replayed_us.is_(None))).scalar_one()
    return {"pending": int(pending), "rows": rows}


def get(store: Store, qid: int) -> Any:
    with store.read() as conn:
        r = conn.execute(select(t.quarantine).where(t.quarantine.c.id == qid)).first()
    if r is None:
        raise NotFound(f"no quarantined row {qid}", fix="see `fednode quarantine list DIR` for the ids")
    return r


def show(store: Store, qid: int) -> dict[str, Any]:
    return _row_dict(get(store, qid), with_raw=True)


def parse_raw(raw: bytes, kind: str) -> tuple[str, Any]:
    """(kind, payload) from a quarantined raw item, or raise ReplayFailed."""
    text = None
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    obj: Any = None
    if text is not None:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if not isinstance(obj, dict):
        raise ReplayFailed("the quarantined item is not a JSON object (an unreadable line, or a CSV line that "
                           "could not be split)", fix="give the corrected record: --payload '{...}' [--kind K]")
    k = obj.pop("kind", kind)
    payload = obj["payload"] if set(obj) == {"payload"} else obj
    return (k if isinstance(k, str) and k else kind), payload


def _edit_value(text: str) -> Any:
    """``--set`` values are text (validation reads numbers and booleans from text, and codes such as
    320303 must stay text); a value starting with [ { or " is JSON (lists, objects, quoted text)."""
    if text.strip()[:1] in ("[", "{", '"'):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


@dataclass
class Fix:
    """An operator's correction for a replay."""

    kind: str | None = None
    payload: dict[str, Any] | None = None  # replaces the whole payload
    set: dict[str, str] | None = None  # field → new value (JSON or plain text)
    unset: list[str] | None = None

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Fix:
        return cls(kind=req.get("kind"), payload=req.get("payload"), set=req.get("set"), unset=req.get("unset"))

    def apply(self, kind: str, payload: Any) -> tuple[str, Any]:
        if self.kind:
            kind = self.kind
        if self.payload is not None:
            payload = dict(self.payload)
        if self.set or self.unset:
            if not isinstance(payload, dict):
                raise ReplayFailed("the quarantined payload is not an object, so fields cannot be set",
                                   fix="give the whole record: --payload '{...}'")
            payload = dict(payload)
            for f, v in (self.set or {}).items():
                payload[f] = _edit_value(v) if isinstance(v, str) else v
            for f in self.unset or []:
                payload.pop(f, None)
        return kind, payload


def replay(ledger: Ledger, qid: int, fix: Fix | None = None) -> dict[str, Any]:
    """Validate the (fixed) row and append it, marking the quarantine row replayed, in one transaction."""
    from adapters.base import Accepted, SourceRow, commit_prepared, prepare

    row = get(ledger.store, qid)
    if row.replayed_us is not None:
        return {"id": qid, "replayed": False, "already_replayed_us": row.replayed_us}
    fix = fix or Fix()
    if fix.payload is not None:
        kind, payload = (fix.kind or row.kind), fix.payload
    else:
        kind, payload = parse_raw(bytes(row.raw), row.kind)
    kind, payload = fix.apply(kind, payload)
    prepared = prepare([SourceRow(row.position, kind, payload)])
    p = prepared[0]
    if not isinstance(p, Accepted):
        raise ReplayFailed(f"quarantined row {qid} still fails: {p.reason}",
                           fix="correct it with --set FIELD=VALUE (repeatable), --unset FIELD, --kind or --payload")
    from adapters.base import _seen, key_meta

    have = _seen(ledger.store, [key_meta(p.key)]).get(key_meta(p.key))
    if have is not None and have != p.digest:
        raise ReplayFailed(f"quarantined row {qid}: natural key {p.key} is already in the log with a different "
                           "payload", fix="the signed log never changes: send the correction as a new event "
                           "(e.g. the next step number), then leave this row")
    stamp = now_us()

    def mark(tx: WriteTx) -> None:
        tx.conn.execute(update(t.quarantine).where(t.quarantine.c.id == qid).values(replayed_us=stamp))

    out = commit_prepared(ledger, f"replay:{row.source}"[:128], prepared, extra=mark)
    if out.quarantined:
        raise ReplayFailed(f"quarantined row {qid} still fails: {out.reasons[0]['reason']}",
                           fix="correct the payload; the signed log never changes, so a conflicting row must come "
                           "as a new event")
    return {"id": qid, "replayed": True, "kind": kind, "appended": out.accepted,
            "duplicate": bool(out.duplicates), "position": row.position}


def replay_many(ledger: Ledger, ids: list[int], fix: Fix | None = None) -> dict[str, Any]:
    done, failed = [], []
    for qid in ids:
        try:
            done.append(replay(ledger, qid, fix))
        except FednodeError as e:
            failed.append({"id": qid, "error": e.message, "fix": e.fix})
    return {"replayed": done, "failed": failed}


def pending_ids(store: Store, source: str | None = None) -> list[int]:
    q = select(t.quarantine.c.id).where(t.quarantine.c.replayed_us.is_(None))
    if source:
        q = q.where(t.quarantine.c.source == source)
    with store.read() as conn:
        return [r.id for r in conn.execute(q.order_by(t.quarantine.c.id))]
