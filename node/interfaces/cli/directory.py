"""`fednode directory import|list|show`: parse, call node.app.directory, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app import directory as app
from node.interfaces.cli.base import command, emit, open_home


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    dp = sub.add_parser("directory", help="who is responsible (通讯录): who is told of an alert")
    ds = dp.add_subparsers(dest="directory_command", required=True)
    sp = add("import", "replace the directory with a CSV file (UTF-8 or GBK; 姓名,登录名,部门,电话,邮箱,承办人标识,身份,分管部门)",
             ds)
    sp.add_argument("file")
    add("list", "everyone in the directory, and the node's supervisors", ds)
    sp = add("show", "one person (login, name or handler ID): their duties, leaders, 监察联系人", ds)
    sp.add_argument("key")


@command("directory import")
def cmd_import(args: argparse.Namespace) -> int:
    r = app.import_directory(open_home(args), args.file)
    emit(args, r, f"{r['people']} people imported from {r['file']} (replacing {r['replaced']}); duties {r['duties']}")
    return 0


@command("directory list")
def cmd_list(args: argparse.Namespace) -> int:
    rows = app.list_directory(open_home(args))
    emit(args, rows, lambda: "\n".join(
        [f"{'name':<10}{'login':<12}{'dept':<14}{'phone':<14}{'duties':<20}handler IDs"]
        + [f"{r['name']:<8}{r['login']:<12}{r['dept']:<14}{r['phone']:<14}{'、'.join(r['duty_labels']):<16}"
           f"{'、'.join(r['handler_ids'])}" for r in rows] + [f"({len(rows)} people)"]))
    return 0


@command("directory show")
def cmd_show(args: argparse.Namespace) -> int:
    r = app.show_entry(open_home(args), args.key)
    emit(args, r, lambda: "\n".join(f"  {k:<12} {v}" for k, v in r.items()))
    return 0
