"""Copy a stopped node's store to another store URL (SQLite → PostgreSQL for a big node), then prove it.

Rules of this module:
- The source node must be stopped (its admin socket must not answer): a copy of a store that is
  being written is not a copy. The CLI checks this; ``copy_store`` trusts its caller.
- The target must be empty: every table of the schema (after migrating it to head) has no rows.
  A half-finished earlier attempt is never merged into; the fix is a fresh database.
- Every table is copied: the tables of node/core/schema/ (including those later migrations add), and
  any other table found in the source (APScheduler's jobs, a feature's own table), created on the
  target from its reflected, dialect-neutral definition. ``alembic_version`` is not copied: the
  target's own migration run wrote it.
- All rows go in one target transaction, in batches of ``batch`` rows with progress: the copy is all
  or nothing. PostgreSQL sequences behind integer ids are moved past the copied ids, so the node's
  next incident or quarantine row does not collide.
- Afterwards the target is proved, not trusted: row counts per table equal, every head equal
  (seq and chain), and ``integrity.verify_store`` recomputes every chain and checks every checkpoint
  and signature on the target. Only then may the caller switch node.toml to the new URL.
- A SQLite target the copy creates is 0600 from birth, like the node's own store (node/core/home.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import MetaData, Table, func, inspect, select, text

from node.core import integrity, schema
from node.core.errors import FednodeError
from node.core.keyring import Keyring
from node.core.store import Store

log = structlog.get_logger(__name__)

BATCH = 5000
SKIP_TABLES = {"alembic_version"}

Progress = Callable[[str, int, int], None]  # (table, rows done, rows in table)


class StoreCopyError(FednodeError):
    code = "store_copy"


class TargetNotEmpty(StoreCopyError):
    code = "store_copy_target_not_empty"
    exit_status = 2


class NodeRunning(StoreCopyError):
    code = "store_copy_node_running"
    exit_status = 2


@dataclass
class CopyReport:
    source: str
    target: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {source, target}
    heads_equal: bool = False
    heads: int = 0
    head_mismatches: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    copy_s: float = 0.0
    verify_s: float = 0.0
    switched: bool = False

    @property
    def rows(self) -> int:
        return sum(t["source"] for t in self.tables.values())

    @property
    def ok(self) -> bool:
        counts_equal = all(t["source"] == t["target"] for t in self.tables.values())
        return counts_equal and self.heads_equal and bool(self.verify.get("ok"))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "source": self.source, "target": self.target, "rows": self.rows,
                "tables": self.tables, "heads": self.heads, "heads_equal": self.heads_equal,
                "head_mismatches": self.head_mismatches, "verify": self.verify,
                "copy_s": round(self.copy_s, 2), "verify_s": round(self.verify_s, 2),
                "rows_per_s": round(self.rows / self.copy_s) if self.copy_s else 0, "switched": self.switched}


def redact(url: str) -> str:
    """A URL fit for logs and reports: the password replaced."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def _table_order(source: Store) -> list[str]:
    """The schema's tables in dependency order, then every other table the source holds."""
    names = set(inspect(source.engine).get_table_names())
    ordered = [t.name for t in schema.metadata.sorted_tables if t.name not in SKIP_TABLES]
    missing = [n for n in ordered if n not in names]
    if missing:
        raise StoreCopyError(f"the source store lacks table(s) {', '.join(missing)}",
                             fix="open the source once with this fednode version (`fednode status DIR`) so its "
                             "migrations run, then copy again")
    return ordered + sorted(names - set(ordered) - SKIP_TABLES)


def _create_extra_tables(source_md: MetaData, target: Store, names: list[str]) -> None:
    """Tables outside node/core/schema/ (APScheduler's jobs, ...): created on the target from their reflected,
    dialect-neutral definition, unless the target's migrations made them already."""
    present = set(inspect(target.engine).get_table_names())
    extra_md = MetaData()
    for name in names:
        if name in schema.metadata.tables or name in present:
            continue
        table = source_md.tables[name].to_metadata(extra_md)
        for col in table.columns:
            with contextlib.suppress(NotImplementedError):  # no generic form: keep the reflected type
                col.type = col.type.as_generic()  # e.g. SQLite BLOB → LargeBinary (BYTEA on PostgreSQL)
            col.server_default = None
        table.create(target.engine, checkfirst=True)


def _ensure_empty(target_md: MetaData, target: Store, names: list[str]) -> None:
    with target.read() as conn:
        for name in names:
            t = target_md.tables.get(name)
            if t is not None and conn.execute(select(func.count()).select_from(t)).scalar_one():
                raise TargetNotEmpty(
                    f"the target store already holds rows in table {name}",
                    fix="copy into a fresh, empty database (e.g. `createdb -O fednode fednode_320300`); "
                    "a half-finished earlier copy is never merged into",
                )


def _order_by(t: Table) -> list[Any]:
    pk = list(t.primary_key.columns)
    return pk or list(t.columns)


