"""The ticket lifecycle (node/tickets): the whole table, authorisation, projection, deadlines, complaints.

Pure logic only: no store, no links. Times are fake; the "scheduler" here is a loop over a list of
records, which is all a restart has to go on.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.core.errors import FednodeError
from node.features.tickets import (
    EVENTS,
    STATES,
    TRANSITIONS,
    WHO,
    MalformedComplaint,
    MalformedTicketEvent,
    NotAuthorised,
    TicketState,
    TransitionRefused,
    UnknownTicket,
    allowed_events,
    apply,
    complaint_ticket,
    due_actions,
    make_issue,
    parse_ticket_number,
    project,
    project_all,
    satisfaction_rate,
    ticket_from_complaint,
    ticket_number,
    validate_complaint,
)
from node.features.tickets import lifecycle as lc

CST = timezone(timedelta(hours=8))
T0 = datetime(2025, 10, 9, 9, 0, tzinfo=CST)
PROVINCE, CITY, TARGET, INSIDE, SIBLING = "320000", "320300", "320303", "320303-GA", "320305"
TICKET = "320000-000012"
SIGN_DUE = T0 + timedelta(days=1)
REPLY_DUE = T0 + timedelta(days=10)

Event = tuple[str, dict[str, Any], str]


def iso(t: datetime) -> str:
    return t.isoformat()


def ev(kind: str, at: datetime, writer: str, *, ticket: str = TICKET, **fields: Any) -> Event:
    payload = {"ticket": ticket, "actor": f"clerk@{writer}", "at": iso(at), "node": writer, **fields}
    return (kind, payload, writer)


def issue_event(ticket: str = TICKET, to: str = TARGET, at: datetime = T0, **extra: Any) -> Event:
    fields: dict[str, Any] = {
        "to": to,
        "subject": "超时办件督办",
        "body": "请说明 320303 案件超时原因",
        "basis": "红牌 R-01",
        "case_nos": ["320303-2025-000001"],
        "alert_ids": ["R01:320303-2025-000001:3"],
        "rule_id": "R01",
        "sign_deadline": iso(SIGN_DUE),
        "reply_deadline": iso(REPLY_DUE),
    }
    fields.update(extra)
    issuer, _ = parse_ticket_number(ticket)
    return ev("ticket.issue", at, issuer, ticket=ticket, **fields)


def run(events: list[Event], state: TicketState | None = None) -> TicketState:
    for kind, payload, writer in events:
        state = apply(state, kind, payload, writer_code=writer)
    assert state is not None
    return state


def last_at(st_: TicketState) -> datetime:
    return max(lc.parse_time(e["at"]) for e in st_.timeline)


# ---- building one valid record for any (state, event) ------------------------------------------------


def candidate(s: TicketState, kind: str) -> Event:
    """A record of ``kind`` that every guard accepts in ``s`` when the table allows the pair."""
    t = last_at(s) + timedelta(minutes=1)
    if kind == "ticket.issue":
        return issue_event(at=t + timedelta(minutes=1), sign_deadline=iso(t + timedelta(days=1)))
    if kind == "ticket.delivered":
        return ev(kind, t, s.to)
    if kind == "ticket.sign":
        return ev(kind, t, s.to)
    if kind == "ticket.reply":
        return ev(kind, t, INSIDE, text=f"已整改 ({len(s.timeline)})")
    if kind == "ticket.conclude":
        return ev(kind, t, s.issuer, verdict="basically", text="整改基本到位")
    if kind == "ticket.return":
        new = max(t, lc.parse_time(s.deadlines["reply"])) + timedelta(days=5)
        return ev(kind, t, s.issuer, reason="答复不完整", reply_deadline=iso(new))
    if kind == "ticket.extend_request":
        return ev(kind, t, s.to, days=3, reason="需补充调查")
    if kind == "ticket.extend_grant":
        new = lc.parse_time(s.deadlines["reply"]) + timedelta(days=3)
        return ev(kind, t, s.issuer, reply_deadline=iso(new))
    if kind == "ticket.remind":
        due = s.deadlines["reply"]
        return ev(kind, max(t, lc.parse_time(due) + timedelta(hours=1)), s.issuer, deadline="reply", due=due)
    if kind == "ticket.escalate":
        return ev(kind, t, s.issuer, deadline="sign", due=s.deadlines["sign"])
    if kind == "ticket.assign":
        no = len(s.assignments) + 1
        return ev(
            kind,
            t,
            INSIDE,
            assign_no=no,
            responsible_unit="320303-GA 治安科",
            responsible_person="张三",
            finding="审批超时",
        )
    if kind == "ticket.assign_result":
        open_ = [a for a in s.assignments.values() if a["status"] == "assigned"]
        no = open_[0]["assign_no"] if open_ else 1
        return ev(kind, t, INSIDE, assign_no=no, result="诫勉谈话", disputed=False)
    raise AssertionError(kind)


def rich_state(name: str | None) -> TicketState | None:
    """Each main state reached so that every side guard is satisfiable from it.

    A reminder for the sign deadline exists (so ``escalate`` on it can apply), an extension request is
    pending where one can be, and assignment 1 is open once signed for.
    """
    if name is None:
        return None
    s = run([issue_event()])
    s = run(
        [ev("ticket.remind", SIGN_DUE + timedelta(hours=1), PROVINCE, deadline="sign", due=iso(SIGN_DUE))], s
    )
    if name == "issued":
        return s
    s = run([candidate(s, "ticket.delivered")], s)
    s = run([candidate(s, "ticket.extend_request")], s)
    if name == "delivered":
        return s
    s = run([candidate(s, "ticket.sign")], s)
    s = run([candidate(s, "ticket.assign")], s)
    if name == "signed_for":
        return s
    s = run([candidate(s, "ticket.reply")], s)
    if name == "replied":
        return s
    if name == "concluded":
        return run([candidate(s, "ticket.conclude")], s)
    s = run([candidate(s, "ticket.return")], s)
    s = run([candidate(s, "ticket.extend_request")], s)
    assert name == "returned"
    return s


ALL_PAIRS = [(state, event) for state in (None, *STATES) for event in EVENTS]


# ---- the table -----------------------------------------------------------------------------------------


def test_table_is_complete_and_consistent() -> None:
    assert set(WHO) == set(EVENTS)
    for (state, event), new in TRANSITIONS.items():
        assert state is None or state in STATES
        assert event in EVENTS and new in STATES
    # every state is reachable and every non-terminal state has a way forward in the main flow
    reached = {new for new in TRANSITIONS.values()}
    assert reached == set(STATES)
    assert allowed_events("concluded") == ("ticket.assign_result",)


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p in TRANSITIONS])
def test_every_allowed_transition(state: str | None, event: str) -> None:
    s = rich_state(state)
    if s is None:
        kind, payload, writer = issue_event()
        before_len = 0
    else:
        if event == "ticket.extend_request" and s.extension and s.extension["status"] == "requested":
            s = run([candidate(s, "ticket.extend_grant")], s)  # one request at a time (rule 5)
        kind, payload, writer = candidate(s, event)
        before_len = len(s.timeline)
    snapshot = s.as_dict() if s is not None else None
    new = apply(s, kind, payload, writer_code=writer)
    assert new.state == TRANSITIONS[(state, event)]
    assert len(new.timeline) == before_len + 1
    last = new.timeline[-1]
    assert (last["event"], last["node"], last["at"], last["actor"]) == (
        event,
        writer,
        payload["at"],
        payload["actor"],
    )
    if s is not None:
        assert s.as_dict() == snapshot, "apply must not modify its input"


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p not in TRANSITIONS])
def test_every_disallowed_pair_is_refused(state: str | None, event: str) -> None:
    s = rich_state(state)
    if s is None:
        # nothing may happen to a ticket before its issue
        kind, payload, writer = candidate(run([issue_event()]), event)
        with pytest.raises(UnknownTicket) as unknown:
            apply(None, kind, payload, writer_code=writer)
        assert unknown.value.code == "ticket_unknown"
        assert isinstance(unknown.value, TransitionRefused)
        assert unknown.value.allowed == ("ticket.issue",)
        return
    kind, payload, writer = candidate(s, event)
    with pytest.raises(TransitionRefused) as info:
        apply(s, kind, payload, writer_code=writer)
    err = info.value
    assert err.code == "ticket_out_of_order"
    assert (err.ticket, err.state, err.event) == (TICKET, state, event)
    assert err.allowed == allowed_events(state)
    # the message names the ticket, the state, the event and what is allowed now
    assert TICKET in err.message and str(state) in err.message and event in err.message
    assert ("allowed now: " + (", ".join(err.allowed) or "nothing")) in err.message


def test_happy_path_with_return_and_timeline() -> None:
    s = run([issue_event()])
    for kind in ("ticket.delivered", "ticket.sign", "ticket.reply", "ticket.return", "ticket.reply"):
        s = run([candidate(s, kind)], s)
    assert s.state == "replied" and s.returns == 1 and s.return_reason == "答复不完整"
    s = run([candidate(s, "ticket.conclude")], s)
    assert s.state == "concluded"
    assert (s.verdict, s.score, s.conclusion) == ("basically", 70, "整改基本到位")
    assert [e["event"] for e in s.timeline] == [
        "ticket.issue",
        "ticket.delivered",
        "ticket.sign",
        "ticket.reply",
        "ticket.return",
        "ticket.reply",
        "ticket.conclude",
    ]
    assert s.timeline[3]["detail"] == {"text": "已整改 (3)"} and s.timeline[3]["node"] == INSIDE
    assert s.replied_on_time is True and s.first_reply_at == s.timeline[3]["at"]
    assert s.as_dict()["timeline"] == s.timeline and "seen" not in s.as_dict()


def test_conclude_score_explicit_and_verdict_checked() -> None:
    s = run([issue_event()])
    for kind in ("ticket.delivered", "ticket.sign", "ticket.reply"):
        s = run([candidate(s, kind)], s)
    t = last_at(s) + timedelta(minutes=1)
    done = run([ev("ticket.conclude", t, PROVINCE, verdict="unsatisfactory", text="未整改", score=35)], s)
    assert (done.verdict, done.score) == ("unsatisfactory", 35)
    for bad in (
        {"verdict": "great"},
        {"verdict": "satisfactory", "score": 101},
        {"verdict": "satisfactory", "score": "9"},
    ):
        with pytest.raises(MalformedTicketEvent) as info:
            apply(s, *ev("ticket.conclude", t, PROVINCE, **bad)[:2], writer_code=PROVINCE)
        assert info.value.code == "ticket_malformed"


def test_extension_flow() -> None:
    s = run([issue_event()])
    s = run([candidate(s, "ticket.delivered")], s)
    s = run([candidate(s, "ticket.sign")], s)
    with pytest.raises(TransitionRefused, match="no extension request is pending"):
        apply(s, *candidate(s, "ticket.extend_grant")[:2], writer_code=PROVINCE)
    s = run([candidate(s, "ticket.extend_request")], s)
    assert s.extension is not None and s.extension["status"] == "requested" and s.state == "signed_for"
    with pytest.raises(TransitionRefused, match="pending"):
        apply(s, *candidate(s, "ticket.extend_request")[:2], writer_code=TARGET)
    # not before the deadline in force
    g = candidate(s, "ticket.extend_grant")
    with pytest.raises(TransitionRefused, match="not after"):
        apply(s, g[0], {**g[1], "reply_deadline": iso(REPLY_DUE)}, writer_code=PROVINCE)
    s = run([g], s)
    assert s.extension is not None and s.extension["status"] == "granted"
    assert s.deadlines["reply"] == iso(REPLY_DUE + timedelta(days=3)) and s.extensions_granted == 1
    # a request after the deadline in force is refused
    late = ev("ticket.extend_request", REPLY_DUE + timedelta(days=4), TARGET, days=2, reason="再延")
    with pytest.raises(TransitionRefused, match="has passed"):
        apply(s, *late[:2], writer_code=TARGET)
    # the extension never blocks the main flow; a pending one lapses with the reply
    s = run([candidate(s, "ticket.extend_request")], s)
    s = run([candidate(s, "ticket.reply")], s)
    assert s.state == "replied" and s.extension is not None and s.extension["status"] == "lapsed"


def test_assignment_reported_back_even_after_conclusion() -> None:
    s = run([issue_event()])
    for kind in ("ticket.delivered", "ticket.sign", "ticket.assign", "ticket.reply", "ticket.conclude"):
        s = run([candidate(s, kind)], s)
    assert s.assignments["1"]["status"] == "assigned"
    t = last_at(s) + timedelta(days=30)
    s = run(
        [
            ev(
                "ticket.assign_result",
                t,
                INSIDE,
                assign_no=1,
                result="党内警告",
                disputed=True,
                responsible_person="李四",
            )
        ],
        s,
    )
    a = s.assignments["1"]
    assert (a["status"], a["result"], a["disputed"], a["responsible_person"]) == (
        "reported",
        "党内警告",
        True,
        "李四",
    )
    assert s.state == "concluded"
    with pytest.raises(TransitionRefused, match="already reported"):
        apply(
            s,
            *ev("ticket.assign_result", t + timedelta(hours=1), INSIDE, assign_no=1, result="x")[:2],
            writer_code=INSIDE,
        )
    with pytest.raises(TransitionRefused, match="does not exist"):
        apply(
            s,
            *ev("ticket.assign_result", t + timedelta(hours=1), INSIDE, assign_no=7, result="x")[:2],
            writer_code=INSIDE,
        )


def test_reminder_guards() -> None:
    s = run([issue_event()])
    early = ev("ticket.remind", SIGN_DUE - timedelta(minutes=1), PROVINCE, deadline="sign", due=iso(SIGN_DUE))
    with pytest.raises(TransitionRefused, match="not overdue"):
        apply(s, *early[:2], writer_code=PROVINCE)
    stale = ev("ticket.remind", SIGN_DUE + timedelta(hours=1), PROVINCE, deadline="sign", due=iso(T0))
    with pytest.raises(TransitionRefused, match="not the one in force"):
        apply(s, *stale[:2], writer_code=PROVINCE)
    esc = ev("ticket.escalate", SIGN_DUE + timedelta(hours=2), PROVINCE, deadline="sign", due=iso(SIGN_DUE))
    with pytest.raises(TransitionRefused, match="no reminder yet"):
        apply(s, *esc[:2], writer_code=PROVINCE)
    s = run(
        [ev("ticket.remind", SIGN_DUE + timedelta(hours=1), PROVINCE, deadline="sign", due=iso(SIGN_DUE))], s
    )
    again = ev("ticket.remind", SIGN_DUE + timedelta(hours=5), PROVINCE, deadline="sign", due=iso(SIGN_DUE))
    with pytest.raises(TransitionRefused, match="already reminded"):
        apply(s, *again[:2], writer_code=PROVINCE)
    # the same instant spelled in UTC is the same instance
    utc = SIGN_DUE.astimezone(UTC).isoformat()
    with pytest.raises(TransitionRefused, match="already reminded"):
        apply(s, "ticket.remind", {**again[1], "due": utc}, writer_code=PROVINCE)
    s = run([esc], s)
    with pytest.raises(TransitionRefused, match="already escalated"):
        apply(s, "ticket.escalate", {**esc[1], "at": iso(SIGN_DUE + timedelta(days=3))}, writer_code=PROVINCE)
    assert s.state == "issued" and len(s.reminders) == 1 and len(s.escalations) == 1


# ---- authorisation -------------------------------------------------------------------------------------


def _replied_state() -> TicketState:
    s = run([issue_event()])
    for kind in ("ticket.delivered", "ticket.sign", "ticket.reply"):
        s = run([candidate(s, kind)], s)
    return s


@pytest.mark.parametrize("writer", [SIBLING, CITY, PROVINCE, "320300-GA", "330100"])
def test_reply_from_outside_target_subtree_refused(writer: str) -> None:
    s = run([issue_event()])
    s = run([candidate(s, "ticket.delivered")], s)
    s = run([candidate(s, "ticket.sign")], s)
    kind, payload, _ = candidate(s, "ticket.reply")
    payload = {**payload, "node": writer}
    with pytest.raises(NotAuthorised) as info:
        apply(s, kind, payload, writer_code=writer)
    assert info.value.code == "ticket_not_authorised" and isinstance(info.value, FednodeError)
    assert writer in info.value.message and TICKET in info.value.message and TARGET in info.value.message


@pytest.mark.parametrize(
    "event", sorted(e for e, who in WHO.items() if who == "issuer" and e != "ticket.issue")
)
@pytest.mark.parametrize("writer", [CITY, TARGET, INSIDE, SIBLING])
def test_issuer_events_only_by_issuer(event: str, writer: str) -> None:
    # not even by the intermediate ancestor 320300: only the issuer writes issuer events (rule 3)
    s = rich_state("replied" if event in ("ticket.conclude", "ticket.return") else "signed_for")
    assert s is not None
    kind, payload, _ = candidate(s, event)
    with pytest.raises(NotAuthorised):
        apply(s, kind, {**payload, "node": writer}, writer_code=writer)


@pytest.mark.parametrize("event", sorted(e for e, who in WHO.items() if who == "target subtree"))
@pytest.mark.parametrize("writer", [PROVINCE, CITY, SIBLING])
def test_target_events_only_from_target_subtree(event: str, writer: str) -> None:
    s = rich_state("signed_for")
    assert s is not None
    kind, payload, _ = candidate(s, event)
    with pytest.raises(NotAuthorised):
        apply(s, kind, {**payload, "node": writer}, writer_code=writer)


def test_receipt_only_by_the_target_itself() -> None:
    s = run([issue_event()])
    kind, payload, _ = candidate(s, "ticket.delivered")
    for writer in (INSIDE, CITY, PROVINCE):
        with pytest.raises(NotAuthorised):
            apply(s, kind, {**payload, "node": writer}, writer_code=writer)
    assert apply(s, kind, payload, writer_code=TARGET).state == "delivered"


def test_issue_authorisation() -> None:
    kind, payload, _ = issue_event()
    # a node forging another's ticket number
    with pytest.raises(NotAuthorised, match="only the issuer 320000"):
        apply(None, kind, {**payload, "node": CITY}, writer_code=CITY)
    # only to a descendant: not to itself, a sibling, another province
    for to in (PROVINCE, "330100"):
        with pytest.raises(NotAuthorised, match="not inside its subtree"):
            apply(None, kind, {**payload, "to": to}, writer_code=PROVINCE)
    k2, p2, w2 = issue_event(ticket="320300-000001", to=SIBLING)
    assert apply(None, k2, p2, writer_code=w2).to == SIBLING
    with pytest.raises(NotAuthorised):
        apply(None, k2, {**p2, "to": "320400"}, writer_code=w2)
    # the payload's node must be the writer
    with pytest.raises(NotAuthorised, match="claims node"):
        apply(None, kind, payload, writer_code=CITY)
    # a department issuing to its own sub-unit
    k3, p3, w3 = issue_event(ticket="320300-GA-000007", to="320300-GA-ZAK")
    s = apply(None, k3, p3, writer_code=w3)
    assert (s.issuer, s.to) == ("320300-GA", "320300-GA-ZAK")


def test_malformed_payloads() -> None:
    kind, payload, writer = issue_event()
    bad_payloads = [
        {k: v for k, v in payload.items() if k != "subject"},
        {**payload, "at": "2025-10-09 09:00"},  # no offset
        {**payload, "at": "yesterday"},
        {**payload, "ticket": "320000-12"},
        {**payload, "ticket": "xyz-000001"},
        {**payload, "sign_deadline": iso(T0 - timedelta(hours=1))},
        {**payload, "reply_deadline": iso(SIGN_DUE - timedelta(hours=1))},
        {**payload, "case_nos": "320303-2025-000001"},
    ]
    for p in bad_payloads:
        with pytest.raises(MalformedTicketEvent):
            apply(None, kind, p, writer_code=writer)
    with pytest.raises(MalformedTicketEvent, match="unknown ticket event kind"):
        apply(None, "ticket.burn", payload, writer_code=writer)
    s = _replied_state()
    with pytest.raises(MalformedTicketEvent, match="'reason'"):
        apply(s, "ticket.return", {**candidate(s, "ticket.return")[1], "reason": ""}, writer_code=PROVINCE)


def test_ticket_numbers() -> None:
    assert ticket_number("320000", 12) == "320000-000012"
    assert ticket_number("320300-GA", 7) == "320300-GA-000007"
    assert parse_ticket_number("320300-GA-000007") == ("320300-GA", 7)
    assert parse_ticket_number("320000-1234567") == ("320000", 1234567)
    with pytest.raises(MalformedTicketEvent):
        ticket_number("32", 1)


def test_apply_is_idempotent_for_the_same_record() -> None:
    s = run([issue_event()])
    rec = candidate(s, "ticket.delivered")
    once = run([rec], s)
    twice = run([rec], once)
    assert twice.as_dict() == once.as_dict()
    assert run([issue_event()], once).as_dict() == once.as_dict()  # the issue again, too


# ---- projection ---------------------------------------------------------------------------------------


def _simulate(data: st.DataObject, steps: int) -> tuple[list[Event], TicketState]:
    """A random valid history: at each step, one of the records every guard accepts."""
    events = [issue_event()]
    s = run(events)
    for _ in range(steps):
        options: list[Event] = []
        for kind in allowed_events(s.state):
            rec = candidate(s, kind)
            try:
                apply(s, rec[0], rec[1], writer_code=rec[2])
            except TransitionRefused:
                continue
            options.append(rec)
        # and a reminder for the sign deadline, which the candidate builder leaves out
        sign_rem = ev(
            "ticket.remind",
            max(last_at(s) + timedelta(minutes=1), SIGN_DUE + timedelta(hours=1)),
            PROVINCE,
            deadline="sign",
            due=s.deadlines["sign"],
        )
        try:
            apply(s, sign_rem[0], sign_rem[1], writer_code=PROVINCE)
            options.append(sign_rem)
        except TransitionRefused:
            pass
        if not options:
            break
        rec = data.draw(st.sampled_from(options))
        s = run([rec], s)
        events.append(rec)
    return events, s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), steps=st.integers(0, 14), seed=st.integers(0, 2**32 - 1))
def test_projection_is_order_independent_and_duplicates_are_noops(
    data: st.DataObject, steps: int, seed: int
) -> None:
    events, simulated = _simulate(data, steps)
    rng = random.Random(seed)
    shuffled = events + [rng.choice(events) for _ in range(rng.randint(0, len(events)))]
    rng.shuffle(shuffled)
    # another ticket's records interleaved must not interfere
    other = [
        issue_event(ticket="320000-000013"),
        ev("ticket.delivered", T0 + timedelta(minutes=5), TARGET, ticket="320000-000013"),
    ]
    result = project_all(shuffled + other)
    assert result.rejected == []
    assert set(result.tickets) == {TICKET, "320000-000013"}
    assert result.tickets[TICKET].as_dict() == simulated.as_dict()
    assert result.tickets[TICKET].as_dict() == project(events)[TICKET].as_dict()
    assert result.tickets["320000-000013"].state == "delivered"


def _skewed_history(skew: timedelta) -> list[Event]:
    """Real times are consistent; the target's clock is off by ``skew``."""
    real = [
        ("ticket.issue", 0, PROVINCE),
        ("ticket.delivered", 1, TARGET),
        ("ticket.sign", 2, TARGET),
        ("ticket.reply", 5, TARGET),
        ("ticket.return", 6, PROVINCE),
        ("ticket.reply", 20, INSIDE),
        ("ticket.conclude", 40, PROVINCE),
    ]
    out: list[Event] = []
    for kind, minute, writer in real:
        at = T0 + timedelta(minutes=minute) + (skew if writer != PROVINCE else timedelta(0))
        if kind == "ticket.issue":
            out.append(issue_event(at=at))
        elif kind == "ticket.reply":
            out.append(ev(kind, at, writer, text=f"答复 {minute}"))
        elif kind == "ticket.return":
            out.append(
                ev(kind, at, writer, reason="不完整", reply_deadline=iso(REPLY_DUE + timedelta(days=5)))
            )
        elif kind == "ticket.conclude":
            out.append(ev(kind, at, writer, verdict="satisfactory", text="好"))
        else:
            out.append(ev(kind, at, writer))
    return out


