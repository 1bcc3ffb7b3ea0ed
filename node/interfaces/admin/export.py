"""Admin op export (`fednode export DIR` while the node runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.core.errors import FednodeError
from node.runtime import admin
from node.runtime.services.exporters import ExporterService

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("export")
async def _op_export(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = next((s for s in rt.services if isinstance(s, ExporterService)), None)
    if svc is None:
        raise FednodeError("the exporter service is not running in this node", fix="restart the node")
    name = req.get("name")
    return await svc.run_now(name if isinstance(name, str) else None)
