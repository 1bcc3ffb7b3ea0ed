"""docs/configuration.md is node/core/configschema.py, and node/core/configschema.py is what the loaders accept.

- the reference is generated from the schema: it fails here as soon as a key, default, range or
  meaning is added or changed in the schema and the file is not regenerated;
- the schema is what every loader accepts: the key sets of the loaders it does not feed directly, the
  dataclasses the loaders fill, the keys an adapter's constructor reads, every section any code looks
  up; its defaults are the loaders' defaults (a table written with every default loads as an empty
  one); its ranges and choices are the loaders' (the owner of each section accepts each bound and
  refuses just beyond it), so what the reference says is what `fednode run` does;
- a node.toml with every key of the schema passes `fednode check`, and the header `fednode init`
  writes points at the reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.core import config, configschema
from node.core.configschema import REQUIRED, SECTIONS, UNSET, Key, Section
from node.core.errors import FednodeError
from node.features import metrics
from node.runtime import configcheck

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / configschema.DOC_PATH
FEDNODE = [sys.executable, "-m", "node.interfaces.cli"]


def fednode(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([*FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


# ---- the reference is the schema ------------------------------------------------------------------------


def test_reference_is_generated_from_the_schema() -> None:
    assert DOC.exists(), f"{DOC} is missing: python -m node.core.configschema --write {configschema.DOC_PATH}"
    assert DOC.read_text(encoding="utf-8") == configschema.markdown(), (
        f"{configschema.DOC_PATH} differs from node/core/configschema.py: "
        f"run python -m node.core.configschema --write {configschema.DOC_PATH}")
    check = subprocess.run([sys.executable, "-m", "node.core.configschema", "--check", str(DOC)], capture_output=True,
                           text=True, cwd=ROOT)
    assert check.returncode == 0, check.stderr


def documented() -> dict[str, list[str]]:
    """Section header -> the keys of its table, as docs/configuration.md lists them."""
    out: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## ["):
            current = out.setdefault(line[3:], [])
        elif current is not None and (m := re.match(r"\| `([^`]+)` \|", line)):
            current.append(m.group(1))
    return out


def test_every_section_and_key_is_documented() -> None:
    assert documented() == {s.header: list(s.names) for s in configschema.ALL}


def test_a_key_added_to_the_schema_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text(encoding="utf-8")
    link = SECTIONS["link"]
    monkeypatch.setitem(SECTIONS, "link", dataclasses.replace(
        link, keys=(*link.keys, Key("keepalive_s", "integer", 20, "Seconds between pings.", lo=1, hi=600))))
    monkeypatch.setattr(configschema, "ALL", tuple(SECTIONS[s.id] for s in configschema.ALL))
    assert "keepalive_s" in configschema.markdown() and configschema.markdown() != text
    assert configschema.main(["--check", str(DOC)]) == 1


# ---- the schema is what the loaders accept -------------------------------------------------------------------


def names(section_id: str) -> set[str]:
    return set(SECTIONS[section_id].known)


def fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_loaders_know_exactly_the_schema_keys() -> None:
    from adapters import base
    from node.core.indicators import DEFAULT_BANDS, INDICATORS
    from node.features.rules import RULES, Thresholds
    from node.features.rules import settings as alerts
    from node.features.rules.config import DEFAULT_ANOMALY_LEVELS
    from node.features.stats.config import StatsConfig, SupervisorRules
    from node.features.tickets import desk

    # node.config: every key of its sections sets a Config attribute, and every attribute has its key
    own = {(s, k) for s in configschema.NODE_CONFIG_SECTIONS for k in names(s)}
    assert set(config.FIELDS) == own
    assert set(config.FIELDS.values()) == fields(config.Config) - {"path", "sections"}
    assert set(configschema.TOP_LEVEL) == {s.split(".")[0] for s in SECTIONS}
    # the sections other modules own
    assert names("rules") == alerts._RULES_KEYS
    assert names("calendar") == alerts._CALENDAR_KEYS
    assert fields(alerts.RulesSettings) - {"engine", "office_hours"} == names("rules") - {
        "default", "item_types", "anomaly_levels"}
    assert fields(Thresholds) == names("rules.default") == names("rules.item_types.CODE")
    assert set(DEFAULT_ANOMALY_LEVELS) == names("rules.anomaly_levels")
    assert set(configschema.RULE_IDS) == set(RULES) - {"calendar_year_missing"}  # an operator alert, not a rule
    assert set(desk._CONFIG_KEYS) == names("tickets") == fields(desk.TicketsConfig)
    assert fields(StatsConfig) == names("stats") and fields(SupervisorRules) == names("stats.supervisors")
    assert set(INDICATORS) == names("stats.weights") and set(DEFAULT_BANDS) == names("stats.bands")
    assert fields(metrics.MetricsConfig) == names("metrics")
    assert set(base.COMMON_KEYS) == names("adapters.NAME") and set(base.PUSH_KEYS) == names("adapters.push")
    assert {k: set(v) for k, v in base.BUILTIN_KEYS.items()} == {
        "filedrop": names("adapters.NAME:filedrop"), "sql_poll": names("adapters.NAME:sql_poll")}
    assert set(base.BUILTIN_KEYS) == {ep.name for ep in base.adapter_types().values()} | set(base.BUILTIN_KEYS)


def test_every_section_the_code_reads_is_in_the_schema() -> None:
    """A section looked up anywhere (``sections.get("x")``) or checked by a feature module is described."""
    from node.runtime.services import MODULES

    read = set()
    for path in [*ROOT.glob("node/**/*.py"), *ROOT.glob("adapters/**/*.py")]:
        read |= set(re.findall(r"sections\.get\(\s*\"(\w+)\"", path.read_text(encoding="utf-8")))
    assert read and read <= set(configschema.TOP_LEVEL), read - set(configschema.TOP_LEVEL)
    extra = {s for m in MODULES for s in (getattr(m, "CONFIG_CHECKS", None) or {})}
    assert extra <= set(configschema.TOP_LEVEL), extra - set(configschema.TOP_LEVEL)
    assert config.FREE_SECTIONS | set(configschema.NODE_CONFIG_SECTIONS) == set(configschema.TOP_LEVEL)


class Recording(dict[str, Any]):
    """An adapter's section that remembers every key the constructor reads."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_adapters_read_only_schema_keys(tmp_path: Path) -> None:
    from adapters import push
    from adapters.base import make_adapter
    from adapters.reader import reads_in_process

    (tmp_path / "drop").mkdir()
    for kind, section in (("filedrop", {"type": "filedrop", "dir": "drop"}),
                          ("sql_poll", {"type": "sql_poll", "url": f"sqlite:///{tmp_path}/src.db",
                                        "mapping": "exchange2009"})):
        rec = Recording(section)
        ad = make_adapter("x", rec, tmp_path)
        reads_in_process("x", rec, ad)
        ad.close() if hasattr(ad, "close") else None
        assert rec.read <= names("adapters.NAME") | names(f"adapters.NAME:{kind}"), (kind, rec.read)
    rec = Recording({"listen": "127.0.0.1:7451"})
    push.token_path(tmp_path, rec)
    push.check_listen(rec["listen"])
    assert rec.read <= names("adapters.push")


