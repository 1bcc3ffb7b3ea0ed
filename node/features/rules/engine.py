"""The monitoring rules engine (预警纠错) as pure logic: records in, ``alert`` payloads out.

No I/O, no store, no clock: the caller feeds record payloads (``feed(kind, payload)``) in any order
and calls ``scan(now)`` for the time-based rules. Both return new alert payloads (records.md, kind
``alert``), each with a deterministic ``alert_id`` = ``rule_id:division:object-key:level``.

Rules of this module:
- ORDER INDEPENDENCE. Every alert is a pure function of the records it is about (plus the item
  catalogue), and, for time-based alerts, of the scan time:
  - event rules (permission, workflow, discretion, risk_evidence, major, refusal_reason) look only
    at facts present in the records, never at the absence of one, so once they fire they would fire
    for any superset of the records; they are re-evaluated when their inputs change (a step, its
    neighbouring step, the item arriving later);
  - time rules (case_time, step_time, special_time, complaint_time) are evaluated only by ``scan``:
    the crossing instant of each level is computed from the records (never from when they arrived),
    and a level fires when the scan time has reached it.
  Hence the same records in any order, followed by the same scans, give the same set of alerts.
- IDEMPOTENCE. An alert id is emitted at most once; feeding an ``alert`` record (replay after a
  restart) marks it emitted. A case's alert ids and card levels live on the case (an alert record
  with a ``case_no`` is about that case), every other one in the engine (``_emitted``, ``_levels``).
  For the cards of one object only a level above the highest already emitted can fire, and a scan
  emits only the highest level reached: cards escalate 预警 -> 黄牌 -> 红牌 and never repeat.
- COMPLETION. A case with a ``case.complete`` record, or refused at acceptance, is no longer
  monitored: no time rule fires for it or its steps and special procedures, whatever the scan time.
- CLOCKS. Elapsed time is working time on the ``Calendar`` (or natural time for items whose unit is
  ``"day"``), measured as working-minute indexes. The case clock starts at acceptance; the case and
  step clocks stop during special procedures (suspend..resume) and between a correction notice and
  its acceptance (intervals still open stop the clock until the end of time). Special procedures
  are timed on their own clock from their start, against their approved length.
- THRESHOLDS (config.py): 预警 fires when the elapsed time reaches its threshold, 黄牌/红牌 on the
  first minute strictly past theirs. The alert's ``at`` is the instant the threshold was crossed.
- RECORD MERGING. Records with the same natural key (records.md) are merged deterministically:
  the more complete one wins (a step with ``ended_at`` over one without; a resume, a correction
  acceptance simply adds), remaining ties by the larger ``repr``; so a re-sent record never depends
  on arrival order either.
- DEADLINES AT FEED TIME. A case's deadlines (its watch: the crossing position of every level) are
  computed when its records are fed: ``feed`` does it at once, ``feed_many`` (and ``feed(...,
  settle=False)`` followed by ``settle()``) once per batch for every case the batch touched. A scan
  then only compares positions with ``now`` and builds the cards reached; their ``at`` texts are
  cached per minute (a scan's cards share few distinct minutes).
- BOUNDED MEMORY (``bounded=True``, the rules service). ``evict`` takes out of memory, and returns
  for the caller to keep, every case touched since its last call that nothing can fire for without a
  new record: closed cases, and open ones whose deadlines are computed and all reached (or that have
  none: only an application, only alerts). A case's state (``case_state``: its merged records, alert
  ids and levels) brought back with ``restore_case`` before its next record is fed gives the same
  alerts as if it had never left. The caller must restore every case a record names before feeding
  it (``case_key``), and, when an item arrives, the evicted cases that waited for it (``revisit``).
  A new version of a known item re-checks only the cases held in memory. Feeding leaves deadlines
  to the scan (``settle`` is not needed), so a case that closes within a catch-up never computes them.
- MISSING CALENDAR YEAR. A time in a year the calendar does not cover makes ``scan`` emit one
  operator alert (rule ``calendar_year_missing``, level 4) per year and skip the objects it blocks;
  they are retried on every scan until the operator imports the year.

Rule table (rule_id, category, object, levels):

| rule_id        | cat | object    | fires                                                          |
|----------------|-----|-----------|----------------------------------------------------------------|
| case_time      | 01  | case      | 1 promised-2d reached, 2 > promised+1d, 3 > statutory+1d      |
| step_time      | 01  | step      | 1 80% of step limit reached, 2 > limit, 3 > 2x limit          |
| special_time   | 01  | special   | 1 approved-2d reached, 2 > approved, 3 > approved+1d          |
| complaint_time | 01  | complaint | 1 due-2d reached, 2 > due+1d, 3 > due+2d                      |
| permission     | 02  | step      | post/handler not allowed for that step of the item (超越权限)  |
| workflow       | 02  | step      | unknown step, steps skipped, or out of order (流程异常)        |
| discretion     | 03  | step      | penalty amount outside its band (自由裁量偏离)                 |
| refusal_reason | 03  | case      | accepted=false without refuse_reason (不予受理未说明理由)       |
| risk_evidence  | 05  | step      | risk-point step ended without its evidence (风险点未预控)       |
| major          | 05  | case      | assigned by 市委市政府, or amount > major threshold (重大事项)   |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from node.core.calendar import Calendar, CalendarYearMissing, NaturalClock
from node.features.rules.config import RED, SERIOUS, WARN, YELLOW, RulesConfig, Thresholds

RULES: Mapping[str, tuple[str, str]] = {  # rule_id -> (category, object)
    "case_time": ("01", "case"),
    "step_time": ("01", "step"),
    "special_time": ("01", "special"),
    "complaint_time": ("01", "complaint"),
    "permission": ("02", "step"),
    "workflow": ("02", "step"),
    "discretion": ("03", "step"),
    "refusal_reason": ("03", "case"),
    "risk_evidence": ("05", "step"),
    "major": ("05", "case"),
    "calendar_year_missing": ("01", "supervisor"),
}
CARD_RULES = frozenset({"case_time", "step_time", "special_time", "complaint_time"})
# the record kinds the rules read (besides ``alert``); ``feed`` ignores every other kind
INPUT_KINDS = (
    "item", "case.apply", "case.accept", "case.step", "case.suspend", "case.resume", "case.correction_notice",
    "case.correction_accepted", "case.complete", "complaint.register",
)  # fmt: skip
_CASE_KINDS = frozenset(k for k in INPUT_KINDS if k.startswith("case."))
LEVEL_NAMES = {WARN: "预警", YELLOW: "黄牌", RED: "红牌", SERIOUS: "严重违规"}

STATE_VERSION = 2
CASE_STATE_VERSION = 1
_INF = float("inf")
_NO_LEVELS: Mapping[str, int] = {}

Alert = dict[str, Any]


# ---- the item catalogue ------------------------------------------------------------------------------


class _Band(NamedTuple):
    circumstance: str
    min_amount: float | None
    max_amount: float | None


@dataclass(frozen=True, slots=True)
class ItemSpec:
    item_code: str
    item_type: str
    unit: str
    statutory_days: float | None
    promised_days: float | None
    step_codes: tuple[str, ...]
    step_names: tuple[str, ...]
    step_limits: tuple[float | None, ...]
    step_posts: tuple[frozenset[str], ...]
    position: Mapping[str, int]  # step_code -> index in the fixed order
    bands: tuple[_Band, ...]
    risk: Mapping[str, tuple[str, ...]]  # step_code -> required evidence
    major_threshold: float | None
    raw: Mapping[str, Any]

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ItemSpec:
        steps = list(p.get("steps") or [])
        codes = tuple(str(s.get("step_code", "")) for s in steps)
        position: dict[str, int] = {}
        for i, code in enumerate(codes):
            position.setdefault(code, i)
        risk: dict[str, tuple[str, ...]] = {}
        for r in p.get("risk_points") or []:
            code = str(r.get("step_code", ""))
            risk[code] = (*risk.get(code, ()), str(r.get("evidence", "")))
        return cls(
            item_code=str(p["item_code"]),
            item_type=str(p.get("item_type", "")),
            unit=str(p.get("unit") or "workday"),
            statutory_days=_num(p.get("statutory_days")),
            promised_days=_num(p.get("promised_days")),
            step_codes=codes,
            step_names=tuple(str(s.get("name", "")) for s in steps),
            step_limits=tuple(_num(s.get("limit_days")) for s in steps),
            step_posts=tuple(frozenset(str(x) for x in s.get("posts") or ()) for s in steps),
            position=position,
            bands=tuple(
                _Band(str(b.get("circumstance", "")), _num(b.get("min_amount")), _num(b.get("max_amount")))
                for b in p.get("discretion") or []
            ),
            risk=risk,
            major_threshold=_num(p.get("major_threshold")),
            raw=dict(p),
        )


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


# ---- compact case records (only the fields the rules use; also what state_dict saves) ----------------


class _Apply(NamedTuple):
    time: str | None
    assigned: bool
    amount: float | None


class _Accept(NamedTuple):
    time: str | None
    accepted: bool
    refuse_reason: str
    promised_at: str | None
    handler: str


class _Step(NamedTuple):
    step_no: int
    step_code: str
    step_name: str
    handler: str
    post: str
    action: str
    started_at: str | None
    ended_at: str | None
    amount: float | None
    circumstance: str | None
    evidence: tuple[str, ...]


class _Suspend(NamedTuple):
    started_at: str | None
    suspend_kind: str
    approved_days: float | None
    reason: str


class _Complaint(NamedTuple):
    registered_at: str | None
    due_at: str | None
    respondent_unit: str


def _step_ended(r: _Step) -> bool:
    return r.ended_at is not None


def _prefer(old: Any, new: Any, complete: Callable[[Any], bool]) -> Any:
    """Deterministic merge of two versions of one record (see the module rules)."""
    if old is None or old == new:
        return new
    return max((old, new), key=lambda r: (complete(r), repr(r)))


class _Case:
    __slots__ = (
        "key", "case_no", "division", "dept", "item_code", "apply", "accept", "steps", "suspends",
        "resumes", "notices", "corrections", "completed_at", "dirty", "watch", "next_pos", "natural",
        "emitted", "levels", "shell",
    )  # fmt: skip

    def __init__(self, key: str, p: Mapping[str, Any]) -> None:
        self.key = key
        self.case_no = str(p.get("case_no", ""))
        self.division = str(p.get("division", ""))
        self.dept = str(p.get("dept", ""))
        self.item_code = str(p.get("item_code", ""))
        self.apply: _Apply | None = None
        self.accept: _Accept | None = None
        self.steps: dict[int, _Step] = {}
        self.suspends: dict[str, _Suspend] = {}
        self.resumes: dict[str, str] = {}
        self.notices: dict[str, str] = {}
        self.corrections: dict[str, str] = {}
        self.completed_at: str | None = None
        self.dirty = True
        # watch: [[obj_key, rule_id, step_no, suspend_no, [(level, pos), ...]], ...]
        self.watch: list[list[Any]] = []
        self.next_pos: float = _INF
        self.natural = False
        self.emitted: set[str] | None = None  # alert ids known for this case (created when needed)
        self.levels: dict[str, int] | None = None  # card object key -> highest level emitted
        self.shell = False  # known only from alert records so far

    @property
    def closed(self) -> bool:
        return self.completed_at is not None or (self.accept is not None and not self.accept.accepted)


class _OpenComplaint:
    __slots__ = ("key", "complaint_no", "division", "rec", "dirty", "watch", "next_pos")

    def __init__(self, key: str, complaint_no: str, division: str, rec: _Complaint) -> None:
        self.key = key
        self.complaint_no = complaint_no
        self.division = division
        self.rec = rec
        self.dirty = True
        self.watch: list[list[Any]] = []
        self.next_pos: float = _INF


@dataclass(frozen=True, slots=True)
class _Limits:
    """An item's time thresholds as (level, minutes) pairs on its clock."""

    natural: bool
    case: tuple[tuple[int, int], ...]
    promised_fallback: bool  # item unknown: derive the promised limit from accept.promised_at
    warn_before: int
    yellow_after: int
    steps: tuple[tuple[tuple[int, int], ...] | None, ...]  # per fixed step position
    special: tuple[int, int, int] | None  # warn before, yellow after, red after the approved end
    days: Callable[[float], int]


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _crossing(start: int, pauses: list[tuple[int, float]], minutes: int) -> float:
    """Index at which ``minutes`` of unpaused time since ``start`` have elapsed (inf: never).

    ``pauses`` are merged, sorted (begin, end) index intervals; end may be inf (still open).
    """
    pos: float = start
    remaining = minutes
    for a, b in pauses:
        if b <= pos:
            continue
        if a > pos:
            if remaining <= a - pos:
                return pos + remaining
            remaining -= int(a - pos)
        pos = b
        if pos == _INF:
            return _INF
    return pos + remaining


