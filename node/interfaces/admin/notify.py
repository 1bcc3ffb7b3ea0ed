"""Admin op notify (`fednode notify retry DIR` while the node runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app.notify import retry_running
from node.core.errors import UsageError
from node.features.notify import load as load_dispatcher
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@admin.op("notify")
async def _notify_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    if req.get("action") != "retry":
        raise UsageError(f"unknown notify action {req.get('action')!r}", fix="use retry")
    await rt.wait_recovered()
    return await retry_running(rt.db, rt.ledger, load_dispatcher(rt.home.config.sections, rt.home.dir), req)
