"""Metrics of a stopped node, read from its store."""

from __future__ import annotations

from node.app.status import status_data
from node.core.home import Home
from node.features import metrics


def scrape_stopped(home: Home) -> str:
    status = status_data(home)
    snap = metrics.snapshot(status, metrics.collect_store(home.store()))
    return metrics.render(metrics.families(snap))
