"""Reconciliation reports: one row per run, on both sides of a parent-child pair.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("finished_us", sa.BigInteger, nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("ok", sa.SmallInteger, nullable=False),
        sa.Column("logs_compared", sa.Integer, nullable=False),
        sa.Column("records_repaired", sa.BigInteger, nullable=False),
        sa.Column("incidents", sa.Integer, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
    )
    op.create_index("ix_reconcile_reports_started", "reconcile_reports", ["started_us"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_reports_started", "reconcile_reports")
    op.drop_table("reconcile_reports")