@settings(max_examples=40, deadline=None)
@given(skew_min=st.integers(-120, 120), seed=st.integers(0, 2**32 - 1))
def test_projection_survives_clock_skew(skew_min: int, seed: int) -> None:
    # a receipt "before" the issue, a return "before" the reply it returns: applied once possible
    events = _skewed_history(timedelta(minutes=skew_min))
    random.Random(seed).shuffle(events)
    result = project_all(events)
    assert result.rejected == []
    s = result.tickets[TICKET]
    assert s.state == "concluded" and s.returns == 1 and s.reply_text == "答复 20"
    assert [e["event"] for e in s.timeline] == [
        "ticket.issue",
        "ticket.delivered",
        "ticket.sign",
        "ticket.reply",
        "ticket.return",
        "ticket.reply",
        "ticket.conclude",
    ]


def test_projection_keeps_refused_records_aside() -> None:
    events = _skewed_history(timedelta(0))
    forged = ev("ticket.reply", T0 + timedelta(minutes=7), SIBLING, text="我来答复")
    orphan = ev("ticket.sign", T0, TARGET, ticket="320000-000099")
    garbage = ("ticket.reply", {"ticket": TICKET, "at": "never"}, TARGET)
    result = project_all([*events, forged, orphan, garbage])
    assert result.tickets[TICKET].state == "concluded"
    assert all(e["node"] != SIBLING for e in result.tickets[TICKET].timeline)
    codes = sorted(r.code for r in result.rejected)
    assert codes == ["ticket_malformed", "ticket_not_authorised", "ticket_unknown"]
    assert "320000-000099" not in result.tickets


