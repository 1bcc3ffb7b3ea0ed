"""Getting records into a node's own logs from the CLI or the admin API (`fednode ingest`).

The same function runs inside the node (through the admin socket) or directly on the store when the
node is stopped, so the caller never has to care which.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from node.ledger import Ledger, NewRecord

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


def run_request(ledger: Ledger, req: dict[str, Any], notify: Callable[[], None] | None = None) -> dict[str, Any]:
    if "synthetic" in req:
        n = append_chunked(ledger, synthetic_items(ledger.code, int(req["synthetic"]), int(req.get("seed", 0))), notify)
        return {"ingested": n, "source": "synthetic", "seed": int(req.get("seed", 0))}
    records = req.get("records", [])
    n = append_chunked(ledger, ((r["kind"], r["payload"]) for r in records), notify)
    return {"ingested": n, "source": req.get("source", "admin")}
