"""The notifications that could not be delivered (dead letters, node/features/notify_dead.py).

One row per (alert, person, channel) whose notification still failed after its retries: the message as it
was to be sent (JSON: the alert, ``to`` and ``why``), the address it went to, how many attempts were made
and the last error. ``state`` is ``dead`` until `fednode notify retry` delivers it (``sent``, with who
retried and when); a retry that fails again adds its attempts and keeps the row dead. Node data, not
evidence: the ``alert.notified`` records are the evidence of who was told.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from node.core.schema import base as schema

dead_letters = Table(
    "notify_dead_letters",
    schema.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(256), nullable=False),
    Column("channel", String(16), nullable=False),  # smtp | sms | webhook | command
    Column("recipient", String(128), nullable=False),  # the person's key in the directory (login, else name)
    Column("name", String(128), nullable=False),
    Column("address", String(256), nullable=False),  # mail address or phone number ("" when none was known)
    Column("message", Text, nullable=False),  # JSON: the alert, to, why
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("first_at", String(40), nullable=False),
    Column("last_at", String(40), nullable=False),
    Column("state", String(16), nullable=False),  # dead | sent
    Column("resolved_by", String(64), nullable=False),
    Column("resolved_at", String(40), nullable=False),
    Index("ix_notify_dead_letters_state", "state", "id"),
)