# ---- deadlines: reminders and escalations with a fake clock ---------------------------------------------


class Node:
    """The issuer's side of a scheduler: records are the only memory; ``restart`` forgets the rest."""

    def __init__(self, records: list[Event], deadline_fn: lc.DeadlineFn = lc.calendar_days) -> None:
        self.records = records
        self.deadline_fn = deadline_fn
        self.restart()

    def restart(self) -> None:
        self.states = project(self.records)

    def tick(self, now: datetime) -> list[Event]:
        written: list[Event] = []
        for ticket in sorted(self.states):
            s = self.states[ticket]
            if s.issuer != PROVINCE:
                continue
            for kind, payload in due_actions(s, now, self.deadline_fn):
                self.states[ticket] = s = apply(s, kind, payload, writer_code=PROVINCE)
                written.append((kind, payload, PROVINCE))
        self.records.extend(written)
        return written

    def add(self, rec: Event) -> None:
        self.records.append(rec)
        kind, payload, writer = rec
        self.states[payload["ticket"]] = apply(
            self.states.get(payload["ticket"]), kind, payload, writer_code=writer
        )


def _instances(records: list[Event], kind: str) -> list[tuple[str, str]]:
    return [(p["deadline"], p["due"]) for k, p, _ in records if k == kind]


def test_reminders_and_escalations_with_fake_clock_and_restarts() -> None:
    node = Node([issue_event()])
    now = T0
    restarts = 0
    target_acts: dict[datetime, tuple[str, dict[str, Any]]] = {
        SIGN_DUE + timedelta(days=2, hours=3): ("ticket.delivered", {}),
        SIGN_DUE + timedelta(days=2, hours=4): ("ticket.sign", {}),
    }
    while now <= REPLY_DUE + timedelta(days=4):
        now += timedelta(hours=1)
        if now in target_acts:
            kind, extra = target_acts[now]
            node.add(ev(kind, now, TARGET, **extra))
        node.tick(now)
        node.tick(now)  # a second tick at the same instant writes nothing
        if now.hour == 3:  # a daily restart, projecting from the records alone
            node.restart()
            restarts += 1
    assert restarts >= 10
    reminders = _instances(node.records, "ticket.remind")
    escalations = _instances(node.records, "ticket.escalate")
    assert reminders == [("sign", iso(SIGN_DUE)), ("reply", iso(REPLY_DUE))]
    assert escalations == [("sign", iso(SIGN_DUE)), ("reply", iso(REPLY_DUE))]
    by_kind = {
        (k, p["deadline"]): lc.parse_time(p["at"])
        for k, p, _ in node.records
        if k in ("ticket.remind", "ticket.escalate")
    }
    # the reminder in the first tick after the deadline, the escalation one day after the reminder
    assert by_kind[("ticket.remind", "sign")] == SIGN_DUE + timedelta(hours=1)
    assert by_kind[("ticket.escalate", "sign")] == SIGN_DUE + timedelta(days=1, hours=1)
    assert by_kind[("ticket.remind", "reply")] == REPLY_DUE + timedelta(hours=1)
    assert by_kind[("ticket.escalate", "reply")] == REPLY_DUE + timedelta(days=1, hours=1)
    # the whole log projects without a refusal
    assert project_all(node.records).rejected == []


