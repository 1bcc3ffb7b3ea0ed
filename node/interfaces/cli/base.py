"""The CLI's registry and helpers: @command, emit (--json or human), open_home. Parse, call, render."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from node.core.home import Home, resolve_dir
from node.core.times import iso_us

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
    return iso_us(us) or "-"  # ISO 8601 with +08:00, as in the logs and the alerts (node/core/times.py)


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


# ---- who acts ------------------------------------------------------------------------------------------------


def read_password(args: argparse.Namespace, login: str, *, prompt: str = "") -> str | None:
    """The password of ``--password-file`` (``-``: standard input), else a prompt on a terminal, else None.
    Never from argv or the environment: both are visible to other users (/proc/*/cmdline, environ)."""
    import getpass
    import os

    path = getattr(args, "password_file", None)
    if path:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.readline()
            if os.stat(path).st_mode & 0o077:
                print(f"fednode: warning: {path} can be read by other users; chmod 600 it", file=sys.stderr)
        return text.rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(prompt or f"{login} 的口令: ")
    return None


def session_path(home: Home, login: str) -> Any:
    return home.dir / "sessions" / login


def auth_of(args: argparse.Namespace, home: Home) -> dict[str, Any]:
    """``auth`` for node/app/people.py: ``--as LOGIN`` (or $FEDNODE_USER) with a password or the session
    of `fednode login`; without them the OS operator (root on the box: 系统管理员 + 只读)."""
    import getpass
    import os

    login = (getattr(args, "as_login", None) or os.environ.get("FEDNODE_USER", "")).strip()
    if not login:
        try:
            return {"os_user": getpass.getuser()}
        except (KeyError, OSError):
            return {"os_user": f"uid{os.getuid()}"}
    if not getattr(args, "password_file", None):
        try:
            token = session_path(home, login).read_text(encoding="utf-8").strip()
        except OSError:
            token = ""
        if token:
            return {"login": login, "token": token}
    password = read_password(args, login)
    if password is None:
        from node.core.errors import UsageError

        raise UsageError(f"no password for {login}",
                         fix=f"sign in first (`fednode login DIR --as {login}`), or give --password-file F (- = stdin)")
    return {"login": login, "password": password}
