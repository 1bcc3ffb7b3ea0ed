"""The services the running node hosts, in start order (the composition root lists them; features do not).

Rules: a service is an asyncio shell around node.features / node.app work; it gets the runtime (rt) and
uses rt.db / rt.bg for store work. Imports node.app, node.features, node.link, node.core, adapters.
"""

from node.runtime.services import (
    adapters,
    alerts,
    cases,
    desk,
    exporters,
    keys,
    metrics,
    reconcile,
    rules,
    stats,
    tickets,
)

# the order node/commands loaded them; the desk last (its pages read what the others keep)
MODULES = (adapters, rules, metrics, keys, reconcile, stats, tickets, cases, alerts, exporters, desk)
SERVICES = [cls for m in MODULES for cls in m.SERVICES]