def test_no_reminder_when_deadlines_are_met() -> None:
    node = Node([issue_event()])
    node.add(ev("ticket.delivered", T0 + timedelta(hours=1), TARGET))
    node.add(ev("ticket.sign", T0 + timedelta(hours=2), TARGET))
    node.add(ev("ticket.reply", T0 + timedelta(days=2), TARGET, text="已整改"))
    for h in range(0, 24 * 20, 6):
        assert node.tick(T0 + timedelta(hours=h)) == []


def test_sign_met_late_stops_the_escalation() -> None:
    node = Node([issue_event()])
    assert node.tick(SIGN_DUE + timedelta(minutes=1))[0][0] == "ticket.remind"
    node.add(ev("ticket.delivered", SIGN_DUE + timedelta(hours=2), TARGET))
    node.add(ev("ticket.sign", SIGN_DUE + timedelta(hours=3), TARGET))
    assert node.tick(SIGN_DUE + timedelta(days=3)) == []


def test_extension_makes_a_new_reply_instance() -> None:
    node = Node([issue_event()])
    node.add(ev("ticket.delivered", T0 + timedelta(hours=1), TARGET))
    node.add(ev("ticket.sign", T0 + timedelta(hours=2), TARGET))
    node.add(ev("ticket.extend_request", T0 + timedelta(days=9), TARGET, days=5, reason="需调取档案"))
    new_due = REPLY_DUE + timedelta(days=5)
    node.add(
        ev("ticket.extend_grant", T0 + timedelta(days=9, hours=2), PROVINCE, reply_deadline=iso(new_due))
    )
    assert node.tick(REPLY_DUE + timedelta(days=2)) == []  # the old instance is no longer in force
    node.restart()
    written = node.tick(new_due + timedelta(minutes=30))
    assert [(k, p["deadline"], p["due"]) for k, p, _ in written] == [("ticket.remind", "reply", iso(new_due))]
    node.restart()
    assert node.tick(new_due + timedelta(hours=5)) == []


