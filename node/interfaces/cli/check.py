"""`fednode check DIR [--json]`: validate a node home's whole configuration without starting anything.

Everything `fednode run` refuses before it starts, listed at once: every problem of node.toml and of
each service's section (node/runtime/configcheck.py), and every secret another local user could read
(node/core/home.py). DIR may also be a single node.toml file (e.g. an example config): its sections only.
Exit 0 when nothing is wrong, 2 when something is (the same status `run` would exit with).
"""

from __future__ import annotations

import argparse
from typing import Any

from node.core.config import Problem
from node.core.home import Home, exposed_secrets, resolve_dir
from node.interfaces.cli.base import command, emit
from node.runtime import configcheck


def add_parsers(sub: Any, add: Any) -> None:
    add("check", "validate the whole configuration without starting: every problem, with its fix (exit 2 if any)")


def _mode_problems(home: Home) -> list[Problem]:
    return [Problem(str(path), "", "mode", f"{path} is mode {mode:04o}: other local users can read it",
                    f"chmod 600 {path}") for path, mode in exposed_secrets(home)]


@command("check")
def cmd_check(args: argparse.Namespace) -> int:
    target = resolve_dir(args.dir)
    single_file = target.is_file()
    cfg, problems = configcheck.check_home(target) if not single_file else (None, [])
    if single_file:
        from node.core import config as config_mod

        cfg, problems = config_mod.check(target)
        if cfg is not None:
            problems = configcheck.check_config(cfg)
        args.dir = None  # a file, not a node home: nothing for the work log (node/features/worklog.py)
    enrolled = None
    if cfg is not None and not single_file:
        home = Home(target)
        try:
            problems += _mode_problems(home)
            enrolled = home.enrolled
        finally:
            home.close()
    data = {"ok": not problems, "config": str(cfg.path if cfg is not None else target), "enrolled": enrolled,
            "problems": [p.as_dict() for p in problems]}

    def human() -> str:
        if not problems:
            note = "" if enrolled in (None, True) else " (not enrolled yet: `fednode pki request`)"
            return f"{data['config']}: ok{note}"
        lines = [f"{data['config']}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"]
        for p in problems:
            where = f"[{p.section}] {p.field}".strip() if p.section else p.field
            lines.append(f"  {where + ': ' if where else ''}{p.message}")
            if p.fix:
                lines.append(f"      fix: {p.fix}")
        return "\n".join(lines)

    emit(args, data, human)
    return 0 if not problems else 2

