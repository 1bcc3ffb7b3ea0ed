"""The open cases' index (node/core/schema/stats.py ``ix_stats_cases_open``): the desk's and `cases list`'s
state filters read the cases still open, not every case held.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_stats_cases_open", "stats_cases", ["case_no"], sqlite_where=sa.text("completed_at IS NULL"),
                    postgresql_where=sa.text("completed_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_stats_cases_open", table_name="stats_cases")
