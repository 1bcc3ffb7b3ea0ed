"""The store's tables (SQLAlchemy Core), every one on ``metadata``; node/core/migrations create exactly these.

- ``base``: the log, heads, checkpoints, keys, incidents, quarantine and meta tables;
- ``reconcile``, ``rules``, ``stats``, ``cases``, ``notify``: the tables of node/link/reconcile.py,
  node/features/rules/archive.py, node/features/stats, node/features/cases and node/features/notify_dead.py (they live here so that
  importing the schema always gives the whole schema: Alembic's env, compare_metadata and `fednode store
  copy` see every table).

Rules: table definitions only; imports nothing of node but node.core.schema.base.
"""

from node.core.schema import cases, notify, people, reconcile, rules, stats  # noqa: F401  (their tables join metadata)
from node.core.schema.base import *  # noqa: F403
from node.core.schema.base import metadata  # noqa: F401
