"""Reading records from files for `fednode ingest DIR FILE...` (one-shot).

The same parsing as the file-drop adapter (adapters/filedrop.py): JSON Lines, one object per line,
either {"kind": K, "payload": {...}} or flat with a "kind" field; CSV with a header row and a "kind"
column. UTF-8 and GB18030 are both accepted, decided per file. A line that cannot be read (wrong
encoding, truncated, not JSON, wrong number of CSV fields, too long) does not stop the command: it
comes back with its position and reason and goes to quarantine, like rows that fail validation. Reads
are bounded as the adapter's: a line over 1 MiB comes back as its first 64 KiB only. The files are the
ones the operator names on the command line, so a link given there is followed (the drop directory's
adapter never follows one).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from node.core.errors import UsageError


def read_records(files: list[str], fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts: ``{position, kind, payload}`` or ``{position, kind, error, raw_b64}``."""
    from adapters.filedrop import format_of, read_batch, start_file

    out: list[dict[str, Any]] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{path}: no such file", fix="check the path")
        with path.open("rb") as f:
            cur = start_file(f, str(path))
            while not cur.finished:
                for r in read_batch(f, format_of(path, fmt), cur, 10_000):
                    if r.error:
                        out.append({"position": r.position, "kind": r.kind, "error": r.error,
                                    "raw_b64": base64.b64encode(r.raw).decode()})
                    else:
                        out.append({"position": r.position, "kind": r.kind, "payload": r.payload})
    return out
