"""`fednode demo`: a whole local tree, each node its own OS process with mutual TLS on loopback.

province 320000 ← city 320300 ← districts 320303, 320311 and the department 320300-GA. Synthetic case
events are fed at the leaves; the demo waits until the province holds every record and every chain
verifies, prints a summary, and exits 0 only if nothing was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from node.app import enrol
from node.core import admin_client as admin
from node.core import config, pki, schema
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.keyring import Keyring
from node.core.store import Store

TREE = [  # code, name, level, parent
    ("320000", "江苏省", "province", None),
    ("320300", "徐州市", "city", "320000"),
    ("320303", "云龙区", "county", "320300"),
    ("320311", "泉山区", "county", "320300"),
    ("320300-GA", "徐州市公安局", "department", "320300"),
]
LEAVES = ["320303", "320311", "320300-GA"]


DEMO_PASSWORD_FILE = "demo-password.txt"
# (node, login, name, role): a supervisor and a leader at the province and the city, each county's
# supervisor and department supervision office, a handler; the OS user stays the 系统管理员 of the box
DEMO_PEOPLE = [
    ("320000", "sun.sheng", "孙省", "监察领导"), ("320000", "zhou.jc", "周监察", "监察员"),
    ("320300", "zhangsan", "张三", "监察员"), ("320300", "zhao.ld", "赵六", "监察领导"),
    ("320303", "wangwu", "王五", "部门监察"), ("320303", "lisi", "李四", "承办人"),
    ("320311", "qianqi", "钱七", "监察员"), ("320300-GA", "ga.chen", "陈公", "部门监察"),
]


def add_demo_people(base: Path, homes: dict[str, Home]) -> list[dict[str, str]]:
    """Named people on the running demo nodes (node/app/people.py through the admin socket), one random
    password for all of them in a 0600 file (never on a command line or in the output)."""
    import os
    import secrets

    password = "Demo-" + secrets.token_urlsafe(9)
    fd = os.open(base / DEMO_PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    out = []
    for node, login, name, role in DEMO_PEOPLE:
        admin.call(homes[node], {"op": "people", "action": "add", "auth": {"os_user": "demo"}, "login": login,
                                 "name": name, "roles": [role], "password": password})
        out.append({"node": node, "login": login, "name": name, "role": role})
    return out


def turn_on_desks(homes: dict[str, Home]) -> dict[str, str]:
    """``[desk] listen`` on a free loopback port in every node.toml (plain HTTP is allowed on loopback only);
    returns each node's desk URL."""
    urls = {}
    for code, home in homes.items():
        port = free_port()
        config.set_field(home.config.path, "desk", "listen", f"127.0.0.1:{port}")
        urls[code] = f"http://127.0.0.1:{port}/"
    return urls


def desk_lines(urls: dict[str, str], people: list[dict[str, str]], password_file: Path) -> list[str]:
    """What a person needs to open the desks: each node's URL with the people who sign in there."""
    names = {code: name for code, name, *_ in TREE}
    lines = [f"监察工作台 (the desk) of each node; sign in with a login below and the password in {password_file}:"]
    for code, url in urls.items():
        logins = ", ".join(f"{p['login']} ({p['name']}, {p['role']})" for p in people if p["node"] == code)
        lines.append(f"  {code:<10} {names.get(code, ''):<7} {url:<26} {logins or '-'}")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# For tests about the links alone: no service appends records of its own, so counts are exact.
LINKS_ONLY = "\n[rules]\nenabled = false\n"


def build_tree(base: Path, tree: list[tuple[str, str, str, str | None]] = TREE, *,
               extra_config: str = "", dbs: dict[str, str] | None = None) -> dict[str, Home]:
    """Enrol a tree of node homes with the real pki path; ``extra_config`` is appended to every node.toml;
    ``dbs`` gives a node its store URL (e.g. a PostgreSQL database; the default is SQLite in its home)."""
    homes: dict[str, Home] = {}
    ports = {code: free_port() for code, *_ in tree}
    for code, name, level, parent in tree:
        children = [c for c, *_r, p in tree if p == code]
        home = enrol.init(base / code, code=code, name=name, level=level,
                          listen=f"127.0.0.1:{ports[code]}" if children else "",
                          parent=f"127.0.0.1:{ports[parent]}" if parent else "", db=(dbs or {}).get(code, ""))
        if extra_config:
            with home.config.path.open("a", encoding="utf-8") as f:
                f.write(extra_config)
        if parent is None:
            enrol.init_root(home)
        else:
            bundle = enrol.sign(homes[parent], pki.Request.from_json(enrol.request(home).to_json()))
            enrol.install(home, bundle)
        homes[code] = home
    for h in homes.values():
        h.close()
    return homes


