"""The node's users and sessions in its store (tables of node/core/schema/people.py): rows in, rows out.

Reads take a Connection (``store.read()``); writes take a WriteTx, so that a change of a user and its
``audit.action`` are one transaction (node/app/people.py passes ``also=`` to ``Ledger.append``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from node.core.schema import people as t
from node.features.people.roles import Person


@dataclass(frozen=True, slots=True)
class User:
    login: str
    name: str
    roles: tuple[str, ...]
    scope: str
    state: str = "active"
    password_hash: str = ""
    failures: tuple[datetime, ...] = ()
    phone: str = ""
    mail: str = ""
    created_at: str = ""
    created_by: str = ""
    changed_at: str = ""
    changed_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def person(self, node: str) -> Person:
        return Person(login=self.login, name=self.name, roles=self.roles, scope=self.scope, state=self.state,
                      node=node)

    def public(self) -> dict[str, Any]:
        """What `users list --json` and the desk show: everything but the hash and the failure times."""
        return {"login": self.login, "name": self.name, "roles": list(self.roles), "scope": self.scope,
                "state": self.state, "phone": self.phone, "mail": self.mail, "has_password": bool(self.password_hash),
                "recent_failures": len(self.failures), "created_at": self.created_at, "created_by": self.created_by,
                "changed_at": self.changed_at, "changed_by": self.changed_by}

    def changed(self, by: str, at: str, **fields: Any) -> User:
        return replace(self, changed_by=by, changed_at=at, **fields)


def _from_row(r: Any) -> User:
    return User(login=r.login, name=r.name, roles=tuple(json.loads(r.roles)), scope=r.scope, state=r.state,
                password_hash=r.password_hash,
                failures=tuple(datetime.fromisoformat(x) for x in json.loads(r.failures or "[]")),
                phone=r.phone, mail=r.mail, created_at=r.created_at, created_by=r.created_by,
                changed_at=r.changed_at, changed_by=r.changed_by)


def _to_row(u: User) -> dict[str, Any]:
    return {"login": u.login, "name": u.name, "roles": json.dumps(list(u.roles)), "scope": u.scope, "state": u.state,
            "password_hash": u.password_hash, "failures": json.dumps([x.isoformat() for x in u.failures]),
            "phone": u.phone, "mail": u.mail, "created_at": u.created_at, "created_by": u.created_by,
            "changed_at": u.changed_at, "changed_by": u.changed_by}


def get(conn: Connection, login: str) -> User | None:
    row = conn.execute(select(t.users).where(t.users.c.login == login)).first()
    return _from_row(row) if row is not None else None


def all_users(conn: Connection) -> list[User]:
    return [_from_row(r) for r in conn.execute(select(t.users).order_by(t.users.c.login))]


def put(tx: Any, user: User, *, new: bool) -> None:
    row = _to_row(user)
    if new:
        tx.conn.execute(insert(t.users).values(**row))
    else:
        tx.conn.execute(update(t.users).where(t.users.c.login == user.login).values(**row))


def add_session(tx: Any, digest: str, login: str, via: str, created_at: str, expires_at: str) -> None:
    tx.conn.execute(insert(t.sessions).values(token_sha256=digest, login=login, via=via, created_at=created_at,
                                              expires_at=expires_at))


def session(conn: Connection, digest: str) -> tuple[str, str] | None:
    """(login, expires_at) of a session, or None."""
    row = conn.execute(select(t.sessions.c.login, t.sessions.c.expires_at)
                       .where(t.sessions.c.token_sha256 == digest)).first()
    return (row.login, row.expires_at) if row is not None else None


def drop_session(tx: Any, digest: str) -> int:
    return int(tx.conn.execute(delete(t.sessions).where(t.sessions.c.token_sha256 == digest)).rowcount or 0)


def drop_sessions_of(tx: Any, login: str) -> int:
    return int(tx.conn.execute(delete(t.sessions).where(t.sessions.c.login == login)).rowcount or 0)


def drop_expired(tx: Any, now: datetime) -> int:
    """Sessions past their end (compared as instants: the times carry their offset)."""
    gone = [r.token_sha256 for r in tx.conn.execute(select(t.sessions.c.token_sha256, t.sessions.c.expires_at))
            if datetime.fromisoformat(r.expires_at) <= now]
    for digest in gone:
        drop_session(tx, digest)
    return len(gone)
