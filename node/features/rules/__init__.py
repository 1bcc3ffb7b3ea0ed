"""The monitoring rules engine (预警纠错): pure logic over record payloads. See engine.py."""

from node.features.rules.config import (
    DEFAULT_ANOMALY_LEVELS,
    RED,
    SERIOUS,
    WARN,
    YELLOW,
    RulesConfig,
    Thresholds,
)
from node.features.rules.engine import CARD_RULES, RULES, ItemSpec, RulesEngine

__all__ = [
    "CARD_RULES",
    "DEFAULT_ANOMALY_LEVELS",
    "RED",
    "RULES",
    "SERIOUS",
    "WARN",
    "YELLOW",
    "ItemSpec",
    "RulesConfig",
    "RulesEngine",
    "Thresholds",
]
