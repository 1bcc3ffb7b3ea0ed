"""Adapters inside the running node, and the operator commands around them.

- ``AdapterService`` runs every ``[adapters.<name>]`` of node.toml (``type`` names an entry point of
  the ``fednode.adapters`` group: sql_poll, filedrop, or a jurisdiction's own package). Per adapter
  one task: read a batch (poll + validation), commit it on the store thread in one transaction with
  its cursor, then ``after_commit`` (archive). Sources whose adapter says ``prefetch`` (SQL) are read
  one batch ahead, in a child process (adapters/reader.py: in a thread the GIL serialised reading
  with the commit), while the previous batch commits; ``reader = "thread"`` reads them on a worker
  thread instead, as every other adapter is. An error is counted, logged and retried with backoff
  (1 s doubling to 60 s): the adapter and the node keep running.
- ``[adapters.push] listen = "127.0.0.1:PORT"`` starts the local Ingest service (adapters/push.py).
- ``fednode status`` shows, per adapter: type, read, accepted, duplicates, quarantined, batches,
  last error, position.
- CLI: ``fednode quarantine list|show|replay DIR ...``, ``fednode adapters list|reset|push-token DIR``.
  Through the admin socket while the node runs, directly on the store otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

import structlog

from adapters.base import (
    Counters,
    Outcome,
    commit_prepared,
    configured,
    cursor_key,
    load_cursor,
    make_adapter,
    prepare,
)
from adapters.reader import ProcessReader, reads_in_process
from node import admin
from node import quarantine as qmod
from node.cli import command, emit, open_home
from node.errors import FednodeError, UsageError
from node.services import Service

if TYPE_CHECKING:
    from node.runtime import NodeRuntime

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
        await self.rt.recovered.wait()
        ledger = self.rt.ledger
        cursor = await self.rt.db(load_cursor, ledger, name)
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
                                       write_cursor=True)
                cursor = batch.cursor
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


# ---- admin ops ------------------------------------------------------------------------------------------


def quarantine_request(ledger: Any, req: dict[str, Any]) -> dict[str, Any]:
    """One quarantine action, on the store (store thread in the node, or the CLI's own process)."""
    action = req.get("action")
    store = ledger.store
    if action == "list":
        return qmod.list_rows(store, source=req.get("source"), include_replayed=bool(req.get("all")),
                              limit=int(req.get("limit", 100)), after_id=int(req.get("after", 0)))
    if action == "show":
        return qmod.show(store, int(req["id"]))
    if action == "replay":
        ids = [int(i) for i in req.get("ids") or []]
        if req.get("all_pending"):
            ids = qmod.pending_ids(store, req.get("source"))
        return qmod.replay_many(ledger, ids, qmod.Fix.from_request(req))
    raise UsageError(f"unknown quarantine action {action!r}", fix="use list, show or replay")


@admin.op("quarantine")
async def _quarantine_op(rt: NodeRuntime, req: dict[str, Any]) -> Any:
    if req.get("action") == "replay":
        await rt.wait_recovered()
    result = await rt.db(quarantine_request, rt.ledger, req)
    if req.get("action") == "replay":
        rt.notify()
    return result


def _via_node_or_store(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any]:
    home = open_home(args)
    resp = admin.call(home, {"op": "quarantine", **req})
    if resp is not None:
        result: dict[str, Any] = resp["result"]
        return result
    try:
        from types import SimpleNamespace

        # a replay appends, so it needs the signing ledger; reads need only the store
        target: Any = home.ledger() if req.get("action") == "replay" else SimpleNamespace(store=home.store())
        return quarantine_request(target, req)
    finally:
        home.close()


def _fmt_us(us: int | None) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S") if us else "-"


@command("quarantine list")
def cmd_quarantine_list(args: argparse.Namespace) -> int:
    data = _via_node_or_store(args, {"action": "list", "source": args.source, "all": args.all,
                                     "limit": args.limit, "after": args.after})

    def human() -> str:
        lines = [f"{data['pending']} row(s) pending in quarantine"]
        for r in data["rows"]:
            state = "replayed " + _fmt_us(r["replayed_us"]) if r["replayed_us"] else "pending"
            lines.append(f"#{r['id']:<6} {r['source']:<16} {r['position']:<28} {r['kind'] or '-':<22} {state}")
            lines.append(f"        {r['reason'][:200]}")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


@command("quarantine show")
def cmd_quarantine_show(args: argparse.Namespace) -> int:
    data = _via_node_or_store(args, {"action": "show", "id": args.id})

    def human() -> str:
        raw = data["raw_text"] if data["raw_text"] is not None else f"(not UTF-8; base64) {data['raw_b64']}"
        return "\n".join([
            f"#{data['id']} from {data['source']} at {data['position']} ({data['kind'] or 'kind unknown'})",
            f"quarantined {_fmt_us(data['created_us'])}; "
            + (f"replayed {_fmt_us(data['replayed_us'])}" if data["replayed_us"] else "pending"),
            f"reason: {data['reason']}", f"raw ({data['raw_bytes']} bytes):", raw[:4000],
        ])

    emit(args, data, human)
    return 0


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"--set {it!r} is not FIELD=VALUE", fix="e.g. --set division=320303 --set step_no=2")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


