"""Metrics of a stopped node, read from its store."""

from __future__ import annotations

from node.app.remote import via_node_or_store
from node.app.status import status_data
from node.core.home import Home
from node.features import metrics


def scrape_stopped(home: Home) -> str:
    status = status_data(home)
    snap = metrics.snapshot(status, metrics.collect_store(home.store()))
    return metrics.render(metrics.families(snap))


def scrape(home: Home) -> tuple[str, bool]:
    """`fednode metrics`: (the exposition text, whether the running node answered), else from the store."""
    metrics.parse_config(home.config.path, home.config.sections.get("metrics"))  # exit 2 on a bad section
    result, via = via_node_or_store(home, {"op": "metrics"}, lambda: {"text": scrape_stopped(home)})
    return str(result["text"]), via == "admin"
