"""`fednode completion bash|zsh|tcsh`: the shell completion script, generated from the parser by shtab.

Static: the script holds every command, option and choice, so pressing Tab never starts Python (which
takes a second to import fednode). Regenerate it after an upgrade (deploy/README.md, "Installing a node").
"""

from __future__ import annotations

import argparse
from typing import Any

import shtab

from node.interfaces.cli.base import command, emit

SHELLS = ("bash", "zsh", "tcsh")


_COMMANDS: list[Any] = []  # the `fednode` subcommands action, kept when the parser is built


def add_parsers(sub: Any, add: Any) -> None:
    _COMMANDS[:] = [sub]
    sp = add("completion", "print the shell completion script: "
             "fednode completion bash > /usr/share/bash-completion/completions/fednode", dir_arg=False)
    sp.add_argument("shell", choices=SHELLS)


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Node homes complete as directories, files (requests, bundles, inputs) as files."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _mark_paths(child)
        elif action.dest == "dir":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.dest in ("csr", "bundle", "files", "proof", "root", "markdown", "password_file",
                             "new_password_file"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]


def script(shell: str) -> str:
    """The completion script for every command the parser was built with (node/interfaces/cli/main.py
    registers this module like the others; importing main from here would be a cycle)."""
    parser = argparse.ArgumentParser(prog="fednode")
    parser.add_argument("--version", action="store_true", help="print the version")
    parser._add_action(_COMMANDS[0])
    _mark_paths(parser)
    return str(shtab.complete(parser, shell=shell))


@command("completion")
def cmd_completion(args: argparse.Namespace) -> int:
    text = script(args.shell)
    emit(args, {"shell": args.shell, "script": text}, lambda: text.rstrip("\n"))
    return 0
