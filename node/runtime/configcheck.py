"""The whole configuration of a node home, validated in one place: `fednode run` (before it starts
anything) and `fednode check DIR` (without starting).

Rules of this module:
- every section is checked against node.configschema, the one description of node.toml (type,
  default, range and meaning of each key; docs/configuration.md is generated from it): unknown keys
  are errors, with a "did you mean" when one is close (difflib), and every unknown key and every
  refused value is reported, so one `fednode check` lists every problem (``Problem``: file, section,
  field, message, fix);
- then the code that uses a section checks what ties its keys together, on its known keys, when no
  value was refused: node.config for [node] [store] [link] [admin] [log] [reconcile]; [rules] and
  [calendar]: node.commands.alerts, [notify]: node.notify, [metrics]: node.metrics, [stats]:
  node.stats.config, [tickets]: node.tickets.desk, [adapters.*]: adapters.base and the adapter's own
  constructor. One rule, one place: this module calls them, it never re-implements what they accept;
- a problem stops `fednode run` with exit status 2 (a typo must never switch a service off with only
  a log line); SIGHUP applies a new node.toml only when it has no problem;
- a feature module of node.commands may add ``CONFIG_CHECKS = {"section": fn}`` (fn(config) raises a
  FednodeError) for a section no built-in check knows (the section must also be in the schema).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.core import config as config_mod
from node.core import configschema as schema
from node.core.config import Config, Problem
from node.core.errors import ConfigError, FednodeError

Check = Callable[[Config], list[Problem]]


def _problem(cfg: Config, section: str, e: FednodeError, known: Any = ()) -> Problem:
    message = e.message if str(cfg.path) in e.message else f"{cfg.path} [{section}]: {e.message}"
    return Problem(str(cfg.path), section, _field_of(e.message, section, known), message, e.fix)


def _field_of(message: str, section: str, known: Any) -> str:
    """The field a loader's message names: "rules.scope = ..." or a known key mentioned in it."""
    m = re.search(rf"\b{re.escape(section)}\.([A-Za-z0-9_.]+)", message)
    if m:
        return m.group(1).rstrip(".")
    for key in sorted(known, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return str(key)
    return str(next(iter(known))) if len(known) == 1 else ""


def _table(cfg: Config, section: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    body = cfg.sections.get(section)
    if body is None:
        return None, []
    if not isinstance(body, dict):
        return None, [Problem(str(cfg.path), section, "", f"{cfg.path}: [{section}] must be a table",
                              f"write it as [{section}] with key = value lines")]
    return body, []


def _all_keys(section_id: str) -> set[str]:
    """Every key of a section and of the tables under it (to find the field a loader's message names)."""
    spec = schema.SECTIONS[section_id]
    out = set(spec.known)
    for key in spec.keys:
        if key.table:
            out |= _all_keys(key.table)
    return out


def _with_schema(cfg: Config, section: str, loader: Callable[[dict[str, Any]], Any]) -> list[Problem]:
    """Check [section] against the schema (every unknown key, every refused value), then, when no value
    was refused, run its owner's ``loader`` on the known keys for the rules that tie keys together."""
    body, problems = _table(cfg, section)
    if body is None:
        return problems
    kept, issues = schema.split(section, body)
    problems += [Problem(str(cfg.path), section, i.field, f"{cfg.path}: {i.message}", i.fix) for i in issues]
    if any(not i.unknown for i in issues):
        return problems  # the loader would only repeat the first of them
    try:
        loader(kept)
    except FednodeError as e:
        problems.append(_problem(cfg, section, e, _all_keys(section)))
    return problems


# ---- one check per section ----------------------------------------------------------------------------


def _check_rules(cfg: Config) -> list[Problem]:
    from node.features.rules.settings import RulesSettings

    return _with_schema(cfg, "rules", lambda kept: RulesSettings.from_sections({"rules": kept}, where=str(cfg.path)))


def _check_calendar(cfg: Config) -> list[Problem]:
    from node.features.rules.overrides import stored_overrides
    from node.features.rules.settings import RulesSettings

    problems = _with_schema(cfg, "calendar",
                            lambda kept: RulesSettings.from_sections({"calendar": kept}, where=str(cfg.path)))
    try:
        stored_overrides(cfg.home)  # the imported holidays the rules count working days with
    except FednodeError as e:
        problems.append(_problem(cfg, "calendar", e))
    return problems


def _check_notify(cfg: Config) -> list[Problem]:
    from node.features.notify import NotifyConfig

    def load(kept: dict[str, Any]) -> None:  # the secret files too: present, and mode 0600
        NotifyConfig.from_section(kept, where=f"{cfg.path} [notify]", base=cfg.home).check_secrets()

    return _with_schema(cfg, "notify", load)


def _check_metrics(cfg: Config) -> list[Problem]:
    from node.features import metrics

    return _with_schema(cfg, "metrics", lambda kept: metrics.parse_config(cfg.path, kept))


def _check_stats(cfg: Config) -> list[Problem]:
    from node.features.stats.config import StatsConfig

    return _with_schema(cfg, "stats", lambda kept: StatsConfig.from_section(kept, source=str(cfg.path)))


def _check_tickets(cfg: Config) -> list[Problem]:
    from node.features.tickets.desk import TicketsConfig

    return _with_schema(cfg, "tickets", lambda kept: TicketsConfig.from_section(
        kept, source=str(cfg.path), base=cfg.home).calendar())


def _check_people(cfg: Config) -> list[Problem]:
    from node.features.people.accounts import LoginPolicy

    return _with_schema(cfg, "people", lambda kept: LoginPolicy.of_sections({"people": kept}))


def _check_adapters(cfg: Config) -> list[Problem]:
    from adapters.base import PUSH_KEYS, check_keys, config_keys, make_adapter
    from adapters.reader import reads_in_process

    body, problems = _table(cfg, "adapters")
    if body is None:
        return problems
    file = str(cfg.path)
    for name, section in body.items():
        if not isinstance(section, dict):
            problems.append(Problem(file, "adapters", name, f"{file}: adapters.{name} must be a table",
                                    f"write it as [adapters.{name}] with type = ... and its settings"))
            continue
        where = f"adapters.{name}"
        found = [Problem(file, where, key, f"{file} {msg}", fix) for key, msg, fix in check_keys(name, section)]
        problems += found
        if found:
            continue
        try:
            if name == "push":
                from adapters import push

                if section.get("listen"):
                    push.check_listen(section["listen"])
                continue
            if section.get("enabled", True) is False:
                continue
            ad = make_adapter(name, section, cfg.home)
            try:
                reads_in_process(name, section, ad)
            finally:
                close = getattr(ad, "close", None)
                if close is not None:
                    close()
        except FednodeError as e:
            known = {*section, *(PUSH_KEYS if name == "push" else config_keys(section.get("type")) or {})}
            problems.append(Problem(file, where, _field_of(e.message, where, known), f"{file} {e.message}", e.fix))
        except (ValueError, TypeError, OSError) as e:
            problems.append(Problem(file, where, "", f"{file} [adapters.{name}]: cannot be used ({type(e).__name__}: {e})",
                                    f"check the values of [adapters.{name}] (types and paths)"))
    return problems


CHECKS: dict[str, Check] = {
    "rules": _check_rules,
    "calendar": _check_calendar,
    "notify": _check_notify,
    "metrics": _check_metrics,
    "stats": _check_stats,
    "tickets": _check_tickets,
    "people": _check_people,
    "adapters": _check_adapters,
}


def _feature_checks() -> dict[str, Callable[[Config], Any]]:
    from node.runtime import services

    out: dict[str, Callable[[Config], Any]] = {}
    for module in services.MODULES:
        out.update(getattr(module, "CONFIG_CHECKS", {}) or {})
    return out


# ---- the whole configuration ---------------------------------------------------------------------------


def check_config(cfg: Config) -> list[Problem]:
    """Every problem of the sections node.config leaves to their owners (node.toml itself is valid)."""
    problems: list[Problem] = []
    for section, fn in CHECKS.items():
        try:
            problems += fn(cfg)
        except FednodeError as e:  # a loader refusing something the per-key pass let through
            problems.append(_problem(cfg, section, e))
    for section, extra in _feature_checks().items():
        if section in CHECKS or section not in cfg.sections:
            continue
        try:
            extra(cfg)
        except FednodeError as e:
            problems.append(_problem(cfg, section, e))
    return problems


def check_home(directory: Path) -> tuple[Config | None, list[Problem]]:
    """node.toml (DIR/node.toml, or the file itself) and every section of it, the other sections'
    problems too when node.config's own have some; no store, no keys, no network."""
    path = Path(directory)
    cfg, problems = config_mod.check(path if path.is_file() else path / config_mod.CONFIG_NAME)
    if cfg is None:
        rest = config_mod.partial(path) if problems and problems[0].section else None
        return None, problems + (check_config(rest) if rest is not None else [])
    return cfg, check_config(cfg)


def require_valid(cfg: Config) -> None:
    """Raise the first problem (exit status 2), saying how many more `fednode check` lists."""
    problems = check_config(cfg)
    if problems:
        first = problems[0]
        more = len(problems) - 1
        raise ConfigError(first.message, fix=first.fix + (
            f" ({more} more problem{'s' if more > 1 else ''}: `fednode check {cfg.home}` lists them all)" if more else ""))
