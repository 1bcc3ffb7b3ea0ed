"""ExporterService: the exporters inside the running node (export to the provincial exchange database, 前置库).

The rules are the feature's; its parts: node/features/export/ (the layout, the SQL target),
node/app/export.py (the step, the cursor), node/interfaces/admin/export.py (op ``export``),
node/interfaces/cli/export.py (`fednode export DIR`).

- every enabled ``[exporters.NAME]`` of node.toml gets one task: a step (one page of the change feed
  written to the target, then the cursor moved) on the background thread, again at once while pages
  are full, else after ``interval`` seconds or when records are stored here, whichever comes first;
  between full pages it yields while the links move records (the export must never slow the tree);
- an error (target unreachable, a statement refused) is counted, logged and retried with backoff (1 s
  doubling to 60 s): the exporter and the node keep running, the cursor stays where the target is;
- the op ``export`` (`fednode export`) runs the named (or every) exporter until it has caught up, on
  the same background thread, so it never races the task over the cursor;
- ``fednode status`` shows per exporter: target (no password), state, rows written per table since the
  start, cursor, last error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from node.app.export import Exporter, run_local
from node.core.config import Config
from node.core.errors import FednodeError
from node.features.export import configured
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)
MAX_BACKOFF = 60.0


class ExporterService(Service):
    name = "exporters"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.exporters: dict[str, Exporter] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one step at a time per node: the op and the tasks share the cursor

    async def start(self) -> None:
        try:
            cfgs = configured(self.rt.home.config.sections)
        except FednodeError as e:
            self.errors["_config"] = e.message
            log.error("exporters_config", error=e.message, fix=e.fix)
            return
        for name, cfg in cfgs.items():
            try:
                ex = Exporter(cfg)
            except FednodeError as e:
                self.errors[name] = e.message
                log.error("exporter_config", exporter=name, error=e.message, fix=e.fix)
                continue
            self.exporters[name] = ex
            self.tasks.append(asyncio.create_task(self._run(ex), name=f"exporter-{name}"))

    def on_stored(self) -> None:
        self._wake.set()

    async def _step(self, ex: Exporter) -> Any:
        async with self._lock:
            return await self.rt.bg(ex.step, self.rt.ledger.store)

    async def _run(self, ex: Exporter) -> None:
        await self.rt.recovered.wait()
        backoff = 1.0
        while True:
            try:
                s = await self._step(ex)
                ex.state = "ok"  # last_error stays shown, with the state saying it is past
                backoff = 1.0
                if s.more:
                    await asyncio.sleep(0.5 if self.rt.links_busy() else 0)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=ex.cfg.interval)
                await asyncio.sleep(0.2)  # a burst of stored batches: one step
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the target must never stop the node
                msg = e.message if isinstance(e, FednodeError) else f"{type(e).__name__}: {e}"
                ex.state, ex.last_error = "error", msg
                log.error("exporter_error", exporter=ex.cfg.name, error=msg, retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def run_now(self, name: str | None) -> dict[str, Any]:
        """The op ``export``: the named (or every) exporter until it has caught up."""
        cfgs = configured(self.rt.home.config.sections)
        if name is not None:
            cfgs = {name: cfgs[name]} if name in cfgs else {}
        out: list[dict[str, Any]] = []
        for n, cfg in cfgs.items():
            ex = self.exporters.get(n)
            async with self._lock:
                if ex is not None and ex.cfg == cfg:
                    res = await self.rt.bg(ex.run, self.rt.ledger.store)
                    ex.state, ex.last_error = "ok", ""
                else:  # configured after the start (it runs from the next start): once, here
                    res = (await self.rt.bg(run_local, self.rt.ledger.store, {n: cfg}))["exporters"][0]
            out.append(res)
        return {"exporters": out}

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ex in self.exporters.values():
            try:
                ex.close()
            except Exception:
                log.exception("exporter_close_failed")

    def status(self) -> dict[str, Any] | None:
        if not self.exporters and not self.errors:
            return None
        out: dict[str, Any] = {n: {"state": "error", "last_error": e} for n, e in self.errors.items()}
        for name, ex in self.exporters.items():
            out[name] = {**ex.status(), "cursor": ex.cursor(self.rt.ledger.store)}
        return out


def _check(cfg: Config) -> None:
    """`fednode check` / `fednode run`: every [exporters.NAME] loads and its driver is installed."""
    for ec in configured(cfg.sections).values():
        Exporter(ec).close()


CONFIG_CHECKS = {"exporters": _check}
SERVICES = [ExporterService]
