"""`fednode migrate DIR`: upgrade a stopped node's store schema (deploy/README.md, Runbook 5)."""

from __future__ import annotations

import argparse
from typing import Any

from node.app.migrate import migrate
from node.interfaces.cli.base import command, emit, open_home


def add_parsers(sub: Any, add: Any) -> None:
    add("migrate", "upgrade a stopped node's store to this version's schema (after installing a new version; "
        "back up first). Other commands refuse an older store; `run` upgrades at start")


@command("migrate")
def cmd_migrate(args: argparse.Namespace) -> int:
    data = migrate(open_home(args))
    emit(args, data, f"store upgraded from schema {data['from'] or '(none)'} to {data['to']} in {data['seconds']} s"
         if data["migrated"] else f"store already at schema {data['to']}: nothing to do")
    return 0
