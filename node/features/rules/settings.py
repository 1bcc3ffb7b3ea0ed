"""[rules] and [calendar] of node.toml, validated; the rules' constants (cursor keys, kinds read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.core import domain
from node.core.calendar import OfficeHours
from node.core.errors import ConfigError, FednodeError
from node.features.rules import RulesConfig
from node.features.rules.engine import INPUT_KINDS, LEVEL_NAMES

CURSOR_KEY = "rules.cursor"
CONFIG_KEY = "rules.config"  # fingerprint of the rules configuration the archive was written with
JOB_ID = "rules.scan"
RULE_KINDS = (*INPUT_KINDS, "ticket.issue", "ticket.conclude")  # what the rules read, besides alerts
STEP_KINDS = (*RULE_KINDS, "alert")
ALERT_FIELDS = tuple(domain.SCHEMAS["alert"])
LEVELS_BY_NAME = {"warn": 1, "yellow": 2, "red": 3, "serious": 4, **{v: k for k, v in LEVEL_NAMES.items()}}
_RULES_KEYS = {"enabled", "scope", "scan_interval_s", "batch", "default", "item_types", "anomaly_levels"}
SCOPES = ("own", "subtree")
_CALENDAR_KEYS = {"office_hours"}


class RulesError(FednodeError):
    code = "rules"


# ---- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulesSettings:
    enabled: bool = True
    scope: str = "own"  # "own": cases born at this node; "subtree": also every case its children send up
    scan_interval_s: float = 60.0
    batch: int = 1000  # records per background-thread turn: bounds the memory a batch takes
    engine: RulesConfig = field(default_factory=RulesConfig)
    office_hours: OfficeHours = field(default_factory=OfficeHours)

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any], *, where: str = "node.toml") -> RulesSettings:
        rules = dict(sections.get("rules") or {})
        cal = dict(sections.get("calendar") or {})
        for name, section, known in (("rules", rules, _RULES_KEYS), ("calendar", cal, _CALENDAR_KEYS)):
            unknown = set(section) - known
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)} in [{name}]",
                                  fix=f"use {sorted(known)}")
        enabled = rules.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: rules.enabled = {enabled!r} must be true or false", fix="enabled = false")
        scope = rules.get("scope", "own")
        if scope not in SCOPES:
            raise ConfigError(f"{where}: rules.scope = {scope!r} is not valid",
                              fix='"own" (cases born here) or "subtree" (also the children\'s cases, when they '
                                  'do not run the rules themselves)')
        interval = rules.get("scan_interval_s", 60)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.5 <= interval <= 86400:
            raise ConfigError(f"{where}: rules.scan_interval_s = {interval!r} is not valid",
                              fix="seconds between scans, 0.5..86400 (default 60)")
        batch = rules.get("batch", 1000)
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100_000:
            raise ConfigError(f"{where}: rules.batch = {batch!r} is not valid", fix="records per batch, 1..100000")
        engine = RulesConfig.from_dict(
            {k: rules[k] for k in ("default", "item_types", "anomaly_levels") if k in rules}, source=f"{where} [rules]"
        )
        hours_text = cal.get("office_hours")
        if hours_text is not None and not isinstance(hours_text, str):
            raise ConfigError(f"{where}: calendar.office_hours must be a string", fix='"08:30-12:00,13:30-17:30"')
        hours = OfficeHours.parse(hours_text) if hours_text else OfficeHours()
        return cls(enabled, scope, float(interval), batch, engine, hours)
