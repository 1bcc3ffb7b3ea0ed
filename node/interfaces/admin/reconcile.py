"""Admin op reconcile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.link.reconcile import ReconcileError
from node.runtime import admin
from node.runtime.services.reconcile import ReconcileService

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("reconcile")
async def _op_reconcile(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = next((s for s in rt.services if isinstance(s, ReconcileService)), None)
    if svc is None:
        raise ReconcileError("the reconcile service is not running in this node", fix="restart the node")
    return await svc.run("demand")
