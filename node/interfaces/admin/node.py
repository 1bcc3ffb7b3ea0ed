"""Admin ops of the node itself: status, ingest, probe. Each unpacks the request and calls one function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.runtime.admin import op

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


@op("status")
async def _status(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    """Own links only unless ``tree`` (then ``depth`` and ``code`` narrow the subtree); per-origin lists
    summarised unless ``logs`` or ``tree``."""
    depth = req.get("depth")
    return await rt.status(tree=bool(req.get("tree")), depth=int(depth) if depth is not None else None,
                           code=str(req["code"]) if req.get("code") else None, logs=bool(req.get("logs")))


@op("ingest")
async def _ingest(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    from node.app import ingest

    await rt.wait_recovered()
    result = await rt.db(ingest.run_request, rt.ledger, req, rt.notify_threadsafe)
    rt.notify()
    return result


@op("probe")
async def _probe(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    """Append one `link.probe` control record (latency measurements, smoke tests of a deployment)."""
    from node.app.status import probe

    result = await rt.db(probe, rt.ledger, req.get("note", ""))
    rt.notify()
    return result
