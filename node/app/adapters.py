"""Adapter use cases: `fednode adapters list|reset|push-token` (the adapters themselves: adapters/).

Rules of this module: a cursor is reset only on a stopped node (a running adapter holds its cursor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.base import configured, cursor_key, load_totals
from node.app.remote import is_running, via_node_or_store
from node.core.errors import UsageError
from node.core.home import Home


def list_adapters(home: Home) -> dict[str, Any]:
    """Every configured adapter with its cursor and totals and, while the node runs, its counters.

    Running node: cursor, totals and counters all come from the node's one status answer (the cursor
    it committed last), never mixed with a read of the store at another moment; stopped: from the store."""
    status, via = via_node_or_store(home, {"op": "status"}, dict)
    running = status.get("adapters", {}) if isinstance(status, dict) else {}
    try:
        sections = configured(home.config.sections)
        out: list[dict[str, Any]] = []
        for name, sec in sections.items():
            live = running.get(name)
            if isinstance(live, dict) and "cursor" in live:
                cursor, total = live["cursor"], live.get("total") or {}
            else:  # stopped, or configured after the node started (it runs from the next start)
                store = home.store()
                cur = store.get_meta(cursor_key(name))
                cursor, total = (json.loads(cur) if cur else None), load_totals(store, name)
            out.append({"name": name, "type": sec.get("type"), "cursor": cursor, "total": total,
                        "running": live})
    finally:
        home.close()
    return {"running": via == "admin", "adapters": out}


def reset_cursor(home: Home, name: str) -> None:
    """Clear an adapter's cursor (the node stopped): it reads its source from the start."""
    if is_running(home):
        raise UsageError("the node is running", fix="stop it first (a running adapter holds its cursor)")
    try:
        with home.store().write() as tx:
            tx.set_meta(cursor_key(name), "null")
    finally:
        home.close()


def push_token(home: Home) -> tuple[Path, str]:
    """The local push token's file and value (created if needed)."""
    from adapters import push

    section = (home.config.sections.get("adapters") or {}).get("push") or {}
    path = push.token_path(home.dir, section)
    return path, push.ensure_token(path)
