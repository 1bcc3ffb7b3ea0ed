"""`fednode adapters list|reset|push-token`, `fednode quarantine list|show|replay`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.app.adapters import list_adapters, push_token, reset_cursor
from node.app.quarantine import quarantine
from node.core.errors import UsageError
from node.core.times import iso_us
from node.interfaces.cli.base import command, emit, open_home


def _fmt_us(us: int | None) -> str:
    return iso_us(us) or "-"


@command("quarantine list")
def cmd_quarantine_list(args: argparse.Namespace) -> int:
    data = quarantine(open_home(args), {"action": "list", "source": args.source, "all": args.all,
                                        "limit": args.limit, "after": args.after})

    def human() -> str:
        lines = [f"{data['pending']} row(s) pending in quarantine"]
        for r in data["rows"]:
            state = "replayed " + _fmt_us(r["replayed_us"]) if r["replayed_us"] else "pending"
            lines.append(f"#{r['id']:<6} {r['source']:<16} {r['position']:<28} {r['kind'] or '-':<22} {state}")
            lines.append(f"        {r['reason'][:200]}")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


@command("quarantine show")
def cmd_quarantine_show(args: argparse.Namespace) -> int:
    data = quarantine(open_home(args), {"action": "show", "id": args.id})

    def human() -> str:
        raw = data["raw_text"] if data["raw_text"] is not None else f"(not UTF-8; base64) {data['raw_b64']}"
        return "\n".join([
            f"#{data['id']} from {data['source']} at {data['position']} ({data['kind'] or 'kind unknown'})",
            f"quarantined {_fmt_us(data['created_us'])}; "
            + (f"replayed {_fmt_us(data['replayed_us'])}" if data["replayed_us"] else "pending"),
            f"reason: {data['reason']}", f"raw ({data['raw_bytes']} bytes):", raw[:4000],
        ])

    emit(args, data, human)
    return 0


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"--set {it!r} is not FIELD=VALUE", fix="e.g. --set division=320303 --set step_no=2")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


@command("quarantine replay")
def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise UsageError("nothing to replay", fix="name quarantine ids, or --all [--source S]")
    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as e:
            raise UsageError(f"--payload is not JSON ({e})", fix="--payload '{\"case_no\": ...}'") from None
        if not isinstance(payload, dict):
            raise UsageError("--payload must be a JSON object", fix="--payload '{\"case_no\": ...}'")
    req = {"action": "replay", "ids": args.ids, "all_pending": args.all, "source": args.source,
           "set": _parse_sets(args.set or []), "unset": args.unset or [], "kind": args.kind, "payload": payload}
    data = quarantine(open_home(args), req)

    def human() -> str:
        lines = [f"replayed {len(data['replayed'])}, still failing {len(data['failed'])}"]
        for r in data["replayed"]:
            if r.get("replayed"):
                note = " (already in the log: marked replayed)" if r.get("duplicate") else ""
                lines.append(f"  #{r['id']} → {r['kind']}{note}")
            else:
                lines.append(f"  #{r['id']} was already replayed")
        for f in data["failed"]:
            lines.append(f"  #{f['id']} {f['error']}")
            if f.get("fix"):
                lines.append(f"        fix: {f['fix']}")
        return "\n".join(lines)

    emit(args, data, human)
    return 1 if data["failed"] else 0


@command("adapters list")
def cmd_adapters_list(args: argparse.Namespace) -> int:
    data = list_adapters(open_home(args))
    out = data["adapters"]

    def human() -> str:
        lines = []
        for a in out:
            r = a["running"] or {}
            t = a.get("total") or {}
            figures = (f"read {t.get('read', 0)} accepted {t.get('accepted', 0)} duplicates {t.get('duplicates', 0)} "
                       f"quarantined {t.get('quarantined', 0)}")
            if not r:
                state = "(node not running)" if not data["running"] else "(not running: configured after the node started)"
            elif r.get("state") == "recovering":
                state = "state recovering: waits for the node to recover its own logs from its parent"
            else:
                state = f"state {r.get('state')}; since start: read {r.get('read', 0)} accepted {r.get('accepted', 0)}"
            lines.append(f"{a['name']:<16} {a['type']:<10} {figures}")
            lines.append(f"{'':<16} {state}")
            lines.append(f"{'':<16} cursor: {json.dumps(a['cursor'], ensure_ascii=False)[:200]}")
            if r.get("last_error"):
                when = _fmt_us(r.get("last_error_us"))
                lines.append(f"{'':<16} state {r.get('state')}; last error ({when}): {r['last_error']}")
        return "\n".join(lines) or "no adapters configured ([adapters.<name>] in node.toml)"

    emit(args, data, human)
    return 1 if any((a["running"] or {}).get("state") == "error" for a in out) else 0


@command("adapters reset")
def cmd_adapters_reset(args: argparse.Namespace) -> int:
    reset_cursor(open_home(args), args.name)
    emit(args, {"reset": args.name}, f"cursor of {args.name} cleared: it reads its source from the start; rows "
         "already in the log are skipped by their natural keys")
    return 0


@command("adapters push-token")
def cmd_push_token(args: argparse.Namespace) -> int:
    path, token = push_token(open_home(args))
    emit(args, {"token_file": str(path), "token": token},
         f"{path}\nlocal systems send gRPC metadata 'authorization: Bearer <the token in that file>'")
    return 0


def add_parsers(sub: Any, add: Any) -> None:
    qp = sub.add_parser("quarantine", help="rows that failed validation: list, show, replay")
    qsub = qp.add_subparsers(dest="quarantine_command", required=True)
    sp = add("list", "pending quarantined rows with their reasons", qsub)
    sp.add_argument("--source", help="only rows from this adapter/source")
    sp.add_argument("--all", action="store_true", help="include replayed rows")
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--after", type=int, default=0, help="rows with an id above this (paging)")
    sp = add("show", "one quarantined row: reason, position, raw bytes", qsub)
    sp.add_argument("id", type=int)
    sp = add("replay", "fix and replay quarantined rows into the log", qsub)
    sp.add_argument("ids", nargs="*", type=int)
    sp.add_argument("--all", action="store_true", help="every pending row (of --source)")
    sp.add_argument("--source")
    sp.add_argument("--set", action="append", metavar="FIELD=VALUE", help="set a payload field (text; [..] {..} or \"..\" as JSON)")
    sp.add_argument("--unset", action="append", metavar="FIELD")
    sp.add_argument("--kind", help="replay as this kind")
    sp.add_argument("--payload", help="the whole corrected payload as JSON")

    ap = sub.add_parser("adapters", help="configured adapters: list, reset, push-token")
    asub = ap.add_subparsers(dest="adapters_command", required=True)
    add("list", "configured adapters, their cursors and (running) counters", asub)
    sp = add("reset", "clear an adapter's cursor (node stopped): it re-reads its source, duplicates skipped", asub)
    sp.add_argument("name")
    add("push-token", "create (if needed) and print the local push token", asub)
