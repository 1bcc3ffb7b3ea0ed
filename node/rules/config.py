"""Thresholds of the rules engine, with the defaults of DOMAIN.md, configurable per item type.

Rules of this module:
- every duration is in days of the item's unit (working days unless the item says ``"day"``);
  the engine converts days to minutes with the clock of the item (450 working minutes a working day
  with default office hours, 1440 minutes a natural day);
- "reached" thresholds (预警) fire when the elapsed time is >= the threshold; "past" thresholds
  (黄牌/红牌, "past the limit", "more than N days past") fire when it is strictly greater, i.e. on the
  first working minute after it;
- ``RulesConfig.for_item_type`` returns the thresholds of an item type, falling back to ``default``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from node.errors import ConfigError

# Levels (records.md `alert.level`)
WARN, YELLOW, RED, SERIOUS = 1, 2, 3, 4

# Rule ids of the anomaly rules and their default level: a violation of authority or of a
# discretion band is a serious violation; the others call for attention.
DEFAULT_ANOMALY_LEVELS: Mapping[str, int] = MappingProxyType(
    {
        "permission": SERIOUS,
        "workflow": WARN,
        "discretion": SERIOUS,
        "risk_evidence": WARN,
        "major": WARN,
        "refusal_reason": WARN,
    }
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    # case (办件): 预警 N days before the promised limit; 黄牌 more than N days past the promised
    # limit; 红牌 more than N days past the statutory limit
    case_warn_before_days: float = 2.0
    case_yellow_after_days: float = 1.0
    case_red_after_days: float = 1.0
    # single step (环节): fractions of the step's own limit
    step_warn_ratio: float = 0.8
    step_yellow_ratio: float = 1.0
    step_red_ratio: float = 2.0
    # special procedure (特别程序): relative to its approved length
    special_warn_before_days: float = 2.0
    special_yellow_after_days: float = 0.0
    special_red_after_days: float = 1.0
    # complaint (投诉): relative to its due time
    complaint_warn_before_days: float = 2.0
    complaint_yellow_after_days: float = 1.0
    complaint_red_after_days: float = 2.0
    # 重大事项 threshold used when the item does not give one (None: only the item's counts)
    major_threshold: float | None = None
    # rule ids switched off for this item type
    disabled_rules: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RulesConfig:
    default: Thresholds = field(default_factory=Thresholds)
    by_item_type: Mapping[str, Thresholds] = field(default_factory=lambda: MappingProxyType({}))
    anomaly_levels: Mapping[str, int] = field(default_factory=lambda: DEFAULT_ANOMALY_LEVELS)

    def for_item_type(self, item_type: str | None) -> Thresholds:
        if item_type is None:
            return self.default
        return self.by_item_type.get(item_type, self.default)

    def fingerprint(self) -> str:
        """A digest of every setting, the same in every process (sets sorted): it changes exactly when
        the operator changes the configuration."""

        def plain(t: Thresholds) -> dict[str, Any]:
            return {f.name: sorted(v) if isinstance(v, frozenset) else v
                    for f in fields(t) for v in [getattr(t, f.name)]}  # fmt: skip

        doc = {"default": plain(self.default),
               "item_types": {k: plain(v) for k, v in sorted(self.by_item_type.items())},
               "anomaly_levels": dict(sorted(self.anomaly_levels.items()))}  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "rules config") -> RulesConfig:
        """Read ``{"default": {...}, "item_types": {"02": {...}}, "anomaly_levels": {...}}``.

        Item-type sections only list what differs from ``default``.
        """
        default = _thresholds(Thresholds(), doc.get("default", {}), f"{source} [default]")
        by_type = {
            str(code): _thresholds(default, section, f"{source} [item_types.{code}]")
            for code, section in dict(doc.get("item_types", {})).items()
        }
        levels = dict(DEFAULT_ANOMALY_LEVELS)
        for rule, level in dict(doc.get("anomaly_levels", {})).items():
            if rule not in levels or level not in (WARN, YELLOW, RED, SERIOUS):
                raise ConfigError(
                    f"{source}: anomaly_levels.{rule} = {level!r} is not valid",
                    fix=f"rules are {sorted(levels)}; levels are 1..4",
                )
            levels[rule] = int(level)
        return cls(default, MappingProxyType(by_type), MappingProxyType(levels))


_FIELDS = {f.name for f in fields(Thresholds)}
THRESHOLD_KEYS = frozenset(_FIELDS)  # the keys of [rules.default] and [rules.item_types.CODE] (node/configcheck.py)


def _thresholds(base: Thresholds, section: Mapping[str, Any], where: str) -> Thresholds:
    unknown = set(section) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}", fix=f"use {sorted(_FIELDS)}")
    values: dict[str, Any] = {}
    for name, value in section.items():
        if name == "disabled_rules":
            values[name] = frozenset(str(v) for v in value)
        elif name == "major_threshold":
            values[name] = None if value is None else float(value)
        else:
            try:
                values[name] = float(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {name} = {value!r} is not a number", fix="give a number") from e
            if values[name] < 0:
                raise ConfigError(f"{where}: {name} must not be negative", fix="give a number >= 0")
    return replace(base, **values)