def start(home_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **(extra_env or {})}
    with open(home_dir / "node.log", "ab") as logf:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "node.interfaces.cli", "run", str(home_dir)], stdout=logf, stderr=logf,
                                env=env, start_new_session=True)


def wait_admin(home: Home, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if admin.call(home, {"op": "status"}, timeout=5) is not None:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"node {home.code} did not open its admin socket within {timeout}s; see {home.dir}/node.log")


def leaf_heads(homes: dict[str, Home], leaves: list[str]) -> dict[tuple[str, int], int]:
    out = {}
    for code in leaves:
        store = Store.open(homes[code].config.store_url, base_dir=homes[code].dir, migrate=False)
        try:
            for (o, c), h in store.heads().items():
                if o == code:
                    out[(o, c)] = h.seq
        finally:
            store.close()
    return out


def root_counts(root: Home, logs: list[tuple[str, int]] | dict[tuple[str, int], int]
                ) -> tuple[dict[tuple[str, int], int], int, int]:
    """The root's heads, and (rows, distinct seqs) over ``logs``; with a dict, only seqs up to its values
    (a snapshot: nodes keep appending alerts of their own meanwhile)."""
    store = Store.open(root.config.store_url, base_dir=root.dir, migrate=False)
    try:
        heads = {k: h.seq for k, h in store.heads().items()}
        t = schema.records
        limits = logs if isinstance(logs, dict) else dict.fromkeys(logs)
        with store.read() as conn:
            total = distinct = 0
            for (o, c), upto in limits.items():
                q = select(func.count(), func.count(func.distinct(t.c.seq))).where((t.c.origin == o) & (t.c.channel == c))
                if upto is not None:
                    q = q.where(t.c.seq <= upto)
                n, d = conn.execute(q).one()
                total += n
                distinct += d
        return heads, total, distinct
    finally:
        store.close()


def root_heads(root: Home) -> dict[tuple[str, int], int]:
    store = Store.open(root.config.store_url, base_dir=root.dir, migrate=False)
    try:
        return {k: h.seq for k, h in store.heads().items()}
    finally:
        store.close()


