"""Admin op tickets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app import people
from node.app.tickets import WRITE_ACTIONS, execute
from node.features.tickets.desk import TicketsConfig
from node.runtime import admin
from node.runtime.services import tickets as service  # CLOCK read at call time: tests replace it

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("tickets")
async def _op_tickets(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = service._ACTIVE.get(rt.code)
    cfg = svc.cfg if svc is not None else TicketsConfig.of_home(rt.home)
    status = None
    if req.get("action") == "show":
        status = await rt.status()
    if req.get("action") in WRITE_ACTIONS:
        await rt.wait_recovered()
    index = svc.index if svc is not None else None
    result = await rt.db(execute, rt.ledger, cfg, req, clock=service.CLOCK, status=status, index=index,
                         policy=people.policy_of(rt.home))
    if req.get("action") in WRITE_ACTIONS:
        rt.notify()
    return result
