"""The ticket desk: the thin I/O shell between the pure lifecycle and a node's ledger.

Rules of this module:
- Synchronous, store-bound work only: it runs on the running node's database thread (``rt.db``) or
  directly in the CLI when the node is stopped. No event loop, no links, no scheduler here.
- The state of every ticket is ``lifecycle.project_all`` over the ``ticket.*`` records this node
  holds (its own logs, its children's, and the downward records held from its ancestors), with the
  *authenticated origin* of each record as its writer, never a payload field.
- Before appending, a transition is applied to the current projection with this node as writer: a
  refused transition raises the lifecycle's specific error and nothing is written.
- Routing (DESIGN §4/§5): records of the issuer travel down, so ``dest`` = the ticket's target;
  records of the target subtree travel up anyway, ``dest`` = the issuer (informative, and it makes
  the addressee explicit in the record).
- Automatic records (receipt, reminder, escalation) are decided from the projection of the store at
  the moment they are written, in the same thread that writes them: the state is the memory, so a
  restart never writes one twice. The change-feed cursor of the receipts is stored (meta
  ``tickets.cursor``) in the transaction that writes the receipts.
- Deadlines are counted in working days (``node.calendar.Calendar.add_working_days``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from node.core.calendar import CST, Calendar, CalendarYearMissing, load_overrides
from node.core.errors import ConfigError, FednodeError
from node.core.ledger import Ledger, NewRecord
from node.core.store import Store
from node.features.tickets import complaints as cmp
from node.features.tickets import lifecycle as lc

TICKET_PREFIX = "ticket."
CURSOR_KEY = "tickets.cursor"
ESCALATION_LEVEL = 3  # 红牌: "second warning, to the handler's superior" (DOMAIN.md warning rules)
ESCALATION_RULE = "ticket.escalate"

# The CLI verbs that are plain transitions: verb -> (event kind, who writes it).
VERBS: dict[str, str] = {
    "sign": lc.SIGN,
    "reply": lc.REPLY,
    "conclude": lc.CONCLUDE,
    "return": lc.RETURN,
    "extend-request": lc.EXTEND_REQUEST,
    "extend-grant": lc.EXTEND_GRANT,
    "assign": lc.ASSIGN,
    "assign-result": lc.ASSIGN_RESULT,
}

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Now, in +08:00, with microseconds: two acts on a ticket in the same second keep their order (the
    projection orders by ``at`` first; lifecycle.py rule 7)."""
    return datetime.now(CST)


class TicketCalendarError(lc.TicketError):
    code = "ticket_calendar"


# ---- configuration: the [tickets] section of node.toml ---------------------------------------------------

_CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "sign_days": ((int, float), "working days to sign for a ticket, e.g. 1"),
    "reply_days": ((int, float), "working days to reply, e.g. 10"),
    "escalate_after_days": ((int, float), "working days after a reminder before escalating, e.g. 1"),
    "check_interval_s": ((int, float), "seconds between deadline checks, e.g. 60"),
    "calendar_overrides": (str, "a CSV or TOML file of holidays/调休 for years chinese-calendar lacks"),
    "auto_from_red": (str, 'what a red card does: "off", "draft" or "issue"'),
}
AUTO_FROM_RED = ("off", "draft", "issue")