@command("quarantine replay")
def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise UsageError("nothing to replay", fix="name quarantine ids, or --all [--source S]")
    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as e:
            raise UsageError(f"--payload is not JSON ({e})", fix="--payload '{\"case_no\": ...}'") from None
        if not isinstance(payload, dict):
            raise UsageError("--payload must be a JSON object", fix="--payload '{\"case_no\": ...}'")
    req = {"action": "replay", "ids": args.ids, "all_pending": args.all, "source": args.source,
           "set": _parse_sets(args.set or []), "unset": args.unset or [], "kind": args.kind, "payload": payload}
    data = _via_node_or_store(args, req)

    def human() -> str:
        lines = [f"replayed {len(data['replayed'])}, still failing {len(data['failed'])}"]
        for r in data["replayed"]:
            if r.get("replayed"):
                note = " (already in the log: marked replayed)" if r.get("duplicate") else ""
                lines.append(f"  #{r['id']} → {r['kind']}{note}")
            else:
                lines.append(f"  #{r['id']} was already replayed")
        for f in data["failed"]:
            lines.append(f"  #{f['id']} {f['error']}")
            if f.get("fix"):
                lines.append(f"        fix: {f['fix']}")
        return "\n".join(lines)

    emit(args, data, human)
    return 1 if data["failed"] else 0


@command("adapters list")
def cmd_adapters_list(args: argparse.Namespace) -> int:
    home = open_home(args)
    resp = admin.call(home, {"op": "status"})
    running = resp["result"].get("adapters", {}) if resp is not None else {}
    try:
        sections = configured(home.config.sections)
        store = home.store()
        out: list[dict[str, Any]] = []
        for name, sec in sections.items():
            cur = store.get_meta(cursor_key(name))
            out.append({"name": name, "type": sec.get("type"), "cursor": json.loads(cur) if cur else None,
                        "running": running.get(name)})
    finally:
        home.close()
    data = {"running": resp is not None, "adapters": out}

    def human() -> str:
        lines = []
        for a in out:
            r = a["running"] or {}
            figures = (f"read {r.get('read', 0)} accepted {r.get('accepted', 0)} duplicates {r.get('duplicates', 0)} "
                       f"quarantined {r.get('quarantined', 0)}") if r else "(node not running)"
            lines.append(f"{a['name']:<16} {a['type']:<10} {figures}")
            lines.append(f"{'':<16} cursor: {json.dumps(a['cursor'], ensure_ascii=False)[:200]}")
            if r.get("last_error"):
                when = _fmt_us(r.get("last_error_us"))
                lines.append(f"{'':<16} state {r.get('state')}; last error ({when}): {r['last_error']}")
        return "\n".join(lines) or "no adapters configured ([adapters.<name>] in node.toml)"

    emit(args, data, human)
    return 1 if any((a["running"] or {}).get("state") == "error" for a in out) else 0


@command("adapters reset")
def cmd_adapters_reset(args: argparse.Namespace) -> int:
    home = open_home(args)
    if admin.call(home, {"op": "status"}) is not None:
        raise UsageError("the node is running", fix="stop it first (a running adapter holds its cursor)")
    try:
        with home.store().write() as tx:
            tx.set_meta(cursor_key(args.name), "null")
    finally:
        home.close()
    emit(args, {"reset": args.name}, f"cursor of {args.name} cleared: it reads its source from the start; rows "
         "already in the log are skipped by their natural keys")
    return 0


@command("adapters push-token")
def cmd_push_token(args: argparse.Namespace) -> int:
    from adapters import push

    home = open_home(args)
    section = (home.config.sections.get("adapters") or {}).get("push") or {}
    path = push.token_path(home.dir, section)
    token = push.ensure_token(path)
    emit(args, {"token_file": str(path), "token": token},
         f"{path}\nlocal systems send gRPC metadata 'authorization: Bearer <the token in that file>'")
    return 0


def add_parsers(sub: Any, add: Any) -> None:
    qp = sub.add_parser("quarantine", help="rows that failed validation: list, show, replay")
    qsub = qp.add_subparsers(dest="quarantine_command", required=True)
    sp = add("list", "pending quarantined rows with their reasons", qsub)
    sp.add_argument("--source", help="only rows from this adapter/source")
    sp.add_argument("--all", action="store_true", help="include replayed rows")
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--after", type=int, default=0, help="rows with an id above this (paging)")
    sp = add("show", "one quarantined row: reason, position, raw bytes", qsub)
    sp.add_argument("id", type=int)
    sp = add("replay", "fix and replay quarantined rows into the log", qsub)
    sp.add_argument("ids", nargs="*", type=int)
    sp.add_argument("--all", action="store_true", help="every pending row (of --source)")
    sp.add_argument("--source")
    sp.add_argument("--set", action="append", metavar="FIELD=VALUE", help="set a payload field (text; [..] {..} or \"..\" as JSON)")
    sp.add_argument("--unset", action="append", metavar="FIELD")
    sp.add_argument("--kind", help="replay as this kind")
    sp.add_argument("--payload", help="the whole corrected payload as JSON")

    ap = sub.add_parser("adapters", help="configured adapters: list, reset, push-token")
    asub = ap.add_subparsers(dest="adapters_command", required=True)
    add("list", "configured adapters, their cursors and (running) counters", asub)
    sp = add("reset", "clear an adapter's cursor (node stopped): it re-reads its source, duplicates skipped", asub)
    sp.add_argument("name")
    add("push-token", "create (if needed) and print the local push token", asub)
