"""Admin socket ops (JSON lines over DIR/admin.sock), registered on node.runtime.admin.OPS on import. Each op
unpacks the request and calls one function (node.app, or a running service); node/interfaces/cli/main.py
imports this package, so every `fednode run` serves them all."""

from node.interfaces.admin import (  # noqa: F401
    alerts,
    export,
    keys,
    metrics,
    node,
    notify,
    people,
    quarantine,
    reconcile,
    rules,
    tickets,
    worklog,
)
