"""`fednode status`: what a node holds (logs, certificates, keys): from the running node, else read from its home;
and `probe` (admin op): one link.probe control record appended."""

from __future__ import annotations

from typing import Any

from node import __version__
from node.app.remote import via_node_or_store
from node.core import codes, pki
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.records import CONTROL, channel_name, now_us
from node.core.times import iso, iso_us

# ---- status ---------------------------------------------------------------------------------------------


def status(home: Home, *, tree: bool = False, depth: int | None = None, code: str | None = None,
           logs: bool = False) -> dict[str, Any]:
    """The running node's status (its own links, adapters, services) through its admin socket, else the
    store's. ``tree``: also the link reports of its subtree, ``depth`` levels down, only ``code``'s branch.
    Per-origin detail (every log held, every acked cursor of a link) only with ``logs`` or ``tree``;
    otherwise its summary (``shape``), so the answer does not grow with the subtree."""
    tree = tree or depth is not None or code is not None
    req: dict[str, Any] = {"op": "status", "tree": tree, "logs": logs}
    if depth is not None:
        req["depth"] = depth
    if code is not None:
        req["code"] = code
    data: dict[str, Any] = via_node_or_store(home, req, lambda: shape(status_data(home), detail=logs or tree))[0]
    return data


# ---- the summary without --logs -------------------------------------------------------------------------

MOST_BEHIND = 5  # streams listed by name in a summary of acked cursors


def logs_summary(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and totals of the logs held (``status_data``'s ``logs``): origins, logs, records, per channel."""
    by_channel: dict[str, dict[str, int]] = {}
    for lg in logs:
        c = by_channel.setdefault(lg["channel"], {"logs": 0, "records": 0})
        c["logs"] += 1
        c["records"] += lg["seq"]
    return {"origins": len({lg["origin"] for lg in logs}), "logs": len(logs),
            "records": sum(lg["seq"] for lg in logs), "by_channel": dict(sorted(by_channel.items()))}


def acked_summary(acked: list[dict[str, Any]]) -> dict[str, Any]:
    """A link's acked cursors (each ``{kind, origin, channel, seq, behind}``, ``behind``: records held here
    the peer has not acknowledged) in a few numbers: streams, acked and behind in all, the worst lag and
    the ``MOST_BEHIND`` streams most behind."""
    behind = sorted((a for a in acked if a.get("behind", 0) > 0),
                    key=lambda a: (-a["behind"], a["origin"], a["channel"], a["kind"]))
    return {"streams": len(acked), "origins": len({a["origin"] for a in acked}),
            "acked": sum(a["seq"] for a in acked), "behind": sum(a.get("behind", 0) for a in acked),
            "streams_behind": len(behind), "worst_behind": behind[0]["behind"] if behind else 0,
            "most_behind": behind[:MOST_BEHIND]}


def shape(data: dict[str, Any], *, detail: bool) -> dict[str, Any]:
    """``data`` as asked: with ``detail`` as it is; without, ``logs`` keeps this node's own logs and
    ``logs_summary`` counts every log held, and each link's ``acked`` list becomes ``acked_summary``
    (the full lists: ``status --logs`` or ``--tree``). Sizes then stay flat however big the subtree."""
    if detail:
        return data
    out = dict(data)
    own = out["node"]["code"]
    out["logs_summary"] = logs_summary(out["logs"])
    out["logs"] = [lg for lg in out["logs"] if lg["origin"] == own]
    out["links"] = [_link_summary(ln) for ln in out.get("links", [])]
    return out


def _link_summary(link: dict[str, Any]) -> dict[str, Any]:
    if "acked" not in link:
        return link
    out = {k: v for k, v in link.items() if k != "acked"}
    out["acked_summary"] = acked_summary(link["acked"])
    return out


def subtree(reports: dict[str, Any], depth: int | None = None, code: str | None = None) -> dict[str, Any]:
    """The children's link reports (each ``{code, time_us, links, children}``), cut ``depth`` levels below
    this node (1: the children's own links only) and, with ``code``, kept only along the path to that
    node and inside its subtree: what was asked, not the whole tree."""
    out: dict[str, Any] = {}
    if depth is not None and depth < 1:
        return out
    for child, rep in reports.items():
        if code is not None and not (codes.within(code, child) or codes.within(child, code)):
            continue
        if not isinstance(rep, dict):
            continue
        below = rep.get("children") or {}
        out[child] = {**rep, "children": subtree(below, None if depth is None else depth - 1, code)}
    return out


def status_data(home: Home) -> dict[str, Any]:
    store = home.store()
    heads = store.heads()
    data: dict[str, Any] = {
        "node": {"code": home.code, "name": home.config.name, "level": home.config.level,
                 "path": home.path() if home.has("tls.crt") else None, "version": __version__},
        "running": False,
        "logs": [
            {"origin": o, "channel": channel_name(c), "seq": h.seq, "head": h.chain.hex()}
            for (o, c), h in sorted(heads.items())
        ],
        "certificates": {},
        "incidents": store.count("incidents"),
        "quarantine": store.count("quarantine"),
        "links": [],
    }
    for name in ("tls.crt", "ca.crt", "sign.crt", "root.crt"):
        if home.has(name):
            data["certificates"][name] = iso(pki.not_after(home.load_cert(name)))
    # this node's own signing keys (every key it knows: `fednode pki keys DIR`)
    data["signing_key"] = pki.signing_key_id(home.load_cert("sign.crt")).hex() if home.has("sign.crt") else None
    data["keys"] = [
        {"key_id": bytes(r.key_id).hex(), "current": bytes(r.key_id).hex() == data["signing_key"],
         "not_after": iso_us(r.not_after_us),
         "revoked": r.revoked_us is not None, "revoked_reason": r.revoked_reason or None}
        for r in store.keys(home.code)
    ]
    return data


def probe(ledger: Ledger, note: Any) -> dict[str, Any]:
    """Append one ``link.probe`` control record (latency measurements, smoke tests of a deployment)."""
    payload = {"note": str(note)[:200], "at_us": now_us()}
    res = ledger.append([NewRecord("link.probe", payload)])
    return {"channel": "control", "seq": res[CONTROL].head.seq}
