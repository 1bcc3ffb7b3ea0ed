"""AlertsService: a red card becomes a 督办单 (``[tickets] auto_from_red = "draft" | "issue"``), and the right
person is told of every alert raised here (the directory's ladder, node/features/alerts/routing.py).

Rules of this module:
- It follows the change feed for ``alert`` records with its own cursor (store meta ``alerts.auto.cursor``,
  moved after the decisions it covers). A red card (``disposal.is_red_card``: 红牌 or 严重违规 about a
  case, a step, a special procedure or a complaint) is this node's to act on when the node is the
  natural parent of the alert's responsible unit (its department, else its division:
  ``disposal.issuer_for``), so exactly one node of the tree acts on it.
- Every decision is taken on the database thread from the records held at that moment (the case index
  caught up first, so what this node wrote a moment ago counts): nothing is done for an alert that a
  ticket already cites, that has a draft, or that is no longer 待处置. So a restart, a replay of the feed
  or the same alert arriving again never yields a second ticket.
- One open ticket per case: when a ticket this node issued about the case is not concluded, a later red
  card on it is linked to that ticket (``alert.dispose`` result ``ticket``, by = system) instead.
- ``issue``: a ``ticket.issue`` signed by the node, ``actor`` and ``by`` = system, to the responsible unit,
  citing the alert (subject, case number, the rule's text, the reply deadline of ``[tickets]
  reply_days``): the alert becomes 已转督办. ``draft``: an ``alert.draft`` that a 监察员 confirms
  (`tickets confirm`, issued in their name) or drops (`tickets drop`).
- Automatic records are no person's acts: no work-log entry.
- With ``off`` the cursor still moves over the alerts: switching the setting on acts on the red cards that
  arrive from then on, not on a backlog of old ones.
- Routing (its own cursor ``alerts.route.cursor``): every alert raised by this node (``origin`` = here), once
  a directory is imported, goes to the people of the ladder (``routing.recipients``: the handler of the step
  or case, as the case index finds it; the leader; the supervisors; the 监察联系人) through the notifiers the
  level names in ``[notify]`` (each message is the alert plus ``to`` = the person and ``why``). Every attempt
  and its outcome is kept in one ``alert.notified`` record per alert (monitor channel: `alerts show` lists who
  was told, at every node above). A handler the directory does not know raises one operator alert
  (``directory_missing``), not one per alert. Sending happens off the database thread; the record and the
  cursor are written together after it (a crash in between sends again: at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from node.app import directory as app_directory
from node.app import notify as app_notify
from node.app.alerts import disposals
from node.core.errors import FednodeError
from node.core.ledger import Ledger, NewRecord
from node.features import notify_dead
from node.features.alerts import disposal as dsp
from node.features.alerts import routing
from node.features.cases import index as cix
from node.features.notify import Dispatcher
from node.features.notify import load as load_dispatcher
from node.features.notify_channels import mask_address
from node.features.rules.processor import alert_record
from node.features.tickets import lifecycle as lc
from node.features.tickets.desk import Clock, TicketDesk, TicketsConfig, project_store
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)
CURSOR_KEY = "alerts.auto.cursor"
ROUTE_CURSOR_KEY = "alerts.route.cursor"
NOTIFIED = "alert.notified"
MISSING_RULE = "directory_missing"


def auto_step(ledger: Ledger, cfg: TicketsConfig, clock: Clock, limit: int = 500) -> tuple[int, list[dict[str, Any]]]:
    """Decide on the next page of alerts after the cursor (database thread; also what tests call).
    Returns (alerts read, what was written: {"kind", "alert_id", "ticket"?})."""
    store = ledger.store
    after = int(store.get_meta(CURSOR_KEY, "0") or 0)
    batch, mark = store.feed(after, limit, kinds=("alert",))
    written: list[dict[str, Any]] = []
    if cfg.auto_from_red != "off":
        for ch in batch:
            if ch.kind != "alert":
                continue
            try:
                a = ch.payload()
            except Exception:  # noqa: BLE001 — an unreadable alert is not ours to judge
                continue
            if not isinstance(a, dict) or not dsp.is_red_card(a) or dsp.issuer_for(a) != ledger.code:
                continue
            try:
                w = decide(ledger, cfg, clock, a, ch.origin, ch.seq)
            except lc.TicketError as e:  # e.g. a calendar year missing: logged, the alert stays 待处置
                log.error("auto_ticket_failed", alert_id=a.get("alert_id"), error=e.message, fix=e.fix)
                continue
            if w:
                written.append(w)
    if mark > after:
        with store.write() as tx:
            tx.set_meta(CURSOR_KEY, str(mark))
    return len(batch), written


def decide(ledger: Ledger, cfg: TicketsConfig, clock: Clock, a: dict[str, Any], origin: str,
           seq: int) -> dict[str, Any] | None:
    """The one decision for one red card (module rules); what was written, or None."""
    store = ledger.store
    alert_id = str(a.get("alert_id") or "")
    case_no = str(a.get("case_no") or "")
    cix.fold_all(store)
    with store.read() as conn:
        d = disposals(conn, [alert_id], {alert_id: origin}).get(alert_id) or dsp.Disposal(alert_id)
        case_tickets = {str(h.payload.get("ticket")) for h in cix.fetch(conn, cix.seqs_of(
            conn, case_no=case_no, kinds=("ticket.issue",))) if isinstance(h.payload, dict)} if case_no else set()
    if d.tickets or d.draft is not None or d.state != dsp.OPEN:
        return None
    at = lc.format_time(clock())
    system = dsp.system_by(ledger.code)
    record = f"{origin}/monitor/{seq}"
    if case_tickets:
        tickets = project_store(store)[0].tickets
        open_ = sorted(t for t in case_tickets if t in tickets and tickets[t].issuer == ledger.code
                       and tickets[t].state != lc.CONCLUDED)
        if open_:
            p = dsp.dispose_payload(alert_id, dsp.TICKET, f"同一办件已有未办结的督办单 {open_[0]}，并入该督办单",
                                    by=system, at=at, node=ledger.code, case_no=case_no, record=record,
                                    ticket=open_[0])
            ledger.append([NewRecord(dsp.DISPOSE, p)])
            return {"kind": "linked", "alert_id": alert_id, "ticket": open_[0]}
    fill = dsp.prefill(a, ledger.code)
    if not fill["to"]:
        return None
    if cfg.auto_from_red == "draft":
        p = {"alert_id": alert_id, **fill, "actor": dsp.SYSTEM, "by": system, "at": at, "node": ledger.code,
             "alert": record, **({"case_no": case_no} if case_no else {})}
        ledger.append([NewRecord(dsp.DRAFT, p)])
        return {"kind": "draft", "alert_id": alert_id, "to": fill["to"]}
    desk = TicketDesk(ledger, cfg, clock)
    p = desk.issue(to=fill["to"], subject=fill["subject"], body=fill["body"], actor=dsp.SYSTEM, by=system,
                   case_nos=fill["case_nos"], alert_ids=[alert_id], basis=fill["basis"], rule_id=fill["rule_id"],
                   audit_entry=False)
    return {"kind": "issue", "alert_id": alert_id, "ticket": p["ticket"], "to": p["to"]}


# ---- the right person told ------------------------------------------------------------------------------------

Plan = tuple[dict[str, Any], list[tuple[routing.Entry, str]]]


def handler_of(conn: Any, alert: Mapping[str, Any]) -> str:
    """The handler an alert is about: its step's (step alerts), else its case's acceptance, else the last step's;
    a complaint's respondent person."""
    case_no = str(alert.get("case_no") or "")
    if case_no:
        held = [h for h in cix.fetch(conn, cix.seqs_of(conn, case_no=case_no, kinds=("case.accept", "case.step")))
                if isinstance(h.payload, dict)]
        steps = [h.payload for h in held if h.kind == "case.step"]
        if alert.get("step_no") is not None:
            for p in reversed(steps):
                if str(p.get("step_no")) == str(alert["step_no"]) and p.get("handler"):
                    return str(p["handler"])
        accept = [h.payload for h in held if h.kind == "case.accept" and h.payload.get("handler")]
        if accept:
            return str(accept[-1]["handler"])
        if steps and steps[-1].get("handler"):
            return str(steps[-1]["handler"])
    if alert.get("complaint_no"):
        held = cix.fetch(conn, cix.seqs_of(conn, refs=[cix.COMPLAINT_REF + str(alert["complaint_no"])],
                                           kinds=("complaint.register",)))
        for h in held:
            if isinstance(h.payload, dict) and h.payload.get("respondent_person"):
                return str(h.payload["respondent_person"])
    return ""