# ---- defaults -----------------------------------------------------------------------------------------------


def plain_defaults(section_id: str) -> dict[str, Any]:
    return SECTIONS[section_id].defaults()


def test_schema_defaults_are_the_loaders_defaults(tmp_path: Path) -> None:
    from node.features.notify import NotifyConfig
    from node.features.rules.settings import RulesSettings
    from node.features.stats.config import StatsConfig
    from node.features.tickets.desk import TicketsConfig

    full_rules = {**plain_defaults("rules"), "default": plain_defaults("rules.default"),
                  "anomaly_levels": plain_defaults("rules.anomaly_levels")}
    assert RulesSettings.from_sections({"rules": full_rules, "calendar": plain_defaults("calendar")}) == \
        RulesSettings.from_sections({}) == RulesSettings()
    assert NotifyConfig.from_section(plain_defaults("notify")) == NotifyConfig.from_section({}) == NotifyConfig()
    assert TicketsConfig.from_section(plain_defaults("tickets"), source="t", base=tmp_path) == TicketsConfig()
    full_stats = {**plain_defaults("stats"), **{s: plain_defaults(f"stats.{s}") for s in ("weights", "bands",
                                                                                         "supervisors")}}
    assert StatsConfig.from_section(full_stats) == StatsConfig.from_section({}) == StatsConfig()
    assert metrics.parse_config("t", plain_defaults("metrics")) == metrics.parse_config("t", {})
    # node.config: a node.toml with every default loads as the Config of `init`
    path = tmp_path / "node.toml"
    body = {s: plain_defaults(s) for s in configschema.NODE_CONFIG_SECTIONS}
    body["node"] = {"code": "320303", "name": "云龙区", "level": "county"}
    path.write_text("\n".join(f"[{s}]\n" + "".join(f"{k} = {configschema.toml_value(v)}\n" for k, v in b.items())
                              for s, b in body.items()), encoding="utf-8")
    assert config.load(path) == config.Config(path, "320303", "云龙区", "county")
    # adapters: what the constructors fall back to
    from adapters.filedrop import FileDropAdapter
    from adapters.sql_poll import SqlPollAdapter

    (tmp_path / "drop").mkdir()
    bare = FileDropAdapter("d", {"dir": "drop"}, tmp_path)
    full = FileDropAdapter("d", {"dir": "drop", **plain_defaults("adapters.NAME:filedrop")}, tmp_path)
    assert (bare.marker, bare.settle, bare.batch, bare.interval, bare.archive) == \
        (full.marker, full.settle, full.batch, full.interval, full.archive) == (False, 2.0, 5000, 1.0,
                                                                                 tmp_path / "drop" / "archive")
    sql = {"url": f"sqlite:///{tmp_path}/src.db", "mapping": "exchange2009"}
    bare_sql = SqlPollAdapter("s", sql, tmp_path)
    full_sql = SqlPollAdapter("s", {**sql, **plain_defaults("adapters.NAME:sql_poll")}, tmp_path)
    assert (bare_sql.batch, bare_sql.interval) == (full_sql.batch, full_sql.interval)
    from adapters import push

    assert push.token_path(tmp_path, {}) == push.token_path(tmp_path, plain_defaults("adapters.push"))


