"""`fednode store copy DIR --to URL [--switch]`: move a stopped node's store to another database.

The runbook "moving a big node from SQLite to PostgreSQL" (deploy/README.md) is this command: stop the
node, copy, verify (done by the command: counts, heads and every chain), switch node.toml with
``--switch``, start the node. node/core/storecopy.py holds the rules.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from node.core import admin_client as admin
from node.core import config, storecopy
from node.interfaces.cli.base import command, emit, open_home


def add_parsers(sub: Any, add: Any) -> None:
    store_p = sub.add_parser("store", help="the node's store: copy it to another database (e.g. PostgreSQL)")
    store_sub = store_p.add_subparsers(dest="store_command", required=True)
    sp = add("copy", "copy a stopped node's store to URL, verify every chain there; --switch updates node.toml",
             store_sub)
    sp.add_argument("--to", required=True, metavar="URL", help="target store, e.g. postgresql://fednode@db/fednode_320300")
    sp.add_argument("--switch", action="store_true", help="after a clean verification, set store.url in node.toml to URL")
    sp.add_argument("--batch", type=int, default=storecopy.BATCH, help=f"rows per batch (default {storecopy.BATCH})")


def _progress_printer(enabled: bool) -> tuple[storecopy.Progress, Any]:
    last = [0.0]

    def on_copy(table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if enabled and (now - last[0] > 0.5 or done == total):
            last[0] = now
            print(f"\rcopying {table}: {done}/{total} rows", end="" if done < total else "\n", file=sys.stderr,
                  flush=True)

    def on_verify(done: int, total: int) -> None:
        now = time.monotonic()
        if enabled and (now - last[0] > 0.5 or done == total):
            last[0] = now
            print(f"\rverifying the target: {done}/{total} records", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)

    return on_copy, on_verify


@command("store copy")
def cmd_store_copy(args: argparse.Namespace) -> int:
    home = open_home(args)
    if args.batch < 1:
        raise storecopy.StoreCopyError("--batch must be at least 1", fix="use the default (omit --batch)")
    if admin.call(home, {"op": "status"}, timeout=10) is not None:
        raise storecopy.NodeRunning(
            f"node {home.code} is running: its store cannot be copied while it writes",
            fix="stop it first (`systemctl stop fednode`), copy, then start it again",
        )
    if args.to == home.config.store_url:
        raise storecopy.StoreCopyError("--to is the store the node already uses", fix="give the new database's URL")
    on_copy, on_verify = _progress_printer(sys.stderr.isatty() and not args.json)
    source = home.store()
    target = storecopy.open_target(args.to, home.dir)
    try:
        report = storecopy.copy_store(source, target, batch=args.batch, progress=on_copy,
                                      source_label=storecopy.redact(home.config.store_url),
                                      target_label=storecopy.redact(args.to))
        storecopy.verify_target(target, home.root(), report, on_verify)
    finally:
        target.close()
        home.close()
    if report.ok and args.switch:
        config.set_field(home.config.path, "store", "url", args.to)
        report.switched = True

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
