"""The engine over one node's store: feed -> engine -> alert records, archive in the same transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from node.core import domain
from node.core.calendar import CST, Calendar
from node.core.ledger import Ledger, NewRecord
from node.core.records import MONITOR
from node.core.store import Change, Store
from node.features.rules import RulesEngine, archive
from node.features.rules.settings import (
    ALERT_FIELDS,
    CONFIG_KEY,
    CURSOR_KEY,
    RULE_KINDS,
    STEP_KINDS,
    RulesSettings,
)
from proto.fednode.v1 import fednode_pb2 as pb

log = structlog.get_logger(__name__)
# while the links move records the rules pause after each batch for this share of its duration: a
# catch-up drains faster with the rules at half speed (measured at a county with a 200k backlog:
# 11.3-11.8 s with the pause, 14.3-14.8 s without, 10.3 s with the rules off)
_LINK_SHARE = 1.0
_CURSOR_SLACK = 50_000  # feed positions the in-memory cursor may run ahead of the stored one


# ---- the processor: feed → engine → alert records (runs on the background thread) -------------------------


_body = pb.RecordBody.FromString
_raw_decode = json.JSONDecoder().raw_decode


def _payload(body: bytes) -> Any:
    """``Change.payload()`` in half the time (measured 3.6 vs 7.2 us a record): the rules service
    decodes every record it reads, so it skips the ``Body`` tuple, json's bytes sniffing and its two
    whitespace scans (payloads are compact JSON; anything else takes the strict path)."""
    raw = _body(body).payload
    if not raw:
        return None
    text = raw.decode()
    try:
        value, end = _raw_decode(text)
    except ValueError:
        end = -1
    return value if end == len(text) else json.loads(text)


def alert_record(alert: Mapping[str, Any]) -> dict[str, Any]:
    """An engine alert as the record payload of records.md: only the documented fields."""
    payload = {k: alert[k] for k in ALERT_FIELDS if k in alert}
    try:
        return domain.validate("alert", payload)
    except domain.ValidationError as e:
        # never drop an alert: store what we have, and say why it is not clean
        log.warning("alert_not_valid", alert_id=alert.get("alert_id"), error=str(e))
        return {k: v for k, v in payload.items() if v not in (None, "")}


class RulesProcessor:
    """The engine over one node's store: rebuilt from the records, fed from the change feed. Cases with
    nothing left to watch leave memory for the archive (node/features/rules/archive.py), so memory follows the
    cases still open, not the length of the log."""

    def __init__(self, ledger: Ledger, settings: RulesSettings, calendar: Calendar, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(CST)) -> None:  # fmt: skip
        self.ledger = ledger
        self.store: Store = ledger.store
        self.settings = settings
        self.clock = clock
        self.engine = RulesEngine(calendar, settings.engine, division=ledger.code.split("-", 1)[0], bounded=True)
        # the stored cursor; ``cursor`` runs ahead of it over stretches of the feed no rule reads, which
        # are not worth a write each (a restart scans them again, finding nothing)
        self.cursor = self._stored_cursor = int(self.store.get_meta(CURSOR_KEY, "0") or 0)
        self.appended = 0
        self.skipped = 0
        self.archived = 0  # case rows written to the archive
        self.restored = 0  # cases brought back from it
        self._complaint_tickets: dict[str, str] = {}  # ticket -> complaint_no, from ticket.issue until concluded
        # held case -> its archived (waits_item, state text): a case that comes back unchanged is not rewritten
        self._restored: dict[str, tuple[bool, str]] = {}
        self._through: dict[str, int] = {}  # held case -> its input records are merged up to this local_seq
        # a rebuild skips the input records an archived case already holds, unless the configuration
        # changed since the archive was written: then every case is evaluated again
        self._config = settings.engine.fingerprint()
        self._replay_all = self.store.get_meta(CONFIG_KEY) != self._config
        self._own_alerts: list[list[int]] = []  # [first, last] monitor seqs of alerts appended here, not read back
        self.last_scan: dict[str, Any] = {}
        # rebuild progress: phase "alerts" (every alert stored), then "inputs" (rule inputs up to the
        # cursor), then "done"; one batch per call so the thread is never held for long
        self._phase = "alerts"
        self._after = 0
        self._due = 0
        self._rebuilt = 0
        self._rebuild_t0 = time.monotonic()

    # -- reading the feed -------------------------------------------------------------------------------

    def _read(self, after: int, limit: int, kinds: tuple[str, ...]) -> tuple[list[Change], int]:
        """A page of the feed (filtered in the database) and where the next one starts."""
        if self.settings.scope == "own":  # alerts and tickets from anywhere: what was raised, which complaints closed
            return self.store.feed(after, limit, kinds, origin=self.ledger.code, any_origin_kinds=("alert", "ticket."))
        return self.store.feed(after, limit, kinds)

    def _decode(self, batch: list[Change]) -> list[tuple[str, dict[str, Any], Change, str | None]]:
        """(kind, payload, change, the case it names) of each readable record."""
        out: list[tuple[str, dict[str, Any], Change, str | None]] = []
        own, own_alerts = self.ledger.code, self._own_alerts
        case_key = self.engine.case_key
        for ch in batch:
            if own_alerts and ch.origin == own and ch.channel == MONITOR:
                while own_alerts and own_alerts[0][1] < ch.seq:
                    own_alerts.pop(0)
                if own_alerts and own_alerts[0][0] <= ch.seq:
                    continue  # appended by this engine: it knows them already
            try:
                payload = _payload(ch.body)
            except Exception as e:  # bad input never stops the rules
                self._skip(ch, e)
                continue
            if isinstance(payload, dict):
                out.append((ch.kind, payload, ch, case_key(ch.kind, payload)))
        return out

    def _skip(self, ch: Change, e: Exception) -> None:
        self.skipped += 1
        log.warning("rules_record_skipped", origin=ch.origin, channel=ch.channel, seq=ch.seq, kind=ch.kind,
                    error=f"{type(e).__name__}: {e}")

    def _bring_back(self, named: Mapping[str, int]) -> set[str]:
        """Restore the archived cases a batch names that are not held, before their records are fed.
        ``named``: case -> the highest ``local_seq`` of its input records in the batch (0: only alerts).
        Returns the cases whose input records in the batch the archive already holds (not restored:
        those records are skipped)."""
        engine = self.engine
        keys = [k for k in named if not engine.has_case(k)]
        if not keys:
            return set()
        with self.store.read() as conn:
            found = archive.load(conn, keys)
        skip: set[str] = set()
        for key, (waits, through, text) in found.items():
            if 0 < named[key] <= through and not self._replay_all:
                skip.add(key)
                continue
            try:
                engine.restore_case(archive.decode(text))
            except (ValueError, TypeError) as e:  # a damaged row: the case starts again from its records
                log.error("rules_archive_row_unreadable", case=key, error=f"{type(e).__name__}: {e}")
                continue
            self._restored[key] = (waits, text)
            self._through[key] = through
            self.restored += 1
        return skip

    def _feed(self, batch: list[Change]) -> tuple[list[dict[str, Any]], list[str]]:
        """Feed a batch to the engine (bringing back the archived cases it names first). Returns the
        alerts it caused and the item codes it brought (``_revisit_waiting`` after the commit)."""
        decoded = self._decode(batch)
        # an alert must reach its case's ids: a case an alert names is always brought back (0)
        alerted = {key for kind, _, _, key in decoded if kind == "alert" and key is not None}
        named = {key: 0 if key in alerted else ch.local_seq for _, _, ch, key in decoded if key is not None}
        skip = self._bring_back(named)
        out: list[dict[str, Any]] = []
        feed = self.engine.feed
        through = self._through
        items: list[str] = []
        for kind, payload, ch, key in decoded:
            if key is not None and key in skip:
                continue
            try:
                if kind.startswith("ticket."):
                    self._on_ticket(kind, payload)
                    continue
                out.extend(feed(kind, payload, settle=False))  # deadlines: at the next scan
                if kind == "item":
                    items.append(str(payload.get("item_code", "")))
                elif key is not None and kind != "alert":
                    through[key] = ch.local_seq
            except Exception as e:  # bad input never stops the rules
                self._skip(ch, e)
        return out, items

    def _revisit_waiting(self, items: list[str]) -> list[dict[str, Any]]:
        """Archived cases that waited for these items (just committed with the batch that brought them):
        bring them back a page at a time, run the rules that needed the item, and store what they raise
        with the page, in one transaction that also marks them no longer waiting. A crash before it
        repeats nothing: the rebuild feeds the item again, and these cases still wait for it."""
        out: list[dict[str, Any]] = []
        for item_code in dict.fromkeys(items):
            if not self.engine.knows_item(item_code):
                continue
            after = ""
            while True:
                with self.store.read() as conn:
                    page = archive.waiting(conn, item_code, after, limit=500)
                if not page:
                    break
                after = page[-1]
                keys = [key for key in page if not self.engine.has_case(key)]  # held ones were re-checked
                self._bring_back(dict.fromkeys(keys, 0))
                alerts: list[dict[str, Any]] = []
                for key in keys:
                    alerts.extend(self.engine.revisit(key))
                self._commit(alerts, self._evict())
                out.extend(alerts)
        return out

    def _on_ticket(self, kind: str, payload: dict[str, Any]) -> None:
        """A complaint's deadline is watched until its ticket is concluded (办结)."""
        ticket = str(payload.get("ticket", ""))
        if kind == "ticket.issue" and payload.get("complaint_no"):
            self._complaint_tickets[ticket] = str(payload["complaint_no"])
        elif kind == "ticket.conclude" and ticket in self._complaint_tickets:
            self.engine.close_complaint_no(self._complaint_tickets.pop(ticket))

    def _evict(self) -> list[archive.Row]:
        """The cases the engine let go, as archive rows; those unchanged since they came back are not
        written again."""
        rows: list[archive.Row] = []
        for key, item_code, waits, state in self.engine.evict():
            text = archive.encode(state)
            through = self._through.pop(key, 0)
            if self._restored.pop(key, None) != (waits, text):
                rows.append((key, item_code, waits, through, text))
        return rows

    def rebuild(self) -> list[dict[str, Any]]:
        """Rebuild the engine from the records: every alert stored, then every rule input up to the
        cursor. Returns (and appends) what is due but was never stored (nothing, unless the rules
        configuration changed)."""
        due: list[dict[str, Any]] = []
        while True:
            done, alerts = self.rebuild_step()
            due.extend(alerts)
            if done:
                return due

    @property
    def rebuilt(self) -> bool:
        return self._phase == "done"

    def rebuild_step(self) -> tuple[bool, list[dict[str, Any]]]:
        """One batch of the rebuild: (finished, the alerts it found due and appended)."""
        limit = self.settings.batch
        if self._phase == "alerts":
            batch, mark = self._read(self._after, limit, ("alert",))
            due, items = self._feed(batch)
        else:
            batch, mark = self._read(self._after, limit, RULE_KINDS)
            past = bool(batch) and batch[-1].local_seq > self.cursor
            batch = [c for c in batch if c.local_seq <= self.cursor]
            due, items = self._feed(batch)
            if past:
                mark = self.cursor
        self._commit(due, self._evict())  # (cases come and go during the rebuild too)
        due += self._revisit_waiting(items)
        self._due += len(due)
        self._rebuilt += len(batch)
        full = len(batch) == limit and (self._phase == "alerts" or mark < self.cursor)
        self._after = mark
        if full:
            return False, due
        if self._phase == "alerts":
            self._phase, self._after = "inputs", 0
            return False, due
        self._phase = "done"
        if self._replay_all:  # the archive now holds what this configuration decides
            self._commit([], [], meta={CONFIG_KEY: self._config})
            self._replay_all = False
        log.info("rules_rebuilt", records=self._rebuilt, cursor=self.cursor, open_cases=self.engine.open_case_count(),
                 cases_held=self.engine.held_case_count(), cases_restored=self.restored, due=self._due,
                 s=round(time.monotonic() - self._rebuild_t0, 2))  # fmt: skip
        return True, due

    def step(self) -> tuple[int, list[dict[str, Any]]]:
        """Feed the next batch after the cursor; append its alerts, the cases it let go and the new cursor
        in one transaction. Returns (records read, alerts appended)."""
        batch, mark = self._read(self.cursor, self.settings.batch, STEP_KINDS)
        if not batch:
            if mark > self.cursor:
                self.cursor = mark
                if mark - self._stored_cursor >= _CURSOR_SLACK:
                    self._commit([], [], cursor=mark)
            return 0, []
        alerts, items = self._feed(batch)
        self._commit(alerts, self._evict(), cursor=mark)
        return len(batch), alerts + self._revisit_waiting(items)

    def scan(self, now: datetime | None = None) -> list[dict[str, Any]]:
        alerts = self.evaluate(now)
        self.store_alerts(alerts)
        return alerts

    def evaluate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The time rules at ``now`` (CPU only: no store access). What it returns must then be stored
        (``store_alerts``), or the engine rebuilt."""
        now = now or self.clock()
        t0 = time.perf_counter()
        alerts = self.engine.scan(now)
        self.last_scan = {"at": now.isoformat(), "alerts": len(alerts), "s": round(time.perf_counter() - t0, 3)}
        return alerts

    def store_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Append a scan's alerts, with the cases the scan left nothing to watch for. A batch of alerts
        per transaction: the first scan after a long catch-up may reach thousands of cards at once (a
        failure part way is safe: the engine is then rebuilt, and the next scan raises the rest)."""
        size = self.settings.batch
        for i in range(0, max(len(alerts), 1), size):
            self._commit(alerts[i : i + size], self._evict() if i + size >= len(alerts) else [])

    def _commit(self, alerts: list[dict[str, Any]], rows: list[archive.Row], cursor: int | None = None,
                meta: Mapping[str, str] | None = None) -> None:
        for a in alerts:
            if a.get("rule_id") == "calendar_year_missing":
                log.error("calendar_year_missing", year=a.get("year"), alert_id=a.get("alert_id"),
                          message=a.get("message"), fix="import the year's official holiday list with "
                          "`fednode calendar import DIR FILE`; cases in that year are not monitored until then")
        if not alerts and not rows and cursor is None and not meta:
            return
        records = [NewRecord("alert", alert_record(a)) for a in alerts]

        def also(tx: Any) -> None:
            archive.put(tx.conn, rows)
            if cursor is not None:
                tx.set_meta(CURSOR_KEY, str(cursor))
            for k, v in (meta or {}).items():
                tx.set_meta(k, v)

        if records:
            result = self.ledger.append(records, also=also).get(MONITOR)
            if result is not None and result.appended:
                self._own_alerts.append([result.head.seq - result.appended + 1, result.head.seq])
        else:
            with self.store.write() as tx:
                also(tx)
        if cursor is not None:
            self.cursor = self._stored_cursor = cursor
        self.appended += len(records)
        self.archived += len(rows)

    def caught_up(self) -> bool:
        """True when no record the rules read lies after the cursor (their own alerts included)."""
        batch, _ = self._read(self.cursor, 1, STEP_KINDS)
        return not batch

    def status(self) -> dict[str, Any]:
        e = self.engine
        # read while the service works in another thread: only len() and copies of small sets
        return {"enabled": True, "state": "running" if self.rebuilt else "rebuilding", "cursor": self.cursor,
                "caught_up": self.rebuilt and self.caught_up(), "open_cases": e.open_case_count(),
                "cases_held": e.held_case_count(), "cases_archived": self.archived, "cases_restored": self.restored,
                "alerts_known": e.emitted_count(), "alerts_appended": self.appended,
                "records_skipped": self.skipped, "bad_objects": len(e.bad_objects),
                "missing_years": sorted(e.missing_years),
                "calendar_years": list(e.calendar.covered_years()), "last_scan": self.last_scan}  # fmt: skip
