"""node.toml: read, validated, with errors that name the file, the field and the fix.

The table of fields below is the single description of the file; `fednode init` writes it (mode
0600 in a 0700 home: it may hold database passwords) and `load` checks it. Unknown fields and sections
are errors (a typo must not be silently ignored), with a "did you mean" when one is close. ``check``
returns every problem (``Problem``: file, section, field, message, fix); ``load`` raises the first.
The sections owned by other parts of fednode (FREE_SECTIONS) are validated by node.configcheck.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.codes import LEVELS, is_code, parse_code
from node.errors import ConfigError, UsageError

CONFIG_NAME = "node.toml"


@dataclass
class Config:
    path: Path
    code: str
    name: str
    level: str
    store_url: str = "sqlite:///store.db"
    listen: str = ""  # host:port the node serves its children on ("" = no children)
    parent: str = ""  # host:port of the parent ("" = the province, no parent)
    parent_code: str = ""
    admin_socket: str = "admin.sock"
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    reconcile_cron: str = "0 2 * * *"
    reconcile_jitter_s: int = 600
    # records per batch and batches in flight per link: bigger batches amortise the per-message cost of
    # gRPC, the database thread hop and the commit (4000 cut a relay's CPU per record by ~18% against
    # 1000 in `fednode bench`); memory per link is about window x batch x record size
    batch_records: int = 4000
    window: int = 6
    # a restarted node whose parent cannot be reached appends after this long, if its own logs are not
    # behind what it last recorded outside the store (own-heads.json): see node/runtime.py
    recover_wait_s: int = 30
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.path.parent


def _hostport(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


# (section, key) -> (attribute, type, validator or None, fix text)
FIELDS: dict[tuple[str, str], tuple[str, type, Any, str]] = {
    ("node", "code"): ("code", str, is_code, "a 6-digit division code such as 320303, or 320300-GA"),
    ("node", "name"): ("name", str, None, "the jurisdiction's name, e.g. 云龙区"),
    ("node", "level"): ("level", str, lambda v: v in LEVELS, f"one of {', '.join(LEVELS)}"),
    ("store", "url"): ("store_url", str, lambda v: v.startswith(("sqlite:", "postgresql")),
                       "sqlite:///store.db (relative to the node home) or postgresql://user@host/db"),
    ("link", "listen"): ("listen", str, lambda v: v == "" or _hostport(v), "HOST:PORT, e.g. 0.0.0.0:7700"),
    ("link", "parent"): ("parent", str, lambda v: v == "" or _hostport(v), "HOST:PORT of the parent node"),
    ("link", "parent_code"): ("parent_code", str, lambda v: v == "" or is_code(v), "the parent's node code"),
    ("link", "batch_records"): ("batch_records", int, lambda v: 100 <= v <= 20_000, "records per batch, 100..20000"),
    ("link", "window"): ("window", int, lambda v: 1 <= v <= 16, "batches in flight per link, 1..16"),
    ("link", "recover_wait_s"): ("recover_wait_s", int, lambda v: 0 <= v <= 86400,
                                 "seconds a restarted node waits for its parent before it appends, 0..86400"),
    ("admin", "socket"): ("admin_socket", str, None, "a path for the admin Unix socket"),
    ("log", "level"): ("log_level", str, lambda v: v in ("debug", "info", "warning", "error"),
                       "debug, info, warning or error"),
    ("log", "format"): ("log_format", str, lambda v: v in ("auto", "json", "console"), "auto, json or console"),
    ("reconcile", "cron"): ("reconcile_cron", str, lambda v: len(v.split()) == 5,
                            "a 5-field cron expression, e.g. \"0 2 * * *\""),
    ("reconcile", "jitter_s"): ("reconcile_jitter_s", int, lambda v: 0 <= v <= 86400, "seconds, 0..86400"),
}
REQUIRED = {("node", "code"), ("node", "name"), ("node", "level")}
# sections owned by other parts of fednode (adapters, rules, notifiers...): validated there
FREE_SECTIONS = {"adapters", "rules", "notify", "calendar", "tickets", "stats", "metrics"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a configuration: where (file, section, field), what, and the fix."""

    file: str
    section: str
    field: str
    message: str
    fix: str

    def error(self) -> ConfigError:
        return ConfigError(self.message, fix=self.fix)

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "section": self.section, "field": self.field, "error": self.message,
                "fix": self.fix}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the closest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? " if close else ""


def unknown_key_fix(key: str, known: Iterable[str]) -> str:
    known = sorted(set(known))
    return f"{did_you_mean(key, known)}remove it, or use one of: {', '.join(known)}"


