"""Ready source mappings for the SQL poll adapter, and how a mapping is read.

A mapping is data: ``{"name": ..., "tables": [TableMapping, ...]}``; each table mapping says

- ``table``: the source table (``schema.table`` allowed); names match exactly (case-sensitive);
- ``kind``: the record kind every row of it becomes;
- ``watermark``: the column that only grows (a timestamp such as 同步时间, or an id); ``key``: a unique
  column that orders rows sharing one watermark value (ties); ``key`` may equal ``watermark``;
- ``fields``: record field → source column (a string), or a dict ``{"column": C}`` with optional
  ``"split": ";"`` (a text column listing several values), ``"json": true`` (a JSON text column),
  ``"map": {source value: code}``; or ``{"value": V}``: a constant.

``[adapters.<name>] mapping = "gbt39046" | "exchange2009" | "/path/to/mapping.json"``; ``tables = [...]``
inline in node.toml works too (same shape). ``only = ["SPXX", ...]`` polls just those tables of a
mapping; ``[adapters.<name>.override.<table>]`` changes one table's keys (e.g. ``watermark = "XH"``).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.core.errors import ConfigError

READY = ("gbt39046", "exchange2009")


def load(spec: Any, *, where: str = "[adapters]", base: Path | None = None) -> dict[str, Any]:
    """A mapping from a ready name, a JSON file path, or an inline dict; checked for shape."""
    if isinstance(spec, dict):
        mapping = spec
    elif isinstance(spec, str) and spec in READY:
        import importlib

        mapping = copy.deepcopy(importlib.import_module(f"{__name__}.{spec}").MAPPING)
    elif isinstance(spec, str):
        path = Path(spec)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where}: mapping {spec!r} cannot be read ({e})",
                              fix=f"use one of {', '.join(READY)} or a JSON file with a 'tables' list") from None
    else:
        raise ConfigError(f"{where}: mapping is missing", fix=f"set mapping = one of {', '.join(READY)}")
    check(mapping, where)
    return mapping


def check(mapping: Any, where: str) -> None:
    from node.core.domain import SCHEMAS

    tables = mapping.get("tables") if isinstance(mapping, dict) else None
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{where}: the mapping has no 'tables' list", fix="list at least one source table")
    for i, tm in enumerate(tables):
        at = f"{where} tables[{i}]"
        for k in ("table", "kind", "watermark", "key", "fields"):
            if k not in tm:
                raise ConfigError(f"{at}: '{k}' is missing", fix="see adapters/mappings/__init__.py for the shape")
        if tm["kind"] not in SCHEMAS:
            raise ConfigError(f"{at}: unknown kind {tm['kind']!r}", fix=f"use one of: {', '.join(SCHEMAS)}")
        unknown = set(tm["fields"]) - set(SCHEMAS[tm["kind"]])
        if unknown:
            raise ConfigError(f"{at}: {tm['kind']} has no field(s) {', '.join(sorted(unknown))}",
                              fix="map only the fields listed in docs/records.md")
        for f, spec in tm["fields"].items():
            if not isinstance(spec, str) and not (isinstance(spec, dict) and ("column" in spec or "value" in spec)):
                raise ConfigError(f"{at}: field {f!r} must name a column or give a value",
                                  fix='write "column_name" or {"column": ..., "split": ";"} or {"value": ...}')


def columns_of(tm: dict[str, Any]) -> list[str]:
    cols = [tm["watermark"], tm["key"]]
    for spec in tm["fields"].values():
        c = spec if isinstance(spec, str) else spec.get("column")
        if c and c not in cols:
            cols.append(c)
    return cols


def row_mapper(tm: dict[str, Any]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``apply`` for rows read as tuples in ``columns_of(tm)`` order, built once per table: the SQL
    poll adapter maps every source row, and plain column fields (nearly all) then cost one index each."""
    cols = columns_of(tm)
    fields = tm["fields"]
    if all(isinstance(spec, str) for spec in fields.values()):
        pairs = tuple((f, cols.index(spec)) for f, spec in fields.items())

        def plain(row: Sequence[Any]) -> dict[str, Any]:
            return {f: v for f, i in pairs if (v := row[i]) is not None}

        return plain
    return lambda row: apply(tm, dict(zip(cols, row, strict=True)))


def apply(tm: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The payload for one source row (validation happens later, in adapters.base.prepare). A
    transform that fails leaves the raw value, so validation reports the field, the value and the rule."""
    out: dict[str, Any] = {}
    for f, spec in tm["fields"].items():
        if isinstance(spec, str):
            v = row.get(spec)
        elif "value" in spec:
            v = spec["value"]
        else:
            v = row.get(spec["column"])
            if isinstance(v, str) and spec.get("split") is not None:
                v = [s.strip() for s in v.split(spec["split"]) if s.strip()]
            elif isinstance(v, str) and spec.get("json"):
                with contextlib.suppress(ValueError):
                    v = json.loads(v)
            if "map" in spec and v is not None and str(v).strip() in spec["map"]:
                v = spec["map"][str(v).strip()]
        if v is not None:
            out[f] = v
    return out
