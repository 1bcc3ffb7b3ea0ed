"""The adapter interface, and the one transaction that brings a batch of source rows into the log.

Rules of this module (every adapter and every ingest path obeys them):

- An adapter only *reads*. ``Adapter.poll(cursor)`` returns a ``Batch``: source rows, each with its
  exact source position, and the cursor that resumes *after* them. It never writes the store.
- ``prepare(rows)`` (pure) turns every row into ``Accepted`` (kind, normalised payload, natural key,
  digest) or ``Rejected`` (position, kind, reason = field, value and rule, raw bytes). A bad row never
  stops the batch.
- ``commit(ledger, source, batch)`` writes, in ONE transaction (``Ledger.append(..., also=...)``):
  the new records, the quarantined rows, the natural keys now seen and the cursor. A crash before the
  commit re-reads the batch; after it the batch is never read again: a restart neither skips nor
  repeats a row.
- Natural keys (node.domain.natural_key) make re-delivery a no-op. The node keeps them in its ``meta``
  table as ``nk:<sha256(natural key)[:32 hex]>`` → digest of the normalised payload (no schema change,
  one primary-key lookup per row): the same key with the same payload is a duplicate (counted, not
  appended); the same key with a *different* payload is quarantined ("conflicts with the record
  already accepted"), so a changed source row is never dropped silently nor appended twice.
- Cursors are adapter-defined JSON, kept in ``meta`` as ``adapter:<name>``; the adapter's running totals
  (read, accepted, duplicates, quarantined, batches since it was configured) as ``adapter.totals:<name>``,
  written in the same transaction, so they survive restarts and always match the cursor.
- Adapters are found by entry point (group ``fednode.adapters``): a jurisdiction ships its own adapter
  as a separate package with ``[project.entry-points."fednode.adapters"] mytype = "pkg.mod:Class"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from node.core import configschema
from node.core.domain import ValidationError, validate_keyed
from node.core.errors import ConfigError, FednodeError
from node.core.ledger import Ledger, NewRecord
from node.core.records import encode_payload, now_us
from node.core.store import Store, WriteTx

ENTRY_POINT_GROUP = "fednode.adapters"
MAX_RAW = 64 * 1024  # quarantined raw bytes kept per row; a huge row is cut, and the reason says so


class AdapterError(FednodeError):
    """An adapter cannot read its source (unreachable database, missing directory, bad mapping)."""

    code = "adapter"


# ---- rows in, records or quarantine out (pure) ---------------------------------------------------------


# SourceRow and Accepted are built once per row: NamedTuples are immutable like a frozen dataclass but
# built 3x faster (a frozen dataclass's __init__ sets each field through object.__setattr__). Accepted
# keeps only the encoded body, not the payload dict: fewer objects for the garbage collector to scan
# while a batch waits for its commit.


class SourceRow(NamedTuple):
    """One row as read from a source. ``error`` set: it could not even be read (encoding, syntax)."""

    position: str  # e.g. "cases.csv:17", "sb_sbxx:SBLSH=3203...", "push:client-42"
    kind: str  # "" when unknown
    payload: Any = None
    raw: bytes = b""
    error: str = ""


class Accepted(NamedTuple):
    position: str
    kind: str
    key: str  # natural key
    body: bytes  # the encoded payload, encoded once: what is signed and what the digest covers
    meta: str  # key_meta(key): the row of the seen natural key
    digest: str  # sha256(body), 32 hex: what a re-delivery is compared with

    @property
    def payload(self) -> dict[str, Any]:
        """The normalised payload (decoded again from ``body``: only conflicts and tests need it)."""
        out: dict[str, Any] = json.loads(self.body)
        return out

    @staticmethod
    def of(position: str, kind: str, payload: dict[str, Any], key: str) -> Accepted:
        """Encode and hash once, on the reading side (thread or child process), so the store thread does neither."""
        body = encode_payload(payload)
        return Accepted(position, kind, key, body, key_meta(key), hashlib.sha256(body).hexdigest()[:32])


@dataclass(frozen=True, slots=True)
class Rejected:
    position: str
    kind: str
    reason: str
    source: SourceRow | None = None
    raw_bytes: bytes = b""

    @property
    def raw(self) -> bytes:
        """Computed only for rejected rows: most rows never need it."""
        if self.raw_bytes:
            return self.raw_bytes
        r = self.source
        if r is None:
            return b""
        return r.raw if r.raw else raw_of(r.payload if not r.kind else {"kind": r.kind, "payload": r.payload})


@dataclass
class Batch:
    rows: list[SourceRow]
    cursor: Any  # JSON-able; resumes after these rows
    done: Any = None  # adapter's note for after_commit (e.g. a file to archive)


def raw_of(obj: Any) -> bytes:
    """The bytes kept in quarantine for a row that came as an object (SQL row, CSV row)."""
    if isinstance(obj, bytes | bytearray):
        return bytes(obj)
    try:
        return json.dumps(obj, ensure_ascii=False, default=str, sort_keys=True).encode("utf-8", "backslashreplace")
    except (TypeError, ValueError, RecursionError):
        return repr(obj).encode("utf-8", "backslashreplace")


def key_meta(key: str) -> str:
    return "nk:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def prepare(rows: Iterable[SourceRow]) -> list[Accepted | Rejected]:
    """Pure: validate every row. May run on any thread (the node runs it beside the store thread)."""
    out: list[Accepted | Rejected] = []
    for r in rows:
        if r.error:
            out.append(Rejected(r.position, r.kind, r.error, r))
            continue
        try:
            payload, key = validate_keyed(r.kind, r.payload)
        except ValidationError as e:
            reason = e.message + (f" (fix: {e.fix})" if e.fix else "")
            out.append(Rejected(r.position, r.kind if isinstance(r.kind, str) else "", reason, r))
            continue
        out.append(Accepted.of(r.position, r.kind, payload, key))
    return out


@dataclass
class Outcome:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: list[dict[str, str]] = field(default_factory=list)  # position → reason (first 100)

    def add(self, other: Outcome) -> None:
        self.read += other.read
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.reasons.extend(other.reasons[: max(0, 100 - len(self.reasons))])

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "accepted": self.accepted, "duplicates": self.duplicates,
                "quarantined": self.quarantined, "quarantine": self.reasons}


def cursor_key(source: str) -> str:
    return f"adapter:{source}"


def load_cursor(ledger: Ledger, source: str) -> Any:
    v = ledger.store.get_meta(cursor_key(source))
    return json.loads(v) if v else None


def _seen(store: Store, keys: Sequence[str]) -> dict[str, str]:
    """The natural keys (meta keys) already in the store, with their digests. Plain DB-API SQL: compiling
    SQLAlchemy's IN of 900 parameters cost more than the lookups themselves."""
    out: dict[str, str] = {}
    with store.read() as conn:
        if store.is_postgres:
            out.update(conn.exec_driver_sql("SELECT key, value FROM meta WHERE key = ANY(%s)", (list(keys),)).all())
            return out
        for i in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = tuple(keys[i : i + 900])
            sql = f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(chunk))})"
            out.update(conn.exec_driver_sql(sql, chunk).all())
    return out


