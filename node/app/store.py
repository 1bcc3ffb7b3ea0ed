"""`fednode store copy`: a stopped node's store copied to another database, verified there, node.toml switched.

Rules of this module: refuses while the node runs (its store would change under the copy); node.toml is
switched only after a clean verification and only when asked. The copy's rules are node/core/storecopy.py.
"""

from __future__ import annotations

from collections.abc import Callable

from node.app.remote import is_running
from node.core import config, storecopy
from node.core.home import Home


def copy_store(home: Home, to: str, *, batch: int = storecopy.BATCH, switch: bool = False,
               on_copy: storecopy.Progress | None = None,
               on_verify: Callable[[int, int], None] | None = None) -> storecopy.CopyReport:
    """Copy the home's store to ``to``, verify every chain there; with ``switch``, use it from the next start."""
    if batch < 1:
        raise storecopy.StoreCopyError("--batch must be at least 1", fix="use the default (omit --batch)")
    if is_running(home, timeout=10):
        raise storecopy.NodeRunning(
            f"node {home.code} is running: its store cannot be copied while it writes",
            fix="stop it first (`systemctl stop fednode`), copy, then start it again",
        )
    if to == home.config.store_url:
        raise storecopy.StoreCopyError("--to is the store the node already uses", fix="give the new database's URL")
    source = home.store()
    target = storecopy.open_target(to, home.dir)
    try:
        report = storecopy.copy_store(source, target, batch=batch, progress=on_copy,
                                      source_label=storecopy.redact(home.config.store_url),
                                      target_label=storecopy.redact(to))
        storecopy.verify_target(target, home.root(), report, on_verify)
    finally:
        target.close()
        home.close()
    if report.ok and switch:
        config.set_field(home.config.path, "store", "url", to)
        report.switched = True
    return report
