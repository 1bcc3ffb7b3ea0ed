"""Admin op people: sign-in, authorization and the users of the node (node.app.people.execute, on the store thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app import people
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("people")
async def _op_people(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    await rt.wait_recovered()  # a refusal or a sign-in may append a record: the node's own logs first
    result = await rt.db(people.execute, rt.ledger, people.policy_of(rt.home), req)
    rt.notify()
    return result
