"""SQL poll adapter: any SQLAlchemy URL, incremental by a watermark column, batched.

Rules of this module:
- per source table the cursor is ``(watermark, key)`` of the last row committed; the next poll reads
  ``WHERE wm > :w OR (wm = :w AND key > :k) ORDER BY wm, key LIMIT batch``. Rows sharing one
  watermark value (ties: many rows stamped in the same second) are therefore neither skipped nor read
  twice, even when a batch boundary falls inside the tie. With an id watermark, ``key`` = ``wm``.
- the cursor is committed in the same transaction as the records (adapters.base.commit), so a crash
  anywhere resumes exactly after the last committed row.
- give the source an index on ``(watermark, key)``: the query is then an index range scan (a row-value
  comparison ``(wm, key) > (:w, :k)`` on PostgreSQL, SQLite and MySQL).
- tables are polled round-robin, one batch per poll, so a huge backlog in one table never starves
  another.
- limitation (documented for operators): a row must become visible with a watermark above the
  cursor. A source that commits rows late with an *older* timestamp (long transactions) needs an id
  watermark (from a sequence assigned at commit, or a sync-log table) instead.

- the URL's driver and the extra that installs it: adapters/drivers.py (``mysql://`` → PyMySQL,
  ``oracle://`` → python-oracledb thin, ``mssql://`` → pymssql, ``kingbase://`` → PostgreSQL); a
  missing driver names ``pip install 'fednode[EXTRA]'``.
- text that is GBK/GB18030 bytes stored in a latin1 column (mojibake) is decoded, or its row is
  quarantined with the column and the bytes (adapters/encoding.py); ``legacy_text = "off"`` turns
  this off for a source that really holds Western text.

Config ``[adapters.<name>]``: type = "sql_poll", url, mapping (gbt39046 | exchange2009 | path |
inline ``tables``), only (a subset of the mapping's tables), override, batch (default 5000), interval
seconds (default 2), legacy_text ("gb18030", the default, or "off"), reader ("process", the default:
polled and validated in a child process beside the store thread, adapters/reader.py; or "thread").
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import and_, column, literal, or_, select, table, tuple_
from sqlalchemy.exc import SQLAlchemyError

from adapters import encoding, mappings
from adapters.base import AdapterError, Batch, SourceRow
from adapters.drivers import engine_url, make_engine
from node.core.errors import ConfigError

__all__ = ["SqlPollAdapter", "decode_value", "encode_value", "engine_url"]

ROW_VALUE_DIALECTS = frozenset({"postgresql", "sqlite", "mysql", "mariadb"})


def encode_value(v: Any) -> list[Any]:
    """A watermark/key value as JSON: [type, text]."""
    if isinstance(v, dt.datetime):
        return ["datetime", v.isoformat()]
    if isinstance(v, dt.date):
        return ["date", v.isoformat()]
    if isinstance(v, bool):
        return ["int", int(v)]
    if isinstance(v, int):
        return ["int", v]
    if isinstance(v, Decimal | float):
        return ["decimal", str(v)]
    return ["str", str(v)]


def decode_value(e: list[Any]) -> Any:
    tag, v = e
    if tag == "datetime":
        return dt.datetime.fromisoformat(v)
    if tag == "date":
        return dt.date.fromisoformat(v)
    if tag == "int":
        return int(v)
    if tag == "decimal":
        return Decimal(v)
    return v


class SqlPollAdapter:
    prefetch = True  # poll(cursor) reads only the source: the next batch may be read while one commits

    def __init__(self, name: str, section: dict[str, Any], home_dir: Path) -> None:
        self.name = name
        where = f"[adapters.{name}]"
        url = section.get("url")
        if not isinstance(url, str) or not url:
            raise ConfigError(f"{where}: url is missing", fix="set url = a SQLAlchemy URL, e.g. postgresql://user@host/db")
        spec = {"tables": section["tables"]} if "tables" in section else section.get("mapping")
        self.mapping = mappings.load(spec, where=where, base=home_dir)
        only = section.get("only")
        if only:
            self.mapping["tables"] = [tm for tm in self.mapping["tables"] if tm["table"] in only]
            if not self.mapping["tables"]:
                raise ConfigError(f"{where}: only = {only!r} matches no table of the mapping",
                                  fix="name tables of the mapping, e.g. only = [\"SPXX\"]")
        for tm in self.mapping["tables"]:
            over = (section.get("override") or {}).get(tm["table"])
            if over:
                tm.update(over)
        self.batch = int(section.get("batch", 5000))
        self.interval = float(section.get("interval", 2.0))
        self.legacy_text = section.get("legacy_text", "gb18030")
        if self.legacy_text not in encoding.MODES:
            raise ConfigError(f"{where}: legacy_text = {self.legacy_text!r} is not one of {', '.join(encoding.MODES)}",
                              fix='use legacy_text = "gb18030" (the default) or "off"')
        self.engine = make_engine(url, where, pool_pre_ping=True)
        self._next = 0  # round-robin start
        self._mappers = {tm["table"]: mappings.row_mapper(tm) for tm in self.mapping["tables"]}

    def _query(self, tm: dict[str, Any], cur: dict[str, Any] | None) -> Any:
        schema, _, name = tm["table"].rpartition(".")
        cols = mappings.columns_of(tm)
        src = table(name, *[column(c) for c in cols], schema=schema or None)
        wm, key = src.c[tm["watermark"]], src.c[tm["key"]]
        q = select(*[src.c[c] for c in cols])
        if cur is not None:
            w = decode_value(cur["w"])
            if tm["key"] == tm["watermark"]:
                q = q.where(wm > w)
            elif self.engine.dialect.name in ROW_VALUE_DIALECTS:
                # a row-value comparison is what an index on (wm, key) can serve; same meaning as below
                q = q.where(tuple_(wm, key) > tuple_(literal(w), literal(decode_value(cur["k"]))))
            else:
                q = q.where(or_(wm > w, and_(wm == w, key > decode_value(cur["k"]))))
        else:
            q = q.where(wm.is_not(None))
        order = [wm] if tm["key"] == tm["watermark"] else [wm, key]
        return q.order_by(*order).limit(self.batch)

    def poll(self, cursor: Any) -> Batch | None:
        cursor = dict(cursor or {})
        tables = self.mapping["tables"]
        try:
            with self.engine.connect() as conn:
                for i in range(len(tables)):
                    tm = tables[(self._next + i) % len(tables)]
                    # Rows are tuples in columns_of(tm) order: watermark, key, then the mapped columns.
                    # Fetched in parts (one driver call each, not one per row), and each part mapped
                    # before the next is fetched: a whole batch of driver rows alive at once only
                    # gives the garbage collector more to scan.
                    kind, to_payload, at = tm["kind"], self._mappers[tm["table"]], f"{tm['table']}:{tm['key']}="
                    out: list[SourceRow] = []
                    last: Any = None
                    cols = mappings.columns_of(tm)
                    for part in conn.execute(self._query(tm, cursor.get(tm["table"]))).partitions(500):
                        if self.legacy_text == "off":
                            out.extend([SourceRow(f"{at}{r[1]}", kind, to_payload(r)) for r in part])
                        else:
                            out.extend([self._legacy_row(f"{at}{r[1]}", kind, to_payload, r, cols) for r in part])
                        last = part[-1]
                    if last is None:
                        continue
                    self._next = (self._next + i + 1) % len(tables)
                    cursor[tm["table"]] = {"w": encode_value(last[0]), "k": encode_value(last[1])}
                    return Batch(out, cursor)
        except SQLAlchemyError as e:
            raise AdapterError(f"{self.name}: reading the source failed: {str(e).splitlines()[0]}",
                               fix="check that the source database answers and the mapping's tables and columns exist") from None
        return None

    @staticmethod
    def _legacy_row(position: str, kind: str, to_payload: Any, r: Any, cols: list[str]) -> SourceRow:
        """The row, its mojibake decoded (adapters/encoding.py), or refused with the reason."""
        try:
            fixed = encoding.repair_row(r, cols)
        except encoding.Mojibake as e:
            return SourceRow(position, kind, dict(zip(cols, r, strict=True)), error=str(e))
        return SourceRow(position, kind, to_payload(fixed if fixed is not None else r))

    def after_commit(self, batch: Batch) -> None:
        pass

    def describe(self, cursor: Any) -> str:
        if not cursor:
            return "(start)"
        return ", ".join(f"{t} after {c['w'][1]}/{c['k'][1]}" for t, c in sorted(cursor.items()))

    def close(self) -> None:
        self.engine.dispose()
