"""Initial schema: logs, heads, checkpoints, downward records, keys, incidents, quarantine, meta.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_origin = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("origin", _origin, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("dest", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.LargeBinary, nullable=False),
        sa.Column("chain", sa.LargeBinary, nullable=False),
        sa.Column("stored_us", sa.BigInteger, nullable=False),
        sa.Column("local_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_records_dest", "records", ["dest", "channel"], sqlite_where=sa.text("dest != ''"),
                    postgresql_where=sa.text("dest != ''"))
    op.create_index("ix_records_local_seq", "records", ["local_seq"], unique=True)
    op.create_table(
        "heads",
        sa.Column("origin", _origin, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("chain", sa.LargeBinary, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("origin", _origin, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "down_records",
        sa.Column("origin", _origin, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("dest", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.LargeBinary, nullable=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("stored_us", sa.BigInteger, nullable=False),
        sa.Column("local_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_down_dest", "down_records", ["dest", "channel"])
    op.create_index("ix_down_local_seq", "down_records", ["local_seq"], unique=True)
    op.create_table(
        "keys",
        sa.Column("key_id", sa.LargeBinary, primary_key=True),
        sa.Column("code", _origin, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("not_after_us", sa.BigInteger, nullable=False),
        sa.Column("added_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
        sa.Column("revoked_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("origin", _origin, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("evidence", sa.LargeBinary, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("position", sa.Text, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("replayed_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_quarantine_source", "quarantine", ["source"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for name in ("meta", "quarantine", "incidents", "keys", "down_records", "checkpoints", "heads", "records"):
        op.drop_table(name)