@dataclass(frozen=True)
class TicketsConfig:
    sign_days: float = lc.DEFAULT_SIGN_DAYS
    reply_days: float = lc.DEFAULT_REPLY_DAYS
    escalate_after_days: float = lc.DEFAULT_ESCALATE_AFTER_DAYS
    check_interval_s: float = 60.0
    calendar_overrides: str = ""
    auto_from_red: str = "off"  # off | draft | issue (node/runtime/services/alerts.py)

    @classmethod
    def from_section(cls, section: dict[str, Any], *, source: str, base: Path) -> TicketsConfig:
        values: dict[str, Any] = {}
        for key, value in section.items():
            spec = _CONFIG_KEYS.get(key)
            if spec is None:
                raise ConfigError(f"{source}: unknown field [tickets] {key}",
                                  fix=f"use one of: {', '.join(_CONFIG_KEYS)}")
            typ, fix = spec
            if not isinstance(value, typ) or isinstance(value, bool) or (
                    isinstance(value, int | float) and value <= 0):
                raise ConfigError(f"{source}: [tickets] {key} = {value!r} is invalid", fix=fix)
            if key == "auto_from_red" and value not in AUTO_FROM_RED:
                raise ConfigError(f"{source}: [tickets] auto_from_red = {value!r} is invalid", fix=fix)
            values[key] = value
        if values.get("calendar_overrides"):
            p = Path(values["calendar_overrides"])
            values["calendar_overrides"] = str(p if p.is_absolute() else base / p)
        return cls(**values)

    @classmethod
    def of_home(cls, home: Any) -> TicketsConfig:
        cfg = home.config
        section = cfg.sections.get("tickets", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{cfg.path}: [tickets] must be a table", fix="write [tickets] with key = value lines")
        return cls.from_section(section, source=str(cfg.path), base=cfg.path.parent)

    def calendar(self) -> Calendar:
        cal = Calendar()
        if self.calendar_overrides:
            cal = cal.with_overrides(load_overrides(self.calendar_overrides))
        return cal


def working_days(cal: Calendar) -> lc.DeadlineFn:
    """The lifecycle's DeadlineFn on the working-day calendar; a year it does not cover is an error."""

    def add(start: datetime, days: float) -> datetime:
        try:
            return cal.add_working_days(start, days)
        except CalendarYearMissing as e:
            raise TicketCalendarError(
                f"cannot count {days} working days from {start.isoformat()}: {e.message}",
                fix="load that year's holidays: [tickets] calendar_overrides = \"holidays.csv\" in node.toml",
            ) from None

    return add


# ---- reading what the node holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A ticket record as this node holds it."""

    kind: str
    payload: Any
    origin: str  # the authenticated writer
    seq: int
    local_seq: int
    down: bool
    time_us: int


def held_records(store: Store, prefixes: tuple[str, ...] = (TICKET_PREFIX,)) -> list[Held]:
    """Every record of these kinds held here (a full read: for tests and one-off commands)."""
    index = HeldIndex(prefixes)
    return index.refresh(store)


class HeldIndex:
    """The ticket and complaint records this node holds, read incrementally from the change feed.

    The running node keeps one, so a check costs an indexed read of what arrived since the last one,
    not a scan of every record (a province holds millions of case events and a few ticket records).
    Only the database thread uses it."""

    def __init__(self, prefixes: tuple[str, ...] = (TICKET_PREFIX, "complaint.")) -> None:
        self.prefixes = prefixes
        self.after = 0
        self.held: list[Held] = []
        self.receipts_after: int | None = None  # in-memory copy of the persisted receipt cursor

    def refresh(self, store: Store) -> list[Held]:
        # Rows up to the feed's high-water mark read *before* the query are committed (the mark and the
        # rows are written in one transaction), so the cursor may jump to it even when nothing matched.
        high = int(store.get_meta("local_seq", "0") or 0)
        while True:
            page = store.changes(self.after, limit=5000, kinds=self.prefixes)
            for c in page:
                try:
                    payload = c.payload()
                except (FednodeError, ValueError):
                    payload = None  # kept: the projection lists it as rejected
                self.held.append(Held(c.kind, payload, c.origin, c.seq, c.local_seq, c.down, c.time_us))
            if page:
                self.after = page[-1].local_seq
            if len(page) < 5000:
                break
        self.after = max(self.after, high)
        return self.held

    def of_kind(self, prefix: str) -> list[Held]:
        return [h for h in self.held if h.kind.startswith(prefix)]


def project_store(store: Store, index: HeldIndex | None = None) -> tuple[lc.Projection, list[Held]]:
    index = index or HeldIndex()
    index.refresh(store)
    held = index.of_kind(TICKET_PREFIX)
    events = [(h.kind, h.payload if isinstance(h.payload, dict) else {"_raw": h.payload}, h.origin, h.seq)
              for h in held]
    return _project_safe(events), held


def _project_safe(events: list[lc.SeqEvent]) -> lc.Projection:
    good: list[lc.SeqEvent] = []
    bad: list[lc.Rejection] = []
    for kind, payload, writer, seq in events:
        if kind not in lc.EVENTS:
            bad.append(lc.Rejection(kind, payload, writer, lc.MalformedTicketEvent.code,
                                    f"unknown ticket event kind {kind!r}"))
        else:
            good.append((kind, payload, writer, seq))
    proj = lc.project_all(good)
    proj.rejected[:0] = bad
    return proj


# ---- the desk ------------------------------------------------------------------------------------------------


class TicketDesk:
    def __init__(self, ledger: Ledger, cfg: TicketsConfig | None = None, clock: Clock = system_clock,
                 index: HeldIndex | None = None) -> None:
        self.ledger = ledger
        self.index = index or HeldIndex()
        self.code = ledger.code
        self.cfg = cfg or TicketsConfig()
        self.clock = clock
        self.deadline_fn = working_days(self.cfg.calendar())

    @property
    def store(self) -> Store:
        return self.ledger.store

    def projection(self) -> lc.Projection:
        return project_store(self.store, self.index)[0]

    def _state(self, proj: lc.Projection, ticket: str) -> lc.TicketState:
        st = proj.tickets.get(ticket)
        if st is None:
            lc.parse_ticket_number(ticket)
            raise lc.UnknownTicket(
                f"ticket {ticket} is not held at {self.code}",
                ticket=ticket, event="", allowed=(),
                fix=f"`fednode tickets list` shows the tickets {self.code} holds; the ticket may not have "
                "arrived yet",
            )
        return st

    def _next_seq(self, proj: lc.Projection) -> int:
        seqs = [lc.parse_ticket_number(t)[1] for t, st in proj.tickets.items() if st.issuer == self.code]
        seqs += [lc.parse_ticket_number(r.payload["ticket"])[1] for r in proj.rejected
                 if r.kind == lc.ISSUE and isinstance(r.payload, dict)
                 and str(r.payload.get("ticket", "")).startswith(self.code + "-")
                 and _is_ticket_number(r.payload["ticket"])]
        return max(seqs, default=0) + 1

    # -- issuing -------------------------------------------------------------------------------------

    def issue(self, *, to: str, subject: str, body: str = "", actor: str = "operator", by: dict[str, Any] | None = None,
              case_nos: list[str] | None = None, alert_ids: list[str] | None = None,
              sign_days: float | None = None,
              reply_days: float | None = None, basis: str = "", rule_id: str = "",
              audit_entry: bool = True) -> dict[str, Any]:
        """Issue a ticket (and its work-log entry; ``audit_entry=False`` for the node's own tickets, which are
        no person's act)."""
        proj = self.projection()
        payload = lc.make_issue(
            self.code, self._next_seq(proj), to=to, subject=subject, actor=actor, at=self.clock(),
            body=body, basis=basis, rule_id=rule_id, case_nos=case_nos or [], alert_ids=alert_ids or [],
            sign_days=sign_days if sign_days is not None else self.cfg.sign_days,
            reply_days=reply_days if reply_days is not None else self.cfg.reply_days,
            deadline_fn=self.deadline_fn,
        )
        if by:
            payload["by"] = by
        lc.apply(None, lc.ISSUE, payload, writer_code=self.code)  # refusals before anything is written
        self.ledger.append([NewRecord(lc.ISSUE, payload, dest=to)] + ([audit(lc.ISSUE, payload)] if audit_entry else []))
        return payload

    def register_complaint(self, complaint: dict[str, Any], *, actor: str = "operator",
                           by: dict[str, Any] | None = None, to: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Store the complaint and the ticket it becomes, in one transaction."""
        proj = self.projection()
        held = self.index.of_kind("complaint.")
        no = complaint.get("complaint_no") or f"TS{self.code}{len(held) + 1:06d}"
        complaint = {**complaint, "complaint_no": no}
        if any(isinstance(h.payload, dict) and h.payload.get("complaint_no") == no for h in held):
            raise cmp.MalformedComplaint(f"complaint {no} is already registered here",
                                         fix="use another complaint number")
        cmp.validate_complaint(complaint)
        payload = cmp.ticket_from_complaint(
            complaint, issuer=self.code, seq=self._next_seq(proj), actor=actor, at=self.clock(), to=to,
            sign_days=self.cfg.sign_days, deadline_fn=self.deadline_fn,
        )
        if by:
            payload["by"] = by
        lc.apply(None, lc.ISSUE, payload, writer_code=self.code)
        self.ledger.append([NewRecord(cmp.REGISTER, complaint),
                            NewRecord(lc.ISSUE, payload, dest=payload["to"]), audit(cmp.REGISTER, payload)])
        return complaint, payload

    # -- transitions -----------------------------------------------------------------------------------

    def act(self, ticket: str, kind: str, fields: dict[str, Any], *, actor: str = "operator",
            by: dict[str, Any] | None = None) -> dict[str, Any]:
        proj = self.projection()
        st = self._state(proj, ticket)
        payload = {"ticket": ticket, "actor": actor, "at": lc.format_time(self.clock()), "node": self.code,
                   **fields}
        if by:
            payload["by"] = by
        if kind == lc.ASSIGN and "assign_no" not in payload:
            payload["assign_no"] = len(st.assignments) + 1
        lc.apply(st, kind, payload, writer_code=self.code)
        self.ledger.append([NewRecord(kind, payload, dest=self.dest_of(st)), audit(kind, payload)])
        return payload

    def dest_of(self, st: lc.TicketState) -> str:
        return st.to if self.code == st.issuer else st.issuer

    # -- automatic records -------------------------------------------------------------------------------

    def write_receipts(self) -> list[dict[str, Any]]:
        """``ticket.delivered`` for every ticket to this node stored here since the cursor.

        Reads the change feed through the index (one indexed read of what arrived since the last wake);
        the cursor is persisted with the receipts it led to. Re-reading from an older cursor after a
        restart is harmless: a ticket already delivered here gets no second receipt (the projection
        says so), which is also what makes the receipt once-only."""
        self.index.refresh(self.store)
        if self.index.receipts_after is None:
            self.index.receipts_after = int(self.store.get_meta(CURSOR_KEY, "0") or 0)
        cursor, last = self.index.receipts_after, self.index.after
        candidates = set()
        for h in self.index.held:
            if h.local_seq > cursor and h.kind == lc.ISSUE and isinstance(h.payload, dict) \
                    and h.payload.get("to") == self.code and isinstance(h.payload.get("ticket"), str):
                candidates.add(h.payload["ticket"])
        out: list[dict[str, Any]] = []
        items: list[NewRecord] = []
        if candidates:
            proj = self.projection()
            at = lc.format_time(self.clock())
            for ticket in sorted(candidates):
                st = proj.tickets.get(ticket)
                if st is None or st.state != lc.ISSUED:  # refused (forged) or already delivered
                    continue
                # never before the issue, whatever the two clocks say
                payload = {"ticket": ticket, "actor": lc.SYSTEM_ACTOR,
                           "at": max(at, st.issued_at, key=lc.parse_time), "node": self.code}
                try:
                    lc.apply(st, lc.DELIVERED, payload, writer_code=self.code)
                except lc.TicketError:
                    continue
                items.append(NewRecord(lc.DELIVERED, payload, dest=st.issuer))
                out.append(payload)
        if items:
            self.ledger.append(items, also=lambda tx: tx.set_meta(CURSOR_KEY, str(last)))
        self.index.receipts_after = last
        return out

    def run_due(self, now: datetime | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Write the reminders and escalations due at ``now`` for tickets this node issued."""
        now = now or self.clock()
        written: list[tuple[str, dict[str, Any]]] = []
        # An escalation needs its reminder applied first: loop until nothing more is due (at most 2 rounds
        # per deadline instance).
        for _round in range(4):
            proj = self.projection()
            items: list[NewRecord] = []
            for st in proj.tickets.values():
                if st.issuer != self.code:
                    continue
                try:
                    due = lc.due_actions(st, now, self.deadline_fn,
                                         escalate_after_days=self.cfg.escalate_after_days)
                except lc.TicketError:
                    continue  # e.g. a calendar year missing: retried at the next check
                for kind, payload in due:
                    items.append(NewRecord(kind, payload, dest=st.to))
                    if kind == lc.ESCALATE:
                        items.append(NewRecord("alert", escalation_alert(st, payload)))
                    written.append((kind, payload))
            if not items:
                break
            self.ledger.append(items)
        return written


def audit(kind: str, payload: dict[str, Any]) -> NewRecord:
    """The work-log entry (监察日志, DESIGN §7) of an operator's ticket action; it stays in our log."""
    detail = {k: v for k, v in payload.items() if k in ("to", "subject", "verdict", "reason", "complaint_no")}
    if payload.get("alert_ids"):  # the alerts this ticket deals with: handled, for the supervisor rules
        detail["alert_ids"] = payload["alert_ids"]
    action = {"actor": payload["actor"], "action": kind, "target": payload["ticket"], "detail": detail,
              "at": payload["at"]}
    if payload.get("by"):
        action["by"] = payload["by"]
    return NewRecord("audit.action", action)


def escalation_alert(st: lc.TicketState, esc: dict[str, Any]) -> dict[str, Any]:
    """The alert an escalation raises to the issuer's supervisors (it travels up the monitor channel)."""
    what = "签收" if esc["deadline"] == "sign" else "答复"
    return {
        "alert_id": f"{ESCALATION_RULE}:{st.ticket}:{esc['deadline']}:{esc['due']}:{ESCALATION_LEVEL}",
        "rule_id": ESCALATION_RULE,
        "category": "01",
        "level": ESCALATION_LEVEL,
        "object": "complaint" if st.complaint_no else "supervisor",
        "division": st.issuer,
        "message": f"督办单 {st.ticket} ({st.subject}) 致 {st.to}: {what}期限 {esc['due']} 已过, 催办后仍未{what}",
        "at": esc["at"],
        "source": "local",
    }


def _is_ticket_number(text: str) -> bool:
    try:
        lc.parse_ticket_number(text)
        return True
    except lc.TicketError:
        return False


# ---- where a ticket waits ------------------------------------------------------------------------------------


def path_down(issuer: str, target: str) -> list[str]:
    """The nodes from the issuer down to the target, both included."""
    from node.core.codes import natural_parent, within

    chain = [target]
    while chain[-1] != issuer:
        parent = natural_parent(chain[-1])
        if parent is None or not within(parent, issuer):
            return [issuer, target]
        chain.append(parent)
    return list(reversed(chain))


def _find_report(tree: dict[str, Any], code: str) -> dict[str, Any] | None:
    for c, rep in tree.items():
        if c == code:
            return rep if isinstance(rep, dict) else None
        found = _find_report(rep.get("children", {}) if isinstance(rep, dict) else {}, code)
        if found is not None:
            return found
    return None


def _fmt_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, CST).replace(microsecond=0).isoformat() if us else "?"


def where_waits(st: lc.TicketState, issue_seq: int, here: str, status: dict[str, Any] | None) -> str:
    """Where a ticket not yet delivered (as far as ``here`` knows) is waiting.

    Walks the path issuer → target; at each hop it reads the link status (our own links, then the
    link reports our children sent up) and the downward cursor acked on that link: a hop whose
    cursor covers the ticket's seq has stored it."""
    if st.state != lc.ISSUED:
        return "delivered" if st.delivered_at else st.state
    if status is None or not status.get("running"):
        return (f"{here} is not running: as far as this store knows the ticket is held at {st.issuer}; "
                "the records go out when the node runs")
    path = path_down(st.issuer, st.to)
    start = path.index(here) if here in path else 0
    for node, child in zip(path[start:], path[start + 1:], strict=False):
        if node == here:
            links = status.get("links", [])
        else:
            rep = _find_report(status.get("tree", {}), node)
            if rep is None:
                return f"passed {path[start]}; beyond it: no link report from {node} yet"
            links = rep.get("links", [])
        link = next((ln for ln in links if ln.get("peer") == child), None)
        if link is None:  # children dial their parents: one that never connected has no link state yet
            if node == here:
                return (f"held at {node}, link to {child} down since {_fmt_us(status.get('started_us', 0))} "
                        f"({child} has not connected since {node} started)")
            return f"held at {node}, no link from {child} reported yet"
        acked = max((a.get("seq", 0) for a in link.get("acked", [])
                     if a.get("kind") == "down" and a.get("origin") == st.issuer and a.get("channel") == "control"),
                    default=0)
        if link.get("state") != "connected":
            if acked >= issue_seq:
                continue
            return f"held at {node}, link to {child} {link.get('state', 'down')} since {_fmt_us(link.get('since_us', 0))}"
        if acked < issue_seq:
            return f"in transit from {node} to {child} (link connected)"
    return f"stored at {st.to}; its receipt is on its way back"


def timeline_rows(st: lc.TicketState) -> list[dict[str, Any]]:
    return [{"at": e["at"], "event": e["event"].removeprefix(TICKET_PREFIX), "actor": e["actor"],
             "by": e.get("by"), "node": e["node"], "detail": e.get("detail", {})} for e in st.timeline]


def summary(st: lc.TicketState) -> dict[str, Any]:
    return {"ticket": st.ticket, "state": st.state, "to": st.to, "issuer": st.issuer, "subject": st.subject,
            "issued_at": st.issued_at, "sign_deadline": st.deadlines["sign"],
            "reply_deadline": st.deadlines["reply"], "complaint_no": st.complaint_no,
            "reminders": len(st.reminders), "escalations": len(st.escalations)}


def rejection_dict(r: lc.Rejection) -> dict[str, Any]:
    ticket = r.payload.get("ticket") if isinstance(r.payload, dict) else None
    return {"kind": r.kind, "ticket": ticket, "writer": r.writer_code, "code": r.code, "error": r.message}
