"""Alerts carried to the end (预警纠错): their disposal (处置), the tickets drafted from red cards.

- ``disposal.py``: pure. The disposal state machine (待处置 → 已转督办 | 已纠正 | 误报核销, reopened by a
  supervisor), its projection over the ``alert.*`` and ``ticket.issue`` records a node holds, the
  drafts of 督办单 a red card leaves, and what a ticket citing an alert is prefilled with.

Rules of this package: no I/O, no store, no clock; it imports node.core only. Reading the records and
writing new ones is node/app/alerts.py (acts) and node/runtime/services/alerts.py (the automatic
tickets of ``[tickets] auto_from_red``).
"""

from node.features.alerts.disposal import (
    DISPOSE,
    DRAFT,
    DRAFT_DROP,
    KINDS,
    REOPEN,
    STATE_LABELS,
    STATES,
    Disposal,
    DisposalRefused,
    project,
)

__all__ = ["DISPOSE", "DRAFT", "DRAFT_DROP", "KINDS", "REOPEN", "STATES", "STATE_LABELS", "Disposal",
           "DisposalRefused", "project"]
