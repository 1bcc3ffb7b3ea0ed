"""Use cases of notifications to people: who the ladder's people are with their addresses, the dead-letter
list (`fednode notify dead-letters`) and sending its messages again (`fednode notify retry`).

Rules of this module:
- the ladder is node/features/alerts/routing.py's (the handler, then the leader, the supervisors, the
  监察联系人); here only the people it picks from: the imported directory, where a person's 电话 and 邮箱
  come from their directory row or else from their user entry (`fednode users add --mobile --email`),
  joined by login (or a handler ID that is a login); the node's users with the role 承办人 or 部门监察 who
  are not in the directory count as its 承办人 (by login or name) and 监察联系人 (for their scope); the
  node's 监察员 and 监察领导 are the supervisors (node/app/directory.py ``node_supervisors``).
- `notify dead-letters` only reads. `notify retry` sends each chosen dead letter again through its channel
  (with the configured retries), to the person's address as the directory and the users give it now (so
  adding a missing address, then retrying, works); a delivered one becomes ``sent`` with who retried it, and
  an ``alert.notified`` record (actor = that person) says so, in the same transaction; one that fails again
  stays dead with its attempts added. The running node does it (admin op ``notify``: reads and writes on
  its store thread, the sending off it); a stopped one in the CLI's own process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from node.app import directory as app_directory
from node.app.remote import via_node_or_store
from node.core.calendar import CST
from node.core.errors import NotFound, UsageError
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.store import Store
from node.features import notify_dead as dead
from node.features.alerts.routing import Directory, Entry
from node.features.notify import Dispatcher
from node.features.notify import load as load_dispatcher
from node.features.notify_channels import mask_address
from node.features.people import users

NOTIFIED = "alert.notified"  # the record of who was told (node/runtime/services/alerts.py writes them too)
_AS_DUTY = {"handler": "handler", "dept_supervisor": "contact"}


def _now() -> str:
    return datetime.now(CST).isoformat(timespec="seconds")


# ---- the people of the ladder, with their addresses ---------------------------------------------------------


def with_contacts(entry: Entry, by_login: Mapping[str, users.User]) -> Entry:
    """``entry`` with the phone and mail its user entry has where its directory row has none."""
    user = by_login.get(entry.login) if entry.login else None
    if user is None:
        logins = [h for h in entry.handler_ids if h in by_login]
        user = by_login[logins[0]] if len(logins) == 1 else None
    if user is None or (entry.phone and entry.mail):
        return entry
    return dataclasses.replace(entry, phone=entry.phone or user.phone, mail=entry.mail or user.mail)


def ladder_people(store: Store) -> tuple[Directory, list[Entry]]:
    """(the directory the ladder reads, the node's supervisors), addresses filled from the users."""
    directory = app_directory.load(store)
    supervisors = app_directory.node_supervisors(store)
    with store.read() as conn:
        active = [u for u in users.all_users(conn) if u.state == "active"]
    by_login = {u.login: u for u in active}
    entries = [with_contacts(e, by_login) for e in directory.entries]
    known = {e.login for e in entries if e.login} | {h for e in entries for h in e.handler_ids}
    for u in active:
        duties = tuple(_AS_DUTY[r] for r in u.roles if r in _AS_DUTY)
        if duties and u.login not in known:
            entries.append(Entry(name=u.name, login=u.login, dept=u.scope, phone=u.phone, mail=u.mail,
                                 duties=duties, source="user"))
    return Directory(entries), supervisors


def current_to(message: Mapping[str, Any], directory: Directory, supervisors: Sequence[Entry]) -> dict[str, Any]:
    """The message's ``to`` as the directory and the users give that person now (their key: login, else name)."""
    to = dict(message.get("to") or {}) if isinstance(message.get("to"), Mapping) else {}
    key = str(to.get("login") or to.get("name") or "")
    found = next((e for e in [*directory.entries, *supervisors] if key and key in (e.login, e.name) and
                  (not to.get("login") or e.login == to.get("login"))), None)
    if found is not None:
        to.update(name=found.name, login=found.login, dept=found.dept, phone=found.phone, mail=found.mail)
    return to


# ---- dead letters ------------------------------------------------------------------------------------------


def list_dead_letters(home: Home, *, include_sent: bool = False) -> dict[str, Any]:
    """`notify dead-letters`: the notifications that failed for good (reads only)."""
    store = home.store()
    with store.read() as conn:
        letters = dead.rows(conn, include_sent=include_sent)
        waiting = dead.count(conn)
    return {"dead": waiting, "letters": [x.public() for x in letters]}


def retry_plan(store: Store, ids: Sequence[int], all_: bool) -> list[dead.DeadLetter]:
    """The dead letters to send again; UsageError/NotFound naming an id that is not waiting."""
    if not ids and not all_:
        raise UsageError("which dead letters?", fix="give their ids (`fednode notify dead-letters DIR`) or --all")
    with store.read() as conn:
        if all_:
            return dead.rows(conn)
        found = {x.id: x for x in dead.rows(conn, include_sent=True, ids=ids)}
    for i in ids:
        if i not in found:
            raise NotFound(f"no dead letter {i}", fix="`fednode notify dead-letters DIR` lists them")
        if found[i].state != dead.DEAD:
            raise UsageError(f"dead letter {i} was already delivered ({found[i].resolved_at}, by "
                             f"{found[i].resolved_by})", fix="retry only the ones still listed")
    return [found[i] for i in dict.fromkeys(ids)]


Result = tuple[dead.DeadLetter, dict[str, Any], str, int]  # letter, message sent, error ("" = sent), attempts


def retry_send(dispatcher: Dispatcher, letters: Sequence[dead.DeadLetter], directory: Directory,
               supervisors: Sequence[Entry]) -> list[Result]:
    """Send each letter again (blocking I/O: off the store thread), to the person's current address."""
    out: list[Result] = []
    for letter in letters:
        message = {**letter.message, "to": current_to(letter.message, directory, supervisors)}
        error, attempts = dispatcher.deliver(letter.channel, message)
        out.append((letter, message, error, attempts))
    return out


def retry_record(ledger: Ledger, results: Sequence[Result], by: Mapping[str, Any], at: str) -> dict[str, Any]:
    """The outcomes, and an ``alert.notified`` record per alert told now, in one transaction."""
    login = str(by.get("login") or "")
    per_alert: dict[str, list[dict[str, Any]]] = {}
    for letter, message, error, _attempts in results:
        if not error:
            per_alert.setdefault(letter.alert_id, []).append({
                "person": letter.recipient, "name": letter.name, "channel": letter.channel, "outcome": "sent",
                "error": "", "why": str(message.get("why") or ""), "at": at, "retry_of": letter.id})
    items = [NewRecord(NOTIFIED, {"alert_id": alert_id, "at": at, "actor": login, "by": dict(by),
                                  "node": ledger.code, "attempts": attempts,
                                  **({"case_no": c} if (c := _case_of(results, alert_id)) else {})})
             for alert_id, attempts in per_alert.items()]

    def settle(tx: Any) -> None:
        for letter, message, error, attempts in results:
            dead.settle(tx, letter, error=error, attempts=attempts, by=login, at=at, message=message)

    if items:
        ledger.append(items, also=settle)
    else:
        with ledger.store.write() as tx:
            settle(tx)
    rows = [{"id": letter.id, "alert_id": letter.alert_id, "channel": letter.channel, "name": letter.name,
             "address": mask_address(letter.channel, dead.address_of(letter.channel, message)),
             "outcome": "failed" if error else "sent", "attempts": attempts, "error": error}
            for letter, message, error, attempts in results]
    return {"retried": len(rows), "sent": sum(1 for r in rows if r["outcome"] == "sent"),
            "failed": sum(1 for r in rows if r["outcome"] == "failed"), "letters": rows}


def _case_of(results: Sequence[Result], alert_id: str) -> str:
    return next((str(m.get("case_no") or "") for x, m, _e, _n in results if x.alert_id == alert_id), "")


def retry_local(ledger: Ledger, dispatcher: Dispatcher, req: Mapping[str, Any],
                now: Callable[[], str] = _now) -> dict[str, Any]:
    """Plan, send, record in this process (a stopped node; tests)."""
    letters = retry_plan(ledger.store, [int(i) for i in req.get("ids") or []], bool(req.get("all")))
    directory, supervisors = ladder_people(ledger.store)
    results = retry_send(dispatcher, letters, directory, supervisors)
    return retry_record(ledger, results, req.get("by") or {}, now())


async def retry_running(db: Callable[..., Awaitable[Any]], ledger: Ledger, dispatcher: Dispatcher,
                        req: Mapping[str, Any]) -> dict[str, Any]:
    """The same in the running node: ``db`` runs a function on its store thread, the sending is off it."""
    letters = await db(retry_plan, ledger.store, [int(i) for i in req.get("ids") or []], bool(req.get("all")))
    directory, supervisors = await db(ladder_people, ledger.store)
    results = await asyncio.to_thread(retry_send, dispatcher, letters, directory, supervisors)
    out: dict[str, Any] = await db(retry_record, ledger, results, req.get("by") or {}, _now())
    return out


def retry(home: Home, ids: Sequence[int], all_: bool, by: Mapping[str, Any] | None) -> dict[str, Any]:
    """`notify retry`: through the running node (op ``notify``), else on the store."""
    req = {"op": "notify", "action": "retry", "ids": list(ids), "all": all_, "by": dict(by or {})}

    def local() -> dict[str, Any]:
        try:
            return retry_local(home.ledger(), load_dispatcher(home.config.sections, home.dir), req)
        finally:
            home.close()

    result: dict[str, Any] = via_node_or_store(home, req, local)[0]
    return result


__all__ = ["NOTIFIED", "current_to", "ladder_people", "list_dead_letters", "retry", "retry_local", "retry_plan",
           "retry_record", "retry_running", "retry_send", "with_contacts"]
