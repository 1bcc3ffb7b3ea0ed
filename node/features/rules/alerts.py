"""Reading the alerts a node holds (queries; no writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.core.store import Store

# ---- reading alerts from the store ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAlert:
    origin: str
    seq: int
    local_seq: int
    time_us: int
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "seq": self.seq, "local_seq": self.local_seq, "stored_time_us": self.time_us,
                **self.payload}


def read_alerts(store: Store) -> list[StoredAlert]:
    out: list[StoredAlert] = []
    after = 0
    while True:
        batch = store.changes(after, limit=5000, kinds=("alert",))
        for ch in batch:
            if ch.kind != "alert":
                continue
            try:
                payload = ch.payload()
            except Exception:
                continue
            if isinstance(payload, dict):
                out.append(StoredAlert(ch.origin, ch.seq, ch.local_seq, ch.time_us, payload))
        if len(batch) < 5000:
            return out
        after = batch[-1].local_seq


def filter_alerts(alerts: list[StoredAlert], *, level: int | None = None, rule: str | None = None,
                  division: str | None = None, case: str | None = None) -> list[StoredAlert]:  # fmt: skip
    from node.core import codes

    out = []
    for a in alerts:
        p = a.payload
        if level is not None and int(p.get("level", 0)) < level:
            continue
        if rule and p.get("rule_id") != rule:
            continue
        if division and not (p.get("division") == division or codes.within(str(p.get("division", "")), division)):
            continue
        if case and p.get("case_no") != case:
            continue
        out.append(a)
    return out
