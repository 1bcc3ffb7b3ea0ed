"""Notifications that still failed after their retries: the dead-letter list (node/core/schema/notify.py).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(256), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("address", sa.String(256), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("first_at", sa.String(40), nullable=False),
        sa.Column("last_at", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("resolved_by", sa.String(64), nullable=False),
        sa.Column("resolved_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_notify_dead_letters_state", "notify_dead_letters", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_notify_dead_letters_state", table_name="notify_dead_letters")
    op.drop_table("notify_dead_letters")
