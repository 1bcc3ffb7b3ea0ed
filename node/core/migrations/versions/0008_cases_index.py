"""The case index: which records name a case, an alert, a handler (node/core/schema/cases.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cases_index",
        sa.Column("case_no", sa.String(128), primary_key=True),
        sa.Column("ref", sa.String(256), primary_key=True),
        sa.Column("local_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("handler", sa.String(128), nullable=False),
    )
    op.create_index("ix_cases_index_ref", "cases_index", ["ref", "kind"])
    op.create_index("ix_cases_index_handler", "cases_index", ["handler", "case_no"])
    op.create_index("ix_cases_index_kind", "cases_index", ["kind", "local_seq"])


def downgrade() -> None:
    op.drop_index("ix_cases_index_kind", table_name="cases_index")
    op.drop_index("ix_cases_index_handler", table_name="cases_index")
    op.drop_index("ix_cases_index_ref", table_name="cases_index")
    op.drop_table("cases_index")