def check(path: Path) -> tuple[Config | None, list[Problem]]:
    """Read and validate node.toml; every problem of its own sections, not only the first. The
    sections owned by other parts of fednode are checked by node.configcheck."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    file = str(path)

    def problem(section: str, key: str, message: str, fix: str) -> Problem:
        return Problem(file, section, key, message, fix)

    if not path.exists():
        return None, [problem("", "", f"{path}: no such file",
                              "create the node home with `fednode init DIR --code CODE --name NAME --level LEVEL`")]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        return None, [problem("", "", f"{path}: not valid TOML ({e})", "fix the syntax at the position shown")]
    except UnicodeDecodeError:
        return None, [problem("", "", f"{path}: not UTF-8 text", "save the file as UTF-8")]
    except OSError as e:
        return None, [problem("", "", f"{path}: cannot be read ({e.strerror or e})",
                              "check the file's owner and mode (the node's user reads it; `chmod 600`)")]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    known_sections = {s for s, _k in FIELDS} | FREE_SECTIONS
    for section, body in data.items():
        if section in FREE_SECTIONS:
            continue
        if section not in known_sections:
            problems.append(problem(section, "", f"{path}: unknown section [{section}]",
                                    f"{did_you_mean(section, known_sections)}remove section [{section}], or use one "
                                    f"of: {', '.join(f'[{s}]' for s in sorted(known_sections))}"))
            continue
        if not isinstance(body, dict):
            problems.append(problem(section, "", f"{path}: [{section}] must be a table",
                                    f"write it as [{section}] with key = value lines"))
            continue
        for key, value in body.items():
            spec = FIELDS.get((section, key))
            if spec is None:
                known = sorted(k for s, k in FIELDS if s == section)
                problems.append(problem(section, key, f"{path}: unknown field {section}.{key}", unknown_key_fix(key, known)))
                continue
            attr, typ, valid, fix = spec
            if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
                problems.append(problem(section, key, f"{path}: {section}.{key} = {value!r} must be a {typ.__name__}",
                                        f"use {fix}"))
            elif valid is not None and not valid(value):
                problems.append(problem(section, key, f"{path}: {section}.{key} = {value!r} is not valid", f"use {fix}"))
            else:
                values[attr] = value
    for section, key in sorted(REQUIRED):
        attr = FIELDS[(section, key)][0]
        if attr not in values and not any(p.section == section and p.field == key for p in problems):
            problems.append(problem(section, key, f"{path}: missing field {section}.{key}",
                                    f"add it under [{section}]: {FIELDS[(section, key)][3]}"))
    if problems:
        return None, problems
    cfg = Config(path=path, **values, sections={k: v for k, v in data.items() if k in FREE_SECTIONS})
    if parse_code(cfg.code).level != cfg.level and cfg.level != "department":
        return None, [problem("node", "level",
                              f"{path}: node.level = {cfg.level!r} does not match code {cfg.code} "
                              f"(a {parse_code(cfg.code).level} code)",
                              f"set level = \"{parse_code(cfg.code).level}\"")]
    return cfg, []


def load(path: Path) -> Config:
    """node.toml, validated; the first problem is raised as a ConfigError (exit status 2)."""
    cfg, problems = check(path)
    if problems:
        raise problems[0].error()
    assert cfg is not None
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(cfg: Config) -> str:
    sections: dict[str, list[str]] = {}
    for (section, key), (attr, _t, _c, _f) in FIELDS.items():
        sections.setdefault(section, []).append(f"{key} = {_toml_value(getattr(cfg, attr))}")
    out = ["# fednode node configuration (see README: configuration)."]
    for section, lines in sections.items():
        out.append(f"\n[{section}]")
        out.extend(lines)
    return "\n".join(out) + "\n"


def write(cfg: Config) -> None:
    """Create node.toml (mode 0600: it may hold database passwords) in a node home (made 0700)."""
    if cfg.path.exists():
        raise UsageError(f"{cfg.path} already exists", fix="choose an empty directory, or edit the file")
    with contextlib.suppress(OSError):  # a directory someone else owns stays as it is
        os.chmod(cfg.path.parent, 0o700)
    fd = os.open(cfg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render(cfg))


def set_field(path: Path, section: str, key: str, value: Any) -> None:
    """Rewrite one field in place, keeping every other line (comments, adapter sections) as it is."""
    lines = path.read_text(encoding="utf-8").splitlines()
    new = f"{key} = {_toml_value(value)}"
    current = None
    insert_at = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section and insert_at is None:
                insert_at = i
            current = stripped.strip("[]").strip()
            continue
        if current == section and stripped.split("=", 1)[0].strip() == key:
            lines[i] = new
            break
    else:
        if current == section and insert_at is None:
            insert_at = len(lines)
        if insert_at is None:
            lines += ["", f"[{section}]", new]
        else:
            lines.insert(insert_at, new)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    load(path)  # the result must still be valid
