"""The store's tables (SQLAlchemy Core). Migrations in node/migrations/ create exactly these.

Both record tables carry ``local_seq``: one counter per node, shared by the two tables, stamped when a
record is stored here. It is this node's change feed (``Store.changes``): projections (rules,
tickets, statistics) follow it with a cursor instead of scanning.

``records`` holds, per (origin, channel), the contiguous prefix 1..n of that log; ``heads`` holds n
and chain[n]. ``down_records`` holds records from ancestors addressed into this node's subtree: only
a subset of the issuer's log, so each is verified by its own signature and never chained here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    literal_column,
    text,
)

metadata = MetaData()

records = Table(
    "records",
    metadata,
    Column("origin", String(64), primary_key=True),
    Column("channel", SmallInteger, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(64), nullable=False),
    Column("dest", String(64), nullable=False, default=""),
    Column("time_us", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_id", LargeBinary, nullable=False),
    Column("chain", LargeBinary, nullable=False),
    Column("stored_us", BigInteger, nullable=False),
    Column("local_seq", BigInteger, nullable=False),  # this node's change feed: order of arrival here
    # partial: only records travelling down (tickets, incidents) have a dest; bulk never pays for it.
    # Covering, so the per-batch downward-heads query never touches the table (queries must spell the
    # condition as the literal dest != '' for SQLite to pick a partial index: use `addressed()`).
    Index("ix_records_dest", "dest", "channel", "origin", "seq", sqlite_where=text("dest != ''"),
          postgresql_where=text("dest != ''")),
    Index("ix_records_local_seq", "local_seq", unique=True),
)

heads = Table(
    "heads",
    metadata,
    Column("origin", String(64), primary_key=True),
    Column("channel", SmallInteger, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("chain", LargeBinary, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("origin", String(64), primary_key=True),
    Column("channel", SmallInteger, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_id", LargeBinary, nullable=False),
)

down_records = Table(
    "down_records",
    metadata,
    Column("origin", String(64), primary_key=True),
    Column("channel", SmallInteger, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(64), nullable=False),
    Column("dest", String(64), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_id", LargeBinary, nullable=False),
    Column("entry", LargeBinary, nullable=False),
    Column("stored_us", BigInteger, nullable=False),
    Column("local_seq", BigInteger, nullable=False),
    Index("ix_down_dest", "dest", "channel"),
    Index("ix_down_local_seq", "local_seq", unique=True),
)

keys = Table(
    "keys",
    metadata,
    Column("key_id", LargeBinary, primary_key=True),
    Column("code", String(64), nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("certificate", LargeBinary, nullable=False),  # serialised KeyCertificate
    Column("not_after_us", BigInteger, nullable=False),
    Column("added_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),  # checkpoints/records from this time on are refused
    Column("revoked_reason", Text, nullable=True),
    # JSON {channel: seq}: the last record per log the key may have signed (see node/core/keyring.py)
    Column("revoked_through", Text, nullable=True),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # fork, verification, ...
    Column("origin", String(64), nullable=False),
    Column("channel", SmallInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("source", String(128), nullable=False),  # where the conflicting data came from
    Column("detail", Text, nullable=False),
    Column("evidence", LargeBinary, nullable=True),  # the conflicting SignedRecord(s), exact bytes
    Column("created_us", BigInteger, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(128), nullable=False),  # adapter name or peer
    Column("position", Text, nullable=False),  # source position (file:line, table:id, ...)
    Column("kind", String(64), nullable=False),
    Column("reason", Text, nullable=False),  # field, value and rule
    Column("raw", LargeBinary, nullable=False),  # the offending item, exact bytes
    Column("created_us", BigInteger, nullable=False),
    Column("replayed_us", BigInteger, nullable=True),
    Index("ix_quarantine_source", "source"),
)


def addressed(table: Table) -> Any:
    """``dest != ''`` spelt as a literal: SQLite uses a partial index only when the query repeats its
    condition verbatim, and a bound parameter (what ``table.c.dest != ""`` compiles to) does not."""
    return table.c.dest != literal_column("''")


meta = Table(
    "meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


