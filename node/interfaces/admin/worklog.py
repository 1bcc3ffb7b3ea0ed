"""Admin ops audit and audit.visit: each unpacks the request and calls one node.app.worklog function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app import worklog
from node.core.ledger import NewRecord
from node.features.worklog import ACTION, append_visit
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("audit")
async def _op_audit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    payload = await worklog.record_action(req.get("payload"), rt.wait_recovered,
                                          lambda p: rt.db(rt.ledger.append, [NewRecord(ACTION, p)]))
    rt.notify()
    return payload


@admin.op("audit.visit")
async def _op_visit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    result = await worklog.record_visit(rt.home.dir, req.get("payload"), rt.recovered.is_set(),
                                        lambda p: rt.db(append_visit, rt.ledger, p))
    if result.get("written"):
        rt.notify()
    return result