# ---- ranges and choices --------------------------------------------------------------------------------------


def _node_toml(tmp: Path, section: str, body: dict[str, Any]) -> None:
    node = {"code": "320303", "name": "云龙区", "level": "county"}
    if section == "node":
        node.update(body)
        if "level" in body:  # a level must match the code (the one rule of [node] that ties two keys)
            node["code"] = {"province": "320000", "city": "320300", "department": "320300-GA"}.get(body["level"],
                                                                                                   "320303")
    text = "[node]\n" + "".join(f"{k} = {configschema.toml_value(v)}\n" for k, v in node.items())
    if section != "node":
        text += f"[{section}]\n" + "".join(f"{k} = {configschema.toml_value(v)}\n" for k, v in body.items())
    (tmp / "node.toml").write_text(text, encoding="utf-8")
    config.load(tmp / "node.toml")


def _node_section(section: str) -> Callable[[dict[str, Any], Path], Any]:
    return lambda body, tmp: _node_toml(tmp, section, body)


def _adapter(kind: str) -> Callable[[dict[str, Any], Path], Any]:
    def load(body: dict[str, Any], tmp: Path) -> None:
        from adapters.base import check_keys, make_adapter
        from adapters.reader import reads_in_process

        (tmp / "drop").mkdir(exist_ok=True)
        base = {"filedrop": {"type": "filedrop", "dir": "drop"},
                "sql_poll": {"type": "sql_poll", "url": f"sqlite:///{tmp}/src.db", "mapping": "exchange2009"}}[kind]
        section = {**base, **body}
        found = check_keys("x", section)
        if found:
            raise FednodeError(found[0][1])
        ad = make_adapter("x", section, tmp)
        reads_in_process("x", section, ad)
        getattr(ad, "close", lambda: None)()

    return load


def _push(body: dict[str, Any], tmp: Path) -> None:
    from adapters import push
    from adapters.base import check_keys

    found = check_keys("push", body)
    if found:
        raise FednodeError(found[0][1])
    if "listen" in body:
        push.check_listen(body["listen"])


def _people(body: dict[str, Any], tmp: Path) -> None:
    """[people]: node.features.people.accounts reads it already checked; the running node checks it (at start
    and on SIGHUP) with node/runtime/configcheck.py, so that is the owner's check here."""
    from node.features.people.accounts import LoginPolicy

    cfg = config.Config(tmp / "node.toml", "320303", "云龙区", "county", sections={"people": body})
    problems = [p for p in configcheck.check_config(cfg) if p.section == "people"]
    if problems:
        raise problems[0].error()
    LoginPolicy.of_sections({"people": body})


