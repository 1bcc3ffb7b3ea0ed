"""Alerts counted per day and division (stats_alert_counts): the desk's overview reads a few rows, not the alerts.

The overview (总览) of the desk showed today's and all alerts by unit and level by reading every alert
record held, on every request; at a province that is O(alerts) per page. The statistics projection now
adds each alert it folds to these counters (node/features/stats/projection.py), so the overview is two
primary-key range reads. This migration fills them from the alerts already folded (stats_alerts), the
day taken from the alert's record (through the case index); an alert whose record the case index has not
reached yet is counted in the total only.

Revision ID: 0009
Revises: 0008
"""

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CST = timezone(timedelta(hours=8))


def upgrade() -> None:
    table = op.create_table(
        "stats_alert_counts",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("division", sa.String(64), primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    counts: dict[tuple[str, str, int], int] = {}
    rows = op.get_bind().execute(sa.text(
        "SELECT sa.alert_id, sa.division, sa.level, MIN(r.time_us) FROM stats_alerts sa "
        "LEFT JOIN cases_index ci ON ci.ref = sa.alert_id AND ci.kind = 'alert' "
        "LEFT JOIN records r ON r.local_seq = ci.local_seq "
        "GROUP BY sa.alert_id, sa.division, sa.level"))
    for _alert_id, division, level, time_us in rows:
        days = [""] if time_us is None else ["", datetime.fromtimestamp(int(time_us) / 1e6, CST).date().isoformat()]
        for day in days:
            key = (day, str(division), int(level))
            counts[key] = counts.get(key, 0) + 1
    if counts:
        op.bulk_insert(table, [{"day": d, "division": v, "level": lv, "n": n} for (d, v, lv), n in counts.items()])


def downgrade() -> None:
    op.drop_table("stats_alert_counts")
