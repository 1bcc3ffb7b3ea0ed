"""`fednode store copy DIR --to URL [--switch]`: move a stopped node's store to another database.

The runbook "moving a big node from SQLite to PostgreSQL" (deploy/README.md) is this command: stop the
node, copy, verify (done by the command: counts, heads and every chain), switch node.toml with
``--switch``, start the node. node/app/store.py does it; node/core/storecopy.py holds the rules.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from node.app.store import copy_store
from node.core import storecopy
from node.interfaces.cli.base import command, emit, open_home, progress_line


def add_parsers(sub: Any, add: Any) -> None:
    store_p = sub.add_parser("store", help="the node's store: copy it to another database (e.g. PostgreSQL)")
    store_sub = store_p.add_subparsers(dest="store_command", required=True)
    sp = add("copy", "copy a stopped node's store to URL, verify every chain there; --switch updates node.toml",
             store_sub)
    sp.add_argument("--to", required=True, metavar="URL", help="target store, e.g. postgresql://fednode@db/fednode_320300")
    sp.add_argument("--switch", action="store_true", help="after a clean verification, set store.url in node.toml to URL")
    sp.add_argument("--batch", type=int, default=storecopy.BATCH, help=f"rows per batch (default {storecopy.BATCH})")


@command("store copy")
def cmd_store_copy(args: argparse.Namespace) -> int:
    home = open_home(args)
    line = progress_line(sys.stderr.isatty() and not args.json)
    report = copy_store(home, args.to, batch=args.batch, switch=args.switch,
                        on_copy=lambda table, done, total: line(f"copying {table}", done, total, "rows"),
                        on_verify=lambda done, total: line("verifying the target", done, total, "records"))

    def human() -> str:
        lines = [f"copied {report.rows} rows in {len(report.tables)} tables from {report.source} to {report.target} "
                 f"in {report.copy_s:.1f} s"]
        for name, c in report.tables.items():
            mark = "ok " if c["source"] == c["target"] else "BAD"
            lines.append(f"  {mark} {name:<20} {c['source']:>10} → {c['target']:>10}")
        lines.append(f"heads: {report.heads} logs, {'all equal' if report.heads_equal else 'MISMATCH'}")
        for m in report.head_mismatches:
            lines.append(f"  PROBLEM {m['origin']}/{m['channel']}: source {m['source']} target {m['target']}")
        v = report.verify
        lines.append(f"verify on the target: {v.get('logs')} logs, {v.get('records')} records, "
                     f"{v.get('checkpoints')} checkpoints: {'OK' if v.get('ok') else 'PROBLEMS'}")
        for p in v.get("problems", []):
            lines.append(f"  PROBLEM [{p['code']}] {p['origin']}/{p['channel']} seq {p['seq']}: {p['error']}")
        if report.switched:
            lines.append(f"node.toml now uses {report.target}; start the node (`systemctl start fednode`)")
        elif report.ok:
            lines.append(f"OK. To use it: `fednode store copy` with --switch, or set [store] url in {home.config.path}")
        else:
            lines.append("NOT switched: the copy does not match its source; node.toml is unchanged")
        return "\n".join(lines)

    emit(args, report.as_dict(), human)
    return 0 if report.ok else 1