def route_plan(ledger: Ledger, clock: Clock, limit: int = 200) -> tuple[list[Plan], int, int]:
    """Who is told of the next alerts raised here (database thread): (plans, where the cursor goes, alerts read).
    Writes the operator alert of each handler the directory lacks, once."""
    store = ledger.store
    after = int(store.get_meta(ROUTE_CURSOR_KEY, "0") or 0)
    batch, mark = store.feed(after, limit, kinds=("alert",), origin=ledger.code)
    batch = [c for c in batch if c.kind == "alert" and c.origin == ledger.code]
    if not app_directory.load(store) or not batch:  # nobody to tell yet: alerts raised before the directory stay
        return [], mark, len(batch)
    directory, supervisors = app_notify.ladder_people(store)  # addresses from the directory, else the users
    cix.fold_all(store)
    plans: list[Plan] = []
    missing: dict[str, dict[str, Any]] = {}
    with store.read() as conn:
        for ch in batch:
            try:
                a = ch.payload()
            except Exception:  # noqa: BLE001 — an unreadable alert tells nobody
                continue
            if not isinstance(a, dict):
                continue
            handler = handler_of(conn, a)
            told, lacks = routing.recipients(a, handler, directory, supervisors)
            if lacks:
                missing.setdefault(handler, a)
            plans.append((a, told))
        new = [h for h in missing if not cix.seqs_of(conn, refs=[_missing_id(ledger.code, h)], kinds=("alert",))]
    if new:
        at = lc.format_time(clock())
        ledger.append([NewRecord("alert", alert_record({
            "alert_id": _missing_id(ledger.code, h), "rule_id": MISSING_RULE, "category": "01", "level": 4,
            "object": "supervisor", "division": ledger.code.split("-", 1)[0],
            "message": f"承办人 {h} 不在通讯录中：其预警已转告部门监察联系人；请在通讯录中登记（fednode directory import）",
            "at": at, "source": "local"})) for h in new])
    return plans, mark, len(batch)