def test_due_actions_is_pure_and_uses_the_plugged_calendar() -> None:
    s = run([issue_event()])
    now = SIGN_DUE + timedelta(hours=1)
    first = due_actions(s, now)
    assert first == due_actions(s, now)  # asking twice without recording it gives the same answer
    assert [(k, p["deadline"], p["node"], p["actor"], p["at"]) for k, p in first] == [
        ("ticket.remind", "sign", PROVINCE, "system", iso(now))
    ]
    s = run([(k, p, PROVINCE) for k, p in first], s)
    assert due_actions(s, now + timedelta(hours=1)) == []

    calls: list[tuple[datetime, float]] = []

    def three_times_slower(start: datetime, days: float) -> datetime:
        calls.append((start, days))
        return start + timedelta(days=3 * days)

    later = now + timedelta(days=2)
    assert due_actions(s, later, three_times_slower) == []
    assert calls == [(now, 1.0)]
    assert [k for k, _ in due_actions(s, now + timedelta(days=3), three_times_slower)] == ["ticket.escalate"]
    assert [k for k, _ in due_actions(s, now + timedelta(hours=6), escalate_after_days=0.25)] == [
        "ticket.escalate"
    ]
    with pytest.raises(ValueError):
        due_actions(s, datetime(2025, 10, 20, 9, 0))


