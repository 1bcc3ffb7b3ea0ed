"""Admin ops pki.*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.app.keys import install, key_rows, revoke, rotate
from node.core import pki
from node.runtime import admin

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime


# ---- admin ops (the running node) -----------------------------------------------------------------------


@admin.op("pki.keys")
async def _op_keys(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    signer = rt.ledger.signer
    return await rt.db(key_rows, rt.ledger.keyring, signer.key_id if signer else None, req.get("code") or None)


@admin.op("pki.revoke")
async def _op_revoke(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    await rt.wait_recovered()
    data = await rt.db(revoke, rt.ledger, str(req.get("key_id", "")), str(req.get("reason") or "revoked by operator"))
    rt.notify()  # the links carry the record up and down at once; KeyService re-signs if the key is ours
    return data


@admin.op("pki.rotate")
async def _op_rotate(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    await rt.wait_recovered()
    data = await rt.db(rotate, rt.home, rt.ledger)
    rt.notify()
    return data


@admin.op("pki.install")
async def _op_install(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    bundle = pki.Bundle.from_json(str(req.get("bundle", "")), source=str(req.get("source") or "bundle"))
    await rt.wait_recovered()
    data = await rt.db(install, rt.home, rt.ledger, bundle)
    rt.notify()
    return data
