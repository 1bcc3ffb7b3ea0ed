"""`fednode notify dead-letters|retry`: parse, call node.app.notify, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from node.app import notify as app
from node.features.stats.report import text_table
from node.interfaces.cli.base import command, emit, open_home

CHANNELS = {"smtp": "邮件", "sms": "短信", "webhook": "Webhook", "command": "命令", "log": "日志"}
LEVELS = {1: "预警", 2: "黄牌", 3: "红牌", 4: "严重违规"}


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    np = sub.add_parser("notify", help="notifications to people (mail, SMS): the dead-letter list and retries")
    ns = np.add_subparsers(dest="notify_command", required=True)
    sp = add("dead-letters", "notifications that still failed after their retries (reads only)", ns)
    sp.add_argument("--all", action="store_true", help="also the ones delivered since by a retry")
    sp = add("retry", "send dead letters again (to the person's current address), with the configured retries", ns)
    sp.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids (`fednode notify dead-letters`)")
    sp.add_argument("--all", action="store_true", help="every dead letter still waiting")


@command("notify dead-letters")
def cmd_dead_letters(args: argparse.Namespace) -> int:
    home = open_home(args)
    try:
        r = app.list_dead_letters(home, include_sent=args.all)
    finally:
        home.close()

    def human() -> str:
        rows = r["letters"]
        if not rows:
            return "没有投递失败的通知。"
        table = text_table(["编号", "预警", "级别", "接收人", "方式", "地址", "尝试", "最后错误", "状态"], [
            [str(x["id"]), x["alert_id"], LEVELS.get(x["level"], str(x["level"] or "")), x["name"] or x["recipient"],
             CHANNELS.get(x["channel"], x["channel"]), x["address"] or "（无）", str(x["attempts"]),
             _short(x["last_error"]), "待重发" if x["state"] == "dead" else f"已重发（{x['resolved_by']}）"]
            for x in rows])
        return (f"{table}\n共 {r['dead']} 条待重发；排除原因后重发：fednode notify retry DIR ID…|--all"
                if r["dead"] else table)

    emit(args, r, human)
    return 0


@command("notify retry")
def cmd_retry(args: argparse.Namespace) -> int:
    home = open_home(args)
    r = app.retry(home, args.ids, args.all, args.by if isinstance(args.by, dict) else None)

    def human() -> str:
        lines = [f"{x['id']}  {x['name']}  {CHANNELS.get(x['channel'], x['channel'])} {x['address'] or '（无地址）'}："
                 + ("已送达" if x["outcome"] == "sent" else f"仍失败（{x['attempts']} 次）：{_short(x['error'])}")
                 for x in r["letters"]]
        return "\n".join([*lines, f"重发 {r['retried']} 条：送达 {r['sent']}，仍失败 {r['failed']}"])

    emit(args, r, human)
    return 0 if r["failed"] == 0 else 1


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"
