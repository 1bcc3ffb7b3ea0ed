"""Export to the provincial exchange database (前置库): `fednode export DIR`, and the step the running node's
ExporterService repeats (node/runtime/services/exporters.py).

Rules of this module:
- an exporter follows the store's change feed (``Store.feed``: records stored here, own, children's and
  tickets from above, in arrival order) from its cursor, meta ``exporter:NAME`` in the node's own store;
- one ``step``: read one page of case events, alerts and ticket records after the cursor, map them
  (node/features/export/gbt39046.py), write them to the target in one transaction (upserts by natural
  key), THEN move the cursor. A crash (kill -9) between the two writes the same rows again on restart:
  upserts, so the target holds every record once. The cursor names the target it was made for; another
  target (a new url, a new prefix) starts from the beginning;
- tickets are rows of their projected state: a page holding any ticket record re-projects those tickets
  from every ticket record held (kept incrementally per exporter, as the tickets service does);
- a record whose body does not parse is counted (``skipped``) and passed: the verifier reports it, the
  export does not stop on it;
- running node: `fednode export` asks the node (admin op ``export``), which runs the steps on its
  background thread; stopped node: the steps run here, on the store.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from node.app.remote import via_node_or_store
from node.core.errors import FednodeError, UsageError
from node.core.home import Home
from node.core.records import channel_of_kind
from node.core.store import Store
from node.features.export import ExporterConfig, configured, gbt39046
from node.features.export.sql import SqlTarget
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import TICKET_PREFIX, HeldIndex

KINDS = ("case.", "alert", "ticket.")
CST = dt.timezone(dt.timedelta(hours=8))


def cursor_key(name: str) -> str:
    return f"exporter:{name}"


@dataclass
class Step:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows written
    records: int = 0  # records of the page
    skipped: int = 0  # bodies that did not parse
    after: int = 0  # the cursor now
    more: bool = False  # the page was full: call again


class Exporter:
    """One configured exporter: its target and, for the running node, its incremental ticket index."""

    def __init__(self, cfg: ExporterConfig) -> None:
        self.cfg = cfg
        self.target = SqlTarget(cfg)
        self.tickets = HeldIndex((TICKET_PREFIX,))
        self.totals: dict[str, int] = {}
        self.last_error = ""
        self.state = "starting"

    # -- the cursor, in the node's store ------------------------------------------------------------------

    def cursor(self, store: Store) -> int:
        raw = store.get_meta(cursor_key(self.cfg.name))
        try:
            cur = json.loads(raw) if raw else None
        except ValueError:
            cur = None
        if not isinstance(cur, dict) or cur.get("target") != self.target.identity:
            return 0  # never run, or made for another database: from the start (upserts make it safe)
        return int(cur.get("after", 0))

    def _save(self, store: Store, after: int) -> None:
        value = json.dumps({"after": after, "target": self.target.identity})
        with store.write() as tx:
            tx.set_meta(cursor_key(self.cfg.name), value)

    # -- one page --------------------------------------------------------------------------------------------

    def step(self, store: Store) -> Step:
        after = self.cursor(store)
        changes, resume = store.feed(after, limit=self.cfg.batch, kinds=KINDS)
        out = Step(records=len(changes), after=resume, more=len(changes) >= self.cfg.batch)
        now = dt.datetime.now(CST).replace(tzinfo=None, microsecond=0)
        rows: dict[str, list[dict[str, Any]]] = {}
        touched: set[str] = set()
        for c in changes:
            try:
                payload = c.payload()
            except (FednodeError, ValueError):
                out.skipped += 1
                continue
            if not isinstance(payload, dict):
                out.skipped += 1
                continue
            if c.kind.startswith("ticket."):
                if isinstance(payload.get("ticket"), str):
                    touched.add(payload["ticket"])
                continue
            trace = gbt39046.trace(c.origin, c.channel, c.seq, c.local_seq, now)
            if c.kind == "alert":
                rows.setdefault("supervision", []).append({**gbt39046.alert_row(payload), **trace})
                continue
            mapped = gbt39046.case_row(c.kind, payload)
            if mapped is not None:
                rows.setdefault(mapped[0], []).append({**mapped[1], **trace})
        if touched:
            rows["supervision_ticket"] = self._ticket_rows(store, touched, now)
        if rows:
            out.rows = self.target.write(rows)
        if resume != after:
            self._save(store, resume)
        for name, n in out.rows.items():
            self.totals[name] = self.totals.get(name, 0) + n
        return out

    def _ticket_rows(self, store: Store, touched: set[str], now: dt.datetime) -> list[dict[str, Any]]:
        held = [h for h in self.tickets.refresh(store)
                if isinstance(h.payload, dict) and h.payload.get("ticket") in touched]
        proj = lc.project_all([(h.kind, h.payload, h.origin) for h in held if h.kind in lc.EVENTS])
        out = []
        channel = channel_of_kind("ticket.issue")
        for ticket in sorted(touched):
            st = proj.tickets.get(ticket)
            if st is None:
                continue  # its issue is not held here (yet): the row comes with it
            mine = [h for h in held if h.payload.get("ticket") == ticket]
            issue = next((h for h in mine if h.kind == "ticket.issue"), mine[0])
            out.append({**gbt39046.ticket_row(st),
                        **gbt39046.trace(issue.origin, channel, issue.seq, max(h.local_seq for h in mine), now)})
        return out

    def run(self, store: Store, max_steps: int = 1_000_000) -> dict[str, Any]:
        """Steps until the feed is exhausted: what `fednode export` does."""
        total: dict[str, int] = {}
        records = skipped = 0
        after = self.cursor(store)
        for _ in range(max_steps):
            s = self.step(store)
            records += s.records
            skipped += s.skipped
            after = s.after
            for k, n in s.rows.items():
                total[k] = total.get(k, 0) + n
            if not s.more:
                break
        return {"name": self.cfg.name, "target": self.target.identity.split("|")[0], "records": records,
                "rows": total, "skipped": skipped, "cursor": after}

    def status(self) -> dict[str, Any]:
        return {"type": "sql", "target": self.target.identity.split("|")[0], "state": self.state,
                "rows": dict(self.totals), "last_error": self.last_error}

    def close(self) -> None:
        self.target.close()


def selected(home: Home, name: str | None) -> dict[str, ExporterConfig]:
    cfgs = configured(home.config.sections)
    if name is not None:
        if name not in cfgs:
            raise UsageError(f"no exporter {name!r} in {home.config.path}",
                             fix=f"configure [exporters.{name}] type = \"sql\", url = ..., or name one of: "
                                 f"{', '.join(cfgs) or '(none configured)'}")
        return {name: cfgs[name]}
    if not cfgs:
        raise UsageError(f"no exporter is configured in {home.config.path}",
                         fix='add [exporters.NAME] with type = "sql", url = "mysql://user:pw@host/db", '
                             'mapping = "gbt39046" (deploy/README.md, 前置库)')
    return cfgs


def run_local(store: Store, cfgs: dict[str, ExporterConfig]) -> dict[str, Any]:
    """Every exporter of ``cfgs`` once, until caught up (a stopped node, or the running node's admin op
    for an exporter it does not run)."""
    out = []
    for cfg in cfgs.values():
        ex = Exporter(cfg)
        try:
            out.append(ex.run(store))
        finally:
            ex.close()
    return {"exporters": out}


def export(home: Home, name: str | None = None) -> dict[str, Any]:
    """`fednode export DIR [--name NAME]`: every (or one) configured exporter, until it has caught up."""
    cfgs = selected(home, name)

    def local() -> dict[str, Any]:
        try:
            return run_local(home.store(), cfgs)
        finally:
            home.close()

    result, via = via_node_or_store(home, {"op": "export", "name": name}, local)
    return {**result, "via": "node" if via == "admin" else "store"}
