"""One request to the running node through its admin socket, else the same work on the stopped store.

Rules of this module: the only place of node/app that decides "running node or store" for a use case;
it never opens the store itself (``local`` does, only when the node does not answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.core import admin_client as admin
from node.core.home import Home


def via_node_or_store(home: Home, request: dict[str, Any], local: Callable[[], Any],
                      timeout: float = 600.0) -> tuple[Any, str]:
    """(result, "admin") from the running node's op ``request["op"]``, else (local(), "store")."""
    resp = admin.call(home, request, timeout=timeout)
    if resp is not None:
        return resp["result"], "admin"
    return local(), "store"


def is_running(home: Home, timeout: float = 600.0) -> bool:
    """Whether a node answers on the home's admin socket."""
    return admin.call(home, {"op": "status"}, timeout=timeout) is not None