def _missing_id(node: str, handler: str) -> str:
    return f"{MISSING_RULE}:{node}:{handler}"[:200]


def send(dispatcher: Dispatcher, plans: list[Plan], clock: Clock,
         dead: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Tell every person of every plan through the notifiers the alert's level names (blocking I/O: off the
    database thread), each with the configured retries and backoff (node/features/notify.py ``deliver``).
    One ``alert.notified`` payload per alert, with every attempt and its outcome; a notification that still
    failed is added to ``dead`` as a dead-letter row (``record_told`` stores them)."""
    out = []
    for a, told in plans:
        attempts = []
        for e, why in told:
            message = {**a, "to": {"name": e.name, "login": e.login, "dept": e.dept, "phone": e.phone, "mail": e.mail},
                       "why": why}
            for channel in dispatcher.config.plan(a):
                error, tries = dispatcher.deliver(channel, message)
                at = lc.format_time(clock())
                attempts.append({"person": e.key, "name": e.name, "channel": channel,
                                 "outcome": "failed" if error else "sent", "error": error, "why": why, "at": at,
                                 "tries": tries})
                if error:
                    log.error("notify_person_failed", alert_id=a.get("alert_id"), person=e.key, channel=channel,
                              address=mask_address(channel, notify_dead.address_of(channel, message)), error=error,
                              tries=tries, note="kept in the dead-letter list: `fednode notify dead-letters`")
                    if dead is not None:
                        dead.append(notify_dead.new_row(message, channel, e.key, tries, error, at))
        out.append({"alert_id": a.get("alert_id"), "at": lc.format_time(clock()), "actor": dsp.SYSTEM,
                    **({"case_no": a["case_no"]} if a.get("case_no") else {}), "attempts": attempts})
    return out


def record_told(ledger: Ledger, payloads: list[dict[str, Any]], mark: int,
                dead: Sequence[dict[str, Any]] = ()) -> None:
    """The attempts, the dead letters and the cursor past the alerts they are for, in one transaction."""
    items = [NewRecord(NOTIFIED, dict(p, node=ledger.code)) for p in payloads]

    def move(tx: Any) -> None:
        notify_dead.add(tx, dead)
        tx.set_meta(ROUTE_CURSOR_KEY, str(mark))

    if items:
        ledger.append(items, also=move)
    else:
        with ledger.store.write() as tx:
            move(tx)


def route_once(ledger: Ledger, dispatcher: Dispatcher, clock: Clock) -> list[dict[str, Any]]:
    """Plan, send and record until no alert raised here is left (tests; the service does it in its steps)."""
    out: list[dict[str, Any]] = []
    while True:
        plans, mark, n = route_plan(ledger, clock)
        dead: list[dict[str, Any]] = []
        payloads = send(dispatcher, plans, clock, dead)
        record_told(ledger, payloads, mark, dead)
        out.extend(payloads)
        if n == 0:
            return out


class AutoTicketService(Service):
    name = "auto_tickets"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.cfg = TicketsConfig.of_home(rt.home)
        self.dispatcher = self._dispatcher()
        self.told = 0
        self.dead_letters = 0  # notifications kept as dead letters since the start (`fednode notify dead-letters`)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {}  # issue | draft | linked
        self.last_error = ""

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _dispatcher(self) -> Dispatcher | None:
        try:
            return load_dispatcher(self.rt.home.config.sections, self.rt.home.dir)
        except FednodeError as e:  # the rules service reports a bad [notify]; routing waits for a good one
            log.error("alert_routing_disabled", error=e.message, fix=e.fix)
            return None

    async def reload(self) -> None:
        try:
            self.cfg = TicketsConfig.of_home(self.rt.home)
        except Exception as e:  # noqa: BLE001 — a bad edit must not stop the node: the old configuration stays
            log.error("auto_tickets_reload_failed", error=str(e))
        self.dispatcher = self._dispatcher() or self.dispatcher
        self._wake.set()

    async def _route(self, clock: Clock) -> None:
        """Tell the right people of the alerts raised here: plan and record on the database thread, send off it."""
        if self.dispatcher is None:
            return
        while True:
            plans, mark, n = await self.rt.db(route_plan, self.rt.ledger, clock)
            dead: list[dict[str, Any]] = []
            payloads = await asyncio.to_thread(send, self.dispatcher, plans, clock, dead) if plans else []
            await self.rt.db(record_told, self.rt.ledger, payloads, mark, dead)
            self.told += sum(len(p["attempts"]) for p in payloads)
            self.dead_letters += len(dead)
            if payloads:
                self.rt.notify()
            if n == 0:
                return

    def on_stored(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        from node.runtime.services import tickets as ticket_service  # CLOCK read at call time: tests move it

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=30.0)
            self._wake.clear()
            if not self.rt.recovered.is_set():
                continue  # (with "off" the cursor still moves: switching it on acts on red cards from then on)
            try:
                while True:
                    n, written = await self.rt.db(auto_step, self.rt.ledger, self.cfg, lambda: ticket_service.CLOCK())
                    for w in written:
                        self.counts[w["kind"]] = self.counts.get(w["kind"], 0) + 1
                        log.info("auto_ticket", **w)
                    if written:
                        self.rt.notify()
                    if n == 0:
                        break
                await self._route(lambda: ticket_service.CLOCK())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — retried on the next wake
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("auto_tickets_failed")
            await asyncio.sleep(0.5)

    def status(self) -> dict[str, Any] | None:
        return {"mode": self.cfg.auto_from_red, "issued": self.counts.get("issue", 0),
                "drafted": self.counts.get("draft", 0), "linked": self.counts.get("linked", 0),
                "notifications": self.told, "dead_letters": self.dead_letters, "routing": self.dispatcher is not None,
                "last_error": self.last_error}


SERVICES = [AutoTicketService]
