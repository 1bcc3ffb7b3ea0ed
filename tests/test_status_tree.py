"""`status --json` carries the node's own links; `--tree` the subtree, `--depth N` and `--code X`
narrowing it (issue 26): what is returned is what was asked, not the whole tree."""

from __future__ import annotations

import json
from typing import Any

from node.app.status import subtree


def report(code: str, children: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "time_us": 1, "links": [{"peer": "x", "state": "connected"}], "children": children or {}}


TREE = {
    "320300": report("320300", {
        "320303": report("320303", {"320303-GA": report("320303-GA")}),
        "320311": report("320311"),
    }),
    "320500": report("320500", {"320501": report("320501")}),
}


def test_whole_subtree_by_default() -> None:
    assert subtree(TREE) == TREE


def test_depth_cuts_levels_below_this_node() -> None:
    one = subtree(TREE, depth=1)
    assert set(one) == {"320300", "320500"}
    assert all(r["children"] == {} for r in one.values())
    two = subtree(TREE, depth=2)
    assert set(two["320300"]["children"]) == {"320303", "320311"}
    assert two["320300"]["children"]["320303"]["children"] == {}
    assert subtree(TREE, depth=0) == {}


def test_code_keeps_the_path_to_it_and_its_subtree() -> None:
    got = subtree(TREE, code="320303")
    assert set(got) == {"320300"}
    assert set(got["320300"]["children"]) == {"320303"}
    assert set(got["320300"]["children"]["320303"]["children"]) == {"320303-GA"}
    assert subtree(TREE, code="320501", depth=1) == {"320500": {**TREE["320500"], "children": {}}}
    assert len(json.dumps(subtree(TREE, code="320311"))) < len(json.dumps(TREE)) / 2
