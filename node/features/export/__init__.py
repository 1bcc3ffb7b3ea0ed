"""Export to the provincial platform's exchange database (前置库): what a node holds — its subtree's case
events, alerts (表11 电子监察) and supervision tickets — written into SQL tables in the GB/T 39046 layout.

Rules of this package:
- ``gbt39046``: the layout and the record → row mapping, pure (records in, rows out);
- ``sql``: the one small interface to a target database (``SqlTarget``: create the tables, upsert rows
  by their natural key in one transaction); any SQLAlchemy URL, drivers as for sources
  (adapters/drivers.py: ``pip install 'fednode[mysql]'`` ...);
- configured as ``[exporters.NAME] type = "sql", url, mapping = "gbt39046"`` (node/core/configschema.py
  ``EXPORTERS_SQL``); ``ExporterConfig.from_section`` is the loader;
- the use case (node/app/export.py) follows the store's change feed from a cursor kept in the node's
  own store (meta ``exporter:NAME``), writes a page of rows to the target and commits it, then moves
  the cursor: a crash between the two only writes the same rows again (upserts), so the target holds
  each record exactly once however often the node is killed;
- this package never writes the node's store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.core import configschema
from node.core.errors import ConfigError

TYPES = ("sql",)


@dataclass(frozen=True)
class ExporterConfig:
    name: str
    url: str
    mapping: str = "gbt39046"
    prefix: str = ""
    create_tables: bool = True
    batch: int = 2000
    interval: float = 5.0

    @classmethod
    def from_section(cls, name: str, section: Any, where: str = "") -> ExporterConfig:
        where = where or f"[exporters.{name}]"
        if not isinstance(section, dict):
            raise ConfigError(f"{where} must be a table", fix=f'write [exporters.{name}] with type = "sql" and url = ...')
        spec = configschema.EXPORTERS_SQL
        kind = section.get("type")
        if kind not in TYPES:
            raise ConfigError(f"{where}: exporters.{name}.type = {kind!r} is not one of: {', '.join(TYPES)}",
                              fix='use type = "sql"')
        spec.check_unknown(section, where, prefix=f"exporters.{name}.")
        get = {k: spec.get(section, k, where, label=f"exporters.{name}.{k}") for k in spec.names}
        return cls(name=name, url=get["url"], mapping=get["mapping"], prefix=get["prefix"],
                   create_tables=get["create_tables"], batch=int(get["batch"]), interval=float(get["interval"]))


def configured(sections: dict[str, Any]) -> dict[str, ExporterConfig]:
    """The enabled ``[exporters.NAME]`` tables of node.toml, loaded (ConfigError on the first problem)."""
    body = sections.get("exporters") or {}
    if not isinstance(body, dict):
        raise ConfigError("[exporters] must be a table", fix='write [exporters.NAME] tables with type = "sql"')
    out = {}
    for name, section in body.items():
        if isinstance(section, dict) and section.get("enabled", True) is False:
            continue
        out[name] = ExporterConfig.from_section(name, section)
    return out
