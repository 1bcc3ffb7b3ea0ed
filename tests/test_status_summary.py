"""`status --json` at a province of 200 nodes stays small without `--logs`/`--tree` (issue 26): the
per-origin lists (every log held, every acked cursor of a link) grow with the subtree, so by default
they are summarised (counts, totals, the worst lag, the few streams most behind) and the full lists
come only when asked. The summary's numbers are the detail's."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from node.app.status import MOST_BEHIND, acked_summary, logs_summary, shape, status_data
from node.core.home import Home
from node.core.records import BULK, CONTROL, MONITOR, build_body, channel_name
from node.core.store import Row
from node.link.protocol import DOWN, LOG, Cursor, Outbox
from node.runtime.process import LinkState, NodeRuntime
from tests.conftest import Tree

LIMIT = 50 * 1024
CHANNELS = (CONTROL, MONITOR, BULK)


def province_codes() -> dict[str, list[str]]:
    """13 cities under 320000, 102 children under the first and 7 under each other: 199 nodes below."""
    cities = [f"32{c:02d}00" for c in range(1, 14)]
    out = {cities[0]: [f"{cities[0][:4]}{i:02d}" for i in range(1, 100)] + [f"{cities[0]}-D{i}" for i in range(100, 103)]}
    for c in cities[1:]:
        out[c] = [f"{c[:4]}{i:02d}" for i in range(1, 8)]
    return out


def fill(home: Home, origins: list[str]) -> None:
    """A few synthetic records in each log of each origin (the store's append, no signatures: quick)."""
    store = home.store()
    with store.write() as tx:
        for i, o in enumerate(origins):
            for ch in CHANNELS:
                n = 1 + (i * 7 + ch) % 5
                rows = [Row(s, build_body(origin=o, channel=ch, seq=s, kind="case.step", payload=b"{}", time_us=1),
                            b"", b"", "case.step", "", 1) for s in range(1, n + 1)]
                tx.append(o, ch, rows)


def link(home: Home, peer: str, streams: dict[tuple[str, str, int], tuple[int, int]]) -> dict[str, Any]:
    """A down link's status as the running node renders it (NodeRuntime._link_status), its outbox
    holding ``streams``: {stream: (acked by the peer, head here)}."""
    st = LinkState(peer, "down", state="connected")
    st.outbox = Outbox(cursors={s: Cursor(a, a) for s, (a, _h) in streams.items()})
    st.local_heads = {s: h for s, (_a, h) in streams.items()}
    rt: Any = SimpleNamespace(ledger=SimpleNamespace(store=home.store()), relay=None)
    return NodeRuntime._link_status(rt, st)


def province_status(tree: Tree) -> dict[str, Any]:
    home = tree.province
    subtree = province_codes()
    origins = [o for city, kids in subtree.items() for o in (city, *kids)]
    fill(home, origins)
    data = status_data(home)
    data["links"] = []
    for n, (city, kids) in enumerate(subtree.items()):
        streams = {(LOG, o, ch): (max(0, 3 - (j + n) % 5), 3) for j, o in enumerate((city, *kids)) for ch in CHANNELS}
        streams.update({(DOWN, "320000", ch): (2, 2) for ch in (CONTROL, MONITOR)})
        data["links"].append(link(home, city, streams))
    return data


def size(data: dict[str, Any]) -> int:
    return len(json.dumps(data, ensure_ascii=False).encode())


def test_province_of_200_nodes_fits_in_50_kb_without_logs(tree: Tree) -> None:
    detail = province_status(tree)
    assert len({lg["origin"] for lg in detail["logs"]}) == 200  # 199 below and its own
    assert size(detail) > 2 * LIMIT  # what `status --json` returned before, and `--logs` still does
    short = shape(detail, detail=False)
    assert size(short) <= LIMIT, size(short)
    assert shape(detail, detail=True) == detail
    # the node's own logs stay listed, one by one
    assert short["logs"] == [lg for lg in detail["logs"] if lg["origin"] == "320000"] and short["logs"]
    assert all("acked" not in ln and "acked_summary" in ln for ln in short["links"])


def test_summary_numbers_are_the_details(tree: Tree) -> None:
    detail = province_status(tree)
    short = shape(detail, detail=False)
    logs = detail["logs"]
    sm = short["logs_summary"]
    assert sm == logs_summary(logs)
    assert sm["origins"] == 200 and sm["logs"] == len(logs) >= 199 * 3
    assert sm["records"] == sum(lg["seq"] for lg in logs) == tree.province.store().count("records")
    for ch in CHANNELS:
        mine = [lg for lg in logs if lg["channel"] == channel_name(ch)]
        assert sm["by_channel"][channel_name(ch)] == {"logs": len(mine), "records": sum(lg["seq"] for lg in mine)}
    for full, summ in zip(detail["links"], short["links"], strict=True):
        acked, a = full["acked"], summ["acked_summary"]
        assert {k: v for k, v in summ.items() if k != "acked_summary"} == \
            {k: v for k, v in full.items() if k != "acked"}
        behind = {(x["kind"], x["origin"], x["channel"]): x["behind"] for x in acked}
        assert a["streams"] == len(acked) and a["acked"] == sum(x["seq"] for x in acked)
        # the lag is the link's backlog: the records held here the peer has not acknowledged
        assert a["behind"] == sum(behind.values()) == sum(b["records"] for b in full["backlog"].values()) > 0
        assert a["worst_behind"] == max(behind.values())
        assert a["streams_behind"] == sum(1 for v in behind.values() if v > 0)
        top = sorted(behind.values(), reverse=True)[:MOST_BEHIND]
        assert [x["behind"] for x in a["most_behind"]] == top
        assert all(behind[(x["kind"], x["origin"], x["channel"])] == x["behind"] for x in a["most_behind"])
    assert acked_summary([]) == {"streams": 0, "origins": 0, "acked": 0, "behind": 0, "streams_behind": 0,
                                 "worst_behind": 0, "most_behind": []}
