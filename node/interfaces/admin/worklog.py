"""Admin ops audit and audit.visit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.core.ledger import NewRecord
from node.features import worklog as auditlog
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("audit")
async def _op_audit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    p = req.get("payload")
    if not isinstance(p, dict):
        raise auditlog.AuditError("the audit op needs a payload", fix="use node.features.worklog.record_action")
    payload = auditlog.action_payload(str(p.get("actor", "")), str(p.get("action", "")), str(p.get("target", "")),
                                      p.get("detail"), auditlog._time(p.get("at")))
    await rt.wait_recovered()
    await rt.db(rt.ledger.append, [NewRecord(auditlog.ACTION, payload)])
    rt.notify()
    return payload


_VISITED: dict[tuple[str, str], str] = {}  # (node home, actor) -> the last day visited, in this process


@admin.op("audit.visit")
async def _op_visit(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    p = req.get("payload")
    if not isinstance(p, dict):
        raise auditlog.AuditError("the audit.visit op needs a payload", fix="use node.features.worklog.record_visit")
    payload = auditlog.action_payload(str(p.get("actor", "")), auditlog.VISIT, "", p.get("detail"),
                                      auditlog._time(p.get("at")))
    key, day = (str(rt.home.dir), payload["actor"]), payload["at"][:10]
    if _VISITED.get(key, "") >= day:
        return {"written": False}
    _VISITED[key] = day  # claimed before any await: two first reads at once still write one visit
    try:
        if not rt.recovered.is_set():
            auditlog.spool(rt.home.dir, payload)  # drained (one per person per day) once recovered
            return {"written": False, "spooled": True}
        written = await rt.db(auditlog.append_visit, rt.ledger, payload)
    except BaseException:
        _VISITED.pop(key, None)
        raise
    if written:
        rt.notify()
    return {"written": written}
