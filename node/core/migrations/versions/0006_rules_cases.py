"""The rules service's archive of cases it took out of memory (node/features/rules/archive.py).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules_cases",
        sa.Column("case_key", sa.String(300), primary_key=True),
        sa.Column("item_code", sa.String(128), nullable=False),
        sa.Column("waits_item", sa.SmallInteger, nullable=False),
        sa.Column("through", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
    )
    op.create_index("ix_rules_cases_waiting", "rules_cases", ["waits_item", "item_code"])


def downgrade() -> None:
    op.drop_index("ix_rules_cases_waiting", table_name="rules_cases")
    op.drop_table("rules_cases")
