"""node.toml: read, validated, with errors that name the file, the field and the fix.

The sections and keys are described once, in node.configschema (type, default, range, meaning; the
reference docs/configuration.md is generated from it): this module reads [node] [store] [link]
[admin] [log] [reconcile] with it, `fednode init` writes them (mode 0600 in a 0700 home: it may hold
database passwords) and `load` checks them. Unknown fields and sections are errors (a typo must not
be silently ignored), with a "did you mean" when one is close. ``check`` returns every problem
(``Problem``: file, section, field, message, fix); ``load`` raises the first. The sections owned by
other parts of fednode (FREE_SECTIONS) are validated by node.configcheck.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.core import configschema as schema
from node.core.codes import parse_code
from node.core.configschema import did_you_mean, unknown_key_fix
from node.core.errors import ConfigError, UsageError

CONFIG_NAME = "node.toml"


@dataclass
class Config:
    path: Path
    code: str
    name: str
    level: str
    store_url: str = schema.default("store", "url")
    listen: str = schema.default("link", "listen")  # host:port the node serves its children on ("" = no children)
    parent: str = schema.default("link", "parent")  # host:port of the parent ("" = the province, no parent)
    parent_code: str = schema.default("link", "parent_code")
    admin_socket: str = schema.default("admin", "socket")
    log_level: str = schema.default("log", "level")
    log_format: str = schema.default("log", "format")  # auto | json | console
    reconcile_cron: str = schema.default("reconcile", "cron")
    reconcile_jitter_s: int = schema.default("reconcile", "jitter_s")
    # records per batch and batches in flight per link: bigger batches amortise the per-message cost of
    # gRPC, the database thread hop and the commit (4000 cut a relay's CPU per record by ~18% against
    # 1000 in `fednode bench`); memory per link is about window x batch x record size
    batch_records: int = schema.default("link", "batch_records")
    window: int = schema.default("link", "window")
    compression: str = schema.default("link", "compression")  # "zstd" | "none" (node/link/packing.py)
    receive_budget_mb: int = schema.default("link", "receive_budget_mb")  # all links together (transport.py)
    # a restarted node whose parent cannot be reached appends after this long, if its own logs are not
    # behind what it last recorded outside the store (own-heads.json): see node/runtime/process.py
    recover_wait_s: int = schema.default("link", "recover_wait_s")
    parent_down_unhealthy_s: int = schema.default("link", "parent_down_unhealthy_s")
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.path.parent


# (section, key) -> the Config attribute it sets; the key's type, range and fix are in node.configschema
FIELDS: dict[tuple[str, str], str] = {
    ("node", "code"): "code",
    ("node", "name"): "name",
    ("node", "level"): "level",
    ("store", "url"): "store_url",
    ("link", "listen"): "listen",
    ("link", "parent"): "parent",
    ("link", "parent_code"): "parent_code",
    ("link", "batch_records"): "batch_records",
    ("link", "window"): "window",
    ("link", "compression"): "compression",
    ("link", "receive_budget_mb"): "receive_budget_mb",
    ("link", "recover_wait_s"): "recover_wait_s",
    ("link", "parent_down_unhealthy_s"): "parent_down_unhealthy_s",
    ("admin", "socket"): "admin_socket",
    ("log", "level"): "log_level",
    ("log", "format"): "log_format",
    ("reconcile", "cron"): "reconcile_cron",
    ("reconcile", "jitter_s"): "reconcile_jitter_s",
}
REQUIRED = {(s, k.name) for s in schema.NODE_CONFIG_SECTIONS for k in schema.SECTIONS[s].keys if k.required}
# sections owned by other parts of fednode (adapters, rules, notifiers...): validated by node.configcheck
FREE_SECTIONS = set(schema.TOP_LEVEL) - set(schema.NODE_CONFIG_SECTIONS)


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
    known_sections = set(schema.TOP_LEVEL)
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
        spec = schema.SECTIONS[section]
        for key, value in body.items():
            if key not in spec.known:
                problems.append(problem(section, key, f"{path}: unknown field {section}.{key}",
                                        unknown_key_fix(key, spec.known)))
                continue
            why = spec.key(key).problem(value)
            if why:
                problems.append(problem(section, key, f"{path}: {section}.{key} = {value!r} {why}", spec.key(key).fix))
            else:
                values[FIELDS[(section, key)]] = value
    for section, key in sorted(REQUIRED):
        if FIELDS[(section, key)] not in values and not any(p.section == section and p.field == key for p in problems):
            problems.append(problem(section, key, f"{path}: missing field {section}.{key}",
                                    f"add it under [{section}]: {schema.SECTIONS[section].key(key).fix.removeprefix('use ')}"))
    if problems:
        return None, problems
    cfg = Config(path=path, **values, sections={k: v for k, v in data.items() if k in FREE_SECTIONS})
    if parse_code(cfg.code).level != cfg.level and cfg.level != "department":
        return None, [problem("node", "level",
                              f"{path}: node.level = {cfg.level!r} does not match code {cfg.code} "
                              f"(a {parse_code(cfg.code).level} code)",
                              f"set level = \"{parse_code(cfg.code).level}\"")]
    return cfg, []


def partial(path: Path) -> Config | None:
    """The sections other modules own, from a node.toml whose own sections have problems (so that
    `fednode check` lists theirs too); None when the file cannot be read as TOML."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return Config(path=path, code="", name="", level="",
                  sections={k: v for k, v in data.items() if k in FREE_SECTIONS})


def load(path: Path) -> Config:
    """node.toml, validated; the first problem is raised as a ConfigError (exit status 2)."""
    cfg, problems = check(path)
    if problems:
        raise problems[0].error()
    assert cfg is not None
    return cfg


_toml_value = schema.toml_value

HEADER = ("# fednode node configuration. Every section and key (type, default, range, meaning) is described in\n"
          f"# {schema.DOC_PATH} (doc/{schema.DOC_PATH} in the install bundle; `python -m node.core.configschema`\n"
          "# prints it). `fednode check DIR` validates this file without starting the node.")


def render(cfg: Config) -> str:
    sections: dict[str, list[str]] = {}
    for (section, key), attr in FIELDS.items():
        sections.setdefault(section, []).append(f"{key} = {_toml_value(getattr(cfg, attr))}")
    out = [HEADER]
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
