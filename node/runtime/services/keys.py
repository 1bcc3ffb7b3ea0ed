"""KeyService (node/app/keys.py has the rules)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from node.app import enrol
from node.app.keys import _iso
from node.core.records import channel_name, now_us
from node.link.protocol import LOG
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)


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
