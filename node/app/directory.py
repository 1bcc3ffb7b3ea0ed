"""Use cases of the directory of responsible people (通讯录): import, list, show (node/features/alerts/routing.py).

Rules of this module: the directory is one JSON list in store meta ``directory`` (what the last import
gave: an import replaces it whole), read by the running node's alert routing at each step, so an import
needs no restart. It is node data, not evidence: no record; `directory import` is an act the work log
keeps (node/features/worklog.py ACTIONS). The node's own people (`fednode users`) with a 监察员 or 监察领导
role are the node's supervisors in the ladder, with the phone and mail of their user entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from node.core.errors import NotFound, UsageError
from node.core.home import Home
from node.core.store import Store
from node.features.alerts.routing import Directory, Entry, parse_csv
from node.features.people import users

META_KEY = "directory"


def load(store: Store) -> Directory:
    raw = store.get_meta(META_KEY, "") or ""
    if not raw:
        return Directory()
    return Directory([Entry.of(d) for d in json.loads(raw)])


def node_supervisors(store: Store) -> list[Entry]:
    """The node's active 监察员 and 监察领导 (people of issue 16), as the ladder names them."""
    with store.read() as conn:
        return [Entry(name=u.name, login=u.login, dept=u.scope, phone=u.phone, mail=u.mail, duties=("supervisor",),
                      source="user")
                for u in users.all_users(conn) if u.state == "active" and {"supervisor", "leader"} & set(u.roles)]


def import_directory(home: Home, file: str) -> dict[str, Any]:
    """`directory import`: FILE (CSV, UTF-8 or GBK) replaces the directory."""
    path = Path(file)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {file}: {err.strerror}", fix="give the path of the CSV file") from None
    entries = parse_csv(data, path.name)
    store = home.store()
    before = len(load(store).entries)
    with store.write() as tx:
        tx.set_meta(META_KEY, json.dumps([e.as_dict() for e in entries], ensure_ascii=False))
    duties: dict[str, int] = {}
    for e in entries:
        for d in e.duties:
            duties[d] = duties.get(d, 0) + 1
    return {"file": str(path), "people": len(entries), "replaced": before, "duties": duties}


def list_directory(home: Home) -> list[dict[str, Any]]:
    """`directory list`: the imported entries, then the node's supervisors (users)."""
    store = home.store()
    return [e.as_dict() for e in [*load(store).entries, *node_supervisors(store)]]


def show_entry(home: Home, key: str) -> dict[str, Any]:
    """`directory show`: one person (by login, name or a handler ID) and what they answer for."""
    store = home.store()
    d = load(store)
    e = d.handler(key) or next((x for x in node_supervisors(store) if key in (x.login, x.name)), None)
    if e is None:
        raise NotFound(f"nobody called {key!r} is in the directory of {home.code}",
                       fix="`fednode directory list DIR`; import the directory with `fednode directory import DIR F.csv`")
    out = e.as_dict()
    out["leader_of"] = list(e.leads or (e.dept,)) if "leader" in e.duties else []
    out["leaders"] = [x.name for x in d.leaders(e.dept)] if e.dept else []
    out["contacts"] = [x.name for x in d.contacts(e.dept)] if e.dept else []
    return out
