"""The CLI's registry and helpers: @command, emit (--json or human), open_home. Parse, call, render."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from node.core.home import Home, resolve_dir

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def emit(args: argparse.Namespace, data: Any, human: str | Callable[[], str] | None = None) -> None:
    if getattr(args, "json", False) or human is None:
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        print(human() if callable(human) else human)


def open_home(args: argparse.Namespace) -> Home:
    return Home(resolve_dir(args.dir))


def _fmt_time(us: int | None) -> str:
    if not us:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def progress_line(enabled: bool, newline_at_end: bool = True) -> Callable[[str, int, int, str], None]:
    """A progress line on stderr ("\\rLABEL: DONE/TOTAL UNIT"), at most twice a second and at the end."""
    last = [0.0]

    def show(label: str, done: int, total: int, unit: str) -> None:
        now = time.monotonic()
        if enabled and (now - last[0] > 0.5 or done == total):
            last[0] = now
            print(f"\r{label}: {done}/{total} {unit}", end="\n" if newline_at_end and done >= total else "",
                  file=sys.stderr, flush=True)

    return show