def _plain_insert_sql(t: Table, target: Store, columns: list[str]) -> str | None:
    """A driver-level INSERT when every column holds a plain int, str or bytes (no JSON, dates or booleans
    that SQLAlchemy must convert), else None."""
    for name in columns:
        try:
            if t.columns[name].type.python_type not in (int, str, bytes):
                return None
        except NotImplementedError:
            return None
    mark = "%s" if target.is_postgres else "?"
    cols = ", ".join(f'"{c}"' for c in columns)
    return f'INSERT INTO "{t.name}" ({cols}) VALUES ({", ".join([mark] * len(columns))})'


def _reset_sequences(conn: Any, t: Table) -> None:
    for col in t.primary_key.columns:
        try:
            is_int = col.type.python_type is int
        except NotImplementedError:
            is_int = False
        if not is_int:
            continue
        seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": t.name, "c": col.name}).scalar()
        if seq:
            conn.execute(text(f'SELECT setval(:s, COALESCE((SELECT MAX("{col.name}") FROM "{t.name}"), 0) + 1, false)'),
                         {"s": seq})


def copy_store(source: Store, target: Store, *, batch: int = BATCH, progress: Progress | None = None,
               source_label: str = "", target_label: str = "") -> CopyReport:
    """Copy every row of ``source`` into the empty ``target`` (one transaction), then compare the heads.

    Both sides are read as they are in the database (reflected), so a column the target lacks is
    an error naming it, never a silent loss."""
    report = CopyReport(source=source_label, target=target_label)
    names = _table_order(source)
    source_md = MetaData()
    source_md.reflect(source.engine, only=names)
    _create_extra_tables(source_md, target, names)
    target_md = MetaData()
    target_md.reflect(target.engine, only=names)
    for name in names:
        lacking = [c.name for c in source_md.tables[name].columns if c.name not in target_md.tables[name].columns]
        if lacking:
            raise StoreCopyError(f"the target table {name} has no column(s) {', '.join(lacking)}",
                                 fix="both stores must be at the same schema version: use the same fednode "
                                 "version for the node and the copy, and a fresh target database")
    _ensure_empty(target_md, target, names)
    t0 = time.monotonic()
    counts = {}
    with source.read() as sconn:
        for name in names:
            counts[name] = int(sconn.execute(select(func.count()).select_from(source_md.tables[name])).scalar_one())
    with source.read() as sconn, target.engine.connect().execution_options(fednode_write=True) as tconn, \
            tconn.begin():
        for name in names:
            st, tt = source_md.tables[name], target_md.tables[name]
            done = 0
            if progress:
                progress(name, 0, counts[name])
            result = sconn.execution_options(yield_per=batch).execute(select(st).order_by(*_order_by(st)))
            raw_sql = _plain_insert_sql(tt, target, [c.name for c in st.columns])
            for rows in result.partitions(batch):
                if raw_sql is not None:  # the bulk path (records, checkpoints): DB-API executemany, ~3x faster
                    tconn.exec_driver_sql(raw_sql, [tuple(r) for r in rows])
                else:
                    tconn.execute(tt.insert(), [r._asdict() for r in rows])
                done += len(rows)
                if progress:
                    progress(name, done, counts[name])
            if target.is_postgres:
                _reset_sequences(tconn, tt)
            log.info("store_copy_table", table=name, rows=done)
    report.copy_s = time.monotonic() - t0
    with target.read() as tconn:
        for name in names:
            report.tables[name] = {"source": counts[name], "target": int(
                tconn.execute(select(func.count()).select_from(target_md.tables[name])).scalar_one())}
    compare_heads(source, target, report)
    return report


def compare_heads(source: Store, target: Store, report: CopyReport) -> None:
    s, t = source.heads(), target.heads()
    report.heads = len(s)
    for key in sorted(set(s) | set(t)):
        a, b = s.get(key), t.get(key)
        if a != b:
            report.head_mismatches.append({"origin": key[0], "channel": key[1],
                                           "source": [a.seq, a.chain.hex()] if a else None,
                                           "target": [b.seq, b.chain.hex()] if b else None})
    report.heads_equal = not report.head_mismatches


def verify_target(target: Store, root: Any, report: CopyReport, progress: Callable[[int, int], None] | None = None) -> None:
    """Recompute every chain, check every checkpoint and signature on the target (integrity.verify_store)."""
    t0 = time.monotonic()
    result = integrity.verify_store(target, Keyring.from_rows(root, target.keys()), progress)
    report.verify = result.as_dict()
    report.verify_s = time.monotonic() - t0


def open_target(url: str, base_dir: Path) -> Store:
    """The target store; a new SQLite file is created 0600 (node.home.prepare_sqlite), like the node's own."""
    from node.core.home import prepare_sqlite

    try:
        prepare_sqlite(url, base_dir)
        return Store.open(url, base_dir=base_dir)
    except FednodeError:
        raise
    except Exception as e:
        raise StoreCopyError(f"cannot open the target store {redact(url)}: {type(e).__name__}: {e}",
                             fix="check the URL, that the database exists and that its user may create tables "
                             "(e.g. `createdb -O fednode fednode_320300`)") from None
