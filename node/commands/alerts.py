"""The monitoring rules in the running node, and `fednode alerts` / `fednode calendar`.

Rules of this module:
- The RulesService follows this node's change feed (``Store.feed``: only the kinds the rules read,
  filtered in the database) with its own cursor (meta ``rules.cursor``). Every batch is fed to the
  pure engine (node.rules) and the alerts it causes are appended as signed ``alert`` records (monitor
  channel, so the links forward them up) IN THE SAME TRANSACTION as the cursor moves past the batch
  (``Ledger.append(..., also=...)``): a crash either keeps both or neither.
- Bounded memory: the engine holds only the cases that can still raise a card without a new record;
  the others (closed, or every deadline reached) go to the archive (node/rules/archive.py, table
  ``rules_cases``) in that same transaction, and come back before a record about them is fed, or
  when the item they waited for arrives. Memory follows the open cases, not the length of the log.
- The work runs on the runtime's background thread (``rt.bg``), a batch (``[rules] batch``) per turn;
  while the links move records, the service pauses after each batch as long as the batch took, so a
  catch-up's links are not starved of the interpreter.
- Time-based rules run in a periodic scan: an APScheduler interval job (``rules.scan``, stored in the
  node's database), and after the feed is followed to its end (cheap: deadlines are computed for the
  cases touched since, then only cases whose next deadline passed are looked at).
- Idempotent across restarts: on start the engine is rebuilt from the records themselves, every
  stored ``alert`` first (cards already shown, from here or from children, are never repeated, only
  escalated), then every rule input up to the cursor, except those an archived case already holds.
  The archive is a cache of what the records say, written with the cursor: it never claims an alert
  the log does not hold. When the rules configuration changed (meta ``rules.config``), the rebuild
  evaluates every archived case again, so what the new configuration raises is raised then.
- Scope: by default (``scope = "own"``) the engine reads the cases born at this node. At a parent
  whose children do not run the rules, ``scope = "subtree"`` makes it read every case the feed
  brings (the children's records come through it); alerts already raised anywhere (a child's, a
  local system's with the same id) are read in any scope and never raised again. Run the rules at
  one level per case: a parent in scope "subtree" above children that run them too may raise an
  alert before the child's copy arrives.
- ``[rules] enabled = false`` switches it off (a local system produces monitoring results that come
  in through an adapter); the scan job is then removed.
- A calendar year the calendar does not cover raises one operator alert record per year (rule
  ``calendar_year_missing``, level 4) and an error log line; `fednode calendar import` fixes it, and
  the running node picks the import up at once (admin op ``rules.reload``).
- A complaint is watched (rule complaint_time) until the ticket that carries its ``complaint_no``
  is concluded (``ticket.conclude``); ticket records are read from any origin.
- Bad records (unreadable payloads, impossible times) are logged and skipped; they never stop the
  service or move the cursor backwards.
- `alerts list|show` and `calendar show` only read (the work log gets at most the day's first visit,
  node/auditlog.py); `alerts handle ALERT_ID --note TEXT` is the act that records an alert as dealt with
  (one ``audit.action`` targeting it, what the supervisor rule alert_unhandled looks for).

Configuration (node.toml)::

    [rules]
    enabled = true
    scope = "own"                # or "subtree" at a parent over children that do not run the rules
    scan_interval_s = 60
    batch = 1000                 # records per turn on the background thread
    [rules.default]              # thresholds (node/rules/config.py), every one optional
    case_warn_before_days = 2
    [rules.item_types.02]        # per item type, only what differs
    step_red_ratio = 1.5
    [rules.anomaly_levels]
    workflow = 2

    [calendar]
    office_hours = "08:30-12:00,13:30-17:30"

Operator calendar overrides live in ``DIR/calendar-overrides.json`` (written by `calendar import`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from node import admin, domain
from node.calendar import (
    CST,
    LIBRARY_YEARS,
    Calendar,
    OfficeHours,
    Overrides,
    load_overrides,
    parse_overrides,
)
from node.cli import command, emit, open_home
from node.errors import ConfigError, FednodeError, NotFound, UsageError
from node.home import Home
from node.ledger import Ledger, NewRecord
from node.notify import Dispatcher
from node.notify import load as load_dispatcher
from node.records import MONITOR
from node.rules import RulesConfig, RulesEngine, archive
from node.rules.engine import INPUT_KINDS, LEVEL_NAMES
from node.services import Service
from node.store import Change, Store
from proto.fednode.v1 import fednode_pb2 as pb

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)

CURSOR_KEY = "rules.cursor"
CONFIG_KEY = "rules.config"  # fingerprint of the rules configuration the archive was written with
JOB_ID = "rules.scan"
OVERRIDES_FILE = "calendar-overrides.json"
RULE_KINDS = (*INPUT_KINDS, "ticket.issue", "ticket.conclude")  # what the rules read, besides alerts
STEP_KINDS = (*RULE_KINDS, "alert")
# while the links move records the rules pause after each batch for this share of its duration: a
# catch-up drains faster with the rules at half speed (measured at a county with a 200k backlog:
# 11.3-11.8 s with the pause, 14.3-14.8 s without, 10.3 s with the rules off)
_LINK_SHARE = 1.0
_CURSOR_SLACK = 50_000  # feed positions the in-memory cursor may run ahead of the stored one
ALERT_FIELDS = tuple(domain.SCHEMAS["alert"])
LEVELS_BY_NAME = {"warn": 1, "yellow": 2, "red": 3, "serious": 4, **{v: k for k, v in LEVEL_NAMES.items()}}
_RULES_KEYS = {"enabled", "scope", "scan_interval_s", "batch", "default", "item_types", "anomaly_levels"}
SCOPES = ("own", "subtree")
_CALENDAR_KEYS = {"office_hours"}


class RulesError(FednodeError):
    code = "rules"


# ---- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulesSettings:
    enabled: bool = True
    scope: str = "own"  # "own": cases born at this node; "subtree": also every case its children send up
    scan_interval_s: float = 60.0
    batch: int = 1000  # records per background-thread turn: bounds the memory a batch takes
    engine: RulesConfig = field(default_factory=RulesConfig)
    office_hours: OfficeHours = field(default_factory=OfficeHours)

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any], *, where: str = "node.toml") -> RulesSettings:
        rules = dict(sections.get("rules") or {})
        cal = dict(sections.get("calendar") or {})
        for name, section, known in (("rules", rules, _RULES_KEYS), ("calendar", cal, _CALENDAR_KEYS)):
            unknown = set(section) - known
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)} in [{name}]",
                                  fix=f"use {sorted(known)}")
        enabled = rules.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: rules.enabled = {enabled!r} must be true or false", fix="enabled = false")
        scope = rules.get("scope", "own")
        if scope not in SCOPES:
            raise ConfigError(f"{where}: rules.scope = {scope!r} is not valid",
                              fix='"own" (cases born here) or "subtree" (also the children\'s cases, when they '
                                  'do not run the rules themselves)')
        interval = rules.get("scan_interval_s", 60)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.5 <= interval <= 86400:
            raise ConfigError(f"{where}: rules.scan_interval_s = {interval!r} is not valid",
                              fix="seconds between scans, 0.5..86400 (default 60)")
        batch = rules.get("batch", 1000)
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100_000:
            raise ConfigError(f"{where}: rules.batch = {batch!r} is not valid", fix="records per batch, 1..100000")
        engine = RulesConfig.from_dict(
            {k: rules[k] for k in ("default", "item_types", "anomaly_levels") if k in rules}, source=f"{where} [rules]"
        )
        hours_text = cal.get("office_hours")
        if hours_text is not None and not isinstance(hours_text, str):
            raise ConfigError(f"{where}: calendar.office_hours must be a string", fix='"08:30-12:00,13:30-17:30"')
        hours = OfficeHours.parse(hours_text) if hours_text else OfficeHours()
        return cls(enabled, scope, float(interval), batch, engine, hours)


def overrides_path(home_dir: Path) -> Path:
    return Path(home_dir) / OVERRIDES_FILE


def stored_overrides(home_dir: Path) -> Overrides:
    """The operator's calendar overrides kept in the node home (empty when none were imported)."""
    path = overrides_path(home_dir)
    if not path.exists():
        return Overrides()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})",
                          fix="restore it from backup, or delete it and `fednode calendar import` again") from None
    rows = [{"date": y, "kind": "year"} for y in doc.get("years", [])] + list(doc.get("days", []))
    return parse_overrides(rows, source=str(path))


