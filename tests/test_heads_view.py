"""The heads view (node/core/store.py ``HeadsView``): links read the heads in memory, current with every
commit, instead of scanning the heads table per link per poll (issue 26). What it must keep: exactly
what the tables say after any commit, nothing from a rolled-back transaction, every change announced,
and writes made by another process noticed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from node.core.errors import ForkDetected
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK, CONTROL, now_us
from node.core.store import HeadChange, Row, Store
from node.link import streams
from node.link.protocol import DOWN, LOG
from node.runtime.process import LinkState, NodeRuntime
from tests.conftest import Tree


def case_events(n: int, start: int = 0) -> list[NewRecord]:
    return [NewRecord("case.step", {"case_no": f"C{start + i:06d}", "step_no": 1}) for i in range(n)]


@pytest.fixture
def city(store_url: str, tree: Tree) -> Iterator[Ledger]:
    store = Store.open(store_url)
    ledger = Ledger(store, "320300", None, tree.province.root())
    yield ledger
    store.close()


def ship(sender: Ledger, receiver: Ledger, channel: int = BULK) -> None:
    receiver.admit_keys(sender.key_certificates_for(k.key_id for k in sender.keyring.keys.values()))
    while True:
        seg = sender.read_segment(sender.code, channel, receiver.store.head(sender.code, channel).seq, 500)
        if seg is None:
            return
        receiver.accept_segment(seg, sender_subtree=sender.code)


def table_heads(store: Store) -> dict[tuple[str, int], int]:
    return {k: h.seq for k, h in store.heads().items()}


def test_view_follows_every_commit_and_announces_it(tree: Tree, city: Ledger) -> None:
    view = city.store.heads_view()
    heard: list[HeadChange] = []
    view.subscribe(heard.extend)
    county, other = tree.county.ledger(), tree.other.ledger()
    county.append(case_events(1200))
    other.append(case_events(300))
    ship(county, city)
    assert view.logs_within("320311") == {}  # asked before 320311's logs arrive
    ship(other, city)
    assert {k: h.seq for k, h in view.heads().items()} == table_heads(city.store)
    assert view.head("320303", BULK).seq == 1200
    assert view.head("320303", BULK).chain == city.store.head("320303", BULK).chain
    assert max(c.seq for c in heard if c.origin == "320303" and c.channel == BULK) == 1200
    # lookups by subtree: a county sees only its own logs, the city both; a log that appears after a
    # subtree was first asked for is in it at once
    assert set(view.logs_within("320303")) == {k for k in table_heads(city.store) if k[0] == "320303"}
    assert set(view.logs_within("320311")) == {k for k in table_heads(city.store) if k[0] == "320311"}
    assert {o for o, _c in view.logs_within("320300")} == {"320303", "320311"}
    assert streams.up_heads(city) == {(LOG, o, c): s for (o, c), s in table_heads(city.store).items()}
    assert streams.subtree_heads(city, "320311") == {(LOG, o, c): s for (o, c), s in table_heads(city.store).items()
                                                     if o == "320311"}


def test_view_never_takes_a_rolled_back_write(tree: Tree, city: Ledger) -> None:
    county = tree.county.ledger()
    county.append(case_events(100))
    ship(county, city)
    view = city.store.heads_view()
    before = view.heads()
    heard: list[HeadChange] = []
    view.subscribe(heard.extend)
    rows = [Row(seq=101 + i, body=f"x{i}".encode(), signature=b"", key_id=b"", kind="case.step", dest="",
                time_us=now_us()) for i in range(3)]
    with pytest.raises(RuntimeError), city.store.write() as tx:
        tx.append("320303", BULK, rows)
        raise RuntimeError("the caller fails after the append: the transaction rolls back")
    fork_row = Row(seq=50, body=b"not the record at 50", signature=b"", key_id=b"", kind="case.step", dest="",
                   time_us=now_us())
    with pytest.raises(ForkDetected), city.store.write() as tx:
        tx.append("320303", BULK, [fork_row])
    assert view.heads() == before and heard == []
    assert table_heads(city.store) == {k: h.seq for k, h in before.items()}


def test_downward_tops_follow_held_and_addressed_records(tree: Tree) -> None:
    city = tree.city.ledger()  # enrolled: it signs its own records addressed down
    view = city.store.heads_view()
    heard: list[HeadChange] = []
    view.subscribe(heard.extend)
    down = [Row(seq=s, body=f"d{s}".encode(), signature=b"sig", key_id=b"k", kind="ticket.open", dest=dest,
                time_us=now_us()) for s, dest in ((3, "320303"), (7, "320311"), (9, "320300"))]
    with city.store.write() as tx:
        tx.hold_down("320000", CONTROL, down)
    # own records addressed to a child travel down as well
    city.append([NewRecord("ticket.open", {"n": 1}, dest="320303")])
    own = city.store.head("320300", CONTROL).seq
    assert view.held_down() == {("320000", CONTROL): 9}
    assert streams.held_down_heads(city) == {(DOWN, "320000", CONTROL): 9}
    assert streams.down_heads_for(city, "320303") == {(DOWN, "320000", CONTROL): 3, (DOWN, "320300", CONTROL): own}
    assert streams.down_heads_for(city, "320311") == {(DOWN, "320000", CONTROL): 7}
    assert HeadChange("320000", CONTROL, 7, "320311") in heard
    # which stream of which link a change moves
    ch = HeadChange("320000", CONTROL, 7, "320311")
    assert streams.interested(ch, "320300", "320311", uplink=False) == (DOWN, "320000", CONTROL)
    assert streams.interested(ch, "320300", "320303", uplink=False) is None
    assert streams.interested(ch, "320300", "320000", uplink=True) is None
    log_ch = HeadChange("320303", BULK, 10)
    assert streams.interested(log_ch, "320300", "320303", uplink=False) == (LOG, "320303", BULK)
    assert streams.interested(log_ch, "320300", "320311", uplink=False) is None
    assert streams.interested(log_ch, "320300", "320000", uplink=True) == (LOG, "320303", BULK)


def test_writes_by_another_store_are_noticed(store_url: str, tree: Tree, city: Ledger) -> None:
    """Another process on the same database (a tool beside the node): ``sync_view`` notices it by the
    change feed's counter, reloads, and announces what moved; without such a write it reads one row."""
    view = city.store.heads_view()
    heard: list[HeadChange] = []
    view.subscribe(heard.extend)
    assert city.store.sync_view() is False
    county = tree.county.ledger()
    county.append(case_events(40))
    other_store = Store.open(store_url, migrate=False)
    try:
        ship(county, Ledger(other_store, "320300", None, tree.province.root()))
    finally:
        other_store.close()
    assert view.head("320303", BULK).seq == 0
    assert city.store.sync_view() is True
    assert view.head("320303", BULK).seq == 40
    assert HeadChange("320303", BULK, 40) in heard
    assert city.store.sync_view() is False


def test_links_busy_means_records_moving() -> None:
    """A child's periodic report or an ack is not work: only records moving make the links busy."""
    st = LinkState("320303", "down")
    st.last_in_us = st.last_out_us = now_us()  # a report just arrived, an ack just left
    rt: Any = SimpleNamespace(links={"320303": st})
    assert NodeRuntime.links_busy(rt) is False
    st.last_records_us = now_us()
    assert NodeRuntime.links_busy(rt) is True