def _put_keys(tx: WriteTx, items: list[tuple[str, str]]) -> None:
    if not items:
        return
    # plain DB-API executemany (as the store's record insert): SQLAlchemy's per-row binding doubles the cost
    sql = ("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING" if tx.store.is_postgres
           else "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)")
    tx.conn.exec_driver_sql(sql, items)


TOTALS = ("read", "accepted", "duplicates", "quarantined", "batches")


def totals_key(source: str) -> str:
    return f"adapter.totals:{source}"


def load_totals(store: Store, source: str) -> dict[str, int]:
    """The adapter's figures since it was first configured in this store: zeros when none."""
    v = store.get_meta(totals_key(source))
    try:
        got = json.loads(v) if v else {}
    except ValueError:
        got = {}
    return {k: int(got.get(k, 0)) if isinstance(got, dict) else 0 for k in TOTALS}


def commit(ledger: Ledger, source: str, rows: Sequence[SourceRow], *, cursor: Any = None,
           write_cursor: bool = False, extra: Any = None, totals: dict[str, int] | None = None) -> Outcome:
    """Validate ``rows`` and commit records, quarantine, seen keys and (optionally) the cursor at once.

    Must run on the node's store thread (or in a process where nothing else writes the store)."""
    return commit_prepared(ledger, source, prepare(rows), cursor=cursor, write_cursor=write_cursor, extra=extra,
                           totals=totals)