def wait_converged(homes: dict[str, Home], leaves: list[str], root: str, timeout: float,
                   progress: bool = True) -> tuple[bool, dict[tuple[str, int], int]]:
    want = leaf_heads(homes, leaves)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        heads = root_heads(homes[root])  # cheap: counting rows is done once, at the end
        have = sum(min(heads.get(k, 0), v) for k, v in want.items())
        total = sum(want.values())
        if progress and sys.stderr.isatty():
            print(f"\r  province holds {have}/{total} records", end="", file=sys.stderr, flush=True)
        if have == total:
            if progress and sys.stderr.isatty():
                print(file=sys.stderr)
            return True, want
        time.sleep(0.25)
    return False, want


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fednode-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    say(f"building the tree in {base}: " + ", ".join(c for c, *_ in TREE))
    homes = build_tree(base)
    desks = turn_on_desks(homes)
    homes = {code: Home(h.dir) for code, h in homes.items()}  # node.toml changed
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for code, *_ in TREE:
            procs[code] = start(homes[code].dir)
        for code, *_ in TREE:
            wait_admin(homes[code])
        people = add_demo_people(base, homes)
        say(f"demo people (password in {base / DEMO_PASSWORD_FILE}, mode 0600; e.g. "
            f"`fednode login {homes['320300'].dir} --as zhangsan --password-file {base / DEMO_PASSWORD_FILE}`):")
        for p in people:
            say(f"  {p['node']:<10} {p['login']:<12} {p['name']:<6} {p['role']}")
        for line in desk_lines(desks, people, base / DEMO_PASSWORD_FILE):
            say(line)
        say(f"5 nodes running (mutual TLS on loopback); feeding {args.records} synthetic records at each leaf")
        ingested = 0
        for i, leaf in enumerate(LEAVES):
            resp = admin.call(homes[leaf], {"op": "ingest", "synthetic": args.records, "seed": i + 1})
            assert resp is not None
            ingested += int(resp["result"]["ingested"])
        ok, want = wait_converged(homes, LEAVES, "320000", timeout=max(60.0, args.records / 500))
        heads, total, distinct = root_counts(homes["320000"], want)
        born = sum(want.values())
        lost = sum(max(0, v - heads.get(k, 0)) for k, v in want.items())
        status = {code: admin.call(homes[code], {"op": "status"})["result"] for code, *_ in TREE}  # type: ignore[index]
        if getattr(args, "serve", False):  # the province's chains are verified through its store while it runs
            root = Home(homes["320000"].dir)
            report = verify_store(root.store(), Keyring.from_rows(root.root(), root.store().keys()))
            root.close()
        else:
            stop_all(procs)
            root = Home(homes["320000"].dir)
            report = verify_store(root.store(), Keyring.from_rows(root.root(), root.store().keys()))
            root.close()
        result: dict[str, Any] = {
            "records_ingested": ingested,
            "records_born_at_leaves": born,
            "records_at_root": total,
            "verified": report.ok and ok,
            "lost": lost,
            "duplicates": total - distinct,
            "elapsed_s": round(time.monotonic() - t0, 2),
            "logs_verified": report.logs,
            "problems": report.problems,
            "homes": str(base),
            "people": people,
            "desks": desks,
            "password_file": str(base / DEMO_PASSWORD_FILE),
        }
        good = result["verified"] and lost == 0 and result["duplicates"] == 0 and total == born
        if args.json:
            print(json.dumps(result, ensure_ascii=False, indent=2))
        else:
            print(_summary(result, status))
        if getattr(args, "serve", False) and good:
            if not args.json:
                print("\n" + "\n".join(desk_lines(desks, people, base / DEMO_PASSWORD_FILE)))
                print("\nthe nodes and their desks keep running; Ctrl-C stops them"
                      + ("" if args.keep else " and removes the homes"), flush=True)
            serve_until_stopped(procs)
        return 0 if good else 1
    finally:
        stop_all(procs)
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


def serve_until_stopped(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait for Ctrl-C or SIGTERM (or a node that exits by itself); the caller stops the nodes."""
    stop = False

    def on_term(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop and all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)


def _summary(r: dict[str, Any], status: dict[str, Any]) -> str:
    lines = ["", "fednode demo: province 320000 ← city 320300 ← 320303, 320311, 320300-GA", ""]
    lines.append(f"{'node':<12}{'link to':<10}{'state':<11}{'records out':>12}{'records in':>12}{'rtt ms':>9}")
    for code, st in status.items():
        for ln in st["links"]:
            if ln["direction"] == "up":
                rtt = f"{ln['rtt_ms']:.1f}" if ln["rtt_ms"] is not None else "-"
                lines.append(f"{code:<12}{ln['peer']:<10}{ln['state']:<11}{ln['records_out']:>12}{ln['records_in']:>12}"
                             f"{rtt:>9}")
    lines += [
        "",
        f"records ingested at the leaves : {r['records_ingested']}",
        f"records born at the leaves     : {r['records_born_at_leaves']} (with key announcements)",
        f"records at the province        : {r['records_at_root']}",
        f"lost / duplicated              : {r['lost']} / {r['duplicates']}",
        f"every chain verifies           : {'yes' if r['verified'] else 'NO'} ({r['logs_verified']} logs)",
        f"elapsed                        : {r['elapsed_s']} s",
    ]
    for p in r["problems"]:
        lines.append(f"PROBLEM {p}")
    return "\n".join(lines)


__all__ = ["build_tree", "config", "desk_lines", "main", "start", "turn_on_desks"]
