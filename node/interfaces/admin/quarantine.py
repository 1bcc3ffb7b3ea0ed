"""Admin op quarantine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app.quarantine import quarantine_request
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("quarantine")
async def _quarantine_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    if req.get("action") == "replay":
        await rt.wait_recovered()
    result = await rt.db(quarantine_request, rt.ledger, req)
    if req.get("action") == "replay":
        rt.notify()
    return result