def test_returned_ticket_gets_reminders_for_the_redo_deadline() -> None:
    node = Node([issue_event()])
    for kind, h in (("ticket.delivered", 1), ("ticket.sign", 2)):
        node.add(ev(kind, T0 + timedelta(hours=h), TARGET))
    node.add(ev("ticket.reply", T0 + timedelta(days=1), TARGET, text="答复"))
    redo = T0 + timedelta(days=6)
    node.add(ev("ticket.return", T0 + timedelta(days=2), PROVINCE, reason="不完整", reply_deadline=iso(redo)))
    assert node.tick(redo - timedelta(hours=1)) == []
    assert [k for k, _, _ in node.tick(redo + timedelta(hours=1))] == ["ticket.remind"]


# ---- complaints ----------------------------------------------------------------------------------------

COMPLAINT = {
    "complaint_no": "TS-320300-2025-0042",
    "complainant": "王五",
    "respondent_unit": "320300-GA",
    "respondent_person": "赵六",
    "content": "户籍迁移办理超过承诺时限未答复",
    "source": "12345热线",
    "registered_at": iso(T0),
    "due_at": iso(T0 + timedelta(days=7)),
    "division": "320300",
}


def _complaint_ticket() -> tuple[Event, TicketState]:
    payload = ticket_from_complaint(
        COMPLAINT, issuer=CITY, seq=5, actor="监察员 孙七", at=T0 + timedelta(hours=1)
    )
    rec: Event = ("ticket.issue", payload, CITY)
    return rec, apply(None, *rec[:2], writer_code=CITY)


