"""`fednode export DIR [--name NAME]`: write what the node holds to the provincial exchange database (前置库)."""

from __future__ import annotations

import argparse
from typing import Any

from node.app.export import export
from node.interfaces.cli.base import command, emit, open_home


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    data = export(open_home(args), args.name)

    def human() -> str:
        lines = []
        for e in data["exporters"]:
            rows = ", ".join(f"{t} {n}" for t, n in sorted(e["rows"].items())) or "nothing new"
            lines.append(f"{e['name']:<12} → {e['target']}: {e['records']} record(s) read, rows written: {rows}; "
                         f"cursor {e['cursor']}" + (f"; {e['skipped']} unreadable record(s) passed" if e["skipped"] else ""))
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def add_parsers(sub: Any, add: Any) -> None:
    sp = add("export", "write case events, alerts (表11 电子监察) and tickets to the exchange database (前置库) "
             "of [exporters.NAME], until caught up")
    sp.add_argument("--name", help="only this exporter (default: every one configured)")
