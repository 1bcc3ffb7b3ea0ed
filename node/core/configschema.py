"""The schema of node.toml: every section and key, its type, default, range or choices, and meaning.

Rules of this module:
- this is the ONE description of node.toml. The loaders take their key sets, defaults and per-key
  checks from it (node.config for [node] [store] [link] [admin] [log] [reconcile]; node.notify,
  node.stats.config, node.rules.config and adapters.base for theirs); node.configcheck checks every
  section against it before the section's owner runs, so `fednode run` and `fednode check` validate
  with it; docs/configuration.md is generated from it (``python -m node.core.configschema --write
  docs/configuration.md``) and tests/test_config_doc.py fails when that file differs, or when a
  loader accepts a key, default or range the schema does not state;
- per-key checks only (type, range, choices, one format rule). Rules that tie several keys together
  (grade bands that must fall, a level that uses the webhook needs ``webhook_url``) stay with the
  section's owner, which runs after this module found nothing wrong;
- a leaf module: it imports only node.errors, node.codes and node.stats.indicators (every loader
  imports it). Texts are English; a section's and some keys' Chinese names are given beside them.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import ipaddress
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from node.core.codes import LEVELS, is_code
from node.core.errors import ConfigError, FednodeError
from node.core.indicators import DEFAULT_BANDS, DEFAULT_CARDS_ZERO_AT, DEFAULT_WEIGHTS, INDICATORS

DOC_PATH = "docs/configuration.md"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ErrorType = type[FednodeError]  # the error a loader raises (ConfigError, NotifyError...)

REQUIRED = _Marker("REQUIRED")  # the key must be given
UNSET = _Marker("UNSET")  # no value unless given (the docs say what that means)

# what each type accepts (bool is not a number in TOML, nor here)
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "string or list of strings": lambda v: isinstance(v, str) or (isinstance(v, list)
                                                                  and all(isinstance(x, str) for x in v)),
    "table": lambda v: isinstance(v, dict),
    "list of tables": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "string or table": lambda v: isinstance(v, str | dict),
}
_TYPE_PHRASE = {"string": "a string", "integer": "a whole number", "number": "a number",
                "boolean": "true or false", "table": "a table", "list of tables": "a list of tables"}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def toml_value(v: Any) -> str:
    """``v`` as TOML writes it (what the docs and the fixes show)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return _num(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Key:
    """One key of a table of node.toml."""

    name: str
    type: str
    default: Any  # a value, REQUIRED or UNSET
    meaning: str
    zh: str = ""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False  # lo itself is not allowed (> lo)
    choices: tuple[Any, ...] = ()  # for a list type: what each item may be
    rule: str = ""  # a format the value follows (shown in the docs and the fix); checked by ``valid``
    valid: Callable[[Any], bool] | None = None
    invalid: str = "is not valid"  # what the message says when ``valid`` refuses a value
    nonempty: bool = False  # "", [] and {} are refused
    default_doc: str = ""  # how the docs show a default that is not a plain value
    example: Any = None  # the value the fix shows when the default is not one
    table: str = ""  # type "table": the id of the Section that describes it
    each: bool = False  # with ``table``: a table of tables named by the operator, each one a ``table``

    def __post_init__(self) -> None:
        assert self.type in _TYPES, self.type

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def problem(self, value: Any) -> str:
        """Why ``value`` is not valid here ("" when it is): "must be a number", "is out of range" ..."""
        if not _TYPES[self.type](value):
            return f"must be {_TYPE_PHRASE.get(self.type, 'a ' + self.type)}"
        if self.nonempty and value in ("", [], {}):
            return "must not be empty"
        items = value if isinstance(value, list) and self.type.endswith("list of strings") else None
        if items is not None and not all(x.strip() for x in items):
            return "must not hold an empty string"
        if self.choices and any(x not in self.choices for x in (items if items is not None else [value])):
            return "is not one of: " + ", ".join(toml_value(c) for c in self.choices)
        if self.type in ("integer", "number") and not self.in_range(value):
            return f"is out of range ({self.range_text()})"
        if self.valid is not None and not self.valid(value):
            return self.invalid
        return ""

    def in_range(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.open_lo and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi

    def range_text(self) -> str:
        lo = None if self.lo is None else (f"more than {_num(self.lo)}" if self.open_lo else f"{_num(self.lo)}")
        if lo is not None and self.hi is not None:
            return f"{lo}, at most {_num(self.hi)}" if self.open_lo else f"{lo} to {_num(self.hi)}"
        if lo is not None:
            return lo if self.open_lo else f"at least {lo}"
        return "" if self.hi is None else f"at most {_num(self.hi)}"

    def allowed(self) -> str:
        """The values allowed, in words (the docs' "Allowed" column and the start of the fix)."""
        if self.choices:
            return ("each one of: " if "list" in self.type else "one of: ") + ", ".join(
                toml_value(c) for c in self.choices)
        if self.rule:
            return self.rule
        if self.type in ("integer", "number") and (self.lo is not None or self.hi is not None):
            return self.range_text()
        return "not empty" if self.nonempty else ""

    def value_text(self) -> str:
        """The default as the docs show it."""
        if self.default_doc:
            return self.default_doc
        if self.default is REQUIRED:
            return "required"
        if self.default is UNSET:
            return "unset"
        return f"`{toml_value(self.default)}`"

    @property
    def fix(self) -> str:
        """What to write instead: the kind of value and an example."""
        example = self.example if self.example is not None else self.default
        what = _TYPE_PHRASE.get(self.type, "a " + self.type)
        if self.choices:
            what = ("a list of " if "list" in self.type else "one of ") + ", ".join(toml_value(c) for c in self.choices)
        elif self.rule:
            what = self.rule
        elif self.type in ("integer", "number") and (self.lo is not None or self.hi is not None):
            what = f"{what} ({self.range_text()})"
        elif self.nonempty:
            what = f"a non-empty {self.type}"
        if self.type == "table" or isinstance(example, _Marker) or example is None:
            return f"use {what}"
        return f"use {what}, e.g. {self.name} = {toml_value(example)}"

    def get(self, body: Mapping[str, Any], where: str, *, label: str = "",
            error: ErrorType = ConfigError) -> Any:
        """The value of this key in ``body`` (its default when absent), or ``error`` naming it."""
        if self.name not in body:
            if self.default is REQUIRED:
                raise error(f"{where}: {label or self.name} is missing", fix=f"add it: {self.fix[4:]}")
            return None if self.default is UNSET else copy.deepcopy(self.default)
        value = body[self.name]
        why = self.problem(value)
        if why:
            raise error(f"{where}: {label or self.name} = {value!r} {why}", fix=self.fix)
        return value


@dataclass(frozen=True)
class Section:
    """One table of node.toml: ``[link]``, ``[stats.weights]``, ``[adapters.NAME]`` of one type..."""

    id: str  # how the code names it: "link", "rules.item_types.CODE", "adapters.NAME:filedrop"
    zh: str
    meaning: str
    owner: str  # the module that loads it
    keys: tuple[Key, ...]
    title: str = ""  # the table header the docs show, when it is not [id]
    extra_doc: str = ""  # more text under the key table

    @property
    def header(self) -> str:
        return self.title or f"[{self.id}]"

    @property
    def names(self) -> tuple[str, ...]:
        """The keys in the order of the docs."""
        return tuple(k.name for k in self.keys)

    @property
    def known(self) -> frozenset[str]:
        return frozenset(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(f"{self.id}.{name}")

    def defaults(self) -> dict[str, Any]:
        """Every key that has a plain default, with it."""
        return {k.name: copy.deepcopy(k.default) for k in self.keys if not isinstance(k.default, _Marker)}

    def check_unknown(self, body: Mapping[str, Any], where: str, *, prefix: str = "",
                      error: ErrorType = ConfigError) -> None:
        """Raise ``error`` for the first key ``body`` holds that this table does not know."""
        for name in body:
            if name not in self.known:
                raise error(f"{where}: unknown field {prefix}{name}", fix=unknown_key_fix(name, self.known))

    def get(self, body: Mapping[str, Any], name: str, where: str, *, label: str = "",
            error: ErrorType = ConfigError) -> Any:
        return self.key(name).get(body, where, label=label, error=error)


@dataclass(frozen=True)
class Issue:
    """One key of a table that is wrong (``split``): unknown, or its value refused."""

    field: str  # the key (a value refused) or its dotted path inside the section (an unknown key)
    path: str  # the dotted path inside the section: "default.case_red_after_days"
    message: str  # "rules.default.case_red_after_days = 'two' must be a number" (no file name)
    fix: str
    unknown: bool


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean `x`? ' for the closest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? " if close else ""


def unknown_key_fix(key: str, known: Iterable[str]) -> str:
    known = sorted(set(known))
    return f"{did_you_mean(key, known)}remove it, or use one of: {', '.join(known)}"


def split(section_id: str, body: Mapping[str, Any], *, root: str = "", prefix: str = ""
          ) -> tuple[dict[str, Any], list[Issue]]:
    """``body`` without its unknown keys (at every depth), and an Issue for each unknown key and each
    refused value. ``root`` is the table's name in messages ("rules", "adapters.drop")."""
    spec = SECTIONS[section_id]
    root = root or section_id
    kept: dict[str, Any] = {}
    issues: list[Issue] = []
    for name, value in body.items():
        path = f"{prefix}{name}"
        if name not in spec.known:
            issues.append(Issue(path, path, f"unknown field {root}.{path}", unknown_key_fix(name, spec.known), True))
            continue
        key = spec.key(name)
        why = key.problem(value)
        if why:
            issues.append(Issue(name, path, f"{root}.{path} = {value!r} {why}", key.fix, False))
            kept[name] = value
            continue
        if key.table and key.each:
            sub: dict[str, Any] = {}
            for tname, tbody in value.items():
                if not isinstance(tbody, dict):
                    issues.append(Issue(name, f"{path}.{tname}", f"{root}.{path}.{tname} must be a table",
                                        f"write it as [{root}.{path}.{tname}] with key = value lines", False))
                    sub[tname] = tbody
                    continue
                sub[tname], more = split(key.table, tbody, root=root, prefix=f"{path}.{tname}.")
                issues += more
            kept[name] = sub
        elif key.table:
            kept[name], more = split(key.table, value, root=root, prefix=f"{path}.")
            issues += more
        else:
            kept[name] = value
    return kept, issues


def default(section_id: str, key: str) -> Any:
    return copy.deepcopy(SECTIONS[section_id].key(key).default)


# ---- format rules ------------------------------------------------------------------------------------


def hostport(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _hostport_or_empty(v: str) -> bool:
    return v == "" or hostport(v)


def _loopback_hostport(v: str) -> bool:
    if not hostport(v):
        return False
    host = v.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the sections -------------------------------------------------------------------------------------

_PORT = "HOST:PORT"

NODE = Section("node", "节点", "Who this node is. Written by `fednode init`; the code and level never change "
               "after enrolment (the certificate names them).", "node.core.config", (
    Key("code", "string", REQUIRED, "The division code (行政区划代码) of this node's jurisdiction, or a department's "
        "code (the parent's code with a suffix such as -GA).", zh="代码", valid=is_code,
        rule="a 6-digit division code such as 320303, or 320300-GA", example="320303"),
    Key("name", "string", REQUIRED, "The jurisdiction's name, as people read it.", zh="名称", example="云龙区"),
    Key("level", "string", REQUIRED, "The level of the node in the tree; it must match the code (a department "
        "may have any code).", zh="层级", choices=LEVELS, example="county"),
))
STORE = Section("store", "存储", "Where the node keeps its signed logs, quarantine and projections.", "node.core.config", (
    Key("url", "string", "sqlite:///store.db", "The database: SQLite in the node home (a relative path is "
        "relative to the home) or PostgreSQL for a big node (`fednode store copy` moves a store).",
        valid=lambda v: v.startswith(("sqlite:", "postgresql")),
        rule="sqlite:///FILE or postgresql://USER@HOST/DB"),
))
LINK = Section("link", "链路", "The links to the parent and to the children (mutual TLS, gRPC).", "node.core.config", (
    Key("listen", "string", "", "Where children dial in; \"\" = no children.", valid=_hostport_or_empty,
        rule=f"{_PORT}, e.g. 0.0.0.0:7700, or \"\"", example="0.0.0.0:7700"),
    Key("parent", "string", "", "The parent node's address; \"\" only at the province (no parent). "
        "A node below the province without it runs isolated.", valid=_hostport_or_empty,
        rule=f"{_PORT} of the parent, or \"\"", example="10.1.2.3:7700"),
    Key("parent_code", "string", "", "The parent's node code (checked against the parent's certificate).",
        valid=lambda v: v == "" or is_code(v), rule="the parent's code, or \"\"", example="320300"),
    Key("batch_records", "integer", 4000, "Records per batch sent on a link. Bigger batches cost less CPU per "
        "record; memory per link is about window x batch x record size.", lo=100, hi=20_000),
    Key("window", "integer", 6, "Batches in flight per link.", lo=1, hi=16),
    Key("compression", "string", "zstd", "Compression of batches on the links: \"zstd\" offers it to the parent "
        "and accepts it from children (the parent picks, per link; a peer without it gets plain batches), "
        "\"none\" turns it off. What is signed is never changed: records are verified after decoding.",
        choices=("zstd", "none")),
    Key("receive_budget_mb", "integer", 8, "Megabytes of received batches that all links together hold "
        "before they are applied (one budget for the node, shared fairly by its children: past it a child "
        "is held back by flow control). Bounds the node's memory whatever the number of children.",
        lo=1, hi=4096),
    Key("recover_wait_s", "integer", 30, "Seconds a restarted node waits for its parent before it appends again "
        "(if its own logs are not behind what it recorded outside the store).", lo=0, hi=86400),
    Key("parent_down_unhealthy_s", "integer", 300, "Seconds without a connection to the parent after which "
        "`fednode health` says unhealthy (before that: degraded).", lo=10, hi=86400),
))
ADMIN = Section("admin", "管理接口", "The local admin socket the CLI talks to while the node runs.", "node.core.config", (
    Key("socket", "string", "admin.sock", "Path of the admin Unix socket (relative to the node home).",
        nonempty=True),
))
LOG = Section("log", "日志", "The node's own log.", "node.core.config", (
    Key("level", "string", "info", "Lowest level written.", choices=("debug", "info", "warning", "error")),
    Key("format", "string", "auto", "Log line format: `auto` is console text on a terminal and JSON otherwise.",
        choices=("auto", "json", "console")),
))
RECONCILE = Section("reconcile", "对账", "The nightly reconciliation with the parent (APScheduler cron, "
                    "Asia/Shanghai time).", "node.core.config", (
    Key("cron", "string", "0 2 * * *", "When reconciliation runs: minute hour day month weekday.",
        valid=lambda v: len(v.split()) == 5, rule="a 5-field cron expression"),
    Key("jitter_s", "integer", 600, "Random delay added to each run, so the nodes of a tree do not all start "
        "at once.", lo=0, hi=86400),
))

# -- [rules] and its tables (node.commands.alerts: RulesSettings; node.rules.config: the thresholds)

RULE_IDS = ("case_time", "step_time", "special_time", "complaint_time", "permission", "workflow", "discretion",
            "risk_evidence", "major", "refusal_reason")
DEFAULT_ANOMALY_LEVELS: Mapping[str, int] = MappingProxyType({
    "permission": 4, "workflow": 1, "discretion": 4, "risk_evidence": 1, "major": 1, "refusal_reason": 1,
})
_DAYS = "days of the item's unit (working days unless the item counts natural days)"

RULES = Section("rules", "预警纠错规则", "The monitoring rules service: it reads case, step, complaint and "
                "ticket records and writes alert records (预警, 黄牌, 红牌, 严重违规).", "node.features.rules.settings", (
    Key("enabled", "boolean", True, "Run the rules service on this node."),
    Key("scope", "string", "own", "`own`: cases born at this node; `subtree`: also every case its children send "
        "up (when they do not run the rules themselves).", choices=("own", "subtree")),
    Key("scan_interval_s", "number", 60, "Seconds between scans for time limits reached.", lo=0.5, hi=86400),
    Key("batch", "integer", 1000, "Records per turn of the background thread (bounds a turn's memory).",
        lo=1, hi=100_000),
    Key("default", "table", UNSET, "The thresholds of every item type.", table="rules.default",
        default_doc="see [rules.default]"),
    Key("item_types", "table", UNSET, "Thresholds of one item type, only what differs from [rules.default].",
        table="rules.item_types.CODE", each=True, default_doc="see [rules.item_types.CODE]"),
    Key("anomaly_levels", "table", UNSET, "The level of each anomaly rule's alerts.",
        table="rules.anomaly_levels", default_doc="see [rules.anomaly_levels]"),
))


def _threshold_keys(inherit: bool) -> tuple[Key, ...]:
    def k(name: str, value: float, meaning: str, zh: str = "", **kw: Any) -> Key:
        return Key(name, "number", value, meaning, zh=zh, lo=0, default_doc="as [rules.default]" if inherit else "",
                   **kw)

    return (
        k("case_warn_before_days", 2.0, f"预警 of a case this many {_DAYS} before its promised limit.", "办件预警"),
        k("case_yellow_after_days", 1.0, "黄牌 of a case more than this many days past its promised limit.",
          "办件黄牌"),
        k("case_red_after_days", 1.0, "红牌 of a case more than this many days past its statutory limit.", "办件红牌"),
        k("step_warn_ratio", 0.8, "预警 of a step (环节) when this fraction of its own limit is used.", "环节预警"),
        k("step_yellow_ratio", 1.0, "黄牌 of a step past this fraction of its limit.", "环节黄牌"),
        k("step_red_ratio", 2.0, "红牌 of a step past this fraction of its limit.", "环节红牌"),
        k("special_warn_before_days", 2.0, "预警 of a special procedure (特别程序) this many days before its "
          "approved length ends.", "特别程序预警"),
        k("special_yellow_after_days", 0.0, "黄牌 of a special procedure more than this many days past its "
          "approved length.", "特别程序黄牌"),
        k("special_red_after_days", 1.0, "红牌 of a special procedure more than this many days past its approved "
          "length.", "特别程序红牌"),
        k("complaint_warn_before_days", 2.0, "预警 of a complaint (投诉) this many days before it is due.", "投诉预警"),
        k("complaint_yellow_after_days", 1.0, "黄牌 of a complaint more than this many days past due.", "投诉黄牌"),
        k("complaint_red_after_days", 2.0, "红牌 of a complaint more than this many days past due.", "投诉红牌"),
        Key("major_threshold", "number", UNSET, "Amount or scale above which an application is a major matter "
            "(重大事项), for items that do not give their own; unset: only the item's own threshold.",
            zh="重大事项阈值", lo=0, default_doc="as [rules.default]" if inherit else "unset", example=1000000),
        Key("disabled_rules", "list of strings", [], "Rule ids switched off.", zh="停用规则", choices=RULE_IDS,
            default_doc="as [rules.default]" if inherit else ""),
    )


RULES_DEFAULT = Section(
    "rules.default", "默认阈值", "Thresholds of the rules for every item type. A \"reached\" threshold (预警) fires when "
    f"the elapsed time is at least it; a \"past\" one (黄牌, 红牌) on the first minute after it. Durations are {_DAYS}.",
    "node.features.rules.config", _threshold_keys(False))
RULES_ITEM_TYPES = Section(
    "rules.item_types.CODE", "事项类型阈值", "Thresholds of the items of type CODE (the item type code of the item "
    "records), e.g. `[rules.item_types.\"02\"]`. Only the keys that differ from [rules.default] are needed.",
    "node.features.rules.config", _threshold_keys(True))
RULES_ANOMALY_LEVELS = Section(
    "rules.anomaly_levels", "异常规则等级", "The level of the alerts of each anomaly rule: 1 预警, 2 黄牌, 3 红牌, "
    "4 严重违规.", "node.features.rules.config", tuple(
        Key(rule, "integer", DEFAULT_ANOMALY_LEVELS[rule], meaning, lo=1, hi=4) for rule, meaning in (
            ("permission", "A step done by someone without the authority for it."),
            ("workflow", "Steps out of the item's workflow order."),
            ("discretion", "A decision outside the item's discretion band."),
            ("risk_evidence", "A risk point without its evidence."),
            ("major", "A major matter (重大事项): assigned by the city, or above the major threshold."),
            ("refusal_reason", "A refusal without its reason."),
        )))
CALENDAR = Section("calendar", "工作日历", "The working-day calendar the rules count time with. Holidays and "
                   "调休 days come from the `chinese-calendar` package and `fednode calendar import`.",
                   "node.features.rules.settings", (
    Key("office_hours", "string", "08:30-12:00,13:30-17:30", "Office periods of a working day (450 working "
        "minutes a day with the default).", rule="HH:MM-HH:MM periods, comma-separated, sorted, not overlapping"),
))

# -- [notify] (node.notify)

NOTIFIERS = ("log", "webhook", "command", "smtp", "sms")
# what the SMS gateway's template parameters and body may name (node/features/notify_channels.py fills them)
SMS_FIELDS = ("unit", "case_no", "rule", "rule_id", "level", "alert_id", "message", "why", "name", "at")
SMS_PLACEHOLDERS = ("${phones}", "${phones_list}", "${sign_name}", "${template_code}", "${params}", "${params_json}",
                    "${text}")
SMS_BODY_ALIYUN = {"PhoneNumbers": "${phones}", "SignName": "${sign_name}", "TemplateCode": "${template_code}",
                   "TemplateParam": "${params_json}"}


def _sms_body_ok(v: Any) -> bool:
    """A JSON body template: strings (a placeholder, or text with ${...} placeholders of SMS_PLACEHOLDERS),
    numbers, booleans, lists and tables of them; it must name the phones somewhere."""
    import re

    def leaves(x: Any) -> list[Any]:
        if isinstance(x, dict):
            return [y for k in x.values() for y in leaves(k)]
        if isinstance(x, list):
            return [y for k in x for y in leaves(k)]
        return [x]

    strings = [x for x in leaves(v) if isinstance(x, str)]
    used = {m for x in strings for m in re.findall(r"\$\{[a-z_]+\}", x)}
    return (isinstance(v, dict) and bool(v) and used <= set(SMS_PLACEHOLDERS)
            and bool(used & {"${phones}", "${phones_list}"}))


def _sms_params_ok(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and k and x in SMS_FIELDS for k, x in v.items())


NOTIFY = Section(
    "notify", "告警通知", "Who hears of an alert, per level. The alert record is the truth; a notification is a "
    "courtesy copy (a failed one is logged and retried, never blocks the rules).", "node.features.notify", (
        *(Key(name, "string or list of strings", ["log"], f"Notifiers for {meaning}.", zh=zh, choices=NOTIFIERS)
          for name, zh, meaning in (("warn", "预警", "warnings (level 1)"), ("yellow", "黄牌", "yellow cards (level 2)"),
                                    ("red", "红牌", "red cards (level 3)"),
                                    ("serious", "严重违规", "serious violations and operator alerts (level 4)"))),
        Key("webhook_url", "string", "", "Where the webhook notifier POSTs the alert as JSON (any 2xx is "
            "delivered). Required when a level uses `webhook`.",
            valid=lambda v: v == "" or v.startswith(("http://", "https://")), rule="an http(s) URL, or \"\"",
            example="http://127.0.0.1:8080/alerts"),
        Key("webhook_timeout_s", "number", 5, "Seconds to wait for the webhook's answer.", lo=0),
        Key("command", "string or list of strings", [], "Program and arguments the command notifier runs, the "
            "alert JSON on its stdin. Required when a level uses `command`.",
            example=["/usr/local/bin/sms-gateway", "--to", "13800000000"]),
        Key("command_timeout_s", "number", 10, "Seconds the command may run.", lo=0),
        Key("retries", "integer", 2, "Further attempts after a notification fails.", lo=0),
        Key("retry_backoff_s", "number", 1.0, "Seconds before the first retry; each further retry waits twice as "
            "long. A notification to a person that still fails is kept in the dead-letter list (`fednode notify "
            "dead-letters`, `fednode notify retry`).", lo=0, hi=3600),
        # smtp: mail to the person (their 邮箱 in the directory or their user entry)
        Key("smtp_host", "string", "", "The mail server the smtp notifier sends through. Required when a level "
            "uses `smtp`.", example="mail.example.gov.cn"),
        Key("smtp_port", "integer", 0, "Its port; 0 = by smtp_security: 587 (starttls), 465 (ssl), 25 (none).",
            lo=0, hi=65535),
        Key("smtp_security", "string", "starttls", "`starttls` (plain connection upgraded to TLS, refused if the "
            "server cannot), `ssl` (TLS from the start, SMTPS) or `none` (no TLS: a relay on loopback or the unit's own "
            "network, without a login).",
            choices=("starttls", "ssl", "none")),
        Key("smtp_ca_file", "string", "", "CA certificates (PEM) the server's certificate is checked against; \"\" "
            "= the system's.", example="mail-ca.pem"),
        Key("smtp_user", "string", "", "Login name at the mail server; \"\" = no login.",
            example="jiancha@example.gov.cn"),
        Key("smtp_password_file", "string", "", "File holding the mail password (first line), mode 0600; never "
            "the password itself in node.toml. Required with smtp_user.", example="smtp.password"),
        Key("smtp_sender", "string", "", "The From address. Required when a level uses `smtp`.",
            valid=lambda v: v == "" or ("@" in v and not v.strip().startswith("@")), rule="a mail address, or \"\"",
            example="电子监察 <jiancha@example.gov.cn>"),
        Key("smtp_timeout_s", "number", 10, "Seconds to wait for the mail server.", lo=0, open_lo=True),
        # sms: an HTTP SMS gateway (the person's 电话)
        Key("sms_url", "string", "", "The SMS gateway's HTTP(S) endpoint; the sms notifier POSTs `sms_body` to it "
            "as JSON. Required when a level uses `sms`.",
            valid=lambda v: v == "" or v.startswith(("http://", "https://")), rule="an http(s) URL, or \"\"",
            example="https://sms.example.gov.cn/api/send"),
        Key("sms_sign_name", "string", "", "短信签名: the signature registered at the gateway (`${sign_name}`).",
            example="电子监察"),
        Key("sms_template_code", "string", "", "短信模板: the template registered at the gateway "
            "(`${template_code}`).", example="SMS_000001"),
        Key("sms_params", "table", {"unit": "unit", "case": "case_no", "rule": "rule", "level": "level"},
            "The template's parameters (`${params}`, `${params_json}`): its variable name = the alert field "
            "filled in.", valid=_sms_params_ok, rule="name = one of " + ", ".join(SMS_FIELDS),
            invalid="names an alert field that does not exist"),
        Key("sms_body", "table", SMS_BODY_ALIYUN, "The JSON body POSTed, with placeholders: `${phones}` (numbers "
            "joined by commas), `${phones_list}` (a list), `${sign_name}`, `${template_code}`, `${params}` (a "
            "table), `${params_json}` (it as a JSON string), `${text}` (the message in Chinese, for gateways that "
            "take free text). The default is the shape of Alibaba Cloud's SendSms.", valid=_sms_body_ok,
            invalid="names a placeholder that does not exist, or neither ${phones} nor ${phones_list}",
            rule="a table whose strings use only the placeholders " + ", ".join(SMS_PLACEHOLDERS)
            + " (${phones} or ${phones_list} among them)"),
        Key("sms_success_field", "string", "Code", "The field of the gateway's JSON answer that says it was "
            "accepted (dotted path, list items by number: `Response.SendStatusSet.0.Code`); \"\" = any 2xx "
            "answer is success."),
        Key("sms_success_value", "string", "OK", "The value of sms_success_field when it was accepted."),
        Key("sms_token_file", "string", "", "File (mode 0600) holding the value of sms_token_header sent with "
            "every request (e.g. `APPCODE 0123...`, `Bearer ...`); \"\" = none.", example="sms.token"),
        Key("sms_token_header", "string", "Authorization", "The header that carries the token.", nonempty=True),
        Key("sms_timeout_s", "number", 5, "Seconds to wait for the gateway's answer.", lo=0, open_lo=True),
    ))

# -- [tickets] (node.tickets.desk)

TICKETS = Section("tickets", "督办", "Supervision tickets (督办单) between levels: their deadlines in working days.",
                  "node.features.tickets.desk", (
    Key("sign_days", "number", 1.0, "Working days the target has to sign for a ticket.", zh="签收时限", lo=0,
        open_lo=True),
    Key("reply_days", "number", 10.0, "Working days the target has to reply.", zh="答复时限", lo=0, open_lo=True),
    Key("escalate_after_days", "number", 1.0, "Working days after a reminder before the ticket is escalated.",
        zh="升级时限", lo=0, open_lo=True),
    Key("check_interval_s", "number", 60.0, "Seconds between deadline checks.", lo=0, open_lo=True),
    Key("calendar_overrides", "string", "", "A CSV or TOML file of holidays and 调休 days for the years the "
        "`chinese-calendar` package lacks (relative to the node home); \"\" = none.",
        example="holidays-2027.csv"),
    Key("auto_from_red", "string", "off", "On a red card (红牌 or 严重违规) about a case, the node whose subtree "
        "directly holds the responsible unit `draft`s a ticket citing the alert (a 监察员 confirms or drops it: "
        "`tickets drafts|confirm|drop`) or `issue`s it at once, signed by the node (by = system); one per alert, "
        "and one open ticket per case (a later red card on it is linked to that ticket); the alert becomes "
        "已转督办 when the ticket is issued.", zh="红牌自动督办", choices=("off", "draft", "issue")),
))

# -- [people] (node.features.people.accounts)

PEOPLE = Section("people", "用户与权限", "The node's people: sign-in lockout and session lifetime (`fednode users`, "
                 "`fednode login`, the desk).", "node.features.people.accounts", (
    Key("max_failures", "integer", 5, "Failed sign-ins within `lock_minutes` that lock the account (a 系统管理员 "
        "unlocks it).", zh="锁定前失败次数", lo=1, hi=100),
    Key("lock_minutes", "number", 15.0, "The window in which failed sign-ins count.", zh="失败计数窗口（分钟）",
        lo=0, open_lo=True, hi=1440),
    Key("session_hours", "number", 8.0, "How long a sign-in (`fednode login`, the desk) lasts.", zh="会话时长（小时）",
        lo=0, open_lo=True, hi=24 * 30),
))

# -- [desk] (node.runtime.services.desk)

DESK = Section("desk", "监察工作台", "The supervision desk (监察工作台): the web console of supervisors, departments "
               "and IT staff, and its JSON API under /api/v1/. Without `listen` there is no desk.",
               "node.runtime.services.desk", (
    Key("listen", "string", "", "Where browsers connect; \"\" = no desk. Plain HTTP only on a loopback address: "
        "any other address needs `tls_cert` and `tls_key`.", zh="监听地址", valid=_hostport_or_empty,
        rule=f"{_PORT}, or \"\"", example="127.0.0.1:8443"),
    Key("tls_cert", "string", "", "The HTTPS certificate chain, PEM (relative to the node home); \"\" = plain "
        "HTTP (loopback only).", zh="证书", example="desk.crt"),
    Key("tls_key", "string", "", "The HTTPS private key, PEM (relative to the node home; mode 0600).", zh="私钥",
        example="desk.key"),
    Key("idle_minutes", "number", 30.0, "Minutes without a request after which a desk sign-in ends (the session "
        "itself ends after [people] session_hours).", zh="空闲超时（分钟）", lo=0, open_lo=True, hi=24 * 60),
))

# -- [stats] and its tables (node.stats.config)

STATS = Section("stats", "统计考核", "Statistics and performance evaluation (统计分析, 绩效评估) of this node's "
                "subtree.", "node.features.stats.config", (
    Key("timely_hours", "number", 24.0, "数据报送: an event is reported on time if it reached this node within "
        "this many hours.", lo=0, hi=24 * 365),
    Key("cards_zero_at", "number", DEFAULT_CARDS_ZERO_AT, "Cards per 100 cases at which the cards component of "
        "the score is 0.", lo=0, open_lo=True, hi=1e6),
    Key("batch", "integer", 5000, "Change-feed records per projection step.", lo=1, hi=100_000),
    Key("interval_s", "number", 30.0, "The running node folds new records at least this often (seconds).",
        lo=0.1, hi=86400),
    Key("weights", "table", UNSET, "Score weight per indicator.", table="stats.weights",
        default_doc="see [stats.weights]"),
    Key("bands", "table", UNSET, "Grade bands on the 0..100 score.", table="stats.bands",
        default_doc="see [stats.bands]"),
    Key("supervisors", "table", UNSET, "Rules on the supervisors themselves (监察日志).", table="stats.supervisors",
        default_doc="see [stats.supervisors]"),
))
STATS_WEIGHTS = Section("stats.weights", "指标权重", "The weight of each indicator in the 0..100 score (at least "
                        "one above 0).", "node.features.stats.config", tuple(
    Key(name, "number", float(DEFAULT_WEIGHTS[name]), f"Weight of {zh}.", lo=0, hi=1000)
    for name, zh in INDICATORS.items()))
STATS_BANDS = Section("stats.bands", "等次", "Lowest score of each grade; they must fall strictly: excellent > "
                      "good > pass.", "node.features.stats.config", tuple(
    Key(name, "number", float(DEFAULT_BANDS[name]), f"Lowest score graded {zh}.", lo=0, hi=100)
    for name, zh in (("excellent", "优秀"), ("good", "良好"), ("pass", "合格"))))
STATS_SUPERVISORS = Section("stats.supervisors", "监察人员规则", "Reminders and escalations about the supervisors' "
                            "own work.", "node.features.stats.config", (
    Key("login_days", "number", 7.0, "No action for this many days: a reminder.", lo=0, open_lo=True, hi=3650),
    Key("alert_days", "number", 3.0, "An alert unhandled this many days: a reminder.", lo=0, open_lo=True, hi=3650),
    Key("ticket_days", "number", 2.0, "A ticket from above not signed for or replied to this many days after "
        "its issue: a reminder.", lo=0, open_lo=True, hi=3650),
    Key("escalate_after_days", "number", 1.0, "Still not done this many days after the reminder: an escalation "
        "alert.", lo=0, open_lo=True, hi=3650),
    Key("names", "list of strings", [], "Supervisors watched even before their first logged action.",
        example=["张三", "李四"]),
))

# -- [metrics] (node.metrics.parse_config, as node/interfaces/cli/metrics.py uses it)

METRICS = Section("metrics", "监控指标", "The Prometheus endpoint (`/metrics`, and `/healthz`). Without a [metrics] "
                  "section there is no endpoint.", "node.features.metrics", (
    Key("listen", "string", "127.0.0.1:9464", "Where Prometheus scrapes; \"\" = no endpoint. Keep it on loopback "
        "unless a firewall limits who may scrape.", valid=_hostport_or_empty, rule=f"{_PORT}, or \"\""),
))

# -- [adapters.*] (adapters.base, adapters.push and each adapter type's constructor)

ADAPTERS_PUSH = Section("adapters.push", "推送接入", "The Ingest gRPC service local systems push records to "
                        "(plaintext with a bearer token: loopback only).", "adapters.push", (
    Key("listen", "string", UNSET, "Where local systems connect; unset: no push service.",
        valid=_loopback_hostport, rule=f"a loopback {_PORT}", nonempty=True, example="127.0.0.1:7451",
        invalid="is not a loopback HOST:PORT (the push port is plaintext with a token: bind it to 127.0.0.1 "
                "and tunnel to it)"),
    Key("token_file", "string", "push.token", "The file holding the token (made on first use, mode 0600; "
        "relative to the node home). `fednode adapters push-token` shows it.", nonempty=True),
))
ADAPTERS_COMMON = Section(
    "adapters.NAME", "数据接入", "A source this node reads records from; NAME is the operator's name for it (shown "
    "in `fednode status` and quarantine). These keys are valid in every adapter table; `type` chooses the rest.",
    "adapters.base", (
        Key("type", "string", REQUIRED, "The adapter type: a built-in one or one an installed package registers "
            "under the `fednode.adapters` entry points (it then declares its keys with `CONFIG_KEYS`).",
            nonempty=True, example="filedrop"),
        Key("enabled", "boolean", True, "Read this source."),
        Key("reader", "string", "process", "`process`: read and validate in a child process beside the node (for "
            "adapters that can read ahead, such as sql_poll); `thread`: on a worker thread of the node.",
            choices=("process", "thread")),
    ))
ADAPTERS_FILEDROP = Section(
    "adapters.NAME:filedrop", "文件投放", "CSV or JSON Lines files (UTF-8 or GB18030) dropped in a directory; finished "
    "files move to the archive.", "adapters.filedrop", (
        Key("dir", "string", REQUIRED, "The drop directory (relative to the node home).", nonempty=True,
            example="drop"),
        Key("archive", "string", UNSET, "Where finished files go (relative to the node home).", nonempty=True,
            default_doc="`DIR/archive`", example="drop/archive"),
        Key("marker", "boolean", False, "true: a file is complete when FILE.done appears; false: when it has not "
            "changed for settle_seconds."),
        Key("settle_seconds", "number", 2.0, "Seconds a file must stay unchanged before it is read.", lo=0, hi=86400),
        Key("batch", "integer", 5000, "Rows per batch.", lo=1, hi=1_000_000),
        Key("interval", "number", 1.0, "Seconds between looks when nothing is new.", lo=0, open_lo=True, hi=86400),
    ), title='[adapters.NAME] type = "filedrop"')
ADAPTERS_SQL_POLL = Section(
    "adapters.NAME:sql_poll", "数据库轮询", "A local system's database, polled by a watermark column. `mapping` or "
    "`tables` says which tables and columns become which records.", "adapters.sql_poll", (
        Key("url", "string", REQUIRED, "The database, as a SQLAlchemy URL.", nonempty=True,
            example="postgresql://user@host/db"),
        Key("mapping", "string or table", UNSET, "A built-in mapping (`exchange2009`, `gbt39046`) or a JSON mapping "
            "file (relative to the node home). One of mapping and tables is required.", nonempty=True,
            example="exchange2009"),
        Key("tables", "list of tables", UNSET, "An inline list of table mappings, instead of `mapping`.",
            nonempty=True),
        Key("only", "list of strings", UNSET, "Read only these tables of the mapping; unset: every table.",
            example=["SPXX"]),
        Key("override", "table", UNSET, "`[adapters.NAME.override.TABLE]`: fields of the mapping of TABLE replaced "
            "(e.g. its watermark column)."),
        Key("batch", "integer", 5000, "Rows per batch.", lo=1, hi=1_000_000),
        Key("interval", "number", 2.0, "Seconds between polls when nothing is new.", lo=0, open_lo=True, hi=86400),
        Key("legacy_text", "string", "gb18030", "`gb18030`: text that is GBK/GB18030 bytes stored in a latin1 "
            "column (mojibake) is decoded, and a row whose such text does not decode is quarantined; `off`: "
            "text is taken as it is (a source that really holds Western text).", zh="旧编码文本",
            choices=("gb18030", "off")),
    ), title='[adapters.NAME] type = "sql_poll"')
ADAPTER_TYPES = {"filedrop": ADAPTERS_FILEDROP, "sql_poll": ADAPTERS_SQL_POLL}

# -- [exporters.*] (node.features.export)

EXPORTERS_SQL = Section(
    "exporters.NAME:sql", "前置库导出", "Writes what this node holds (its subtree's case events, alerts as GB/T 39046 "
    "表11 电子监察 rows, supervision tickets) into the provincial exchange database (前置库), incrementally and "
    "idempotently (upsert by natural key); `fednode export DIR` runs it once.", "node.features.export", (
        Key("type", "string", REQUIRED, "The exporter type.", choices=("sql",), example="sql"),
        Key("enabled", "boolean", True, "Run this exporter."),
        Key("url", "string", REQUIRED, "The exchange database, as a SQLAlchemy URL (drivers as for sql_poll "
            "sources: mysql://, postgresql://, kingbase://, oracle://, mssql://).", nonempty=True,
            example="mysql://fednode:PASSWORD@10.0.0.5:3306/qzk"),
        Key("mapping", "string", "gbt39046", "The table layout written.", choices=("gbt39046",)),
        Key("prefix", "string", "", "Put before every table name (a shared exchange database), e.g. `FED_`.",
            valid=lambda v: v == "" or (v.endswith("_") and v.replace("_", "").isalnum() and v.isascii()
                                        and len(v) <= 20),
            rule="letters and digits ending in _ (at most 20), or \"\"", invalid="is not a table name prefix",
            example="FED_"),
        Key("create_tables", "boolean", True, "Create the layout's tables that are missing (false: they must "
            "exist, e.g. made by the province's DBA)."),
        Key("batch", "integer", 2000, "Records per export step (one target transaction).", lo=1, hi=100_000),
        Key("interval", "number", 5.0, "Seconds between looks when nothing is new.", lo=0, open_lo=True, hi=86400),
    ), title='[exporters.NAME] type = "sql"')

ALL: tuple[Section, ...] = (
    NODE, STORE, LINK, ADMIN, LOG, RECONCILE, RULES, RULES_DEFAULT, RULES_ITEM_TYPES, RULES_ANOMALY_LEVELS, CALENDAR,
    NOTIFY, TICKETS, PEOPLE, DESK, STATS, STATS_WEIGHTS, STATS_BANDS, STATS_SUPERVISORS, METRICS, ADAPTERS_COMMON,
    ADAPTERS_FILEDROP, ADAPTERS_SQL_POLL, ADAPTERS_PUSH, EXPORTERS_SQL,
)
SECTIONS: dict[str, Section] = {s.id: s for s in ALL}
# the top-level tables of node.toml, and whether node.config reads them itself
TOP_LEVEL = ("node", "store", "link", "admin", "log", "reconcile", "rules", "calendar", "notify", "tickets", "people",
             "desk", "stats", "metrics", "adapters", "exporters")
NODE_CONFIG_SECTIONS = tuple(s.id for s in ALL if s.owner == "node.core.config")


def adapter_section(kind: Any) -> Section | None:
    """The keys of a built-in adapter type (besides the common ones), or None."""
    return ADAPTER_TYPES.get(kind) if isinstance(kind, str) else None


# ---- docs/configuration.md -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(section: Section) -> str:
    keep = "".join(c for c in section.header.lower() if c.isalnum() or c in " -_")
    return keep.strip().replace(" ", "-")


def markdown() -> str:
    """docs/configuration.md, from the sections above."""
    out = [
        "# Configuration reference: node.toml",
        "",
        "<!-- Generated from node/core/configschema.py by `python -m node.core.configschema --write docs/configuration.md`."
        " Do not edit: tests/test_config_doc.py fails when this file differs from the schema. -->",
        "",
        "Each node home holds one `node.toml` (TOML, UTF-8, mode 0600: it may hold database passwords). "
        "`fednode init` writes the `[node]`, `[store]`, `[link]`, `[admin]`, `[log]` and `[reconcile]` "
        "sections; every other section is optional and its keys take the defaults below when it is absent.",
        "",
        "- `fednode check DIR` validates the whole file without starting anything and lists every problem "
        "with its fix; `fednode run` refuses to start (exit status 2) on any of them, and SIGHUP applies a new "
        "file only when it has none.",
        "- Unknown sections and keys are errors, with a \"did you mean\" when one is close: a typo never "
        "switches a service off silently.",
        "- Types are TOML's: a *number* may be written `5` or `5.0`, an *integer* only `5`; "
        "\"string or list of strings\" takes `\"log\"` as `[\"log\"]`.",
        "- Relative paths are relative to the node home.",
        "",
        "## Sections",
        "",
    ]
    for s in ALL:
        out.append(f"- [`{s.header}`](#{_anchor(s)}) {s.zh}")
    for s in ALL:
        out += ["", f"## {s.header}", "", f"{s.zh}. {s.meaning}", "", f"Read by `{s.owner}`.", "",
                "| Key | Type | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
        for k in s.keys:
            meaning = f"{k.zh}. {k.meaning}" if k.zh else k.meaning
            out.append(f"| `{k.name}` | {k.type} | {_cell(k.value_text())} | {_cell(k.allowed())} | {_cell(meaning)} |")
        if s.extra_doc:
            out += ["", s.extra_doc]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node.core.configschema",
                                description="print, write or check docs/configuration.md (the node.toml reference)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", "--markdown", dest="write", metavar="FILE", help=f"write the reference to FILE (e.g. {DOC_PATH})")
    g.add_argument("--check", metavar="FILE", help="exit 1 when FILE differs from the schema")
    args = p.parse_args(argv)
    text = markdown()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        return 0
    if args.check:
        path = Path(args.check)
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} differs from node/core/configschema.py: run python -m node.core.configschema --write {path}",
                  file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


__all__ = ["ALL", "Issue", "Key", "REQUIRED", "SECTIONS", "Section", "UNSET", "did_you_mean", "markdown", "split",
           "unknown_key_fix"]

if __name__ == "__main__":
    sys.exit(main())