def _owners() -> dict[str, Callable[[dict[str, Any], Path], Any]]:
    """Each section's owner, as the running node calls it (never the schema's own check)."""
    from node.features.export import ExporterConfig
    from node.features.notify import NotifyConfig
    from node.features.rules.settings import RulesSettings
    from node.features.stats.config import StatsConfig
    from node.features.tickets.desk import TicketsConfig
    from node.runtime.services.desk import DeskSettings

    rules = RulesSettings.from_sections
    return {
        **{s: _node_section(s) for s in configschema.NODE_CONFIG_SECTIONS},
        "rules": lambda b, t: rules({"rules": b}),
        "rules.default": lambda b, t: rules({"rules": {"default": b}}),
        "rules.item_types.CODE": lambda b, t: rules({"rules": {"item_types": {"02": b}}}),
        "rules.anomaly_levels": lambda b, t: rules({"rules": {"anomaly_levels": b}}),
        "calendar": lambda b, t: rules({"calendar": b}),
        "notify": lambda b, t: NotifyConfig.from_section({"webhook_url": "http://127.0.0.1:1/", "command": ["true"],
                                                          "smtp_host": "127.0.0.1", "smtp_sender": "a@b.cn",
                                                          "sms_url": "http://127.0.0.1:1/",
                                                          **b}),  # what a level that uses them needs
        "tickets": lambda b, t: TicketsConfig.from_section(b, source="t", base=t).calendar(),
        "stats": lambda b, t: StatsConfig.from_section(b),
        "stats.weights": lambda b, t: StatsConfig.from_section({"weights": b}),
        "stats.bands": lambda b, t: StatsConfig.from_section({"bands": {"excellent": 100, "good": 50, "pass": 0,
                                                                         **b}}),
        "stats.supervisors": lambda b, t: StatsConfig.from_section({"supervisors": b}),
        "metrics": lambda b, t: metrics.parse_config("t", b),
        "desk": lambda b, t: DeskSettings.of_sections({"desk": b}, t, "t"),
        "adapters.NAME": _adapter("filedrop"),
        "adapters.NAME:filedrop": _adapter("filedrop"),
        "adapters.NAME:sql_poll": _adapter("sql_poll"),
        "adapters.push": _push,
        "people": _people,
        "exporters.NAME:sql": lambda b, t: ExporterConfig.from_section("x", {"type": "sql", "url": "sqlite:///x.db",
                                                                            **b}),
    }


def accepts(owner: Callable[[dict[str, Any], Path], Any], body: dict[str, Any], tmp: Path) -> bool:
    try:
        owner(body, tmp)
    except FednodeError:
        return False
    return True


def probes(key: Key) -> tuple[list[Any], list[Any]]:
    """(values the schema accepts at its edges, values just beyond them it refuses)."""
    good: list[Any] = []
    bad: list[Any] = []
    step = 1 if key.type == "integer" else 0.01
    if key.type in ("integer", "number"):
        if key.lo is not None:
            (bad if key.open_lo else good).append(key.lo)
            bad.append(key.lo - step)
            if key.open_lo:
                good.append(key.lo + step)
        if key.hi is not None:
            good.append(key.hi)
            bad.append(key.hi + step)
        bad += ["7", True] + ([2.5] if key.type == "integer" else [])
    if key.choices:
        good += [[c] if "list" in key.type else c for c in key.choices]
        bad.append(["nope"] if "list" in key.type else "nope")
    if key.type == "boolean":
        good += [True, False]
        bad += ["yes", 1]
    if key.valid is not None or key.nonempty:
        bad.append("x" if key.valid is not None else "")
    return good, bad


def cases() -> list[tuple[str, str]]:
    return [(s.id, k.name) for s in configschema.ALL for k in s.keys if any(probes(k))]


@pytest.mark.parametrize(("section_id", "key"), cases(), ids=[f"{s}.{k}" for s, k in cases()])
def test_owner_accepts_and_refuses_what_the_reference_says(tmp_path: Path, section_id: str, key: str) -> None:
    spec = SECTIONS[section_id].key(key)
    owner = _owners()[section_id]
    good, bad = probes(spec)
    if section_id == "stats.bands":  # the bands must also fall: only the values beyond the range are probed
        good = []
    for value in good:
        assert spec.problem(value) == "", (key, value)
        assert accepts(owner, {key: value}, tmp_path), f"[{section_id}] {key} = {value!r}: the reference allows it, " \
                                                       "its loader refuses it"
    for value in bad:
        assert spec.problem(value), (key, value)
        assert not accepts(owner, {key: value}, tmp_path), f"[{section_id}] {key} = {value!r}: the reference " \
                                                           "refuses it, its loader accepts it"


# ---- a whole node.toml, through the real commands -------------------------------------------------------------