def commit_prepared(ledger: Ledger, source: str, prepared: Sequence[Accepted | Rejected], *, cursor: Any = None,
                    write_cursor: bool = False, extra: Any = None, totals: dict[str, int] | None = None) -> Outcome:
    """The transaction of ``commit`` for rows already through ``prepare``. ``totals`` (the adapter's running
    totals, ``load_totals``): this batch is added, written with the cursor, and ``totals`` updated after
    the commit."""
    out = Outcome(read=len(prepared))
    metas = {p.meta for p in prepared if isinstance(p, Accepted)}
    seen = _seen(ledger.store, sorted(metas)) if metas else {}
    new: list[NewRecord] = []
    new_keys: list[tuple[str, str]] = []
    rejected: list[Rejected] = []
    for p in prepared:
        if isinstance(p, Rejected):
            rejected.append(p)
            continue
        km = p.meta
        have = seen.get(km)
        digest = p.digest
        if have is None:
            seen[km] = digest
            new_keys.append((km, digest))
            new.append(NewRecord(p.kind, p.body))
        elif have == digest:
            out.duplicates += 1
        else:
            rejected.append(Rejected(
                p.position, p.kind,
                f"natural key {p.key} conflicts with the record already accepted (a different payload for the "
                "same source row) (fix: the signed log never changes; send the correction as a new event, or "
                "replay this row after checking which version is right)",
                raw_bytes=raw_of({"kind": p.kind, "payload": p.payload})))
    out.accepted = len(new)
    out.quarantined = len(rejected)
    out.reasons = [{"position": r.position, "kind": r.kind, "reason": r.reason} for r in rejected]
    summed = None
    if totals is not None:
        summed = {k: totals.get(k, 0) + (1 if k == "batches" else getattr(out, k)) for k in TOTALS}

    def also(tx: WriteTx) -> None:
        # in key order: the hashed keys then walk the meta index once, left to right, not at random (~20% less)
        _put_keys(tx, sorted(new_keys))
        for r in rejected:
            full = r.raw
            raw = full if len(full) <= MAX_RAW else full[:MAX_RAW]
            reason = r.reason if len(full) <= MAX_RAW else f"{r.reason} [raw cut to {MAX_RAW} of {len(full)} bytes]"
            tx.quarantine(source=source[:128], position=r.position, kind=r.kind[:64], reason=reason, raw=raw)
        if write_cursor:
            tx.set_meta(cursor_key(source), json.dumps(cursor, ensure_ascii=False, default=str))
        if summed is not None:
            tx.set_meta(totals_key(source), json.dumps(summed))
        if extra is not None:
            extra(tx)

    if new or rejected or write_cursor or extra is not None or summed is not None:
        ledger.append(new, also=also)
    if totals is not None and summed is not None:
        totals.update(summed)
    return out


# ---- the adapter interface and its registry -----------------------------------------------------------


@dataclass
class Counters:
    """Per-adapter figures `fednode status` shows."""

    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    last_error: str = ""
    last_error_us: int = 0
    last_commit_us: int = 0
    position: str = ""
    state: str = "starting"  # "recovering" (waits for the node's own logs), "ok" after a poll that worked, "error"
    cursor: Any = None  # the committed cursor (JSON), as the node holds it
    total: dict[str, int] = field(default_factory=dict)  # since the adapter was configured (load_totals)

    def count(self, o: Outcome, position: str) -> None:
        self.read += o.read
        self.accepted += o.accepted
        self.duplicates += o.duplicates
        self.quarantined += o.quarantined
        self.batches += 1
        self.last_commit_us = now_us()
        self.position = position
        self.state = "ok"

    def error(self, message: str) -> None:
        self.last_error, self.last_error_us = message, now_us()
        self.state = "error"


class Adapter(Protocol):
    """What the node runs. ``poll`` and ``after_commit`` run on a worker thread and may block.

    An adapter with ``prefetch = True`` promises that ``poll(cursor)`` only reads its source (no state
    that ``after_commit`` changes): the node then reads it one batch ahead, in a child process with an
    instance of its own built from the same section (adapters/reader.py), and ``after_commit`` gets the
    Batch with its cursor and ``done`` but without its rows."""

    name: str
    interval: float  # seconds to wait when a poll found nothing

    def poll(self, cursor: Any) -> Batch | None:
        """The next batch after ``cursor`` (None: nothing new yet)."""

    def after_commit(self, batch: Batch) -> None:
        """The batch is committed (e.g. archive a finished file). Must be idempotent: a crash may repeat it."""

    def describe(self, cursor: Any) -> str:
        """The cursor as an operator reads it."""

    def close(self) -> None: ...


