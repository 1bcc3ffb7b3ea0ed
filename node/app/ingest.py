"""Getting records into a node's own logs from the CLI or the admin API (`fednode ingest`).

The same function runs inside the node (through the admin socket) or directly on the store when the
node is stopped, so the caller never has to care which. Rows from files or the admin API go through
adapters.base.commit: validated, deduplicated by natural key, bad rows quarantined with their reason
and position, in chunks of one transaction each. Synthetic events are generated valid and appended
as they are (benchmarks and the demo measure the log, not validation).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from node.app.remote import via_node_or_store
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord

CHUNK = 5000


def append_chunked(ledger: Ledger, items: Iterable[tuple[str, Any]], notify: Callable[[], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> int:
    n = 0
    it = iter(items)
    while True:
        chunk = [NewRecord(kind, payload) for kind, payload in itertools.islice(it, CHUNK)]
        if not chunk:
            return n
        ledger.append(chunk)
        n += len(chunk)
        if notify:
            notify()
        if progress:
            progress(n)


def synthetic_items(code: str, n: int, seed: int) -> Iterable[tuple[str, Any]]:
    from adapters.synthetic import generate

    return generate(n, seed, division=code.split("-", 1)[0])


def source_rows(records: list[dict[str, Any]], source: str) -> list[Any]:
    """Admin/CLI request rows → SourceRows (rows without a position are numbered)."""
    from adapters.base import SourceRow

    out = []
    for i, r in enumerate(records, start=1):
        pos = str(r.get("position") or f"{source}:{i}")
        if not isinstance(r, dict):
            out.append(SourceRow(pos, "", raw=repr(r).encode(), error="not an object"))
        elif r.get("error"):
            raw = base64.b64decode(r.get("raw_b64", "")) if r.get("raw_b64") else b""
            out.append(SourceRow(pos, str(r.get("kind") or ""), raw=raw, error=str(r["error"])))
        else:
            kind = r.get("kind")
            out.append(SourceRow(pos, kind if isinstance(kind, str) else "", r.get("payload")))
    return out


def run_request(ledger: Ledger, req: dict[str, Any], notify: Callable[[], None] | None = None) -> dict[str, Any]:
    if "synthetic" in req:
        n = append_chunked(ledger, synthetic_items(ledger.code, int(req["synthetic"]), int(req.get("seed", 0))), notify)
        return {"ingested": n, "source": "synthetic", "seed": int(req.get("seed", 0))}
    from adapters.base import Outcome, commit

    source = str(req.get("source", "admin"))
    rows = source_rows(req.get("records", []), source)
    total = Outcome()
    for i in range(0, len(rows), CHUNK):
        total.add(commit(ledger, source, rows[i : i + CHUNK]))
        if notify:
            notify()
    return {"ingested": total.accepted, **total.as_dict(), "source": source}


def ingest(home: Home, req: dict[str, Any]) -> dict[str, Any]:
    """`fednode ingest`: ``req`` through the running node (op ``ingest``), else on the store; ``via`` says which."""
    result, via = via_node_or_store(home, {"op": "ingest", **req}, lambda: run_request(home.ledger(), req))
    result["via"] = via
    return dict(result)