def load_calendar(home_dir: Path, settings: RulesSettings) -> Calendar:
    return Calendar(settings.office_hours, stored_overrides(home_dir))


def import_overrides(home_dir: Path, file: str | Path) -> dict[str, Any]:
    """Validate FILE and merge it into the stored overrides (a date in FILE replaces the stored one)."""
    new = load_overrides(file)
    merged = stored_overrides(home_dir).merged(new)
    doc = {
        "years": sorted(merged.years),
        "days": [{"date": d.isoformat(), "kind": o.kind, "name": o.name} for d, o in sorted(merged.days.items())],
    }
    path = overrides_path(home_dir)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the node never reads a half-written file
    return {"file": str(file), "days": len(new.days), "years": sorted(new.years), "stored": str(path),
            "total_days": len(merged.days), "total_years": sorted(merged.years)}


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
    nothing left to watch leave memory for the archive (node/rules/archive.py), so memory follows the
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


# ---- the service ----------------------------------------------------------------------------------------

_service: RulesService | None = None


async def scheduled_scan() -> None:
    """The job the scheduler stores (by reference, so it survives restarts)."""
    if _service is None:  # rules switched off, or the node is stopping
        return
    _service.scheduled_scans += 1
    await _service.scan_now()


class RulesService(Service):
    name = "rules"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.settings: RulesSettings | None = None
        self.processor: RulesProcessor | None = None
        self.dispatcher: Dispatcher | None = None
        self.error = ""
        self.scheduled_scans = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._notifier_task: asyncio.Task[None] | None = None
        self._to_notify: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one engine operation at a time (they also share the store thread)

    # -- lifecycle --------------------------------------------------------------------------------------

    def _configure(self) -> bool:
        cfg = self.rt.home.config
        try:
            self.settings = RulesSettings.from_sections(cfg.sections, where=str(cfg.path))
            self.dispatcher = load_dispatcher(cfg.sections)
            self.error = ""
            return True
        except FednodeError as e:
            self.error = f"{e.message} (fix: {e.fix})"
            log.error("rules_config_invalid", error=e.message, fix=e.fix,
                      note="the rules service is idle until the configuration is fixed (SIGHUP reloads)")
            return False

    async def start(self) -> None:
        global _service
        if not self._configure() or self.settings is None or not self.settings.enabled:
            self._remove_job()
            if self.settings is not None and not self.settings.enabled:
                log.info("rules_disabled", note="[rules] enabled = false: monitoring results come from an adapter")
            return
        _service = self
        self._task = asyncio.create_task(self._run())
        self._notifier_task = asyncio.create_task(self._notify_loop())
        self._ensure_job()

    async def stop(self) -> None:
        global _service
        if _service is self:
            _service = None
        for task in (self._task, self._notifier_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._notifier_task = None

    async def reload(self) -> None:
        """SIGHUP or `calendar import`: re-read the settings and the calendar; rebuild the engine."""
        await self.stop()
        self.processor = None
        await self.start()

    def on_stored(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any] | None:
        if self.processor is None:
            enabled = self.settings.enabled if self.settings else False
            return {"enabled": enabled, "error": self.error, "state": "starting" if enabled else "off"}
        try:
            out = self.processor.status()
        except RuntimeError:  # a set changed size under a concurrent scan: report the basics
            return {"enabled": True, "cursor": self.processor.cursor, "state": "scanning"}
        out["scan_interval_s"] = self.settings.scan_interval_s if self.settings else None
        out["scheduled_scans"] = self.scheduled_scans
        if self.dispatcher is not None:
            out["notify"] = {"sent": self.dispatcher.sent, "failed": self.dispatcher.failed}
        return out

    def _ensure_job(self) -> None:
        assert self.settings is not None
        self.rt.scheduler.add_job(scheduled_scan, trigger="interval", seconds=self.settings.scan_interval_s,
                                  id=JOB_ID, name="rules: time-based scan", replace_existing=True,
                                  coalesce=True, max_instances=1, misfire_grace_time=3600)  # fmt: skip

    def _remove_job(self) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with contextlib.suppress(JobLookupError):
            self.rt.scheduler.remove_job(JOB_ID)

    # -- work -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self.rt.recovered.wait()  # a restored node may not append before it has its own logs back
        while True:
            if self.processor is None:
                await self._build()
                self._wake.set()
            await self._wake.wait()
            self._wake.clear()
            await self.follow()
            await self.scan_now()

    async def _build(self) -> None:
        """(Re)build the engine from the records; retried until it works (e.g. the database is back)."""
        rt, settings = self.rt, self.settings
        assert settings is not None

        def make() -> RulesProcessor:
            return RulesProcessor(rt.ledger, settings, load_calendar(rt.home.dir, settings))

        while self.processor is None:
            try:
                async with self._lock:
                    processor = await rt.bg(make)
                    while True:
                        t0 = time.monotonic()
                        done, due = await rt.bg(processor.rebuild_step)
                        self._after(due)
                        if done:
                            break
                        await self._pause(t0)
                    self.processor = processor
                self.error = ""
                log.info("rules_started", cursor=self.processor.cursor,
                         open_cases=self.processor.engine.open_case_count())  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                log.exception("rules_start_failed", note="retrying in 5 s")
                await asyncio.sleep(5)

    async def _call(self, method: str) -> Any:
        """Run a processor method on the background thread (``rt.bg``: the links keep the store thread
        ``rt.db``; one batch per call, so other background work interleaves). On failure the engine may hold alerts that were
        never stored (its transaction rolled back): drop it, and the run loop rebuilds it from the
        records."""
        processor = self.processor
        if processor is None:
            return None
        try:
            async with self._lock:
                return await self.rt.bg(getattr(processor, method))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(processor, method, e)
            return None

    async def follow(self) -> int:
        """Feed everything after the cursor. Returns the number of records read."""
        total = 0
        while True:
            t0 = time.monotonic()
            result = await self._call("step")
            if result is None:
                return total
            n, alerts = result
            self._after(alerts)
            total += n
            if n < (self.settings.batch if self.settings else 1):
                return total
            await self._pause(t0)

    async def _pause(self, t0: float) -> None:
        """Between two batches begun at ``t0``: other background work runs then; while the links move
        records, they get the interpreter for as long as the batch took (the rules half of it)."""
        await asyncio.sleep((time.monotonic() - t0) * _LINK_SHARE if self.rt.links_busy() else 0)

    async def scan_now(self) -> list[dict[str, Any]]:
        """The time rules now, and storing what they raise (with the cases they left nothing to watch
        for), on the background thread."""
        processor = self.processor
        if processor is None:
            return []
        try:
            async with self._lock:
                alerts = await self.rt.bg(processor.scan)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(processor, "scan", e)
            return []
        self._after(alerts)
        return alerts

    def _failed(self, processor: RulesProcessor, step: str, e: Exception) -> None:
        self.error = f"{type(e).__name__}: {e}"
        log.error("rules_failed", step=step, error=self.error, note="rebuilding the engine from the records",
                  exc_info=True)
        if self.processor is processor:
            self.processor = None
        self._wake.set()

    def _after(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts were stored: wake the links, hand them to the notifiers. Safe from any thread."""
        if not alerts:
            return
        self.rt.notify_threadsafe()
        self.rt.loop.call_soon_threadsafe(self._to_notify.put_nowait, alerts)

    async def _notify_loop(self) -> None:
        while True:
            alerts = await self._to_notify.get()
            if self.dispatcher is not None:
                try:
                    await asyncio.to_thread(self.dispatcher.dispatch, alerts)
                except Exception:
                    log.exception("notify_dispatch_failed")


SERVICES = [RulesService]


# ---- admin operations -----------------------------------------------------------------------------------


def _running_service() -> RulesService:
    if _service is None:
        raise FednodeError("the rules service is not running in this node",
                           fix="check [rules] in node.toml (enabled = true) and `fednode status` for its error")
    return _service


@admin.op("rules.status")
async def _op_status(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = next((s for s in rt.services if isinstance(s, RulesService)), None)
    return await rt.db(svc.status) if svc is not None else None


@admin.op("rules.scan")
async def _op_scan(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    svc = _running_service()
    await svc.follow()
    alerts = await svc.scan_now()
    return {"alerts": len(alerts)}


@admin.op("rules.reload")
async def _op_reload(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    for svc in rt.services:
        if isinstance(svc, RulesService):
            await svc.reload()
            return {"reloaded": True, "enabled": bool(svc.settings and svc.settings.enabled), "error": svc.error}
    return {"reloaded": False}


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


def _level(value: str) -> int:
    v = value.strip().lower()
    if v.isdigit() and 1 <= int(v) <= 4:
        return int(v)
    if v in LEVELS_BY_NAME:
        return LEVELS_BY_NAME[v]
    raise argparse.ArgumentTypeError(f"{value!r} is not a level: use 1-4, warn, yellow, red, serious (预警 黄牌 红牌 严重违规)")


def _open_store(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def filter_alerts(alerts: list[StoredAlert], *, level: int | None = None, rule: str | None = None,
                  division: str | None = None, case: str | None = None) -> list[StoredAlert]:  # fmt: skip
    from node import codes

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


# ---- CLI ------------------------------------------------------------------------------------------------


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    ap = sub.add_parser("alerts", help="monitoring alerts (预警 黄牌 红牌 严重违规) held by this node")
    asub = ap.add_subparsers(dest="alerts_command", required=True)
    sp = add("list", "alerts held here (raised here or forwarded from the subtree), oldest first", asub)
    sp.add_argument("--level", type=_level, help="at least this level: 1-4, warn, yellow, red, serious")
    sp.add_argument("--rule", help="only this rule, e.g. case_time, permission")
    sp.add_argument("--division", help="only alerts of this division or its subtree")
    sp.add_argument("--case", help="only alerts of this case number")
    sp.add_argument("--limit", type=int, default=0, help="only the last N (default: all)")
    sp = add("show", "one alert: its fields and the signed record that holds it", asub)
    sp.add_argument("alert_id")
    sp = add("handle", "record that an alert was dealt with (处置): the work log keeps who, when and what", asub)
    sp.add_argument("alert_id")
    sp.add_argument("--note", required=True, help="what was done (处置情况), e.g. 已核实并督促整改")
    sp.add_argument("--actor", help="who handled it (default: $FEDNODE_ACTOR, else the OS user)")

    cp = sub.add_parser("calendar", help="the working-day calendar: operator overrides and coverage")
    csub = cp.add_subparsers(dest="calendar_command", required=True)
    sp = add("import", "import official holidays / make-up days (CSV date,kind[,name] or TOML); merged", csub)
    sp.add_argument("file")
    sp = add("show", "covered years, office hours, the operator's overrides; --year lists a year's special days",
             csub)
    sp.add_argument("--year", type=int)


@command("alerts list")
def cmd_alerts_list(args: argparse.Namespace) -> int:
    home = open_home(args)
    store = _open_store(home)
    try:
        alerts = filter_alerts(read_alerts(store), level=args.level, rule=args.rule, division=args.division,
                               case=args.case)  # fmt: skip
    finally:
        store.close()
    if args.limit and args.limit > 0:
        alerts = alerts[-args.limit :]
    rows = [a.as_dict() for a in alerts]

    def human() -> str:
        lines = [f"{'level':<9}{'at':<27}{'division':<10}{'rule':<16}{'case':<26}message"]
        for a in alerts:
            p = a.payload
            name = LEVEL_NAMES.get(int(p.get("level", 0)), "?")
            lines.append(f"{name:<7}{p.get('at', '')!s:<27}{p.get('division', '')!s:<10}{p.get('rule_id', '')!s:<16}"
                         f"{p.get('case_no', '')!s:<26}{p.get('message', '')}")
        lines.append(f"({len(alerts)} alert{'s' if len(alerts) != 1 else ''})")
        return "\n".join(lines)

    emit(args, rows, human)
    return 0


@command("alerts show")
def cmd_alerts_show(args: argparse.Namespace) -> int:
    home = open_home(args)
    store = _open_store(home)
    try:
        found = [a for a in read_alerts(store) if a.payload.get("alert_id") == args.alert_id]
    finally:
        store.close()
    if not found:
        raise NotFound(f"no alert {args.alert_id!r} is held by {home.code}",
                       fix="list them with `fednode alerts list DIR`; an alert raised below may not have arrived yet")
    data = found[0].as_dict()
    if len(found) > 1:  # the same id raised by two nodes (e.g. a child and, before it was known, here)
        data["also_in"] = [{"origin": a.origin, "seq": a.seq} for a in found[1:]]

    def human() -> str:
        p = found[0].payload
        lines = [f"{p.get('alert_id')}  {LEVEL_NAMES.get(int(p.get('level', 0)), '?')}  {p.get('message', '')}"]
        for k in ALERT_FIELDS:
            if k in p and k not in ("alert_id", "message"):
                lines.append(f"  {k:<10} {p[k]}")
        lines.append(f"  record     {found[0].origin}/monitor/{found[0].seq} (signed; `fednode proof DIR "
                     f"{found[0].origin} monitor {found[0].seq}` exports it)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


@command("alerts handle")
def cmd_alerts_handle(args: argparse.Namespace) -> int:
    """One ``audit.action`` "alerts handle" targeting the alert (node/auditlog.py): that is what closes
    it for the supervisor rule alert_unhandled. Looking at an alert (`alerts show`) does not."""
    from node import auditlog

    home = open_home(args)
    if not args.note.strip():
        raise UsageError("--note is empty", fix="say what was done, e.g. --note 已核实并督促整改")
    store = _open_store(home)
    try:
        found = [a for a in read_alerts(store) if a.payload.get("alert_id") == args.alert_id]
    finally:
        store.close()
    if not found:
        raise NotFound(f"no alert {args.alert_id!r} is held by {home.code}",
                       fix="list them with `fednode alerts list DIR`; an alert raised below may not have arrived yet")
    a = found[0]
    payload = auditlog.record_action(home, auditlog.actor_of(args), "alerts handle", args.alert_id,
                                     {"note": args.note.strip(), "record": f"{a.origin}/monitor/{a.seq}"})
    emit(args, {"alert_id": args.alert_id, "handled": payload},
         f"{args.alert_id}: handled by {payload['actor']} at {payload['at']} (work log of {home.code})")
    return 0


def _reload_running(home: Home) -> str:
    try:
        resp = admin.call(home, {"op": "rules.reload"}, timeout=120)
    except FednodeError as e:
        return f"the running node could not reload: {e.message}"
    except OSError:
        return "not running"
    return "not running" if resp is None else "reloaded"


@command("calendar import")
def cmd_calendar_import(args: argparse.Namespace) -> int:
    home = open_home(args)
    result = import_overrides(home.dir, args.file)
    result["node"] = _reload_running(home)
    emit(args, result, lambda: (
        f"imported {result['days']} day(s) and year(s) {result['years'] or '-'} from {result['file']}; "
        f"{home.dir / OVERRIDES_FILE} now holds {result['total_days']} day(s), years {result['total_years'] or '-'}; "
        f"running node: {result['node']}"))  # fmt: skip
    return 0


def _official_name(d: date) -> str:
    """The holiday a date belongs to (or is a make-up day for), in Chinese, from chinese-calendar."""
    try:
        import chinese_calendar
        from chinese_calendar.constants import Holiday

        english = chinese_calendar.get_holiday_detail(d)[1]
    except (ImportError, NotImplementedError):
        return ""
    if not english:
        return ""
    return next((str(h.chinese) for h in Holiday if h.value == english), str(english))


def special_days(cal: Calendar, year: int) -> list[dict[str, Any]]:
    """Days of ``year`` that differ from the Monday-Friday week: holidays and make-up working days."""
    out = []
    d = date(year, 1, 1)
    while d.year == year:
        working = cal.is_working_day(d)
        if working != (d.weekday() < 5):
            forced = cal.overrides.days.get(d)
            name = forced.name if forced else _official_name(d)
            out.append({"date": d.isoformat(), "kind": "work" if working else "holiday",
                        "name": name, "source": "operator" if forced else "official"})
        d += timedelta(days=1)
    return out


@command("calendar show")
def cmd_calendar_show(args: argparse.Namespace) -> int:
    home = open_home(args)
    settings = RulesSettings.from_sections(home.config.sections, where=str(home.config.path))
    cal = load_calendar(home.dir, settings)
    data: dict[str, Any] = {
        "office_hours": [f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in settings.office_hours.periods],
        "official_years": sorted(LIBRARY_YEARS),
        "operator_years": sorted(cal.overrides.years),
        "overrides": [{"date": d.isoformat(), "kind": o.kind, "name": o.name} for d, o in sorted(cal.overrides.days.items())],
        "overrides_file": str(overrides_path(home.dir)),
    }  # fmt: skip
    status = 0
    if args.year is not None:
        data["year"] = args.year
        data["covered"] = cal.is_covered(args.year)
        if data["covered"]:
            data["special_days"] = special_days(cal, args.year)
        else:
            status = 1
            data["fix"] = f"import the official holiday list for {args.year} with `fednode calendar import DIR FILE`"

    def human() -> str:
        yrs = data["official_years"]
        lines = [f"office hours   : {', '.join(data['office_hours'])}",
                 f"official years : {yrs[0]}-{yrs[-1]} (chinese-calendar)" if yrs else "official years : none",
                 f"operator years : {', '.join(map(str, data['operator_years'])) or '-'}",
                 f"overrides      : {len(data['overrides'])} day(s) in {data['overrides_file']}"]  # fmt: skip
        if args.year is not None:
            if data["covered"]:
                lines.append(f"{args.year}: holidays and make-up working days")
                lines += [f"  {d['date']}  {d['kind']:<8} {d['source']:<9} {d['name']}" for d in data["special_days"]]
            else:
                lines.append(f"{args.year} is NOT covered: {data['fix']}")
        return "\n".join(lines)

    emit(args, data, human)
    return status
