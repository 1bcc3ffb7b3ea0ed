"""AdapterService: the adapters inside the running node.

The rules below are the feature's; its parts: node/app/quarantine.py, node/interfaces/admin/quarantine.py,
node/interfaces/cli/adapters.py (`fednode adapters`, `fednode quarantine`).

- ``AdapterService`` runs every ``[adapters.<name>]`` of node.toml (``type`` names an entry point of
  the ``fednode.adapters`` group: sql_poll, filedrop, or a jurisdiction's own package). Per adapter
  one task: read a batch (poll + validation), commit it on the store thread in one transaction with
  its cursor, then ``after_commit`` (archive). Sources whose adapter says ``prefetch`` (SQL) are read
  one batch ahead, in a child process (adapters/reader.py: in a thread the GIL serialised reading
  with the commit), while the previous batch commits; ``reader = "thread"`` reads them on a worker
  thread instead, as every other adapter is. An error is counted, logged and retried with backoff
  (1 s doubling to 60 s): the adapter and the node keep running.
- ``[adapters.push] listen = "127.0.0.1:PORT"`` starts the local Ingest service (adapters/push.py).
- ``fednode status`` shows, per adapter: type, read, accepted, duplicates, quarantined, batches (since
  this start), ``total`` (the same since the adapter was configured, kept in the store with the cursor),
  the committed ``cursor``, state (``recovering`` while the node waits for its own logs), last error,
  position. ``fednode adapters list`` on a running node takes figures and cursor from this one answer.
- CLI: ``fednode quarantine list|show|replay DIR ...``, ``fednode adapters list|reset|push-token DIR``.
  Through the admin socket while the node runs, directly on the store otherwise.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from adapters.base import (
    Counters,
    Outcome,
    commit_prepared,
    configured,
    load_cursor,
    load_totals,
    make_adapter,
    prepare,
)
from adapters.reader import ProcessReader, reads_in_process
from node.core.errors import FednodeError
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)
MAX_BACKOFF = 60.0


class AdapterService(Service):
    name = "adapters"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.counters: dict[str, Counters] = {}
        self.types: dict[str, str] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.adapters: dict[str, Any] = {}
        self.readers: dict[str, ProcessReader] = {}
        self.push_server: Any = None
        self.config_error = ""

    async def start(self) -> None:
        sections = self.rt.home.config.sections
        try:
            adapters = configured(sections)
        except FednodeError as e:
            self.config_error = e.message
            log.error("adapters_config", error=e.message, fix=e.fix)
            return
        for name, sec in adapters.items():
            c = self.counters[name] = Counters()
            self.types[name] = str(sec.get("type"))
            try:
                ad = make_adapter(name, sec, self.rt.home.dir)
                reader = ProcessReader(name, sec, self.rt.home.dir) if reads_in_process(name, sec, ad) else None
            except FednodeError as e:
                c.error(e.message)
                log.error("adapter_config", adapter=name, error=e.message, fix=e.fix)
                continue
            self.adapters[name] = ad
            if reader is not None:
                self.readers[name] = reader
                reader.start()  # the child imports and connects while the node finishes starting
            self.tasks.append(asyncio.create_task(self._run(name, ad, c, reader), name=f"adapter-{name}"))
        push = (sections.get("adapters") or {}).get("push")
        if isinstance(push, dict) and push.get("listen"):
            await self._start_push(push)

    async def _start_push(self, section: dict[str, Any]) -> None:
        from adapters import push

        c = self.counters["push"] = Counters()
        self.types["push"] = "push"
        try:
            listen = push.check_listen(section.get("listen"))
            token = push.ensure_token(push.token_path(self.rt.home.dir, section))
        except (FednodeError, OSError) as e:
            c.error(str(e))
            log.error("push_config", error=str(e))
            return
        run = push.commit_for(self.rt.ledger)

        async def commit(source: str, prepared: list[Any]) -> Outcome:
            await self.rt.wait_recovered()
            out = await self.rt.db(run, source, prepared)
            if out.accepted:
                self.rt.notify()
            return out

        try:
            self.push_server = push.make_server(listen, push.IngestServicer(token, commit, c.count))
            await self.push_server.start()
        except Exception as e:  # e.g. the port is taken: the node runs on, status shows why push is off
            self.push_server = None
            c.error(f"push: cannot listen on {listen}: {e}")
            log.error("push_listen_failed", address=listen, error=str(e))
            return
        c.position, c.state = f"listening on {listen}", "ok"
        log.info("push_listening", address=listen)

    @staticmethod
    def _read(ad: Any, cursor: Any) -> tuple[Any, Any]:
        batch = ad.poll(cursor)
        return batch, (prepare(batch.rows) if batch is not None else None)

    async def _run(self, name: str, ad: Any, c: Counters, reader: ProcessReader | None = None) -> None:
        ledger = self.rt.ledger
        cursor = c.cursor = await self.rt.db(load_cursor, ledger, name)
        c.total = await self.rt.db(load_totals, ledger.store, name)
        c.position = ad.describe(cursor)
        if not self.rt.recovered.is_set():
            c.state = "recovering"  # `adapters list` says why nothing moves yet
            await self.rt.recovered.wait()
            c.state = "starting"
            cursor = c.cursor = await self.rt.db(load_cursor, ledger, name)  # as recovery left the store
            c.position = ad.describe(cursor)
        backoff = 1.0
        ahead: asyncio.Future[tuple[Any, Any]] | None = None

        def read(at: Any) -> asyncio.Future[tuple[Any, Any]]:
            if reader is not None:
                return asyncio.wrap_future(reader.read(at))
            return asyncio.ensure_future(asyncio.to_thread(self._read, ad, at))

        while True:
            try:
                fut = ahead or read(cursor)
                ahead = None
                batch, prepared = await fut
                if batch is None:
                    c.state = "ok"
                    await asyncio.sleep(ad.interval)
                    continue
                if getattr(ad, "prefetch", False) and batch.cursor is not None:
                    ahead = read(batch.cursor)
                out = await self.rt.db(commit_prepared, ledger, name, prepared, cursor=batch.cursor,
                                       write_cursor=True, totals=c.total)
                cursor = c.cursor = batch.cursor
                c.count(out, ad.describe(cursor))
                if out.accepted:
                    self.rt.notify()
                if out.quarantined:
                    log.warning("adapter_quarantined", adapter=name, rows=out.quarantined,
                                first=out.reasons[0]["reason"][:200] if out.reasons else "")
                await asyncio.to_thread(ad.after_commit, batch)
                backoff = 1.0
            except asyncio.CancelledError:
                if ahead is not None:
                    ahead.cancel()
                raise
            except Exception as e:  # the adapter must survive anything its source does
                if ahead is not None:
                    ahead.cancel()
                    ahead = None
                msg = e.message if isinstance(e, FednodeError) else f"{type(e).__name__}: {e}"
                c.error(msg)
                log.error("adapter_error", adapter=name, error=msg, retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for reader in self.readers.values():
            try:
                await asyncio.to_thread(reader.close)  # waits for a read in flight (one batch) to end
            except Exception:
                log.exception("adapter_reader_close_failed")
        for ad in self.adapters.values():
            try:
                ad.close()
            except Exception:
                log.exception("adapter_close_failed")
        if self.push_server is not None:
            await self.push_server.stop(grace=2)

    def status(self) -> dict[str, Any] | None:
        if not self.counters and not self.config_error:
            return None
        out: dict[str, Any] = {}
        if self.config_error:
            out["_config_error"] = self.config_error
        for name, c in self.counters.items():
            out[name] = {"type": self.types.get(name, ""), **c.__dict__}
        return out


SERVICES = [AdapterService]
