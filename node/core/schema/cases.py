"""Table cases_index (migration 0008): where the records of one case, one alert and one handler are.

One row per (record, what it names): a case event names its case (and its handler), an alert and the
``alert.*`` records name their alert (and its case), a ``ticket.issue`` names each case and alert it
cites, an item its catalogue key (``ref`` = ``item:DIVISION/ITEM_CODE``). ``local_seq`` points into the
change feed (records or down_records). Built by node/features/cases/index.py; reads never write it
except to catch up with the feed (the cursor ``cases.cursor`` moves with its rows).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from node.core.schema import base as schema

index = Table(
    "cases_index",
    schema.metadata,
    Column("case_no", String(128), primary_key=True),  # "" when the record names no case
    Column("ref", String(256), primary_key=True),  # alert_id, item:DIV/CODE, or ""
    Column("local_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(64), nullable=False),
    Column("handler", String(128), nullable=False),  # case.accept / case.step handler, else ""
    Index("ix_cases_index_ref", "ref", "kind"),
    Index("ix_cases_index_handler", "handler", "case_no"),
    Index("ix_cases_index_kind", "kind", "local_seq"),
)

CURSOR_KEY = "cases.cursor"  # in the shared meta table: the last local_seq indexed
