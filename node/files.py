"""Reading records from files for `fednode ingest DIR FILE...` (one-shot).

JSON Lines: one object per line, either {"kind": K, "payload": {...}} or a flat object with a "kind"
field. CSV: a header row with a "kind" column; the other columns are payload fields. UTF-8 and
GB18030 are both accepted (local systems in China commonly write the latter). Every record is
validated (node.domain); the first invalid one stops the command with its file, line and field.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from node.errors import UsageError


def _text(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UsageError(f"{path}: neither UTF-8 nor GB18030 text", fix="save the file as UTF-8 or GB18030")


def read_records(files: list[str], fmt: str | None = None) -> list[dict[str, Any]]:
    from node.domain import ValidationError, validate

    out: list[dict[str, Any]] = []
    for name in files:
        path = Path(name)
        if not path.exists():
            raise UsageError(f"{path}: no such file", fix="check the path")
        kind_of_file = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        text = _text(path)
        rows: list[tuple[int, dict[str, Any]]] = []
        if kind_of_file == "csv":
            rows = [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(io.StringIO(text)))]
        else:
            for i, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((i, json.loads(line)))
                except ValueError as e:
                    raise UsageError(f"{path}:{i}: not valid JSON ({e})", fix="one JSON object per line") from None
        for line_no, obj in rows:
            if not isinstance(obj, dict) or "kind" not in obj:
                raise UsageError(f"{path}:{line_no}: no 'kind' field", fix="every record names its kind, e.g. case.accept")
            kind = str(obj.pop("kind"))
            payload = obj.pop("payload", obj)
            try:
                out.append({"kind": kind, "payload": validate(kind, payload)})
            except ValidationError as e:
                raise UsageError(f"{path}:{line_no}: {e.message}", fix=e.fix) from None
    return out
