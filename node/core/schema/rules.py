"""Table rules_cases (migration 0006): cases the rules engine took out of memory."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, SmallInteger, String, Table, Text

from node.core.schema import base as schema

cases = Table(
    "rules_cases",
    schema.metadata,
    Column("case_key", String(300), primary_key=True),  # division/case_no
    Column("item_code", String(128), nullable=False),
    Column("waits_item", SmallInteger, nullable=False),
    Column("through", BigInteger, nullable=False),  # the case's input records up to this local_seq are in state
    Column("state", Text, nullable=False),
    Index("ix_rules_cases_waiting", "waits_item", "item_code"),
)
