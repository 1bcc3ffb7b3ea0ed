"""`fednode status`: what a node holds (logs, certificates, keys): from the running node, else read from its home;
and `probe` (admin op): one link.probe control record appended."""

from __future__ import annotations

from typing import Any

from node import __version__
from node.app.remote import via_node_or_store
from node.core import pki
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.core.records import CONTROL, channel_name, now_us
from node.core.times import iso, iso_us

# ---- status ---------------------------------------------------------------------------------------------


def status(home: Home) -> dict[str, Any]:
    """The running node's status (links, adapters, services) through its admin socket, else the store's."""
    data: dict[str, Any] = via_node_or_store(home, {"op": "status"}, lambda: status_data(home))[0]
    return data


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
