"""The dead-letter list of notifications (table node/core/schema/notify.py): rows in, rows out.

A notification to a person that still failed after its retries (node/features/notify.py ``deliver``) is kept
here with the message as it was to be sent, so that `fednode notify retry` can send it again once the cause
is fixed (a password, the gateway, the person's address). Reads take a Connection (``store.read()``),
writes a WriteTx (the routing service writes its rows in the transaction of its ``alert.notified`` records).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from node.core.schema import notify as t
from node.features.notify_channels import mask_address

DEAD = "dead"
SENT = "sent"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    alert_id: str
    channel: str
    recipient: str
    name: str
    address: str
    message: dict[str, Any]
    attempts: int
    last_error: str
    first_at: str
    last_at: str
    state: str = DEAD
    resolved_by: str = ""
    resolved_at: str = ""

    def public(self) -> dict[str, Any]:
        """What the CLI shows: the address masked when it is a phone number, no message body."""
        return {"id": self.id, "alert_id": self.alert_id, "channel": self.channel, "recipient": self.recipient,
                "name": self.name, "address": mask_address(self.channel, self.address), "attempts": self.attempts,
                "last_error": self.last_error, "first_at": self.first_at, "last_at": self.last_at,
                "state": self.state, "resolved_by": self.resolved_by, "resolved_at": self.resolved_at,
                "level": self.message.get("level"), "case_no": self.message.get("case_no") or ""}


def address_of(channel: str, message: Mapping[str, Any]) -> str:
    to = message.get("to") if isinstance(message.get("to"), Mapping) else {}
    return str((to or {}).get({"smtp": "mail", "sms": "phone"}.get(channel, ""), "") or "")


def new_row(message: Mapping[str, Any], channel: str, recipient: str, attempts: int, error: str,
            at: str) -> dict[str, Any]:
    """The row of one notification that failed for good (what ``add`` inserts)."""
    to = message.get("to") if isinstance(message.get("to"), Mapping) else {}
    return {"alert_id": str(message.get("alert_id") or "")[:256], "channel": channel, "recipient": recipient[:128],
            "name": str((to or {}).get("name") or "")[:128], "address": address_of(channel, message)[:256],
            "message": json.dumps(dict(message), ensure_ascii=False, default=str), "attempts": int(attempts),
            "last_error": error, "first_at": at, "last_at": at, "state": DEAD, "resolved_by": "", "resolved_at": ""}


def add(tx: Any, rows: Iterable[Mapping[str, Any]]) -> int:
    rows = list(rows)
    if rows:
        tx.conn.execute(insert(t.dead_letters), rows)
    return len(rows)


def _from_row(r: Any) -> DeadLetter:
    try:
        message = json.loads(r.message)
    except ValueError:
        message = {}
    return DeadLetter(id=int(r.id), alert_id=r.alert_id, channel=r.channel, recipient=r.recipient, name=r.name,
                      address=r.address, message=message if isinstance(message, dict) else {},
                      attempts=int(r.attempts), last_error=r.last_error, first_at=r.first_at, last_at=r.last_at,
                      state=r.state, resolved_by=r.resolved_by, resolved_at=r.resolved_at)


def rows(conn: Connection, *, include_sent: bool = False, ids: Iterable[int] | None = None,
         limit: int = 1000) -> list[DeadLetter]:
    q = select(t.dead_letters).order_by(t.dead_letters.c.id).limit(limit)
    if not include_sent:
        q = q.where(t.dead_letters.c.state == DEAD)
    if ids is not None:
        q = q.where(t.dead_letters.c.id.in_(list(ids)))
    return [_from_row(r) for r in conn.execute(q)]


def count(conn: Connection, state: str = DEAD) -> int:
    return int(conn.execute(select(func.count()).select_from(t.dead_letters)
                            .where(t.dead_letters.c.state == state)).scalar() or 0)


def settle(tx: Any, letter: DeadLetter, *, error: str, attempts: int, by: str, at: str,
           message: Mapping[str, Any] | None = None) -> None:
    """The outcome of a retry: sent (``error`` = "") or still dead with the new error and attempts added."""
    values: dict[str, Any] = {"attempts": letter.attempts + attempts, "last_at": at}
    if message is not None:
        values["message"] = json.dumps(dict(message), ensure_ascii=False, default=str)
        values["address"] = address_of(letter.channel, message)[:256]
    if error:
        values["last_error"] = error
    else:
        values.update(state=SENT, resolved_by=by[:64], resolved_at=at)
    tx.conn.execute(update(t.dead_letters).where(t.dead_letters.c.id == letter.id).values(**values))