def test_complaint_becomes_a_ticket_to_the_responsible_unit() -> None:
    rec, s = _complaint_ticket()
    p = rec[1]
    assert p["ticket"] == "320300-000005" and p["to"] == "320300-GA" and p["node"] == CITY
    assert p["complaint_no"] == COMPLAINT["complaint_no"] and p["body"] == COMPLAINT["content"]
    assert p["reply_deadline"] == COMPLAINT["due_at"]
    assert p["sign_deadline"] == iso(T0 + timedelta(days=1, hours=1))
    assert s.state == "issued" and s.complaint_no == COMPLAINT["complaint_no"]
    # a respondent named, not coded: the ticket goes to the complaint's division's node... its child
    by_name = {**COMPLAINT, "respondent_unit": "某某街道办", "division": "320303"}
    assert ticket_from_complaint(by_name, issuer=CITY, seq=6, actor="x", at=T0)["to"] == "320303"


def test_complaint_flow_ends_with_satisfaction() -> None:
    rec, s = _complaint_ticket()
    records = [rec]
    t = T0 + timedelta(hours=2)
    for kind, extra in (
        ("ticket.delivered", {}),
        ("ticket.sign", {}),
        ("ticket.reply", {"text": "已办结并致歉"}),
    ):
        records.append(ev(kind, t, "320300-GA", ticket=s.ticket, **extra))
        t += timedelta(hours=1)
    s = run(records[1:], s)
    without = ev("ticket.conclude", t, CITY, ticket=s.ticket, verdict="satisfactory", text="属实已整改")
    with pytest.raises(MalformedTicketEvent, match="needs satisfaction"):
        apply(s, *without[:2], writer_code=CITY)
    with pytest.raises(MalformedTicketEvent, match="1..5"):
        apply(s, without[0], {**without[1], "satisfaction": "6"}, writer_code=CITY)
    done_rec = ev(
        "ticket.conclude",
        t,
        CITY,
        ticket=s.ticket,
        verdict="satisfactory",
        text="属实已整改",
        satisfaction="2",
    )
    records.append(done_rec)
    done = project(reversed(records))[s.ticket]
    assert done.state == "concluded" and done.satisfaction == "2"
    assert complaint_ticket([done], COMPLAINT["complaint_no"]) is done
    assert complaint_ticket([done], "nope") is None
    other = run([issue_event(ticket="320300-000009", to="320303", complaint_no="C2")])
    other.satisfaction = "4"
    assert satisfaction_rate([done, other]) == 0.5
    assert satisfaction_rate([]) is None
    # and satisfaction is refused on an ordinary ticket
    plain = _replied_state()
    with pytest.raises(MalformedTicketEvent, match="does not come from a complaint"):
        apply(
            plain,
            "ticket.conclude",
            {**candidate(plain, "ticket.conclude")[1], "satisfaction": "1"},
            writer_code=PROVINCE,
        )