def _merge(intervals: list[tuple[int, float]]) -> list[tuple[int, float]]:
    intervals.sort()
    out: list[tuple[int, float]] = []
    for a, b in intervals:
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


# ---- the engine --------------------------------------------------------------------------------------


class RulesEngine:
    """Feed records, scan at times; collect the returned alert payloads. See the module rules."""

    def __init__(
        self, calendar: Calendar | None = None, config: RulesConfig | None = None, *, division: str = "",
        bounded: bool = False,
    ) -> None:
        self.calendar = calendar or Calendar()
        self.natural = NaturalClock()
        self.config = config or RulesConfig()
        self.division = division  # this node, for operator alerts
        self._items: dict[str, ItemSpec] = {}
        self._limits_cache: dict[str, _Limits] = {}
        self._cases: dict[str, _Case] = {}
        self._open: dict[str, _Case] = {}
        self._by_item: dict[str, set[str]] = {}
        self._complaints: dict[str, _OpenComplaint] = {}
        self._closed_complaints: set[str] = set()
        self._closed_numbers: set[str] = set()  # complaint numbers whose ticket was concluded (any division)
        self._emitted: set[str] = set()
        self._levels: dict[str, int] = {}
        self.missing_years: set[int] = set()
        self.bad_objects: dict[str, str] = {}  # case/complaint key -> why its times cannot be read
        self._pending: dict[str, _Case] = {}  # touched since the last settle()
        self._pending_complaints: dict[str, _OpenComplaint] = {}
        self._at_text: dict[tuple[bool, int], str] = {}  # (natural clock, index) -> ISO text of the instant
        self._bounded = bounded
        self._touched: set[str] = set()  # bounded: cases touched since the last evict()
        self._handlers: dict[str, Callable[[Mapping[str, Any], list[Alert]], None]] = {
            "item": self._on_item,
            "case.apply": self._on_apply,
            "case.accept": self._on_accept,
            "case.step": self._on_step,
            "case.suspend": self._on_suspend,
            "case.resume": self._on_resume,
            "case.correction_notice": self._on_notice,
            "case.correction_accepted": self._on_correction,
            "case.complete": self._on_complete,
            "complaint.register": self._on_complaint,
            "alert": self._on_alert,
        }

    # -- public API ---------------------------------------------------------------------------------

    def feed(self, kind: str, payload: Mapping[str, Any], *, settle: bool = True) -> list[Alert]:
        """Take one record; return the event-driven alerts it newly causes. Unknown kinds are ignored.

        ``settle=False`` leaves the deadlines of the cases it touched to the next ``settle()`` (or
        scan): a batch of records then computes each case's deadlines once, not once per record."""
        handler = self._handlers.get(kind)
        out: list[Alert] = []
        if handler is not None:
            handler(payload, out)
            if settle:
                self.settle()
        return out

    def feed_many(self, records: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Alert]:
        """Feed a batch, then compute the deadlines of every case it touched (``settle``)."""
        out: list[Alert] = []
        handlers = self._handlers
        for kind, payload in records:
            handler = handlers.get(kind)
            if handler is not None:
                handler(payload, out)
        self.settle()
        return out

    def settle(self) -> None:
        """Compute the deadlines (the watch) of every case and complaint touched since the last call,
        so the periodic scan only compares positions. A case whose year the calendar lacks stays
        pending: the scan raises the operator alert and retries it; a case with a timestamp that is
        not a valid time is recorded in ``bad_objects`` and not watched."""
        if self._pending:
            pending, self._pending = self._pending, {}
            for case in pending.values():
                if case.dirty and case.key in self._open:
                    try:
                        self._build_case_watch(case)
                    except CalendarYearMissing:
                        pass  # the scan reports it and retries
                    except (ValueError, TypeError, OverflowError) as e:
                        self._bad(case, e)
        if self._pending_complaints:
            pending_c, self._pending_complaints = self._pending_complaints, {}
            for c in pending_c.values():
                if c.dirty and c.key in self._complaints:
                    try:
                        self._build_complaint_watch(c)
                    except CalendarYearMissing:
                        pass
                    except (ValueError, TypeError, OverflowError) as e:
                        self._bad(c, e)

    def _bad(self, owner: _Case | _OpenComplaint, e: Exception) -> None:
        self.bad_objects[owner.key] = f"{type(e).__name__}: {e}"
        owner.watch, owner.next_pos, owner.dirty = [], _INF, False

    def scan(self, now: datetime) -> list[Alert]:
        """Evaluate the time rules at ``now``; return the cards newly reached, sorted by alert_id."""
        out: list[Alert] = []
        try:
            now_w: float | None = self.calendar.working_minute_index(now)
        except CalendarYearMissing as e:
            self._year_missing(e, now, out)
            now_w = None
        now_n = self.natural.working_minute_index(now)
        self._pending = {}  # every dirty case is built below
        touched = self._touched if self._bounded else None
        for case in self._open.values():
            if case.dirty:
                try:
                    self._build_case_watch(case)
                except CalendarYearMissing as e:
                    self._year_missing(e, now, out)
                    continue
                except (ValueError, TypeError, OverflowError) as e:
                    self._bad(case, e)
                    if touched is not None:
                        touched.add(case.key)
                    continue
                if touched is not None and case.next_pos == _INF:
                    touched.add(case.key)  # nothing to watch: the next evict() takes it
            current = now_n if case.natural else now_w
            if current is not None and current >= case.next_pos:
                case.next_pos = self._fire(case, case.watch, current, out)
                if touched is not None and case.next_pos == _INF:
                    touched.add(case.key)
        if now_w is not None:
            self._pending_complaints = {}
            for c in self._complaints.values():
                if c.dirty:
                    try:
                        self._build_complaint_watch(c)
                    except CalendarYearMissing as e:
                        self._year_missing(e, now, out)
                        continue
                    except (ValueError, TypeError, OverflowError) as e:
                        self._bad(c, e)
                        continue
                if now_w >= c.next_pos:
                    c.next_pos = self._fire(c, c.watch, now_w, out)
        out.sort(key=lambda a: a["alert_id"])
        return out

    def close_complaint(self, complaint_no: str, division: str = "") -> None:
        """Stop monitoring a complaint (its ticket was concluded). records.md has no record for this."""
        key = f"{division}/{complaint_no}"
        self._closed_complaints.add(key)
        self._complaints.pop(key, None)
        self._pending_complaints.pop(key, None)

    def close_complaint_no(self, complaint_no: str) -> None:
        """Stop monitoring a complaint known only by its number (a concluded ticket carries no division):
        open ones now, and ones whose registration arrives later."""
        self._closed_numbers.add(complaint_no)
        for key in [k for k, c in self._complaints.items() if c.complaint_no == complaint_no]:
            self.close_complaint(complaint_no, self._complaints[key].division)

    def open_case_count(self) -> int:
        """Open cases held in memory (with ``bounded``, evicted ones are not counted)."""
        return len(self._open)

    def held_case_count(self) -> int:
        return len(self._cases)

    def emitted_count(self) -> int:
        """Alert ids known in memory."""
        return len(self._emitted) + sum(len(c.emitted) for c in list(self._cases.values()) if c.emitted)

    def emitted_ids(self) -> frozenset[str]:
        ids = set(self._emitted)
        for c in list(self._cases.values()):
            if c.emitted:
                ids.update(c.emitted)
        return frozenset(ids)

    # -- bounded memory (see the module rules) ---------------------------------------------------------

    @staticmethod
    def case_key(kind: str, payload: Mapping[str, Any]) -> str | None:
        """The case a record the rules read is about (``division/case_no``), or None."""
        if kind in _CASE_KINDS or (kind == "alert" and payload.get("case_no")):
            return f"{payload.get('division', '')}/{payload.get('case_no', '')}"
        return None

    def has_case(self, key: str) -> bool:
        return key in self._cases

    def knows_item(self, item_code: str) -> bool:
        return item_code in self._items

    def evict(self) -> list[tuple[str, str, bool, list[Any]]]:
        """Take out of memory the cases touched since the last call that nothing can fire for without a
        new record. Returns ``(key, item_code, waits_for_item, case_state)`` for each, for the caller to
        keep and hand back to ``restore_case``."""
        out: list[tuple[str, str, bool, list[Any]]] = []
        touched, self._touched = self._touched, set()
        for key in touched:
            case = self._cases.get(key)
            if case is None or not (case.closed or (not case.dirty and case.next_pos == _INF)):
                continue
            del self._cases[key]
            self._open.pop(key, None)
            self._pending.pop(key, None)
            keys = self._by_item.get(case.item_code)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_item[case.item_code]
            waits = not case.shell and case.item_code not in self._items
            out.append((key, case.item_code, waits, self.case_state(case)))
        return out

    def restore_case(self, state: list[Any]) -> None:
        """Bring back a case ``evict`` returned. Its deadlines are computed again at the next scan; the
        rules its records imply are not re-run (what they raised is in its alert ids). A case already
        held is left as it is."""
        (version, key, case_no, division, dept, item_code, shell, apply, accept, steps, suspends, resumes,
         notices, corrections, completed_at, emitted, levels) = state  # fmt: skip
        if version != CASE_STATE_VERSION:
            raise ValueError(f"unsupported rules case state version {version!r}")
        if key in self._cases:
            return
        case = _Case(key, {"case_no": case_no, "division": division, "dept": dept, "item_code": item_code})
        case.shell = bool(shell)
        case.dirty = not case.shell
        case.apply = _Apply(*apply) if apply is not None else None
        case.accept = _Accept(*accept) if accept is not None else None
        case.steps = {int(s[0]): _Step._make((*s[:10], tuple(s[10]))) for s in steps}
        case.suspends = {str(no): _Suspend(*sp) for no, sp in suspends.items()}
        case.resumes, case.notices, case.corrections = dict(resumes), dict(notices), dict(corrections)
        case.completed_at = completed_at
        case.emitted = set(emitted) if emitted else None
        case.levels = {str(k): int(v) for k, v in levels.items()} if levels else None
        self._cases[key] = case
        if not case.closed:
            self._open[key] = case
            if not case.shell:
                self._pending[key] = case
        if not case.shell:
            self._by_item.setdefault(case.item_code, set()).add(key)
        if self._bounded:
            self._touched.add(key)

    def revisit(self, key: str) -> list[Alert]:
        """Run the event rules of a held case again (its item arrived): the alerts newly caused."""
        out: list[Alert] = []
        case = self._cases.get(key)
        if case is None or case.shell:
            return out
        self._touch(case)
        self._check_case(case, out)
        for n in sorted(case.steps):
            self._check_step(case, n, out)
        if self._bounded:
            self._touched.add(key)
        return out

    @staticmethod
    def case_state(case: _Case) -> list[Any]:
        """A case as a JSON-able list (``restore_case`` reads it back)."""
        return [
            CASE_STATE_VERSION, case.key, case.case_no, case.division, case.dept, case.item_code, case.shell,
            case.apply, case.accept, [list(s) for s in case.steps.values()],
            case.suspends, case.resumes, case.notices, case.corrections, case.completed_at,
            sorted(case.emitted) if case.emitted else [], case.levels or {},
        ]  # fmt: skip

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; ``from_state`` rebuilds an engine that behaves identically."""
        complaints = []
        for key, c in self._complaints.items():
            complaints.append(
                {"complaint_no": c.complaint_no, "division": c.division, "registered_at": c.rec.registered_at,
                 "due_at": c.rec.due_at, "respondent_unit": c.rec.respondent_unit, "_key": key}
            )  # fmt: skip
        return {
            "version": STATE_VERSION,
            "items": [dict(item.raw) for item in self._items.values()],
            "cases": [self.case_state(case) for case in self._cases.values()],
            "complaints": complaints,
            "closed_complaints": sorted(self._closed_complaints),
            "closed_numbers": sorted(self._closed_numbers),
            "emitted": sorted(self._emitted),
            "levels": dict(sorted(self._levels.items())),
            "missing_years": sorted(self.missing_years),
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        calendar: Calendar | None = None,
        config: RulesConfig | None = None,
        *,
        division: str = "",
    ) -> RulesEngine:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported rules engine state version {state.get('version')!r}")
        engine = cls(calendar, config, division=division)
        engine._emitted = set(state["emitted"])
        engine._levels = {str(k): int(v) for k, v in state["levels"].items()}
        engine.missing_years = set(state.get("missing_years", ()))
        for payload in state["items"]:
            engine.feed("item", payload, settle=False)
        for case_state in state["cases"]:
            engine.restore_case(case_state)  # its alerts are in its own ids: nothing is raised again
        for c in state["complaints"]:
            engine.feed("complaint.register", c, settle=False)
        engine.settle()
        engine._closed_complaints = set(state["closed_complaints"])
        for no in state.get("closed_numbers", ()):
            engine.close_complaint_no(no)
        return engine

    # -- record handlers ----------------------------------------------------------------------------

    def _case(self, p: Mapping[str, Any]) -> _Case:
        key = f"{p.get('division', '')}/{p.get('case_no', '')}"
        case = self._cases.get(key)
        if case is None:
            case = self._cases[key] = self._open[key] = _Case(key, p)
            self._by_item.setdefault(case.item_code, set()).add(key)
        elif case.shell:
            # known from alerts only: its first record says what the case is (as when it comes first)
            case.shell = False
            case.dept, case.item_code = str(p.get("dept", "")), str(p.get("item_code", ""))
            case.dirty = True
            self._by_item.setdefault(case.item_code, set()).add(key)
        if self._bounded:
            self._touched.add(key)
        return case

    def _alert_case(self, p: Mapping[str, Any]) -> _Case:
        """The case an alert record is about; a shell (no records, nothing to watch) if not held."""
        key = f"{p.get('division', '')}/{p.get('case_no', '')}"
        case = self._cases.get(key)
        if case is None:
            case = self._cases[key] = self._open[key] = _Case(key, p)
            case.shell, case.dirty = True, False
        if self._bounded:
            self._touched.add(key)
        return case

    def _touch(self, case: _Case) -> None:
        case.dirty = True
        if case.closed:
            self._open.pop(case.key, None)
            self._pending.pop(case.key, None)
        else:
            self._pending[case.key] = case

    def _on_item(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        item = ItemSpec.from_payload(p)
        self._items[item.item_code] = item
        self._limits_cache.pop(item.item_code, None)
        # cases seen before their item: everything that needed the item is evaluated now
        for key in sorted(self._by_item.get(item.item_code, ())):
            out.extend(self.revisit(key))

    def _on_apply(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        rec = _Apply(p.get("time"), bool(p.get("assigned")), _num(p.get("amount")))
        case.apply = _prefer(case.apply, rec, lambda r: True)
        self._check_case(case, out)

    def _on_accept(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        rec = _Accept(
            p.get("time"), p.get("accepted", True) is not False, str(p.get("refuse_reason") or ""),
            p.get("promised_at"), str(p.get("handler") or ""),
        )  # fmt: skip
        case.accept = _prefer(case.accept, rec, lambda r: True)
        self._check_case(case, out)
        self._touch(case)

    def _on_step(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        evidence = p.get("evidence") or ()
        rec = _Step(
            int(p["step_no"]), str(p.get("step_code", "")), str(p.get("step_name") or ""),
            str(p.get("handler") or ""), str(p.get("post") or ""), str(p.get("action") or ""),
            p.get("started_at"), p.get("ended_at"), _num(p.get("amount")),
            None if p.get("circumstance") is None else str(p["circumstance"]),
            tuple(map(str, evidence)),
        )  # fmt: skip
        n = rec.step_no
        old = case.steps.get(n)
        case.steps[n] = rec if old is None else _prefer(old, rec, _step_ended)
        self._check_step(case, n, out)
        if n + 1 in case.steps:
            self._check_step(case, n + 1, out)
        self._touch(case)

    def _on_suspend(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        no = str(p.get("suspend_no", ""))
        rec = _Suspend(
            p.get("started_at") or p.get("time"), str(p.get("suspend_kind") or ""),
            _num(p.get("approved_days")), str(p.get("reason") or ""),
        )  # fmt: skip
        case.suspends[no] = _prefer(case.suspends.get(no), rec, lambda r: True)
        self._touch(case)

    def _on_resume(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        no = str(p.get("suspend_no", ""))
        t = p.get("ended_at") or p.get("time")
        if t is not None:
            case.resumes[no] = _prefer(case.resumes.get(no), str(t), lambda r: True)
        self._touch(case)

    def _on_notice(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        no = str(p.get("notice_no", ""))
        if p.get("time") is not None:
            case.notices[no] = _prefer(case.notices.get(no), str(p["time"]), lambda r: True)
        self._touch(case)

    def _on_correction(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        no = str(p.get("notice_no", ""))
        if p.get("time") is not None:
            case.corrections[no] = _prefer(case.corrections.get(no), str(p["time"]), lambda r: True)
        self._touch(case)

    def _on_complete(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        case = self._case(p)
        t = str(p.get("time") or "")
        case.completed_at = _prefer(case.completed_at, t, lambda r: True)
        self._touch(case)

    def _on_complaint(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        no, division = str(p.get("complaint_no", "")), str(p.get("division", ""))
        key = str(p.get("_key") or f"{division}/{no}")
        if key in self._closed_complaints or no in self._closed_numbers:
            return
        rec = _Complaint(p.get("registered_at"), p.get("due_at"), str(p.get("respondent_unit") or ""))
        c = self._complaints.get(key)
        if c is None:
            c = self._complaints[key] = _OpenComplaint(key, no, division, rec)
        else:
            # a later due date (an extension) wins, so the merge does not depend on arrival order
            c.rec = max((c.rec, rec), key=lambda r: (str(r.due_at), repr(r)))
            c.dirty = True
        self._pending_complaints[key] = c

    def _on_alert(self, p: Mapping[str, Any], out: list[Alert]) -> None:
        alert_id = str(p.get("alert_id", ""))
        if p.get("case_no"):
            case = self._alert_case(p)
            if case.emitted is None:
                case.emitted = set()
            emitted = case.emitted
            if case.levels is None:
                case.levels = {}
            levels = case.levels
        else:
            emitted, levels = self._emitted, self._levels
        emitted.add(alert_id)
        if p.get("rule_id") in CARD_RULES:
            obj = alert_id.rsplit(":", 1)[0]
            levels[obj] = max(levels.get(obj, 0), int(p.get("level", 0)))

    # -- event rules --------------------------------------------------------------------------------

    def _thresholds(self, item: ItemSpec | None) -> Thresholds:
        return self.config.for_item_type(item.item_type if item else None)

    def _alert(
        self, rule: str, level: int, case: _Case | None, *, obj_key: str, message: str, at: str | None,
        step_no: int | None = None, extra: Mapping[str, Any] | None = None,
    ) -> Alert:  # fmt: skip
        category, obj = RULES[rule]
        alert: Alert = {
            "alert_id": f"{obj_key}:{level}",
            "rule_id": rule,
            "category": category,
            "level": level,
            "object": obj,
            "case_no": case.case_no if case else "",
            "step_no": step_no,
            "division": case.division if case else self.division,
            "dept": case.dept if case else "",
            "item_code": case.item_code if case else "",
            "message": message,
            "at": at,
            "source": "engine",
        }
        if extra:
            alert.update(extra)
        return alert

    def _emit_event(self, rule: str, case: _Case, sub: str, message: str, at: str | None,
                    out: list[Alert], step_no: int | None = None) -> None:  # fmt: skip
        item = self._items.get(case.item_code)
        if rule in self._thresholds(item).disabled_rules:
            return
        level = self.config.anomaly_levels.get(rule, WARN)
        obj_key = f"{rule}:{case.division}:{case.case_no}{sub}"
        alert_id = f"{obj_key}:{level}"
        if case.emitted is None:
            case.emitted = set()
        elif alert_id in case.emitted:
            return
        case.emitted.add(alert_id)
        out.append(self._alert(rule, level, case, obj_key=obj_key, message=message, at=at, step_no=step_no))

    def _check_case(self, case: _Case, out: list[Alert]) -> None:
        item = self._items.get(case.item_code)
        a = case.apply
        if a is not None:
            if a.assigned:
                self._emit_event("major", case, "", "重大事项：市委市政府交办事项，请特别关注", a.time, out)
            elif item is not None and a.amount is not None:
                limit = item.major_threshold
                if limit is None:
                    limit = self._thresholds(item).major_threshold
                if limit is not None and a.amount > limit:
                    self._emit_event(
                        "major",
                        case,
                        "",
                        f"重大事项：金额/规模 {a.amount:g} 超过重大阈值 {limit:g}",
                        a.time,
                        out,
                    )
        c = case.accept
        if c is not None and not c.accepted and not c.refuse_reason.strip():
            self._emit_event(
                "refusal_reason", case, "", f"不予受理未说明理由（受理人 {c.handler}）", c.time, out
            )

    def _check_step(self, case: _Case, n: int, out: list[Alert]) -> None:
        item = self._items.get(case.item_code)
        if item is None:
            return  # re-evaluated when the item arrives
        s = case.steps[n]
        # started_at is the same in every version of a step record, so the alert does not depend on
        # which version arrived first
        at = s.started_at or s.ended_at
        sub = f":{n}"
        q = item.position.get(s.step_code)
        if q is None:
            self._emit_event("workflow", case, sub, f"流程异常：环节 {s.step_code} 不属于事项 {item.item_code} 的固化流程",
                             at, out, n)  # fmt: skip
            return
        posts = item.step_posts[q]
        if posts and s.post not in posts and s.handler not in posts:
            self._emit_event(
                "permission", case, sub,
                f"超越权限：{s.handler}（岗位 {s.post}）无权办理环节 {s.step_code} {item.step_names[q]}",
                at, out, n,
            )  # fmt: skip
        if s.amount is not None and item.bands:
            bands = (
                [b for b in item.bands if b.circumstance == s.circumstance] if s.circumstance else item.bands
            )
            inside = any(
                (b.min_amount is None or s.amount >= b.min_amount)
                and (b.max_amount is None or s.amount <= b.max_amount)
                for b in bands
            )
            if not inside:
                what = f"情节 {s.circumstance} " if s.circumstance else ""
                self._emit_event("discretion", case, sub,
                                 f"自由裁量偏离：{what}处罚金额 {s.amount:g} 不在裁量基准范围内", at, out, n)  # fmt: skip
        required = item.risk.get(s.step_code)
        if required and s.ended_at is not None:
            missing = [e for e in required if e not in s.evidence]
            if missing:
                self._emit_event("risk_evidence", case, sub,
                                 f"风险点未采取预控措施：环节 {s.step_code} 缺少 {'、'.join(missing)}", s.ended_at, out, n)  # fmt: skip
        # workflow: compare with the previous step (a pure function of the pair, so order-free)
        if n == 1:
            if q > 0:
                skipped = "、".join(item.step_codes[:q])
                self._emit_event("workflow", case, sub, f"流程异常：跳过环节 {skipped}", at, out, n)
            return
        prev = case.steps.get(n - 1)
        if prev is None:
            return
        p = item.position.get(prev.step_code)
        if p is None:
            return
        if q > p + 1:
            skipped = "、".join(item.step_codes[p + 1 : q])
            self._emit_event("workflow", case, sub, f"流程异常：跳过环节 {skipped}", at, out, n)
        elif q <= p and prev.action == "pass":
            self._emit_event(
                "workflow", case, sub,
                f"流程异常：环节 {s.step_code} 在 {prev.step_code} 通过后逆序办理（未经退回）", at, out, n,
            )  # fmt: skip

    # -- time rules ---------------------------------------------------------------------------------

    def _limits(self, item: ItemSpec | None) -> _Limits:
        """Thresholds of an item in minutes of its clock, computed once per item (hot in scans)."""
        code = item.item_code if item else ""
        limits = self._limits_cache.get(code)
        if limits is None:
            th = self._thresholds(item)
            natural = item is not None and item.unit == "day"
            days = self.natural.days_to_minutes if natural else self.calendar.days_to_minutes
            case_levels: list[tuple[int, int]] = []
            if item is not None and item.promised_days:
                promised = days(item.promised_days)
                case_levels.append((WARN, max(promised - days(th.case_warn_before_days), 0)))
                case_levels.append((YELLOW, promised + days(th.case_yellow_after_days) + 1))
            if item is not None and item.statutory_days:
                case_levels.append((RED, days(item.statutory_days) + days(th.case_red_after_days) + 1))
            steps: list[tuple[tuple[int, int], ...] | None] = []
            for limit_days in item.step_limits if item else ():
                if not limit_days:
                    steps.append(None)
                    continue
                limit = days(limit_days)
                steps.append(
                    (
                        (WARN, max(round(limit * th.step_warn_ratio), 0)),
                        (YELLOW, round(limit * th.step_yellow_ratio) + 1),
                        (RED, round(limit * th.step_red_ratio) + 1),
                    )
                )
            limits = _Limits(
                natural=natural,
                case=tuple(case_levels) if "case_time" not in th.disabled_rules else (),
                promised_fallback="case_time" not in th.disabled_rules and item is None,
                warn_before=days(th.case_warn_before_days),
                yellow_after=days(th.case_yellow_after_days),
                steps=tuple(steps) if "step_time" not in th.disabled_rules else (),
                special=(
                    (days(th.special_warn_before_days), days(th.special_yellow_after_days),
                     days(th.special_red_after_days))
                    if "special_time" not in th.disabled_rules else None
                ),
                days=days,
            )  # fmt: skip
            self._limits_cache[code] = limits
        return limits

    def _build_case_watch(self, case: _Case) -> None:
        item = self._items.get(case.item_code)
        lim = self._limits(item)
        case.natural = lim.natural
        idx = self.natural.index_of_iso if lim.natural else self.calendar.index_of_iso
        levels_done = case.levels or _NO_LEVELS
        pauses: list[tuple[int, float]] = []
        for no, sp in case.suspends.items():
            if sp.started_at:
                end = case.resumes.get(no)
                pauses.append((idx(sp.started_at), idx(end) if end else _INF))
        for no, t in case.notices.items():
            end = case.corrections.get(no)
            pauses.append((idx(t), idx(end) if end else _INF))
        if len(pauses) > 1:
            pauses = _merge(pauses)
        watch: list[list[Any]] = []
        next_pos = _INF
        base = f"{case.division}:{case.case_no}"

        acc = case.accept
        if acc is not None and acc.time:
            thresholds = lim.case
            start = idx(acc.time)
            if lim.promised_fallback and acc.promised_at:
                # no item: the promised limit is the one the source system computed at acceptance
                promised = idx(acc.promised_at) - start
                if promised > 0:
                    thresholds = (
                        (WARN, max(promised - lim.warn_before, 0)),
                        (YELLOW, promised + lim.yellow_after + 1),
                    )
            if thresholds:
                obj_key = f"case_time:{base}"
                done = levels_done.get(obj_key, 0)
                keep = [
                    (lv, _crossing(start, pauses, m) if pauses else start + m)
                    for lv, m in thresholds
                    if lv > done
                ]
                keep = [(lv, pos) for lv, pos in keep if pos != _INF]
                if keep:
                    watch.append([obj_key, "case_time", None, None, keep])
                    next_pos = min(next_pos, min(pos for _, pos in keep))
        if lim.steps and item is not None:
            for n, s in case.steps.items():
                q = item.position.get(s.step_code)
                if q is None or not s.started_at:
                    continue
                thresholds_s = lim.steps[q]
                if thresholds_s is None:
                    continue
                obj_key = f"step_time:{base}:{n}"
                done = levels_done.get(obj_key, 0)
                start = idx(s.started_at)
                cap = idx(s.ended_at) if s.ended_at else _INF
                keep = [(lv, _crossing(start, pauses, m) if pauses else start + m)
                        for lv, m in thresholds_s if lv > done]  # fmt: skip
                keep = [(lv, pos) for lv, pos in keep if pos <= cap and pos != _INF]
                if keep:
                    watch.append([obj_key, "step_time", n, None, keep])
                    next_pos = min(next_pos, min(pos for _, pos in keep))
        if lim.special is not None:
            warn_before, yellow_after, red_after = lim.special
            for no, sp in case.suspends.items():
                if not sp.started_at or not sp.approved_days:
                    continue
                obj_key = f"special_time:{base}:{no}"
                done = levels_done.get(obj_key, 0)
                start = idx(sp.started_at)
                approved = lim.days(sp.approved_days)
                end = case.resumes.get(no)
                cap = idx(end) if end else _INF
                specials = (
                    (WARN, start + max(approved - warn_before, 0)),
                    (YELLOW, start + approved + yellow_after + 1),
                    (RED, start + approved + red_after + 1),
                )
                keep = [(lv, pos) for lv, pos in specials if lv > done and pos <= cap]
                if keep:
                    watch.append([obj_key, "special_time", None, no, keep])
                    next_pos = min(next_pos, min(pos for _, pos in keep))
        case.watch = watch
        case.next_pos = next_pos
        case.dirty = False

    def _build_complaint_watch(self, c: _OpenComplaint) -> None:
        th = self.config.default
        watch: list[list[Any]] = []
        if c.rec.due_at and "complaint_time" not in th.disabled_rules:
            days = self.calendar.days_to_minutes
            due = self.calendar.working_minute_index(_parse(c.rec.due_at))
            obj_key = f"complaint_time:{c.division}:{c.complaint_no}"
            done = self._levels.get(obj_key, 0)
            levels = [
                (WARN, float(due - days(th.complaint_warn_before_days))),
                (YELLOW, float(due + days(th.complaint_yellow_after_days) + 1)),
                (RED, float(due + days(th.complaint_red_after_days) + 1)),
            ]
            keep = [(lv, pos) for lv, pos in levels if lv > done]
            if keep:
                watch.append([obj_key, "complaint_time", None, None, keep])
        c.watch = watch
        c.next_pos = min((pos for w in watch for _, pos in w[4]), default=_INF)
        c.dirty = False

    def _fire(self, owner: _Case | _OpenComplaint, watch: list[list[Any]], now: float,
              out: list[Alert]) -> float:  # fmt: skip
        """Emit the highest level reached per watched object; return the next position to watch."""
        clock: Calendar | NaturalClock = (
            self.natural if isinstance(owner, _Case) and owner.natural else self.calendar
        )
        next_pos = _INF
        if isinstance(owner, _Case):
            if owner.levels is None:
                owner.levels = {}
            if owner.emitted is None:
                owner.emitted = set()
            levels_done, emitted = owner.levels, owner.emitted
        else:
            levels_done, emitted = self._levels, self._emitted
        for w in watch:
            levels = w[4]
            level, at_pos = 0, 0.0  # the highest level reached (hot loop: no temporaries)
            for lv, pos in levels:
                if pos <= now and lv > level:
                    level, at_pos = lv, pos
            if level:
                obj_key = w[0]
                done = levels_done.get(obj_key, 0)
                if level > done:
                    levels_done[obj_key] = done = level
                    alert_id = f"{obj_key}:{level}"
                    if alert_id not in emitted:
                        emitted.add(alert_id)
                        out.append(self._card(owner, w[1], level, obj_key, w[2], w[3],
                                              self._instant_text(clock, int(at_pos))))  # fmt: skip
                levels = w[4] = [(lv, p) for lv, p in levels if lv > done]
            for _, pos in levels:
                if pos < next_pos:
                    next_pos = pos
        return next_pos

    def _instant_text(self, clock: Calendar | NaturalClock, pos: int) -> str:
        """ISO text of a crossing instant; cached, as a scan's cards share few distinct minutes."""
        key = (clock is self.natural, pos)
        text = self._at_text.get(key)
        if text is None:
            if len(self._at_text) >= 200_000:
                self._at_text.clear()
            text = self._at_text[key] = clock.instant_of_index(pos).isoformat()
        return text

    def _card(self, owner: _Case | _OpenComplaint, rule: str, level: int, obj_key: str,
              step_no: int | None, sub: str | None, at: str) -> Alert:  # fmt: skip
        name = LEVEL_NAMES[level]
        if isinstance(owner, _OpenComplaint):
            alert = self._alert(rule, level, None, obj_key=obj_key, at=at,
                                message=f"投诉 {owner.complaint_no} 办理期限{name}（{owner.rec.respondent_unit}）",
                                extra={"complaint_no": owner.complaint_no})  # fmt: skip
            alert["division"] = owner.division
            return alert
        case = owner
        if rule == "case_time":
            what = {WARN: "临近承诺时限", YELLOW: "超过承诺时限", RED: "超过法定时限"}[level]
            message = f"办件 {case.case_no} {what}：{name}"
        elif rule == "step_time":
            s = case.steps[step_no] if step_no is not None else None
            message = f"办件 {case.case_no} 环节 {s.step_code if s else ''} 超时：{name}（承办人 {s.handler if s else ''}）"
        else:
            message = f"办件 {case.case_no} 特别程序 {sub} 超过批准期限：{name}"
        extra = {"suspend_no": sub} if rule == "special_time" else None
        return self._alert(rule, level, case, obj_key=obj_key, message=message, at=at, step_no=step_no,
                           extra=extra)  # fmt: skip

    def _year_missing(self, e: CalendarYearMissing, now: datetime, out: list[Alert]) -> None:
        self.missing_years.add(e.year)
        obj_key = f"calendar_year_missing:{self.division}:{e.year}"
        alert_id = f"{obj_key}:{SERIOUS}"
        if alert_id in self._emitted:
            return
        self._emitted.add(alert_id)
        out.append(self._alert("calendar_year_missing", SERIOUS, None, obj_key=obj_key, message=str(e),
                               at=now.isoformat(), extra={"year": e.year}))  # fmt: skip
