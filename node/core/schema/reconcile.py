"""Table reconcile_reports (migration 0002): the last reconciliation runs, per peer."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, SmallInteger, String, Table, Text

from node.core.schema import base as schema

# node.schema imports this module (for its table) and node.store/node.ledger import node.schema, so
# those two are imported where they are used, never at module level

# the table lives here (this feature's own module) but on the shared metadata, so the migration
# 0002_reconcile_reports and compare_metadata agree
reports = Table(
    "reconcile_reports",
    schema.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_us", BigInteger, nullable=False),
    Column("finished_us", BigInteger, nullable=False),
    Column("peer", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # "child": we reconciled against our parent; "parent": a child asked
    Column("trigger", String(16), nullable=False),  # schedule | demand | peer
    Column("ok", SmallInteger, nullable=False),
    Column("logs_compared", Integer, nullable=False),
    Column("records_repaired", BigInteger, nullable=False),
    Column("incidents", Integer, nullable=False),
    Column("report", Text, nullable=False),  # the whole report, JSON
    Index("ix_reconcile_reports_started", "started_us"),
)
