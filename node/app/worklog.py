"""The 监察日志 (supervisor work log) use cases of the running node: an act recorded, a day's first visit.

Rules of this module:
- One ``audit.visit`` per person per day and node: the day is claimed in this process before anything
  waits (two first reads at once still write one visit), and given back if the write fails.
- Before the node has recovered its own logs a visit is spooled (node/features/worklog.py drains the spool,
  one per person per day, once recovered); an act waits for recovery (the caller's ``wait_recovered``).
- The records, their payloads and the spool are node/features/worklog.py's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node.features import worklog

_VISITED: dict[tuple[str, str], str] = {}  # (node home, actor) -> the last day visited, in this process


def _payload_of(p: Any, op: str, fix: str) -> dict[str, Any]:
    if not isinstance(p, dict):
        raise worklog.AuditError(f"the {op} op needs a payload", fix=fix)
    return p


def _keep_person(p: dict[str, Any], payload: dict[str, Any]) -> None:
    """The person (``by``, node/app/people.py ``stamp``) the CLI resolved, kept when it names the actor."""
    by = p.get("by")
    if isinstance(by, dict) and by.get("login") == payload["actor"]:
        payload["by"] = {str(k): str(v) for k, v in by.items()}


async def record_action(p: Any, wait_recovered: Callable[[], Awaitable[Any]],
                        append: Callable[[dict[str, Any]], Awaitable[Any]]) -> dict[str, Any]:
    """An act of a person (admin op ``audit``): checked, then appended once the node has recovered."""
    p = _payload_of(p, "audit", "use node.features.worklog.record_action")
    payload = worklog.action_payload(str(p.get("actor", "")), str(p.get("action", "")), str(p.get("target", "")),
                                     p.get("detail"), worklog._time(p.get("at")))
    _keep_person(p, payload)
    await wait_recovered()
    await append(payload)
    return payload


async def record_visit(home_dir: Path, p: Any, recovered: bool,
                       write: Callable[[dict[str, Any]], Awaitable[bool]]) -> dict[str, Any]:
    """A person's first read of the day (admin op ``audit.visit``): written once, spooled before recovery."""
    p = _payload_of(p, "audit.visit", "use node.features.worklog.record_visit")
    payload = worklog.action_payload(str(p.get("actor", "")), worklog.VISIT, "", p.get("detail"),
                                     worklog._time(p.get("at")))
    _keep_person(p, payload)
    key, day = (str(home_dir), payload["actor"]), payload["at"][:10]
    if _VISITED.get(key, "") >= day:
        return {"written": False}
    _VISITED[key] = day  # claimed before any await: two first reads at once still write one visit
    try:
        if not recovered:
            worklog.spool(home_dir, payload)  # drained (one per person per day) once recovered
            return {"written": False, "spooled": True}
        written = await write(payload)
    except BaseException:
        _VISITED.pop(key, None)
        raise
    return {"written": written}
