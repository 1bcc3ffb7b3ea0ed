"""`fednode users ...`, `fednode login|logout|whoami`: parse, call node.app.people.run_request, render.

Passwords come from a prompt, ``--password-file F`` or standard input (``--password-file -``), never
from argv. `fednode login` keeps the session token in DIR/sessions/LOGIN (0600, the home is 0700);
later commands with ``--as LOGIN`` use it until it ends (``[people] session_hours``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from node.app.people import run_request
from node.core.errors import UsageError
from node.features.people.roles import ACTION_LABELS, GRANTS, ROLES, STATE_LABELS, table_rows
from node.features.stats.report import text_table
from node.interfaces.cli.base import command, emit, open_home, read_password, session_path


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    up = sub.add_parser("users", help="the people of this node: add, list, lock, unlock, disable, enable, passwd, roles")
    us = up.add_subparsers(dest="users_command", required=True)
    sp = add("add", "add a person with a role and a jurisdiction scope", us)
    sp.add_argument("--login", required=True, help="sign-in name: lower-case letters, digits, _ . -")
    sp.add_argument("--name", required=True, help="the person's name as people read it (张三)")
    sp.add_argument("--role", action="append", required=True, dest="roles",
                    help="a role id or its Chinese name (repeatable); `fednode users roles` lists them")
    sp.add_argument("--scope", default="", help="jurisdiction code they act for (default: this node's code)")
    sp.add_argument("--mobile", "--phone", dest="phone", default="",
                    help="mobile number: 预警 text messages reach them there ([notify] sms)")
    sp.add_argument("--email", "--mail", dest="mail", default="", help="mail address: 预警 mail ([notify] smtp)")
    sp.add_argument("--new-password-file", help="file holding the new person's password (- = stdin; default: "
                    "--password-file when acting as the OS operator, else a prompt)")
    sp.add_argument("--no-password", action="store_true",
                    help="add without a password (they cannot sign in until `users passwd` sets one)")
    add("list", "the people of this node, their roles, scope and state", us)
    for verb, what in (("lock", "lock an account (sign-in refused until unlocked)"),
                       ("unlock", "unlock an account (clears its failed sign-ins)"),
                       ("disable", "disable the account of a person who left (their records stay, signed in their name)"),
                       ("enable", "enable a disabled account again")):
        sp = add(verb, what, us)
        sp.add_argument("login")
    sp = add("passwd", "set a password (your own with --as, anyone's as 系统管理员)", us)
    sp.add_argument("login", nargs="?", help="whose password (default: the person given with --as)")
    sp.add_argument("--new-password-file", help="file holding the new password (- = stdin; default: a prompt)")
    add("roles", "the roles and the permission table", us, dir_arg=False)

    add("login", "sign in as a person (--as LOGIN); later commands with --as use the session")
    add("logout", "end the session of --as LOGIN")
    add("whoami", "who the CLI acts as, with which roles and scope")


@command("users add")
def cmd_add(args: argparse.Namespace) -> int:
    home = open_home(args)
    password = None
    if not args.no_password:
        password = _new_password(args, f"{args.login} 的新口令: ")
    result, _via = run_request(home, {"action": "add", "auth": args.auth, "login": args.login, "name": args.name,
                                      "roles": args.roles, "scope": args.scope, "password": password,
                                      "phone": args.phone, "mail": args.mail})
    emit(args, result, f"已添加用户 {result['login']}（{result['name']}，"
         f"{'、'.join(ROLES.get(r, r) for r in result['roles'])}，辖区 {result['scope']}）"
         + ("" if result["has_password"] else "；尚未设置口令：`fednode users passwd DIR LOGIN`"))
    return 0


def _new_password(args: argparse.Namespace, prompt: str) -> str:
    # --password-file is the acting person's own password when --as is given; the new one then comes from
    # --new-password-file or the prompt
    acting_as = getattr(args, "as_login", None) or os.environ.get("FEDNODE_USER")
    path = getattr(args, "new_password_file", None) or (None if acting_as else getattr(args, "password_file", None))
    ns = argparse.Namespace(password_file=path)
    first = read_password(ns, "", prompt=prompt)
    if first is None:
        raise UsageError("no new password given", fix="give --password-file F (- = stdin) or run on a terminal")
    if not path:
        again = read_password(ns, "", prompt="再输入一次: ")
        if again != first:
            raise UsageError("the two passwords differ", fix="type the same password twice")
    return first


@command("users list")
def cmd_list(args: argparse.Namespace) -> int:
    result, _via = run_request(open_home(args), {"action": "list", "auth": args.auth})
    rows = result["users"]

    def human() -> str:
        if not rows:
            return "（本节点还没有用户：`fednode users add DIR --login L --name N --role R`）"
        return text_table(["登录名", "姓名", "角色", "辖区", "手机", "邮箱", "状态"], [
            [u["login"], u["name"], "、".join(ROLES.get(r, r) for r in u["roles"]), u["scope"], u.get("phone") or "-",
             u.get("mail") or "-",
             STATE_LABELS.get(u["state"], u["state"]) + ("" if u["has_password"] else "（无口令）")] for u in rows])

    emit(args, rows, human)
    return 0


def _cmd_state(args: argparse.Namespace) -> int:
    result, _via = run_request(open_home(args), {"action": args.users_command, "auth": args.auth,
                                                 "login": args.login})
    emit(args, result, f"{result['login']}（{result['name']}）：{STATE_LABELS.get(result['state'], result['state'])}")
    return 0


for _verb in ("lock", "unlock", "disable", "enable"):
    command(f"users {_verb}")(_cmd_state)


@command("users passwd")
def cmd_passwd(args: argparse.Namespace) -> int:
    home = open_home(args)
    whose = args.login or (args.auth.get("login") if isinstance(args.auth, dict) else None)
    if not whose:
        raise UsageError("whose password?", fix="give LOGIN, or --as LOGIN for your own")
    password = _new_password(args, f"{whose} 的新口令: ")
    result, _via = run_request(home, {"action": "passwd", "auth": args.auth, "login": whose, "password": password})
    emit(args, result, f"{result['login']} 的口令已更新；其已登录的会话均已结束")
    return 0


@command("users roles")
def cmd_roles(args: argparse.Namespace) -> int:
    rows = table_rows()

    def human() -> str:
        cols = list(ROLES)
        table = text_table(["权限", *(ROLES[r] for r in cols), "说明"],
                           [[a, *(GRANTS[a].get(r, "-") for r in cols), ACTION_LABELS[a]] for a in GRANTS])
        return "S = 本辖区内  O = 仅本人承办或分派给本人的  - = 无\n\n" + table

    emit(args, {"roles": ROLES, "permissions": rows}, human)
    return 0


@command("login")
def cmd_login(args: argparse.Namespace) -> int:
    home = open_home(args)
    login = (args.as_login or os.environ.get("FEDNODE_USER", "")).strip()
    if not login:
        raise UsageError("who signs in?", fix="give --as LOGIN")
    password = read_password(args, login)
    if password is None:
        raise UsageError(f"no password for {login}", fix="give --password-file F (- = stdin) or run on a terminal")
    result, _via = run_request(home, {"action": "login", "login": login, "password": password, "via": "cli"})
    path = session_path(home, login)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(result["token"])
    by = result["person"]
    emit(args, {"person": by, "expires_at": result["expires_at"]},
         f"已登录：{by['name']}（{by['role_label']}，{by['scope']}），至 {result['expires_at']}")
    return 0


@command("logout")
def cmd_logout(args: argparse.Namespace) -> int:
    home = open_home(args)
    login = (args.as_login or os.environ.get("FEDNODE_USER", "")).strip()
    path = session_path(home, login)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        token = ""
    gone = False
    if token:
        result, _via = run_request(home, {"action": "logout", "auth": args.auth, "token": token})
        gone = bool(result["signed_out"])
        path.unlink(missing_ok=True)
    emit(args, {"signed_out": gone}, "已退出" if gone else "没有需要退出的会话")
    return 0


@command("whoami")
def cmd_whoami(args: argparse.Namespace) -> int:
    by = args.by
    emit(args, {"person": by, "kind": args.person_kind},
         f"{by['name']}（{by['role_label']}，辖区 {by['scope']}）" + ("，本机操作系统用户" if args.person_kind == "os" else ""))
    return 0