def adapter_types() -> dict[str, Any]:
    """Adapter types by name, from the ``fednode.adapters`` entry points (plus the built-ins, so a source
    checkout without an installed package works too)."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return found


def make_adapter(name: str, section: dict[str, Any], home_dir: Path) -> Adapter:
    """Build the adapter configured as ``[adapters.<name>]`` (its ``type`` names the entry point)."""
    kind = section.get("type")
    types = adapter_types()
    if not isinstance(kind, str) or kind not in types:
        builtin = {"sql_poll": "adapters.sql_poll:SqlPollAdapter", "filedrop": "adapters.filedrop:FileDropAdapter"}
        if isinstance(kind, str) and kind in builtin:
            import importlib

            mod, cls_name = builtin[kind].split(":")
            cls = getattr(importlib.import_module(mod), cls_name)
            return cls(name, section, home_dir)  # type: ignore[no-any-return]
        raise ConfigError(
            f"[adapters.{name}]: type = {kind!r} is not an installed adapter",
            fix=f"use one of: {', '.join(sorted(set(types) | set(builtin)))}, or install the package that "
            "registers it under the 'fednode.adapters' entry points",
        )
    cls = types[kind].load()
    return cls(name, section, home_dir)  # type: ignore[no-any-return]


def configured(sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``[adapters.<name>]`` tables of node.toml (``[adapters.push]`` is the push service's)."""
    adapters = sections.get("adapters") or {}
    if not isinstance(adapters, dict):
        raise ConfigError("[adapters] must be a table", fix="write [adapters.<name>] tables with a type = ...")
    out = {}
    for name, sec in adapters.items():
        if name == "push" or not isinstance(sec, dict):
            continue
        if sec.get("enabled", True) is False:
            continue
        out[name] = sec
    return out


# ---- configuration keys of [adapters.<name>], checked before the node starts (node/runtime/configcheck.py) ------
#
# A typo (`enabeld`, `setle_seconds`) must stop `fednode run` with the field named, never leave an adapter
# running on defaults. The keys of the built-in types and of [adapters.push] are node.configschema's
# (docs/configuration.md). An installed adapter type declares its own keys with a ``CONFIG_KEYS`` class
# attribute (key -> (valid, fix)); without it only the common keys are checked.

KeySpec = tuple[Any, str]  # (valid(value) -> bool, fix text)


def _specs(section: Any) -> dict[str, KeySpec]:
    return {k.name: ((lambda v, k=k: not k.problem(v)), k.fix.removeprefix("use ")) for k in section.keys}


COMMON_KEYS: dict[str, KeySpec] = _specs(configschema.ADAPTERS_COMMON)
BUILTIN_KEYS: dict[str, dict[str, KeySpec]] = {kind: _specs(sec) for kind, sec in configschema.ADAPTER_TYPES.items()}
PUSH_KEYS: dict[str, KeySpec] = _specs(configschema.ADAPTERS_PUSH)


def config_keys(kind: Any) -> dict[str, KeySpec] | None:
    """The keys ``[adapters.<name>]`` of this type may hold, or None when the type does not say."""
    if isinstance(kind, str) and kind in BUILTIN_KEYS:
        return {**COMMON_KEYS, **BUILTIN_KEYS[kind]}
    ep = adapter_types().get(kind) if isinstance(kind, str) else None
    if ep is None:
        return None
    try:
        declared = getattr(ep.load(), "CONFIG_KEYS", None)
    except Exception:
        return None
    return {**COMMON_KEYS, **declared} if isinstance(declared, dict) else None


def check_keys(name: str, section: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, message, fix) for every unknown key and every badly typed value of ``[adapters.<name>]``."""
    where = f"[adapters.{name}]"
    kind = section.get("type")
    keys = PUSH_KEYS if name == "push" else config_keys(kind)
    schema_keys = ({k.name: k for k in configschema.ADAPTERS_PUSH.keys} if name == "push" else
                   {k.name: k for s in (configschema.ADAPTERS_COMMON, configschema.adapter_section(kind)) if s
                    for k in s.keys})
    out = []
    for key, value in section.items():
        if keys is None:
            spec = COMMON_KEYS.get(key)
            if spec is None:
                continue
        else:
            spec = keys.get(key)
            if spec is None:
                out.append((key, f"{where}: unknown field adapters.{name}.{key}", configschema.unknown_key_fix(key, keys)))
                continue
        valid, fix = spec
        if not valid(value):
            known = schema_keys.get(key)
            why = known.problem(value) if known is not None else "is not valid"
            out.append((key, f"{where}: adapters.{name}.{key} = {value!r} {why}", f"use {fix}"))
    return out