def value_for(key: Key, tmp: Path) -> Any:
    if key.name == "url" and key.default is REQUIRED:
        return f"sqlite:///{tmp}/src.db"
    value = key.default if not isinstance(key.default, type(REQUIRED)) else key.example
    return None if value is None or value is UNSET or value is REQUIRED else value


def table(key_values: dict[str, Any]) -> str:
    return "".join(f"{k} = {configschema.toml_value(v)}\n" for k, v in key_values.items() if v is not None)


def every_key(section: Section, tmp: Path) -> dict[str, Any]:
    return {k.name: value_for(k, tmp) for k in section.keys if k.type not in ("table", "list of tables")}


def test_a_node_toml_with_every_key_passes_check(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    text = ""
    for s in configschema.ALL:
        if s.id.startswith(("adapters.NAME", "exporters.NAME")):
            continue
        header = s.header if s.id != "rules.item_types.CODE" else '[rules.item_types."02"]'
        values = every_key(s, tmp_path)
        if s.id == "node":
            values.update(code="320303", name="云龙区", level="county")
        text += f"{header}\n{table(values)}\n"
    common = every_key(SECTIONS["adapters.NAME"], tmp_path)
    for kind in configschema.ADAPTER_TYPES:
        values = {**common, "type": kind, **every_key(SECTIONS[f"adapters.NAME:{kind}"], tmp_path)}
        text += f"[adapters.{kind}]\n{table(values)}\n"
    text += f"[exporters.sql]\n{table(every_key(SECTIONS['exporters.NAME:sql'], tmp_path))}\n"
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    doc = tomllib.loads(text)
    written = {(s, k) for s, body in doc.items() if s not in ("adapters", "rules", "stats", "exporters") for k in body}
    written |= {("exporters.NAME:sql", k) for k in doc["exporters"]["sql"]}
    written |= {(f"{s}.{t}", k) for s in ("rules", "stats") for t, body in doc[s].items() if isinstance(body, dict)
                for k in body} | {(s, k) for s in ("rules", "stats") for k, v in doc[s].items() if not isinstance(v, dict)}
    written |= {("rules.item_types.CODE", k) for k in doc["rules"]["item_types"]["02"]}
    written |= {(f"adapters.{name}", k) for name, body in doc["adapters"].items() for k in body}
    expected = {(s.id.replace("adapters.NAME:", "adapters."), k.name) for s in configschema.ALL
                for k in s.keys if k.type not in ("table", "list of tables")}
    expected = {(s, k) for s, k in expected if s != "adapters.NAME"}
    assert expected - written == set(), expected - written  # every key but the tables, and adapters.NAME's below
    assert all((f"adapters.{kind}", k) in written for kind in configschema.ADAPTER_TYPES for k in names("adapters.NAME"))
    res = fednode("check", path, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ok"] is True
    cfg, problems = config.check(path)
    assert cfg is not None and problems == [] and configcheck.check_config(cfg) == []


def test_check_reports_each_refused_value_with_the_reference_range(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\ncode = "320303"\nname = "云龙区"\nlevel = "county"\n[link]\nwindow = 17\n'
                    "[tickets]\nreply_days = 0\n[rules]\nscan_interval_s = 0.1\n[stats.supervisors]\nlogin_days = 0\n"
                    '[adapters.push]\nlisten = "10.0.0.1:7451"\n', encoding="utf-8")
    res = fednode("check", tmp_path, "--json")
    assert res.returncode == 2, res.stdout + res.stderr
    found = {(p["section"], p["field"]): p for p in json.loads(res.stdout)["problems"]}
    assert set(found) == {("link", "window"), ("tickets", "reply_days"), ("rules", "scan_interval_s"),
                          ("stats", "login_days"), ("adapters.push", "listen")}, found
    assert "1 to 16" in found[("link", "window")]["error"]
    assert "more than 0" in found[("tickets", "reply_days")]["error"]
    assert "0.5 to 86400" in found[("rules", "scan_interval_s")]["error"]
    assert "loopback" in found[("adapters.push", "listen")]["error"]
    assert all(str(path) in p["error"] and p["fix"].startswith("use ") for p in found.values()), found


def test_init_header_points_at_the_reference(tmp_path: Path) -> None:
    home = tmp_path / "h"
    res = fednode("init", home, "--code", "320303", "--name", "云龙区", "--level", "county", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    head = [line for line in (home / "node.toml").read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(configschema.DOC_PATH in line for line in head), head
    assert (ROOT / configschema.DOC_PATH).is_file()
    assert "README: configuration" not in "\n".join(head)  # the section it pointed at never existed
