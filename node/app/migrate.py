"""`fednode migrate DIR`: bring a stopped node's store up to this program's schema (after an upgrade).

Rules of this module: the one use case besides `fednode run` that upgrades a schema (node/core/migrate.py
says why no other command may); it holds the home's lock while it works, so the node cannot start
under it, and refuses while the node runs. Migrations only add tables, columns and indexes.
"""

from __future__ import annotations

import time
from typing import Any

from node.core import migrate as schema_migrate
from node.core.home import Home, HomeLock


def migrate(home: Home) -> dict[str, Any]:
    """{from, to, migrated, seconds}: the store's version before and after."""
    lock = HomeLock(home.dir).acquire()  # exit 2 naming the running process when the node runs
    try:
        store = home.store(migrate=False)
        before = schema_migrate.current_revision(store.engine)
        head = schema_migrate.head_revision()
        if before is not None and before not in schema_migrate.known_revisions():
            schema_migrate.ensure_current(store.engine, home.dir)  # raises StoreTooNew: never downgrade
        t0 = time.monotonic()
        schema_migrate.upgrade(store.engine)
        after = schema_migrate.current_revision(store.engine)
        return {"store": home.config.store_url.split("@")[-1], "from": before, "to": after, "head": head,
                "migrated": before != after, "seconds": round(time.monotonic() - t0, 3)}
    finally:
        lock.release()
