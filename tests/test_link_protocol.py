"""The link protocol without I/O (node/link.py Outbox): priorities, the window and its priority slot,
acks, refusals and resumption. The real-process tests (test_link_faults, test_fault_suite) show the
same rules hold over gRPC; these pin each rule down on its own."""

from __future__ import annotations

from node.core.records import BULK, CONTROL, MONITOR
from node.link.protocol import DOWN, LOG, Outbox, Part, StreamKey, Want

CTL: StreamKey = (LOG, "320303", CONTROL)
MON: StreamKey = (LOG, "320303", MONITOR)
BLK: StreamKey = (LOG, "320303", BULK)
TICKET_DOWN: StreamKey = (DOWN, "320000", CONTROL)


def send(box: Outbox, heads: dict[StreamKey, int], now: float = 0.0) -> tuple[int, list[Want]]:
    """What the shell does: ask for wants, 'read' exactly them, record the batch as sent."""
    wants = box.wants(heads, now)
    parts = [Part(w.stream, w.after, w.after + w.limit, w.limit) for w in wants]
    return (box.sent(parts) if parts else 0), wants


def test_a_batch_is_filled_control_first_then_monitor_then_bulk_within_its_budget() -> None:
    box = Outbox(window=3, max_records=100)
    box.reset({})
    _bid, wants = send(box, {BLK: 500, MON: 30, CTL: 5, TICKET_DOWN: 2})
    assert [(w.stream, w.limit) for w in wants] == [(TICKET_DOWN, 2), (CTL, 5), (MON, 30), (BLK, 63)]


def test_bulk_waits_for_the_window_but_control_takes_the_priority_slot() -> None:
    box = Outbox(window=2, max_records=1000)
    box.reset({})
    heads = {BLK: 10_000}
    for _ in range(2):
        assert send(box, heads)[0]
    assert box.can_send  # the priority slot is free...
    assert box.wants(heads, 0.0) == []  # ...but bulk may not use it
    heads[CTL] = 1  # a control record is born while the window is full of bulk
    bid, wants = send(box, heads)
    assert [w.stream for w in wants] == [CTL], "only control/monitor go in the priority slot"
    assert not box.can_send and box.wants({**heads, CTL: 2}, 0.0) == []  # one priority batch at a time
    box.acked(bid, {CTL: 1}, {}, 0.0)
    assert box.can_send


def test_only_acks_move_the_acked_cursor_and_an_old_ack_never_moves_it_back() -> None:
    box = Outbox(window=4, max_records=100)
    box.reset({BLK: 0})
    b1, _ = send(box, {BLK: 250})
    b2, _ = send(box, {BLK: 250})
    assert box.cursor(BLK).sent == 200 and box.cursor(BLK).acked == 0
    box.acked(b2, {BLK: 200}, {}, 0.0)
    box.acked(b1, {BLK: 100}, {}, 0.0)  # the ack of the earlier batch arrives late
    assert box.cursor(BLK).acked == 200
    assert box.backlog({BLK: 250}) == {BLK: 50}


def test_a_refused_stream_is_rewound_and_paused_while_the_others_go_on() -> None:
    box = Outbox(window=4, max_records=100, retry_after_s=30.0)
    box.reset({CTL: 0, BLK: 0})
    bid, _ = send(box, {CTL: 10, BLK: 50})
    committed = box.acked(bid, {CTL: 10}, {BLK: ("outside_subtree", "no")}, now=100.0)
    assert [p.stream for p in committed] == [CTL]
    assert box.cursor(BLK).sent == box.cursor(BLK).acked == 0  # resend from what the peer holds
    assert [w.stream for w in box.wants({CTL: 12, BLK: 50}, now=110.0)] == [CTL]  # paused: not yet
    assert [w.stream for w in box.wants({CTL: 12, BLK: 50}, now=131.0)] == [CTL, BLK]  # after the pause


def test_after_a_reconnect_both_cursors_start_from_the_heads_the_peer_announced() -> None:
    box = Outbox(window=2, max_records=100)
    box.reset({BLK: 0})
    send(box, {BLK: 300})
    send(box, {BLK: 300})  # in flight when the link drops: never acked
    box.reset({BLK: 150})  # the peer committed 150 before the cut
    assert not box.inflight
    (want,) = box.wants({BLK: 300}, 0.0)
    assert (want.after, want.limit) == (150, 100)  # nothing lost (151.. is resent), nothing skipped


def test_a_priority_batch_jumps_queued_bulk_only_when_none_of_its_logs_is_queued_before_it() -> None:
    from node.link.protocol import Queued, next_to_apply

    bulk = Queued(priority=False, logs=frozenset({("320303", BULK), ("320303", CONTROL)}))
    bulk_only = Queued(priority=False, logs=frozenset({("320303", BULK)}))
    ctl = Queued(priority=True, logs=frozenset({("320303", CONTROL)}))
    other_ctl = Queued(priority=True, logs=frozenset({("320311", CONTROL)}))
    assert next_to_apply([bulk_only, bulk_only, ctl]) == 2  # jumps two bulk batches
    # the first bulk batch carries earlier control records of the same log: jumping it would apply
    # control seq N+1.. before ..N, so the oldest goes first
    assert next_to_apply([bulk, ctl]) == 0
    assert next_to_apply([bulk, ctl, other_ctl]) == 2  # another log's priority batch may still jump
    assert next_to_apply([bulk_only]) == 0


def test_waiting_batches_are_grouped_from_the_oldest_without_control_records_within_the_bytes() -> None:
    from node.link.protocol import Queued, next_group

    bulk = Queued(priority=False, logs=frozenset({("320303", BULK)}))
    mon = Queued(priority=True, logs=frozenset({("320311", MONITOR)}))
    ctl = Queued(priority=True, logs=frozenset({("320303", CONTROL)}))
    bulk_ctl = Queued(priority=False, logs=frozenset({("320303", BULK), ("320311", CONTROL)}))
    assert next_group([bulk, bulk, bulk], [3, 3, 3], 10) == [0, 1, 2]
    assert next_group([bulk, bulk, bulk], [3, 3, 5], 10) == [0, 1]  # the third would pass the bytes
    assert next_group([bulk, bulk], [12, 1], 10) == [0]  # one batch over the bytes still goes, alone
    # a key record changes how every later batch is verified: a batch with control records goes alone
    # and ends a group, so what follows it is verified once it is committed
    assert next_group([bulk, bulk_ctl, bulk], [1, 1, 1], 10) == [0]
    assert next_group([bulk_ctl, bulk], [1, 1], 10) == [0]
    bulk_mon = Queued(priority=False, logs=frozenset({("320303", BULK), ("320311", MONITOR)}))
    assert next_group([bulk_mon, mon, bulk], [1, 1, 1], 10) == [0, 1, 2]  # monitor in order with the rest
    assert next_group([bulk, mon, bulk], [1, 1, 1], 10) == [1]  # the priority batch jumps, alone
    assert next_group([bulk, ctl], [1, 1], 10) == [1]
    assert next_group([bulk], [1], 10) == [0]
