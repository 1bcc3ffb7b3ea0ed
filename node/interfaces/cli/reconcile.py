"""`fednode reconcile DIR [--json]`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app.reconcile import reconcile
from node.interfaces.cli.base import command, emit, open_home

# ---- CLI ------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("reconcile", "compare heads with the parent in one round trip, repair both ways, raise forks")
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run (default 600)")


def human(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"reconcile skipped: {data['reason']}"
    lines = []
    rep = data.get("report")
    if rep is None:
        lines.append(data.get("note", "no run"))
    else:
        lines += [
            f"reconciled with {rep['peer']}: {rep['logs_compared']} logs and {rep['down_logs_compared']} downward "
            f"logs compared in {rep['heads_round_trips']} round trip ({rep['heads_bytes']} bytes), "
            f"{rep['logs_equal']} equal, {rep['elapsed_s']} s",
            f"records repaired: {rep['records_repaired']}",
        ]
        for what in ("pushed", "fetched", "down_fetched"):
            for name, n in sorted(rep[what].items()):
                lines.append(f"  {what:<12} {name:<24} {n:>9}")
        for inc in rep["incidents"]:
            lines.append(f"INCIDENT fork {inc['origin']}/{inc['channel']} seq {inc['seq']}"
                         f"{' (known)' if inc.get('known') else ''}: {inc['detail']}")
        for err in rep["errors"]:
            lines.append(f"ERROR {err}")
    for child, r in sorted(data.get("children", {}).items()):
        lines.append(f"child {child}: last asked at {r['started_us']}, {r['logs_compared']} logs, "
                     f"{len(r['incidents'])} incident(s)")
    return "\n".join(lines)


@command("reconcile")
def cmd_reconcile(args: argparse.Namespace) -> int:
    data = reconcile(open_home(args), args.timeout)
    emit(args, data, lambda: human(data))
    if data.get("skipped"):
        return 1
    rep = data.get("report")
    return 0 if rep is None or rep["ok"] else 1