@pytest.mark.parametrize(
    "change",
    [
        {"complainant": ""},
        {"content": 5},
        {"due_at": iso(T0 - timedelta(days=1))},
        {"registered_at": "today"},
        {"division": "Xuzhou"},
    ],
)
def test_malformed_complaints(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedComplaint) as info:
        validate_complaint({**COMPLAINT, **change})
    assert info.value.code == "complaint_malformed"
    assert COMPLAINT["complaint_no"] in info.value.message


def test_complaint_past_its_limit_cannot_become_a_ticket() -> None:
    with pytest.raises(MalformedComplaint, match="past its time limit"):
        ticket_from_complaint(COMPLAINT, issuer=CITY, seq=1, actor="x", at=T0 + timedelta(days=8))


def test_make_issue_defaults() -> None:
    p = make_issue(PROVINCE, 3, to=TARGET, subject="s", actor="a", at=T0)
    assert p["ticket"] == "320000-000003"
    assert p["sign_deadline"] == iso(T0 + timedelta(days=1)) and p["reply_deadline"] == iso(
        T0 + timedelta(days=10)
    )
    assert "complaint_no" not in p
    assert apply(None, "ticket.issue", p, writer_code=PROVINCE).deadlines == {
        "sign": p["sign_deadline"],
        "reply": p["reply_deadline"],
    }


def test_one_writers_records_of_one_kind_in_the_same_instant_keep_their_log_order() -> None:
    """Two replies around a return, all in the same second (records written before the clock kept
    microseconds): the writer's seq decides, not the payload's text. Without the seq tie-break the reply
    whose text sorts first ("A…") would be applied first and the final answer would be the old one."""
    same = T0 + timedelta(hours=2)
    history = [
        (*issue_event(), 1),
        (*ev("ticket.delivered", T0 + timedelta(minutes=1), TARGET), 1),
        (*ev("ticket.sign", T0 + timedelta(minutes=2), TARGET), 2),
        (*ev("ticket.reply", same, TARGET, text="B 第一次答复"), 3),
        (*ev("ticket.return", same, PROVINCE, reason="不具体"), 2),
        (*ev("ticket.reply", same, TARGET, text="A 第二次答复"), 4),
    ]
    for order in (history, list(reversed(history))):
        result = project_all(order)
        assert result.rejected == []
        st_ = result.tickets[TICKET]
        assert st_.state == "replied" and st_.reply_text == "A 第二次答复", st_.reply_text
        assert [e["detail"].get("text") for e in st_.timeline if e["event"] == "ticket.reply"] == \
            ["B 第一次答复", "A 第二次答复"]


def test_the_system_clock_keeps_microseconds() -> None:
    from node.features.tickets.desk import system_clock

    seen = {system_clock().microsecond for _ in range(50)}
    assert seen != {0}, "ticket records must carry sub-second times (rule 7)"


ATTACHMENT = {"name": "整改报告.pdf", "size": 2048, "sha256": "ab" * 32, "media_type": "application/pdf"}


@pytest.mark.parametrize("bad", [
    {**ATTACHMENT, "sha256": "AB" * 32},
    {**ATTACHMENT, "sha256": "ab" * 31},
    {**ATTACHMENT, "size": -1},
    {**ATTACHMENT, "size": True},
    {**ATTACHMENT, "name": "../../etc/passwd"},
    {**ATTACHMENT, "name": "a\x1b[31m.pdf"},
    {**ATTACHMENT, "name": ""},
    {**ATTACHMENT, "media_type": "pdf"},
    {**ATTACHMENT, "path": "/srv/files/a.pdf"},
    {k: v for k, v in ATTACHMENT.items() if k != "sha256"},
    "整改报告.pdf",
])
def test_reply_attachments_are_metadata_of_the_right_shape(bad: Any) -> None:
    st_ = project([issue_event(), ev("ticket.delivered", T0 + timedelta(minutes=1), TARGET),
                   ev("ticket.sign", T0 + timedelta(minutes=2), TARGET)])[TICKET]
    good = ev("ticket.reply", T0 + timedelta(hours=1), TARGET, text="已整改", attachments=[ATTACHMENT])
    replied = apply(st_, good[0], good[1], writer_code=TARGET)
    assert replied.reply_attachments == [ATTACHMENT]
    assert replied.timeline[-1]["detail"]["attachments"] == [ATTACHMENT]
    with pytest.raises(lc.MalformedTicketEvent):
        rec = ev("ticket.reply", T0 + timedelta(hours=1), TARGET, text="已整改", attachments=[bad])
        apply(st_, rec[0], rec[1], writer_code=TARGET)
    with pytest.raises(lc.MalformedTicketEvent):
        rec = ev("ticket.reply", T0 + timedelta(hours=1), TARGET, text="已整改",
                 attachments=[ATTACHMENT] * (lc.MAX_ATTACHMENTS + 1))
        apply(st_, rec[0], rec[1], writer_code=TARGET)
