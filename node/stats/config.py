"""The ``[stats]`` section of node.toml, validated here (unknown keys are errors, like node.toml).

    [stats]
    timely_hours = 24            # 数据报送: an event is on time if it reached this node within this
    cards_zero_at = 20           # cards per 100 cases at which the cards score component is 0
    batch = 5000                 # change-feed records per projection step
    interval_s = 30              # the running node folds new records at least this often
    [stats.weights]              # score weights per indicator (indicators.DEFAULT_WEIGHTS)
    done_rate = 20
    [stats.bands]                # grade bands on the 0..100 score
    excellent = 90
    good = 80
    pass = 60
    [stats.supervisors]          # rules on the supervisors themselves (监察日志)
    login_days = 7               # no action for this many days → reminder
    alert_days = 3               # an alert unhandled this long → reminder
    ticket_days = 2              # a ticket from above not signed/replied this long after issue → reminder
    escalate_after_days = 1      # still not done this long after the reminder → escalation alert
    names = ["张三"]              # supervisors watched even before their first logged action
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.errors import ConfigError
from node.stats.indicators import DEFAULT_BANDS, DEFAULT_CARDS_ZERO_AT, DEFAULT_WEIGHTS, INDICATORS

_TOP = {"timely_hours", "cards_zero_at", "batch", "interval_s", "weights", "bands", "supervisors"}
_SUP = {"login_days", "alert_days", "ticket_days", "escalate_after_days", "names"}
# what each table may hold (node/configcheck.py reports any other key, with a "did you mean")
TOP_KEYS, SUPERVISOR_KEYS = frozenset(_TOP), frozenset(_SUP)
WEIGHT_KEYS, BAND_KEYS = frozenset(INDICATORS), frozenset(DEFAULT_BANDS)


@dataclass(frozen=True)
class SupervisorRules:
    login_days: float = 7.0
    alert_days: float = 3.0
    ticket_days: float = 2.0
    escalate_after_days: float = 1.0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatsConfig:
    timely_hours: float = 24.0
    cards_zero_at: float = DEFAULT_CARDS_ZERO_AT
    batch: int = 5000
    interval_s: float = 30.0
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    bands: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BANDS))
    supervisors: SupervisorRules = SupervisorRules()

    @classmethod
    def from_section(cls, section: Any, *, source: str = "node.toml") -> StatsConfig:
        where = f"{source} [stats]"
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a table", fix="write [stats] with key = value lines")
        unknown = set(section) - _TOP
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                              fix=f"use only: {', '.join(sorted(_TOP))}")
        timely = _number(section, "timely_hours", 24.0, where, lo=0.0, hi=24 * 365)
        zero_at = _number(section, "cards_zero_at", DEFAULT_CARDS_ZERO_AT, where, lo=0.0, hi=1e6, open_lo=True)
        batch = _number(section, "batch", 5000, where, lo=1, hi=100_000)
        if batch != int(batch):
            raise ConfigError(f"{where}: batch must be a whole number", fix="records per step, 1..100000")
        interval = _number(section, "interval_s", 30.0, where, lo=0.1, hi=86400)

        weights = dict(DEFAULT_WEIGHTS)
        w = section.get("weights", {})
        if not isinstance(w, Mapping):
            raise ConfigError(f"{where}: weights must be a table", fix="[stats.weights] done_rate = 20 …")
        for k in w:
            if k not in INDICATORS:
                raise ConfigError(f"{where}: weights.{k} is not an indicator",
                                  fix=f"use only: {', '.join(INDICATORS)}")
            weights[k] = _number(w, k, 0.0, f"{where} weights", lo=0.0, hi=1000)
        if sum(weights.values()) <= 0:
            raise ConfigError(f"{where}: all weights are 0", fix="give at least one indicator a weight > 0")

        bands = dict(DEFAULT_BANDS)
        b = section.get("bands", {})
        if not isinstance(b, Mapping):
            raise ConfigError(f"{where}: bands must be a table", fix="[stats.bands] excellent = 90, good = 80, pass = 60")
        for k in b:
            if k not in DEFAULT_BANDS:
                raise ConfigError(f"{where}: bands.{k} is unknown", fix="use only: excellent, good, pass")
            bands[k] = _number(b, k, 0.0, f"{where} bands", lo=0.0, hi=100.0)
        if not bands["excellent"] > bands["good"] > bands["pass"]:
            raise ConfigError(
                f"{where}: bands must fall strictly: excellent {bands['excellent']} > good {bands['good']}"
                f" > pass {bands['pass']}", fix="e.g. excellent = 90, good = 80, pass = 60")

        s = section.get("supervisors", {})
        if not isinstance(s, Mapping):
            raise ConfigError(f"{where}: supervisors must be a table", fix="[stats.supervisors] login_days = 7")
        unknown = set(s) - _SUP
        if unknown:
            raise ConfigError(f"{where}: unknown supervisors key(s) {', '.join(sorted(unknown))}",
                              fix=f"use only: {', '.join(sorted(_SUP))}")
        names = s.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(f"{where}: supervisors.names must be a list of names", fix='names = ["张三", "李四"]')
        sup = SupervisorRules(
            login_days=_number(s, "login_days", 7.0, where, lo=0.0, hi=3650, open_lo=True),
            alert_days=_number(s, "alert_days", 3.0, where, lo=0.0, hi=3650, open_lo=True),
            ticket_days=_number(s, "ticket_days", 2.0, where, lo=0.0, hi=3650, open_lo=True),
            escalate_after_days=_number(s, "escalate_after_days", 1.0, where, lo=0.0, hi=3650, open_lo=True),
            names=tuple(n.strip() for n in names),
        )
        return cls(timely, zero_at, int(batch), interval, weights, bands, sup)

    @classmethod
    def of_home(cls, home: Any) -> StatsConfig:
        return cls.from_section(home.config.sections.get("stats"), source=str(home.config.path))


def _number(section: Mapping[str, Any], key: str, default: float, where: str, *, lo: float, hi: float,
            open_lo: bool = False) -> float:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{where}: {key} = {v!r} is not a number", fix=f"a number from {lo} to {hi}")
    if v < lo or v > hi or (open_lo and v == lo):
        low = f"more than {lo}" if open_lo else f"at least {lo}"
        raise ConfigError(f"{where}: {key} = {v!r} is out of range", fix=f"{low} and at most {hi}")
    return float(v)
