"""The downward-heads index covers its query: (dest, channel, origin, seq), still partial on dest != ''.

A link to a child asks, for every batch, the highest seq addressed into the child's subtree per issuer
log. With only (dest, channel) indexed, SQLite scanned the whole records table for it, so each batch
cost O(records held) and a relay's catch-up slowed as its store grew.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_records_dest", table_name="records")
    op.create_index("ix_records_dest", "records", ["dest", "channel", "origin", "seq"],
                    sqlite_where=sa.text("dest != ''"), postgresql_where=sa.text("dest != ''"))


def downgrade() -> None:
    op.drop_index("ix_records_dest", table_name="records")
    op.create_index("ix_records_dest", "records", ["dest", "channel"],
                    sqlite_where=sa.text("dest != ''"), postgresql_where=sa.text("dest != ''"))
