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

Each key's type, default and range is node.configschema's (STATS, STATS_WEIGHTS, STATS_BANDS,
STATS_SUPERVISORS; docs/configuration.md); this module reads the keys with it and checks what ties
them together (at least one weight, bands that fall).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.core import configschema
from node.core.errors import ConfigError

_S, _W, _B, _SUP = (configschema.STATS, configschema.STATS_WEIGHTS, configschema.STATS_BANDS,
                    configschema.STATS_SUPERVISORS)
# what each table may hold (node/runtime/configcheck.py reports any other key, with a "did you mean")
TOP_KEYS, SUPERVISOR_KEYS, WEIGHT_KEYS, BAND_KEYS = _S.known, _SUP.known, _W.known, _B.known


@dataclass(frozen=True)
class SupervisorRules:
    login_days: float = _SUP.key("login_days").default
    alert_days: float = _SUP.key("alert_days").default
    ticket_days: float = _SUP.key("ticket_days").default
    escalate_after_days: float = _SUP.key("escalate_after_days").default
    names: tuple[str, ...] = tuple(_SUP.key("names").default)


@dataclass(frozen=True)
class StatsConfig:
    timely_hours: float = _S.key("timely_hours").default
    cards_zero_at: float = _S.key("cards_zero_at").default
    batch: int = _S.key("batch").default
    interval_s: float = _S.key("interval_s").default
    weights: Mapping[str, float] = field(default_factory=_W.defaults)
    bands: Mapping[str, float] = field(default_factory=_B.defaults)
    supervisors: SupervisorRules = SupervisorRules()

    @classmethod
    def from_section(cls, section: Any, *, source: str = "node.toml") -> StatsConfig:
        where = f"{source} [stats]"
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a table", fix="write [stats] with key = value lines")
        _S.check_unknown(section, where)
        top = {k: _S.get(section, k, where) for k in ("timely_hours", "cards_zero_at", "batch", "interval_s")}
        tables = {k: _S.get(section, k, where) or {} for k in ("weights", "bands", "supervisors")}

        w = tables["weights"]
        _W.check_unknown(w, where, prefix="weights.")
        weights = {k: float(_W.get(w, k, where, label=f"weights.{k}")) for k in _W.names}
        if sum(weights.values()) <= 0:
            raise ConfigError(f"{where}: all weights are 0", fix="give at least one indicator a weight > 0")

        b = tables["bands"]
        _B.check_unknown(b, where, prefix="bands.")
        bands = {k: float(_B.get(b, k, where, label=f"bands.{k}")) for k in _B.names}
        if not bands["excellent"] > bands["good"] > bands["pass"]:
            raise ConfigError(
                f"{where}: bands must fall strictly: excellent {bands['excellent']} > good {bands['good']}"
                f" > pass {bands['pass']}", fix="e.g. excellent = 90, good = 80, pass = 60")

        s = tables["supervisors"]
        _SUP.check_unknown(s, where, prefix="supervisors.")
        sup = {k: _SUP.get(s, k, where, label=f"supervisors.{k}") for k in _SUP.names}
        sup_rules = SupervisorRules(**{k: float(v) for k, v in sup.items() if k != "names"},
                                    names=tuple(n.strip() for n in sup["names"]))
        return cls(float(top["timely_hours"]), float(top["cards_zero_at"]), top["batch"], float(top["interval_s"]),
                   weights, bands, sup_rules)

    @classmethod
    def of_home(cls, home: Any) -> StatsConfig:
        return cls.from_section(home.config.sections.get("stats"), source=str(home.config.path))

