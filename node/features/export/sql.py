"""The SQL target of an exporter: the exchange database's tables, and rows upserted by their natural key.

Rules of this module:
- ``SqlTarget.write(rows_by_table)`` writes everything it is given in ONE transaction of the target: a
  page of records is in the target whole or not at all;
- an upsert is the database's own where it has one (PostgreSQL and SQLite ``ON CONFLICT DO UPDATE``,
  MySQL/MariaDB ``ON DUPLICATE KEY UPDATE``); elsewhere (Oracle, SQL Server, 达梦) a delete of the keys
  and an insert in the same transaction, which means the same;
- rows of one page that share a key (a ticket changed twice in the page) are written once, the last one;
- a target that cannot be reached or refuses a statement is an ``ExportError`` (code ``export``) with the
  statement's first line and the fix; nothing is half written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, Table, and_, bindparam, delete, inspect
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters.drivers import make_engine
from node.core.errors import FednodeError
from node.features.export import ExporterConfig, gbt39046


class ExportError(FednodeError):
    """The exchange database cannot be written (unreachable, refused, tables missing)."""

    code = "export"


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:400] if str(e) else type(e).__name__


class SqlTarget:
    """One exchange database, through SQLAlchemy: ``ensure_tables`` then ``write`` pages of rows."""

    def __init__(self, cfg: ExporterConfig) -> None:
        self.cfg = cfg
        self.engine: Engine = make_engine(cfg.url, f"[exporters.{cfg.name}]", pool_pre_ping=True)
        self.tables = gbt39046.tables(MetaData(), cfg.prefix)
        self._ready = False

    @property
    def identity(self) -> str:
        """Which database this is (no password): a cursor is only valid for the database it was made on."""
        u = self.engine.url
        return f"{u.get_backend_name()}://{u.host or ''}:{u.port or ''}/{u.database or ''}|{self.cfg.prefix}"

    def ensure_tables(self) -> None:
        if self._ready:
            return
        try:
            if self.cfg.create_tables:
                next(iter(self.tables.values())).metadata.create_all(self.engine, checkfirst=True)
            else:
                have = set(inspect(self.engine).get_table_names())
                missing = sorted(t.name for t in self.tables.values() if t.name not in have)
                if missing:
                    raise ExportError(f"[exporters.{self.cfg.name}]: the exchange database lacks the table(s) "
                                      f"{', '.join(missing)}",
                                      fix="create them (the layout: node/features/export/gbt39046.py, "
                                          "deploy/README.md 前置库), or set create_tables = true")
        except SQLAlchemyError as e:
            raise ExportError(f"[exporters.{self.cfg.name}]: the exchange database cannot be prepared: {_first_line(e)}",
                              fix="check url, that the database answers and that its user may create tables "
                                  "(or create them and set create_tables = false)") from None
        self._ready = True

    def write(self, rows: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """Upsert ``rows`` (table key of gbt39046.tables -> rows) in one transaction; rows written per table."""
        self.ensure_tables()
        out: dict[str, int] = {}
        try:
            with self.engine.begin() as conn:
                for name, table_rows in rows.items():
                    if not table_rows:
                        continue
                    table = self.tables[name]
                    keys = gbt39046.key_columns(table)
                    unique = list({tuple(r[k] for k in keys): r for r in table_rows}.values())
                    self._upsert(conn, table, keys, unique)
                    out[name] = len(unique)
        except SQLAlchemyError as e:
            self._ready = False  # tables dropped meanwhile: look again next time
            raise ExportError(f"[exporters.{self.cfg.name}]: writing the exchange database failed: {_first_line(e)}",
                              fix="check that the database answers and its user may write the tables; the "
                                  "export resumes from its cursor, nothing is lost") from None
        return out

    def _upsert(self, conn: Any, table: Table, keys: Sequence[str], rows: list[dict[str, Any]]) -> None:
        dialect = conn.dialect.name
        cols = [c.name for c in table.columns if c.name not in keys]
        if dialect in ("postgresql", "sqlite"):
            ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            conn.execute(ins.on_conflict_do_update(index_elements=list(keys),
                                                   set_={c: ins.excluded[c] for c in cols}), rows)
        elif dialect in ("mysql", "mariadb"):
            mins = mysql.insert(table)
            conn.execute(mins.on_duplicate_key_update({c: mins.inserted[c] for c in cols}), rows)
        else:  # Oracle, SQL Server, DM: delete the keys, insert, in this one transaction
            where = and_(*[table.c[k] == bindparam(f"k_{k}") for k in keys])
            conn.execute(delete(table).where(where), [{f"k_{k}": r[k] for k in keys} for r in rows])
            conn.execute(table.insert(), rows)

    def close(self) -> None:
        self.engine.dispose()
