"""Admin ops rules.*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.runtime import admin
from node.runtime.services.rules import RulesService, _running_service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("rules.status")
async def _op_status(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = next((s for s in rt.services if isinstance(s, RulesService)), None)
    return await rt.db(svc.status) if svc is not None else None


@admin.op("rules.scan")
async def _op_scan(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = _running_service()
    await svc.follow()
    alerts = await svc.scan_now()
    return {"alerts": len(alerts)}


@admin.op("rules.reload")
async def _op_reload(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    for svc in rt.services:
        if isinstance(svc, RulesService):
            await svc.reload()
            return {"reloaded": True, "enabled": bool(svc.settings and svc.settings.enabled), "error": svc.error}
    return {"reloaded": False}
