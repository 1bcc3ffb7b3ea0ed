"""Quarantine use cases: list, show, replay (through the running node, else on the store)."""

from __future__ import annotations

from typing import Any

from node.app.remote import via_node_or_store
from node.core.errors import UsageError
from node.core.home import Home
from node.features import quarantine as qmod

# ---- admin ops ------------------------------------------------------------------------------------------


def quarantine_request(ledger: Any, req: dict[str, Any]) -> dict[str, Any]:
    """One quarantine action, on the store (store thread in the node, or the CLI's own process)."""
    action = req.get("action")
    store = ledger.store
    if action == "list":
        return qmod.list_rows(store, source=req.get("source"), include_replayed=bool(req.get("all")),
                              limit=int(req.get("limit", 100)), after_id=int(req.get("after", 0)))
    if action == "show":
        return qmod.show(store, int(req["id"]))
    if action == "replay":
        ids = [int(i) for i in req.get("ids") or []]
        if req.get("all_pending"):
            ids = qmod.pending_ids(store, req.get("source"))
        return qmod.replay_many(ledger, ids, qmod.Fix.from_request(req))
    raise UsageError(f"unknown quarantine action {action!r}", fix="use list, show or replay")


def quarantine(home: Home, req: dict[str, Any]) -> dict[str, Any]:
    """`fednode quarantine list|show|replay`: through the running node (op ``quarantine``), else on the store."""

    def local() -> dict[str, Any]:
        try:
            from types import SimpleNamespace

            # a replay appends, so it needs the signing ledger; reads need only the store
            target: Any = home.ledger() if req.get("action") == "replay" else SimpleNamespace(store=home.store())
            return quarantine_request(target, req)
        finally:
            home.close()

    result: dict[str, Any] = via_node_or_store(home, {"op": "quarantine", **req}, local)[0]
    return result
