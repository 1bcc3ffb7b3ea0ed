"""Quarantine use cases: list, show, replay (through the running node, else on the store)."""

from __future__ import annotations

from typing import Any

from node.core.errors import UsageError
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
