"""Thresholds of the rules engine, with the defaults of DOMAIN.md, configurable per item type.

Rules of this module:
- every duration is in days of the item's unit (working days unless the item says ``"day"``);
  the engine converts days to minutes with the clock of the item (450 working minutes a working day
  with default office hours, 1440 minutes a natural day);
- "reached" thresholds (预警) fire when the elapsed time is >= the threshold; "past" thresholds
  (黄牌/红牌, "past the limit", "more than N days past") fire when it is strictly greater, i.e. on the
  first working minute after it;
- ``RulesConfig.for_item_type`` returns the thresholds of an item type, falling back to ``default``;
- the keys, their defaults and ranges are node.configschema's (RULES_DEFAULT, RULES_ANOMALY_LEVELS;
  docs/configuration.md): this module reads them with it, never with a copy of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from node.core import configschema
from node.core.errors import ConfigError

# Levels (records.md `alert.level`)
WARN, YELLOW, RED, SERIOUS = 1, 2, 3, 4

# The keys of [rules.default] / [rules.item_types.CODE] / [rules.anomaly_levels], their defaults and
# ranges: node.configschema (docs/configuration.md). Rule ids of the anomaly rules and their default
# level: a violation of authority or of a discretion band is a serious violation; the others call for
# attention.
DEFAULT_ANOMALY_LEVELS: Mapping[str, int] = configschema.DEFAULT_ANOMALY_LEVELS
_SCHEMA = configschema.RULES_DEFAULT
_LEVELS_SCHEMA = configschema.RULES_ANOMALY_LEVELS


def _d(name: str) -> Any:
    value = _SCHEMA.key(name).default
    return None if value is configschema.UNSET else value


@dataclass(frozen=True, slots=True)
class Thresholds:
    # case (办件): 预警 N days before the promised limit; 黄牌 more than N days past the promised
    # limit; 红牌 more than N days past the statutory limit
    case_warn_before_days: float = _d("case_warn_before_days")
    case_yellow_after_days: float = _d("case_yellow_after_days")
    case_red_after_days: float = _d("case_red_after_days")
    # single step (环节): fractions of the step's own limit
    step_warn_ratio: float = _d("step_warn_ratio")
    step_yellow_ratio: float = _d("step_yellow_ratio")
    step_red_ratio: float = _d("step_red_ratio")
    # special procedure (特别程序): relative to its approved length
    special_warn_before_days: float = _d("special_warn_before_days")
    special_yellow_after_days: float = _d("special_yellow_after_days")
    special_red_after_days: float = _d("special_red_after_days")
    # complaint (投诉): relative to its due time
    complaint_warn_before_days: float = _d("complaint_warn_before_days")
    complaint_yellow_after_days: float = _d("complaint_yellow_after_days")
    complaint_red_after_days: float = _d("complaint_red_after_days")
    # 重大事项 threshold used when the item does not give one (None: only the item's counts)
    major_threshold: float | None = _d("major_threshold")
    # rule ids switched off for this item type
    disabled_rules: frozenset[str] = frozenset(_d("disabled_rules"))


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
        given = dict(doc.get("anomaly_levels", {}))
        _LEVELS_SCHEMA.check_unknown(given, source, prefix="anomaly_levels.")
        for rule in given:
            levels[rule] = int(_LEVELS_SCHEMA.get(given, rule, source, label=f"anomaly_levels.{rule}"))
        return cls(default, MappingProxyType(by_type), MappingProxyType(levels))


THRESHOLD_KEYS = _SCHEMA.known  # the keys of [rules.default] and [rules.item_types.CODE] (node/runtime/configcheck.py)
assert {f.name for f in fields(Thresholds)} == THRESHOLD_KEYS, "Thresholds and node.configschema disagree"


def _thresholds(base: Thresholds, section: Mapping[str, Any], where: str) -> Thresholds:
    unknown = set(section) - THRESHOLD_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}",
                          fix=configschema.unknown_key_fix(sorted(unknown)[0], THRESHOLD_KEYS))
    values: dict[str, Any] = {}
    for name in section:
        value = _SCHEMA.get(section, name, where)
        values[name] = frozenset(value) if name == "disabled_rules" else float(value)
    return replace(base, **values)
