"""Key operations: `fednode pki rotate | revoke | install | keys`, their admin ops, and KeyService.

Rules of this module:
- While the node runs, every key operation goes through the admin socket (ops ``pki.rotate``,
  ``pki.revoke``, ``pki.install``, ``pki.keys``) and runs on the node's database thread against the
  node's own ledger: the live keyring and signer change at once, so the very next record a link, a
  reconciliation or a local append handles is judged (or signed) by the new keyring. When the node is
  stopped, the CLI does the same on the store.
- Key ids are shown in full (64 hex digits) everywhere; a unique prefix of at least 4 digits is
  accepted (node.keyring.resolve_key_id); anything else is a usage error (exit 2).
- A node may revoke its own keys (not the one it signs with: rotate first) and its descendants' keys;
  the revocation is by position (node/keyring.py) and travels up to the root and down to the owner.
- KeyService (in the running node): when one of the node's own keys is revoked (the record may come
  from an ancestor, down the link), or its signing certificate is about to end, it rotates if needed
  and re-signs what the revoked key signed beyond its position (node.enrol.recover_own_keys,
  node/ledger.py), then makes the uplink resend those logs from the position at once (it clears the
  link's pause after the parent refused them). It logs ``own_keys_recovered`` and shows the last
  recovery in `fednode status` (section ``key_recovery``); the ``key.resign`` control record keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography import x509

from node import admin, enrol, pki
from node.cli import command, emit, open_home
from node.errors import UsageError
from node.home import Home
from node.keyring import Keyring, check_key_id, resolve_key_id
from node.ledger import Ledger
from node.link import LOG
from node.records import channel_name, now_us
from node.services import Service
from proto.fednode.v1 import fednode_pb2 as pb

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

log = structlog.get_logger(__name__)


# ---- the work, shared by the admin ops and the CLI on a stopped node -------------------------------------


def _iso(us: int | None) -> str | None:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat() if us else None


def key_rows(keyring: Keyring, signer_id: bytes | None, code: str | None = None) -> list[dict[str, Any]]:
    """Every key of the keyring (of ``code`` only, if given): id, owner, state, validity, fingerprint."""
    now = dt.datetime.now(dt.UTC)
    out = []
    for info in keyring.keys.values():
        if code is not None and info.code != code:
            continue
        kc = pb.KeyCertificate.FromString(info.certificate)
        leaf = x509.load_der_x509_certificate(kc.certificate)
        if info.revoked_us is not None:
            state = "revoked"
        elif info.ended_through is not None or leaf.not_valid_after_utc < now:
            state = "expired"
        elif leaf.not_valid_before_utc - pki.CLOCK_SKEW > now:
            state = "not yet valid"
        else:
            state = "valid"
        out.append({
            "key_id": info.key_id.hex(), "code": info.code, "state": state, "current": info.key_id == signer_id,
            "not_before": leaf.not_valid_before_utc.isoformat(), "not_after": leaf.not_valid_after_utc.isoformat(),
            "cert_sha256": hashlib.sha256(kc.certificate).hexdigest(),
            "revoked_at": _iso(info.revoked_us), "revoked_reason": info.revoked_reason or None,
            "revoked_through": {channel_name(c): s for c, s in info.revoked_through.items()}
            if info.revoked_through is not None else None,
            "ended_through": {channel_name(c): s for c, s in info.ended_through.items()}
            if info.ended_through is not None else None,
        })
    out.sort(key=lambda r: (r["code"], r["not_before"], r["key_id"]))
    return out


def revoke(ledger: Ledger, key_text: str, reason: str) -> dict[str, Any]:
    key_id = resolve_key_id(ledger.keyring, key_text)
    if ledger.signer is not None and key_id == ledger.signer.key_id:
        raise UsageError(f"key {key_id.hex()} is this node's current signing key",
                         fix="rotate first (`fednode pki rotate DIR`), then revoke the old key by the id it prints")
    through = ledger.revoke_key(key_id, reason)
    info = ledger.keyring.keys[key_id]
    return {"revoked": key_id.hex(), "code": info.code, "reason": reason,
            "through": {channel_name(c): s for c, s in through.items()}}


def rotate(home: Home, ledger: Ledger) -> dict[str, Any]:
    old, new = enrol.rotate(home, ledger)
    return {"old_key_id": old.hex(), "new_key_id": new.hex(), "recovery": enrol.recover_own_keys(home, ledger)}


def install(home: Home, ledger: Ledger | None, bundle: pki.Bundle) -> dict[str, Any]:
    names = ("tls.crt", "chain.pem", "root.crt")
    before = {n: home.key_path(n).read_bytes() if home.has(n) else b"" for n in names}
    parent_before = home.config.parent_code
    enrol.install(home, bundle, ledger)
    changed = [n for n in names if (home.key_path(n).read_bytes() if home.has(n) else b"") != before[n]]
    return {"code": home.code, "path": bundle.path, "parent_code": bundle.parent_code,
            "key_id": home.key_certificate().key_id.hex(), "changed": changed,
            "parent_changed": home.config.parent_code != parent_before}


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


# ---- KeyService ------------------------------------------------------------------------------------------


class KeyService(Service):
    name = "key_recovery"
    CHECK_EVERY_S = 3600.0  # how often the signing certificate's end is looked at (besides every revocation)

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resend: dict[tuple[str, int], int] = {}
        self.last: dict[str, Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def on_stored(self) -> None:
        led = self.rt.ledger
        if led.own_key_revoked or led.resend_from:
            self._wake.set()

    def status(self) -> dict[str, Any] | None:
        signer = self.rt.ledger.signer
        return {"signing_key": signer.key_id.hex() if signer else None, "last": self.last,
                "resend_pending": {f"{o}/{channel_name(c)}": s for (o, c), s in self._resend.items()}}

    def _work(self) -> tuple[dict[str, Any] | None, dict[tuple[str, int], int]]:
        led = self.rt.ledger
        done = enrol.recover_own_keys(self.rt.home, led)
        resend, led.resend_from = led.resend_from, {}
        return done, resend

    async def _run(self) -> None:
        await self.rt.recovered.wait()  # no append (rotation, key.resign) before our own logs are current
        while True:
            self._wake.clear()
            try:
                done, resend = await self.rt.db(self._work)
            except Exception:
                log.exception("key_recovery_failed")
                done, resend = None, {}
            if done:
                self.last = {"at": _iso(now_us()), **done}
                log.warning("own_keys_recovered", **done)
            for k, s in resend.items():
                self._resend[k] = min(s, self._resend.get(k, s))
            if self._resend and self._apply_resend():
                self._resend.clear()
            if done or resend:
                self.rt.notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 2.0 if self._resend else self.CHECK_EVERY_S)

    def _apply_resend(self) -> bool:
        """Make the uplink resend these logs from the given seqs now (and lift the pause its parent's
        refusal put on them). False when no uplink is connected (tried again shortly)."""
        applied = False
        for s in list(self.rt.sessions):
            if not getattr(s, "is_child_side", False) or not getattr(s, "established", False):
                continue
            for (origin, channel), seq in self._resend.items():
                key = (LOG, origin, channel)
                s.outbox.paused.pop(key, None)
                c = s.outbox.cursor(key)
                c.acked, c.sent = min(c.acked, seq), min(c.sent, seq)
            s.wake.set()
            applied = True
            log.info("uplink_resend", logs={f"{o}/{channel_name(c)}": q for (o, c), q in self._resend.items()})
        return applied


SERVICES = [KeyService]


# ---- CLI ---------------------------------------------------------------------------------------------------


@command("pki install")
def cmd_pki_install(args: argparse.Namespace) -> int:
    home = open_home(args)
    try:
        text = Path(args.bundle).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the bundle {args.bundle}: {e.strerror}",
                         fix="pass the file the parent's `fednode pki sign` printed") from None
    bundle = pki.Bundle.from_json(text, source=args.bundle)
    resp = admin.call(home, {"op": "pki.install", "bundle": text, "source": args.bundle})
    data = resp["result"] if resp is not None else install(home, None, bundle)
    data["via"] = "admin" if resp is not None else "store"
    note = ""
    if resp is not None and (data["changed"] or data["parent_changed"]):
        note = ("\nthe node runs: the signing key is in use now; the new TLS certificates and parent are used from the "
                "next start (`systemctl restart fednode`)")
    emit(args, data, f"installed certificates for {bundle.path}; parent {bundle.parent_code or '-'}; "
         f"signing key {data['key_id']}{note}")
    return 0


@command("pki rotate")
def cmd_pki_rotate(args: argparse.Namespace) -> int:
    home = open_home(args)
    resp = admin.call(home, {"op": "pki.rotate"})
    data = resp["result"] if resp is not None else rotate(home, home.ledger())
    data["via"] = "admin" if resp is not None else "store"
    rec = data.get("recovery") or {}
    extra = ""
    if rec.get("resigned"):
        extra = "\nre-signed with the new key (records beyond a revocation): " + ", ".join(
            f"{ch} {r[0]}..{r[1]}" for what in rec["resigned"].values() for ch, r in what["resigned"].items())
    emit(args, data, f"signing key rotated\n  old {data['old_key_id']}\n  new {data['new_key_id']}\n"
         f"records signed by the old key up to now stay valid; to revoke it: "
         f"fednode pki revoke {args.dir or '$FEDNODE_HOME'} {data['old_key_id']}{extra}")
    return 0


@command("pki revoke")
def cmd_pki_revoke(args: argparse.Namespace) -> int:
    home = open_home(args)
    check_key_id(args.key_id)
    resp = admin.call(home, {"op": "pki.revoke", "key_id": args.key_id, "reason": args.reason})
    if resp is not None:
        data = resp["result"]
        data["via"] = "admin"
    else:
        ledger = home.ledger()
        data = revoke(ledger, args.key_id, args.reason)
        if data["code"] == home.code:
            data["recovery"] = enrol.recover_own_keys(home, ledger)
        data["via"] = "store"
    through = ", ".join(f"{ch} {s}" for ch, s in data["through"].items())
    emit(args, data, f"key {data['revoked']} of {data['code']} revoked: it verifies nothing beyond seq ({through}) "
         f"of {data['code']}'s logs" + ("" if data["via"] == "admin" else
                                        "\nthe node is stopped: the revocation takes effect when it starts"))
    return 0


@command("pki keys")
def cmd_pki_keys(args: argparse.Namespace) -> int:
    home = open_home(args)
    resp = admin.call(home, {"op": "pki.keys", "code": args.code or ""})
    if resp is not None:
        rows = resp["result"]
    else:
        ledger = home.ledger()
        rows = key_rows(ledger.keyring, ledger.signer.key_id if ledger.signer else None, args.code or None)

    def human() -> str:
        lines = [f"{'key id':<64}  {'node':<12}{'state':<15}{'valid until':<22}"]
        for r in rows:
            state = r["state"] + (" *" if r["current"] else "")
            lines.append(f"{r['key_id']:<64}  {r['code']:<12}{state:<15}{r['not_after'][:19]:<22}")
            if r["revoked_through"]:
                lines.append(f"{'':<66}revoked through {r['revoked_through']} ({r['revoked_reason']})")
        lines.append("* this node's current signing key")
        return "\n".join(lines)

    emit(args, rows, human)
    return 0
