"""Admin op alerts: a disposal act (dispose, reopen) on the store thread (node.app.alerts.execute)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app import alerts, people
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("alerts")
async def _op_alerts(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    await rt.wait_recovered()
    result = await rt.db(alerts.execute, rt.ledger, people.policy_of(rt.home), req)
    rt.notify()
    return result
