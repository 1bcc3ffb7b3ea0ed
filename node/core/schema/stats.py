"""The statistics projection's tables. They live on the shared ``node.schema.metadata`` so the
migration 0003_stats and ``compare_metadata`` agree; node/core/schema/ imports this module at its end.

Times are kept as the records wrote them (ISO-8601 with offset); ``period`` is the month ``YYYY-MM``
a row counts in. Working-time figures are minutes, derived from the records and the calendar when the
row changes; the per-case indicator columns (done, on_time, limits…) are derived from the row and its
item, and recomputed for all its cases when an item arrives or changes, so the order does not matter.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, SmallInteger, String, Table, Text, text

from node.core.schema import base as schema

items = Table(
    "stats_items",
    schema.metadata,
    Column("division", String(64), primary_key=True),
    Column("item_code", String(128), primary_key=True),
    Column("item_type", String(8), nullable=False),
    Column("dept", String(64), nullable=False),
    Column("unit", String(16), nullable=False),  # workday | day
    Column("promised_days", Float, nullable=True),
    Column("statutory_days", Float, nullable=True),
)

cases = Table(
    "stats_cases",
    schema.metadata,
    Column("case_no", String(128), primary_key=True),
    Column("division", String(64), nullable=False),
    Column("dept", String(64), nullable=False),
    Column("item_code", String(128), nullable=False),
    Column("period", String(7), nullable=False),  # month of acceptance (else application, else completion)
    Column("accepted", SmallInteger, nullable=True),  # 1 accepted, 0 refused, NULL no case.accept yet
    Column("applied_at", Text, nullable=True),
    Column("accepted_at", Text, nullable=True),
    Column("completed_at", Text, nullable=True),
    Column("result_code", String(4), nullable=True),
    Column("pauses", Text, nullable=False),  # JSON {"s:1": [start, end|null], "c:1": [...]}
    Column("used_work_min", BigInteger, nullable=True),  # working minutes accept→complete, pauses excluded
    Column("used_nat_min", BigInteger, nullable=True),  # natural minutes, same (items with unit "day")
    Column("satisfaction", String(1), nullable=True),
    # derived when the row or its item changes (projection.derive): plain SUMs at query time
    Column("done", SmallInteger, nullable=False),  # accepted and completed
    Column("measured", SmallInteger, nullable=False),  # done, item known, working time known
    Column("on_time", SmallInteger, nullable=False),
    Column("early", SmallInteger, nullable=False),
    Column("p_min", Float, nullable=True),  # promised limit in minutes (measured, limit > 0)
    Column("p_used", BigInteger, nullable=True),  # minutes used, same cases
    Column("s_min", Float, nullable=True),  # statutory, likewise
    Column("s_used", BigInteger, nullable=True),
    Column("evaluated", SmallInteger, nullable=False),
    Column("satisfied", SmallInteger, nullable=False),
    # covering index in GROUP BY order: the aggregate reads it in order, no sort, no table lookups
    Index("ix_stats_cases_groups", "division", "dept", "item_code", "period", "accepted", "done", "measured",
          "on_time", "early", "p_min", "p_used", "s_min", "s_used", "evaluated", "satisfied"),
    Index("ix_stats_cases_item", "division", "item_code"),
    # the open cases, newest number first: 在办 / 超期在办 / 退回补正 pages and the pauses judged in Python
    # read these few instead of every case the node ever held
    Index("ix_stats_cases_open", "case_no", sqlite_where=text("completed_at IS NULL"),
          postgresql_where=text("completed_at IS NULL")),
)

alerts = Table(
    "stats_alerts",
    schema.metadata,
    Column("alert_id", String(256), primary_key=True),
    Column("division", String(64), nullable=False),
    Column("dept", String(64), nullable=False),
    Column("item_code", String(128), nullable=False),
    Column("object", String(16), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("period", String(7), nullable=False),
)

# alerts counted per day (of the alert record's time, China Standard Time) and in all (day ""), by division and
# level, as stats_alerts gains them: the desk's overview reads a few rows, never the alerts (migration 0009)
alert_counts = Table(
    "stats_alert_counts",
    schema.metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, or "" for every day
    Column("division", String(64), primary_key=True),
    Column("level", SmallInteger, primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# events that reached this node (数据报送): counted per group and month of the event, additively
reporting = Table(
    "stats_reporting",
    schema.metadata,
    Column("division", String(64), primary_key=True),
    Column("dept", String(64), primary_key=True),
    Column("item_code", String(128), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("events", BigInteger, nullable=False),
    Column("timely", BigInteger, nullable=False),
)

# ticket records as held here; the state is node.tickets.lifecycle.project over them at query time
ticket_events = Table(
    "stats_ticket_events",
    schema.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("writer", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Index("ix_stats_ticket_events_ticket", "ticket"),
)

CURSOR_KEY = "stats.cursor"  # in the shared meta table: the last local_seq folded in
