"""The `fednode` command line. Each command is a small function: parse → call the module that does the
work → print. Every command takes --json; errors print what is wrong and the fix, and the exit status
is 0 (ok), 1 (the command ran and found a problem) or 2 (bad usage or configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import structlog

from node import __version__
from node.app.status import status
from node.core import pki
from node.core.errors import FednodeError, UsageError
from node.interfaces.cli.base import COMMANDS, _fmt_time, command, emit, open_home, progress_line
from node.runtime import logging as node_logging

# ---- init and pki ---------------------------------------------------------------------------------------


@command("init")
def cmd_init(args: argparse.Namespace) -> int:
    from node.app import enrol

    home = enrol.init(Path(args.dir), code=args.code, name=args.name, level=args.level, parent=args.parent or "",
                      listen=args.listen or "", db=args.db or "")
    data = {"home": str(home.dir), "code": home.code, "level": home.config.level, "store": home.config.store_url}
    emit(args, data, f"created node home {home.dir} for {home.code} {home.config.name} ({home.config.level}).\n"
         "next: the province runs `fednode pki init-root DIR`; other nodes run `fednode pki request DIR > CODE.csr` "
         "and send it to their parent.\n"
         f"people: as this OS user you are the node's 系统管理员; add its first people, e.g.\n"
         f"  fednode users add {home.dir} --login admin --name 姓名 --role 系统管理员\n"
         f"  fednode users add {home.dir} --login zhangsan --name 张三 --role 监察员 --scope {home.code}\n"
         "(`fednode users roles` shows what each role may do)")
    return 0


@command("pki init-root")
def cmd_pki_init_root(args: argparse.Namespace) -> int:
    from node.app import enrol

    home = open_home(args)
    bundle = enrol.init_root(home)
    emit(args, {"root": pki.path_of_cert(bundle.root), "path": bundle.path,
                "root_not_after": pki.not_after(bundle.root).isoformat()},
         f"root CA created for {home.code}; the province is enrolled as {bundle.path}. "
         f"Keep a copy of {home.key_path('root.key')} offline.")
    return 0


@command("pki request")
def cmd_pki_request(args: argparse.Namespace) -> int:
    from node.app import enrol

    home = open_home(args)
    req = enrol.request(home)
    fingerprint = pki.request_fingerprint(req)
    if args.json:  # the request itself, with its fingerprint beside it (`pki sign` recomputes it, never reads it)
        print(json.dumps({**json.loads(req.to_json()), "key_fingerprint": fingerprint}, ensure_ascii=False, indent=2))
    else:
        print(req.to_json())
    print(f"{req.code} {req.name}: 密钥指纹 / key fingerprint\n  {fingerprint}\n"
          "请通过电话向上级读出前 4 组（上级签发时用 --fingerprint 核对） / read the first 4 groups out to the "
          "parent's IT staff by phone (they sign with --fingerprint)", file=sys.stderr)
    return 0


@command("pki sign")
def cmd_pki_sign(args: argparse.Namespace) -> int:
    from node.app import enrol

    home = open_home(args)
    req = pki.Request.from_json(Path(args.csr).read_text(encoding="utf-8"), source=args.csr)
    bundle = enrol.sign(home, req, args.fingerprint)
    fingerprints = {"key_fingerprint": pki.request_fingerprint(req), "bundle_fingerprint": pki.bundle_fingerprint(bundle)}
    print(json.dumps({**json.loads(bundle.to_json()), **fingerprints}, indent=2) if args.json else bundle.to_json())
    checked = "与所给指纹一致 / matches the fingerprint given" if args.fingerprint else (
        "未核对：签发前应以 --fingerprint 核对对方读出的指纹 / NOT checked: sign with --fingerprint F, F as the "
        "child's IT staff read it out")
    print(f"signed {req.code} {req.name} ({req.level}) as {bundle.path}\n"
          f"  request key fingerprint {fingerprints['key_fingerprint']}: {checked}\n"
          f"  bundle fingerprint      {fingerprints['bundle_fingerprint']} (`pki install` shows it again)",
          file=sys.stderr)
    structlog.get_logger().info("pki_signed", child=req.code, path=bundle.path,
                                fingerprint_checked=bool(args.fingerprint))
    return 0


# `pki install`, `pki rotate`, `pki revoke` and `pki keys` live in node/app/keys.py (through the admin
# socket while the node runs).


# ---- verify and proof -------------------------------------------------------------------------------------


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    from node.app import verify

    if args.proof:
        root_pem = Path(args.root).read_bytes() if args.root else None
        home = open_home(args) if args.dir and not args.root else None
        result = verify.check_proof(Path(args.proof).read_text(), root_pem, home)
        note = "" if result["root_trusted"] else (
            f"\nnote: checked against the root CA inside the proof (sha256 {result['root_sha256'][:16]}…); pass DIR or "
            "--root ROOT.crt to check it against your own tree's root")
        emit(args, result, f"proof OK: {result['origin']}/{result['channel']} seq {result['seq']} ({result['kind']}), "
             f"signed by {result['signer']} at checkpoint {result['checkpoint_seq']}{note}")
        return 0
    home = open_home(args)
    show = sys.stderr.isatty() and not args.json
    line = progress_line(show, newline_at_end=False)
    report = verify.verify_home(home, lambda done, total: line("verifying", done, total, "records"))
    if show:
        print(file=sys.stderr)

    def human() -> str:
        lines = [f"verified {report.logs} logs, {report.records} records, {report.checkpoints} checkpoints, "
                 f"{report.down_records} downward records"]
        if report.ok:
            lines.append("OK: every chain and checkpoint verifies")
        for p in report.problems:
            lines.append(f"PROBLEM [{p['code']}] {p['origin']}/{p['channel']} seq {p['seq']}: {p['error']}")
        if any(p["code"] == "revoked_key" and p["origin"] == home.code for p in report.problems):
            lines.append(f"note: a revoked key of {home.code} signed records beyond its revocation: the running node "
                         "rotates and re-signs them by itself; on a stopped node run `fednode pki rotate DIR`")
        return "\n".join(lines)

    emit(args, report.as_dict(), human)
    return 0 if report.ok else 1


@command("proof")
def cmd_proof(args: argparse.Namespace) -> int:
    from node.app import verify

    proof = verify.export_proof(open_home(args), args.origin, args.channel, args.seq)
    print(json.dumps(proof, ensure_ascii=False, indent=2))
    return 0


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    data = status(open_home(args), tree=args.tree, depth=args.depth, code=args.code, logs=args.logs)

    def human() -> str:
        n = data["node"]
        lines = [f"node {n['code']} {n['name']} ({n['level']}) path {n['path'] or 'not enrolled'}",
                 f"incidents: {data['incidents']}   quarantine: {data['quarantine']}", "", "logs:"]
        for lg in data["logs"]:
            lines.append(f"  {lg['origin']:<12} {lg['channel']:<8} seq {lg['seq']:>9}  head {lg['head'][:16]}")
        if "logs_summary" in data:
            sm = data["logs_summary"]
            lines.append(f"  共 {sm['origins']} 个来源、{sm['logs']} 条日志、{sm['records']} 条记录（逐条列出：--logs）")
        if data.get("running"):
            lines.append("")
            lines.append(f"{'link':<14}{'dir':<6}{'state':<11}{'since':<26}{'rtt ms':>8}  backlog (records, oldest s)")
            for ln in data["links"]:
                backlog = ", ".join(f"{ch} {b['records']} ({b['oldest_age_s']}s)" for ch, b in ln["backlog"].items())
                rtt = f"{ln['rtt_ms']:.1f}" if ln["rtt_ms"] is not None else "-"
                lines.append(f"{ln['peer']:<14}{ln['direction']:<6}{ln['state']:<11}{_fmt_time(ln['since_us']):<26}"
                             f"{rtt:>8}  {backlog or '-'}")
                if ln["last_error"]:
                    lines.append(f"{'':<14}last error: {ln['last_error']}")
            if data.get("tree"):
                lines.append("")
                lines.append("subtree links (reported by children):")
                lines.extend(_tree_lines(data["tree"], 1))
        else:
            lines.append("(node not running: links are shown while `fednode run` is up)")
        for aname, a in (data.get("adapters") or {}).items():
            if isinstance(a, dict) and "read" in a:
                lines.append(f"adapter {aname} ({a.get('type', '?')}): read {a['read']} accepted {a.get('accepted', 0)} "
                             f"quarantined {a.get('quarantined', 0)} state {a.get('state', '?')}"
                             + (f"  last error: {a['last_error']}" if a.get("last_error") else ""))
        lines.append("certificates expire:")
        for k, v in data["certificates"].items():
            lines.append(f"  {k:<9} {v}")
        if data.get("signing_key"):
            lines.append(f"signing key: {data['signing_key']} (every key: `fednode pki keys DIR`)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def _tree_lines(reports: dict[str, Any], depth: int) -> list[str]:
    out = []
    for code, rep in sorted(reports.items()):
        for ln in rep.get("links", []):
            backlog = sum(b["records"] for b in ln.get("backlog", {}).values())
            out.append(f"{'  ' * depth}{code} → {ln['peer']} ({ln['direction']}): {ln['state']}, backlog {backlog}")
        out.extend(_tree_lines(rep.get("children", {}), depth + 1))
    return out


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from node.interfaces import desk as _desk  # noqa: F401  (registers the desk's app, served when [desk] listen is set)
    from node.runtime import process as runtime

    home = open_home(args)
    node_logging.configure(home.config.log_level, home.config.log_format)
    return runtime.run(home)


@command("ingest")
def cmd_ingest(args: argparse.Namespace) -> int:
    from node.app.ingest import ingest

    home = open_home(args)
    if args.synthetic is None and not args.files:
        raise UsageError("nothing to ingest", fix="pass FILE... or --synthetic N")
    if args.files:
        from node.interfaces.cli import files as file_ingest

        req: dict[str, Any] = {"records": file_ingest.read_records(args.files, args.format), "source": "cli"}
    else:
        req = {"synthetic": args.synthetic, "seed": args.seed}
    result = ingest(home, req)
    msg = f"ingested {result['ingested']} records into {home.code} ({result['via']})"
    if result.get("quarantined"):
        msg += f"; {result['quarantined']} row(s) quarantined: see `fednode quarantine list {args.dir}`"
    emit(args, result, msg)
    return 1 if result.get("quarantined") else 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from bench import demo

    return demo.main(args)


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from bench import harness as bench

    return bench.main(args)


# ---- argument parsing ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fednode", description="A node of the 电子监察 supervision tree.")
    p.add_argument("--version", action="version", version=f"fednode {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, parent: Any = sub, dir_arg: bool = True) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help_, description=help_)
        if dir_arg:
            sp.add_argument("dir", nargs="?", help="node home (default: $FEDNODE_HOME)")
        sp.add_argument("--json", action="store_true", help="print JSON for scripts")
        sp.add_argument("--as", dest="as_login", metavar="LOGIN",
                        help="act as this person of the node (default: $FEDNODE_USER, else the OS operator)")
        sp.add_argument("--password-file", metavar="F", help="the person's password, first line of F (- = stdin)")
        return sp

    sp = add("init", "create a node home: config, keys, store", dir_arg=False)
    sp.add_argument("dir")
    sp.add_argument("--code", required=True)
    sp.add_argument("--name", required=True)
    sp.add_argument("--level", required=True, choices=["province", "city", "county", "department"])
    sp.add_argument("--parent", help="HOST:PORT of the parent node")
    sp.add_argument("--listen", help="HOST:PORT to serve children on")
    sp.add_argument("--db", help="store URL (default sqlite:///store.db in the home)")

    pki_p = sub.add_parser("pki", help="certificates and keys: init-root, request, sign, install, rotate, revoke, keys")
    pki_sub = pki_p.add_subparsers(dest="pki_command", required=True)
    add("init-root", "province: create the root CA and enrol the province", pki_sub)
    add("request", "print this node's certificate request (send it to the parent)", pki_sub)
    sp = add("sign", "issue certificates for a child's request (prints the bundle; its fingerprint on stderr)", pki_sub)
    sp.add_argument("csr")
    sp.add_argument("--fingerprint", metavar="F", help="the request's key fingerprint as the child read it out "
                    "(the whole, or at least its first 16 hex digits): refuse a request with other keys")
    sp = add("install", "install the bundle the parent issued", pki_sub)
    sp.add_argument("bundle")
    add("rotate", "replace the signing key (old records stay verifiable); prints both full key ids", pki_sub)
    sp = add("revoke", "revoke a signing key of this node or of its subtree, by position (a signed record that "
             "travels up and down to the key's owner)", pki_sub)
    sp.add_argument("key_id", help="the full key id or a unique prefix (`fednode pki keys DIR` lists them)")
    sp.add_argument("--reason", default="revoked by operator")
    sp = add("keys", "list every signing key this node knows: full id, node, state, validity, fingerprint", pki_sub)
    sp.add_argument("--code", help="only the keys of this node code")

    sp = add("verify", "verify every chain and checkpoint at rest; or a proof with --proof")
    sp.add_argument("--proof", help="a proof file from `fednode proof`")
    sp.add_argument("--root", help="root CA certificate to trust for --proof")

    sp = add("proof", "export a self-contained proof of one record", dir_arg=False)
    sp.add_argument("dir")
    sp.add_argument("origin")
    sp.add_argument("channel", choices=["control", "monitor", "bulk"])
    sp.add_argument("seq", type=int)

    sp = add("status", "links, backlog, logs, certificate expiry")
    sp.add_argument("--tree", action="store_true", help="every link of the subtree (when running)")
    sp.add_argument("--depth", type=int, metavar="N", help="with the subtree: N levels below this node (implies --tree)")
    sp.add_argument("--code", metavar="CODE", help="with the subtree: only the branch of this node (implies --tree)")
    sp.add_argument("--logs", action="store_true",
                    help="every log held and every acked cursor of a link, one by one (default: their summary)")
    sp = add("run", "run the node in the foreground (systemd runs this)")

    sp = add("ingest", "append records: files, or --synthetic N generated case events", dir_arg=False)
    sp.add_argument("dir")
    sp.add_argument("files", nargs="*", help="CSV or JSON Lines files")
    sp.add_argument("--format", choices=["csv", "jsonl"])
    sp.add_argument("--synthetic", type=int, metavar="N")
    sp.add_argument("--seed", type=int, default=0)

    sp = add("demo", "build a local tree of nodes, feed it, and check the province holds everything", dir_arg=False)
    sp.add_argument("--records", type=int, default=20000, help="records fed at each leaf (default 20000)")
    sp.add_argument("--keep", metavar="DIR", help="leave the node homes in DIR")
    sp.add_argument("--serve", action="store_true",
                    help="after the check, keep the nodes and their desks (监察工作台) running until Ctrl-C")
    from node.interfaces import admin as _ops  # noqa: F401  (registers every admin op before `run` serves them)
    from node.interfaces.cli import (
        adapters,
        alerts,
        cases,
        check,
        completion,
        directory,
        export,
        metrics,
        migrate,
        notify,
        people,
        pki,
        reconcile,
        stats,
        store,
        tickets,
    )

    for module in (adapters, alerts, cases, check, completion, directory, export, metrics, migrate, notify, people, pki, reconcile,
                   stats, store, tickets):
        if hasattr(module, "add_parsers"):
            module.add_parsers(sub, add)

    from bench.harness import BENCHES

    sp = add("bench", "every benchmark, each beside its reference measured in the same run", dir_arg=False)
    sp.add_argument("--only", choices=list(BENCHES), metavar="NAME", help=", ".join(BENCHES))
    sp.add_argument("--scale", type=float, default=1.0, help="size factor (0.05 for a quick run)")
    sp.add_argument("--children", type=int, metavar="N", help="fanin: children under the city (default 10)")
    sp.add_argument("--markdown", metavar="FILE", help="also write the results page (docs/benchmarks.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    node_logging.configure("warning" if args.command != "run" else "info")
    nested = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    name = args.command + (f" {nested}" if nested else "")
    handler = COMMANDS[name]
    try:
        _who_acts(args, name)
        rc = handler(args)
    except FednodeError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, **e.as_dict()}, ensure_ascii=False, indent=2))
        print(f"fednode {name}: {e.message}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    from node.features.worklog import audit_command

    audit_command(args, name, rc)  # the 监察日志 (supervisor work log); never fails the command
    return rc



def _who_acts(args: argparse.Namespace, name: str) -> None:
    """Set ``args.auth``, ``args.by``, ``args.person_kind`` and ``args.acting`` (a Person): the person acting and whether their roles
    hold the command's permission (node/app/people.py; the use case checks its target again). The OS
    operator's own decision needs no store; a refusal is recorded by the node and exits 2."""
    import os

    from node.app import people
    from node.features.people.roles import may

    args.auth, args.by, args.person_kind, args.acting = None, None, None, None
    if name in people.UNGUARDED or not (getattr(args, "dir", None) or os.environ.get("FEDNODE_HOME")):
        return
    if name == "check":  # it validates a node.toml that may not load (or a file given by path): no home to open
        return
    from node.interfaces.cli.base import auth_of

    home = open_home(args)
    if not home.enrolled:
        return  # nothing acts on a home without keys; the command itself says what is missing
    args.auth = auth_of(args, home)
    if "os_user" in args.auth:
        person = people.os_person(home.code, args.auth["os_user"])
        decision = may(person, people.command_permission(name), None)
        if decision:
            args.by, args.person_kind, args.acting = people.stamp(person, decision.role), "os", person
            return
    result = people.check_command(home, args.auth, name)
    args.by, args.person_kind = result["person"], result["kind"]
    args.acting = people.person_of(result["person"], result["roles"], result["kind"], home.code)
