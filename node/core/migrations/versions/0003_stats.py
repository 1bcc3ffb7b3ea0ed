"""Statistics projection tables (node/core/schema/stats.py).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stats_items",
        sa.Column("division", sa.String(64), primary_key=True),
        sa.Column("item_code", sa.String(128), primary_key=True),
        sa.Column("item_type", sa.String(8), nullable=False),
        sa.Column("dept", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("promised_days", sa.Float, nullable=True),
        sa.Column("statutory_days", sa.Float, nullable=True),
    )
    op.create_table(
        "stats_cases",
        sa.Column("case_no", sa.String(128), primary_key=True),
        sa.Column("division", sa.String(64), nullable=False),
        sa.Column("dept", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(128), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("accepted", sa.SmallInteger, nullable=True),
        sa.Column("applied_at", sa.Text, nullable=True),
        sa.Column("accepted_at", sa.Text, nullable=True),
        sa.Column("completed_at", sa.Text, nullable=True),
        sa.Column("result_code", sa.String(4), nullable=True),
        sa.Column("pauses", sa.Text, nullable=False),
        sa.Column("used_work_min", sa.BigInteger, nullable=True),
        sa.Column("used_nat_min", sa.BigInteger, nullable=True),
        sa.Column("satisfaction", sa.String(1), nullable=True),
        sa.Column("done", sa.SmallInteger, nullable=False),
        sa.Column("measured", sa.SmallInteger, nullable=False),
        sa.Column("on_time", sa.SmallInteger, nullable=False),
        sa.Column("early", sa.SmallInteger, nullable=False),
        sa.Column("p_min", sa.Float, nullable=True),
        sa.Column("p_used", sa.BigInteger, nullable=True),
        sa.Column("s_min", sa.Float, nullable=True),
        sa.Column("s_used", sa.BigInteger, nullable=True),
        sa.Column("evaluated", sa.SmallInteger, nullable=False),
        sa.Column("satisfied", sa.SmallInteger, nullable=False),
    )
    op.create_index("ix_stats_cases_groups", "stats_cases",
                    ["division", "dept", "item_code", "period", "accepted", "done", "measured", "on_time", "early",
                     "p_min", "p_used", "s_min", "s_used", "evaluated", "satisfied"])
    op.create_index("ix_stats_cases_item", "stats_cases", ["division", "item_code"])
    op.create_table(
        "stats_alerts",
        sa.Column("alert_id", sa.String(256), primary_key=True),
        sa.Column("division", sa.String(64), nullable=False),
        sa.Column("dept", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(128), nullable=False),
        sa.Column("object", sa.String(16), nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
    )
    op.create_table(
        "stats_reporting",
        sa.Column("division", sa.String(64), primary_key=True),
        sa.Column("dept", sa.String(64), primary_key=True),
        sa.Column("item_code", sa.String(128), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("timely", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "stats_ticket_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ticket", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("writer", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_stats_ticket_events_ticket", "stats_ticket_events", ["ticket"])


def downgrade() -> None:
    op.drop_index("ix_stats_ticket_events_ticket", "stats_ticket_events")
    op.drop_table("stats_ticket_events")
    op.drop_table("stats_reporting")
    op.drop_table("stats_alerts")
    op.drop_index("ix_stats_cases_item", "stats_cases")
    op.drop_index("ix_stats_cases_groups", "stats_cases")
    op.drop_table("stats_cases")
    op.drop_table("stats_items")
