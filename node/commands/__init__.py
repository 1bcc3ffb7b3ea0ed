"""Feature modules plug into the node here, so features never edit a shared file.

Each module in this package may define any of:

- ``add_parsers(sub, add)``: its CLI subcommands. ``sub`` is the top-level subparsers object,
  ``add(name, help, parent=sub, dir_arg=True)`` makes a subparser with ``DIR`` and ``--json``. Handlers
  register with ``@node.cli.command("name")`` (for nested commands: ``"tickets issue"``; the parser
  must then set ``dest="<name>_command"`` on its nested subparsers, e.g. ``tickets_command``).
- admin API operations, registered with ``@node.admin.op("name")`` (called by the CLI while the node
  runs; they run on the node's event loop and use ``rt.db(...)`` for store work);
- ``SERVICES``: a list of classes derived from ``node.services.Service`` that the running node starts.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_loaded: list[ModuleType] | None = None


def load_all() -> list[ModuleType]:
    global _loaded
    if _loaded is None:
        _loaded = [
            importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        ]
    return _loaded
