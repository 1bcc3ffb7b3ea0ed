"""Admin ops metrics and health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.runtime import admin
from node.runtime.services.metrics import scrape_running

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("metrics")
async def _metrics_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    return {"text": await scrape_running(rt)}


@admin.op("health")
async def _health_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    """The node's last health evaluation (node/runtime/health.py); evaluated now only before the first one."""
    return await rt.health.current()
