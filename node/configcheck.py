"""The whole configuration of a node home, validated in one place: `fednode run` (before it starts
anything) and `fednode check DIR` (without starting).

Rules of this module:
- every section of node.toml is checked by the code that uses it: node.config for [node] [store]
  [link] [admin] [log] [reconcile]; each service's own loader for its section ([rules] and [calendar]:
  node.commands.alerts, [notify]: node.notify, [metrics]: node.metrics, [stats]: node.stats.config,
  [tickets]: node.tickets.desk, [adapters.*]: adapters.base and the adapter's own constructor). One
  rule, one place: this module calls them, it never re-implements what they accept;
- unknown keys are errors, with a "did you mean" when one is close (difflib), and every one of them is
  reported; a section's loader then runs on its known keys and reports its first problem, so one
  `fednode check` lists every section that is wrong (``Problem``: file, section, field, message, fix);
- a problem stops `fednode run` with exit status 2 (a typo must never switch a service off with only
  a log line); SIGHUP applies a new node.toml only when it has no problem;
- a feature module of node.commands may add ``CONFIG_CHECKS = {"section": fn}`` (fn(config) raises a
  FednodeError) for a section no built-in check knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node import config as config_mod
from node.config import Config, Problem, unknown_key_fix
from node.errors import ConfigError, FednodeError

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


def _known_keys(cfg: Config, section: str, body: Mapping[str, Any], known: Any, prefix: str = ""
                ) -> tuple[dict[str, Any], list[Problem]]:
    """``body`` without its unknown keys, and a problem for each of them."""
    kept: dict[str, Any] = {}
    problems = []
    for key, value in body.items():
        if key in known:
            kept[key] = value
        else:
            dotted = f"{prefix}{key}"
            problems.append(Problem(str(cfg.path), section, dotted, f"{cfg.path}: unknown field {section}.{dotted}",
                                    unknown_key_fix(key, known)))
    return kept, problems


# ---- one check per section ----------------------------------------------------------------------------


def _check_rules(cfg: Config) -> list[Problem]:
    from node.commands.alerts import _RULES_KEYS, RulesSettings
    from node.rules.config import DEFAULT_ANOMALY_LEVELS, THRESHOLD_KEYS

    body, problems = _table(cfg, "rules")
    if body is None:
        return problems
    kept, problems = _known_keys(cfg, "rules", body, _RULES_KEYS)
    # the thresholds' own tables: [rules.default], [rules.item_types.CODE], [rules.anomaly_levels]
    if isinstance(kept.get("default"), dict):
        kept["default"], more = _known_keys(cfg, "rules", kept["default"], THRESHOLD_KEYS, "default.")
        problems += more
    if isinstance(kept.get("item_types"), dict):
        types = {}
        for code, t in kept["item_types"].items():
            if isinstance(t, dict):
                t, more = _known_keys(cfg, "rules", t, THRESHOLD_KEYS, f"item_types.{code}.")
                problems += more
            types[code] = t
        kept["item_types"] = types
    if isinstance(kept.get("anomaly_levels"), dict):
        kept["anomaly_levels"], more = _known_keys(cfg, "rules", kept["anomaly_levels"], DEFAULT_ANOMALY_LEVELS,
                                                   "anomaly_levels.")
        problems += more
    try:
        RulesSettings.from_sections({"rules": kept}, where=str(cfg.path))
    except FednodeError as e:
        problems.append(_problem(cfg, "rules", e, {*_RULES_KEYS, *THRESHOLD_KEYS}))
    return problems


def _check_calendar(cfg: Config) -> list[Problem]:
    from node.commands.alerts import _CALENDAR_KEYS, RulesSettings, stored_overrides

    body, problems = _table(cfg, "calendar")
    if body is not None:
        kept, problems = _known_keys(cfg, "calendar", body, _CALENDAR_KEYS)
        try:
            RulesSettings.from_sections({"calendar": kept}, where=str(cfg.path))
        except FednodeError as e:
            problems.append(_problem(cfg, "calendar", e, _CALENDAR_KEYS))
    try:
        stored_overrides(cfg.home)  # the imported holidays the rules count working days with
    except FednodeError as e:
        problems.append(_problem(cfg, "calendar", e))
    return problems


def _check_notify(cfg: Config) -> list[Problem]:
    from node.notify import KEYS, NotifyConfig

    body, problems = _table(cfg, "notify")
    if body is None:
        return problems
    kept, problems = _known_keys(cfg, "notify", body, KEYS)
    try:
        NotifyConfig.from_section(kept, where=f"{cfg.path} [notify]")
    except FednodeError as e:
        problems.append(_problem(cfg, "notify", e, KEYS))
    return problems


def _check_metrics(cfg: Config) -> list[Problem]:
    from node import metrics

    body, problems = _table(cfg, "metrics")
    if body is None:
        return problems
    kept, problems = _known_keys(cfg, "metrics", body, {"listen"})
    try:
        metrics.parse_config(cfg.path, kept)
    except FednodeError as e:
        problems.append(_problem(cfg, "metrics", e, {"listen"}))
    return problems


def _check_stats(cfg: Config) -> list[Problem]:
    from node.stats.config import BAND_KEYS, SUPERVISOR_KEYS, TOP_KEYS, WEIGHT_KEYS, StatsConfig

    body, problems = _table(cfg, "stats")
    if body is None:
        return problems
    kept, problems = _known_keys(cfg, "stats", body, TOP_KEYS)
    for sub, known in (("weights", WEIGHT_KEYS), ("bands", BAND_KEYS), ("supervisors", SUPERVISOR_KEYS)):
        if isinstance(kept.get(sub), dict):
            kept[sub], more = _known_keys(cfg, "stats", kept[sub], known, f"{sub}.")
            problems += more
    try:
        StatsConfig.from_section(kept, source=str(cfg.path))
    except FednodeError as e:
        problems.append(_problem(cfg, "stats", e, {*TOP_KEYS, *SUPERVISOR_KEYS}))
    return problems


def _check_tickets(cfg: Config) -> list[Problem]:
    from node.tickets.desk import _CONFIG_KEYS, TicketsConfig

    body, problems = _table(cfg, "tickets")
    if body is None:
        return problems
    kept, problems = _known_keys(cfg, "tickets", body, _CONFIG_KEYS)
    try:
        TicketsConfig.from_section(kept, source=str(cfg.path), base=cfg.home).calendar()
    except FednodeError as e:
        problems.append(_problem(cfg, "tickets", e, _CONFIG_KEYS))
    return problems


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
    "adapters": _check_adapters,
}


def _feature_checks() -> dict[str, Callable[[Config], Any]]:
    from node.commands import load_all

    out: dict[str, Callable[[Config], Any]] = {}
    for module in load_all():
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
    """node.toml and every section of it; no store, no keys, no network."""
    cfg, problems = config_mod.check(Path(directory) / config_mod.CONFIG_NAME)
    if cfg is None:
        return None, problems
    return cfg, check_config(cfg)


def require_valid(cfg: Config) -> None:
    """Raise the first problem (exit status 2), saying how many more `fednode check` lists."""
    problems = check_config(cfg)
    if problems:
        first = problems[0]
        more = len(problems) - 1
        raise ConfigError(first.message, fix=first.fix + (
            f" ({more} more problem{'s' if more > 1 else ''}: `fednode check {cfg.home}` lists them all)" if more else ""))
