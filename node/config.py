"""node.toml: read, validated, with errors that name the file, the field and the fix.

The table of fields below is the single description of the file; `fednode init` writes it and
`load` checks it. Unknown fields are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import tomllib
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


def load(path: Path) -> Config:
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"{path}: no such file",
            fix="create the node home with `fednode init DIR --code CODE --name NAME --level LEVEL`",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})", fix="fix the syntax at the position shown") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text", fix="save the file as UTF-8") from None
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section in FREE_SECTIONS:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: [{section}] must be a table", fix=f"write it as [{section}] with key = value lines")
        for key, value in body.items():
            spec = FIELDS.get((section, key))
            if spec is None:
                known = sorted(k for s, k in FIELDS if s == section)
                raise ConfigError(
                    f"{path}: unknown field {section}.{key}",
                    fix=f"remove it, or use one of: {', '.join(known)}" if known else f"remove section [{section}]",
                )
            attr, typ, check, fix = spec
            if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
                raise ConfigError(f"{path}: {section}.{key} = {value!r} must be a {typ.__name__}", fix=f"use {fix}")
            if check is not None and not check(value):
                raise ConfigError(f"{path}: {section}.{key} = {value!r} is not valid", fix=f"use {fix}")
            values[attr] = value
    for section, key in REQUIRED:
        if FIELDS[(section, key)][0] not in values:
            raise ConfigError(f"{path}: missing field {section}.{key}", fix=f"add it under [{section}]: {FIELDS[(section, key)][3]}")
    cfg = Config(path=path, **values, sections={k: v for k, v in data.items() if k in FREE_SECTIONS})
    if parse_code(cfg.code).level != cfg.level and not (cfg.level == "department"):
        raise ConfigError(
            f"{path}: node.level = {cfg.level!r} does not match code {cfg.code} (a {parse_code(cfg.code).level} code)",
            fix=f"set level = \"{parse_code(cfg.code).level}\"",
        )
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
    if cfg.path.exists():
        raise UsageError(f"{cfg.path} already exists", fix="choose an empty directory, or edit the file")
    cfg.path.write_text(render(cfg), encoding="utf-8")


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
