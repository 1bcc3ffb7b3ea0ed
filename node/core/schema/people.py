"""The people of a node (node/features/people): its users and their sign-in sessions.

A user belongs to one node. ``roles`` is a JSON list of role ids (node/features/people/roles.py);
``scope`` the jurisdiction code they act for (the node's code or a code below it). ``failures`` is a
JSON list of the times of recent failed sign-ins (the lockout window, accounts.py). Sessions are kept
by the SHA-256 of their token, never the token itself.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text

from node.core.schema import base as schema

users = Table(
    "people_users",
    schema.metadata,
    Column("login", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("roles", Text, nullable=False),  # JSON list of role ids
    Column("scope", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # active | locked | disabled
    Column("password_hash", Text, nullable=False),  # argon2id (argon2-cffi), "" = no password yet
    Column("failures", Text, nullable=False),  # JSON list of ISO times of recent failed sign-ins
    Column("phone", String(32), nullable=False),
    Column("mail", String(128), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("changed_at", String(40), nullable=False),
    Column("changed_by", String(64), nullable=False),
)

sessions = Table(
    "people_sessions",
    schema.metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("login", String(64), nullable=False),
    Column("via", String(16), nullable=False),  # cli | desk
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), nullable=False),
    Index("ix_people_sessions_login", "login"),
)
