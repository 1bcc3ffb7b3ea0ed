"""Where the desk's calls run, and what it keeps per session in memory.

- ``Desk.read``: a use case that only reads, on the desk's own reader threads (never the event loop,
  never the links' store thread: a supervisor's search must not slow a catch-up drain), through the
  desk's own connections to the store, opened read-only (``reader_store``: SQLite ``query_only``, a
  PostgreSQL session that is read-only), so a page never takes the store's write lock nor waits for it
  (WAL readers never block the writer). ``Desk.scan``: the same for the reads whose work grows with
  the store (case search, lists, statistics), on threads of their own: every page's short reads (the
  sign-in, one case, rendering) never queue behind them. ``Desk.reader`` is the node's home as these
  reads see it. The
  alert and ticket reads of node/app (alerts.py ``_listed``/``_copies``, tickets.py ``_alert_states``)
  fold the case index themselves, whatever the links do: they read through the node's store.
- Folding on read (node/app/alerts.py ``catch_up``): a page shows a person's own act at once, so before
  a read the desk folds the few records the node's services have not folded yet, through the node's
  store, but only when the feed moved since it last looked and no link is moving records: during a
  drain the services fold it gently, and a page never competes with the links for the write lock.
- ``Desk.status``: the node's status (the admin op, on the store thread), shared by every page that
  shows links and fetched again when older than ``STATUS_TTL_S`` seconds, in the background
  (``Revalidated``): only the first page after the start waits for it. The store thread is the
  links' (a catch-up drain applies its batches there), so a page that waited for it would wait
  behind the drain; the overview says how old the figures it shows are (``as_of_us``).
- ``Desk.op``: an act, through the admin op the CLI uses for it (node/interfaces/admin registers them on
  node.runtime.admin.OPS): the same use case, on the store thread, after the node has recovered its
  own logs, with the links woken afterwards. ``Desk.act``: the same for a desk use case of node/app/desk.py.
- ``Sessions``: per sign-in, the CSRF token (a synchronizer token kept here, never derived from
  anything: ``secrets.token_urlsafe``), the last request (idle timeout) and the day of the last visit.
  The sign-in itself is node/app/people.py's session (its token's SHA-256 in the store); a restart of
  the node keeps the sign-in and issues a new CSRF token (a form left open must be reloaded).
- ``FormTokens``: one-time tokens of the sign-in form (there is no session yet to bind them to).
- ``RateLimit``: sign-in attempts per client address, so a flood never reaches the password hash on
  the store thread (the per-account lockout is node/app/people.py's).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from sqlalchemy import event

from node.app import alerts as app_alerts
from node.app import desk as app_desk
from node.app import people
from node.app import tickets as app_tickets
from node.core.errors import FednodeError
from node.core.home import Home
from node.core.ledger import Ledger
from node.core.store import Store
from node.features.tickets.desk import HeldIndex, TicketsConfig
from node.runtime import admin
from node.runtime.services import tickets as ticket_service
from node.runtime.services.desk import DeskSettings

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

T = TypeVar("T")
log = structlog.get_logger(__name__)
FOLD_ON_READ = 2000  # records of the feed a desk read folds itself; more: the node's services fold them
SHARED_S = 5.0  # the overview's figures are shared this long (node/app/desk.py ``Shared``)
STATUS_TTL_S = 5.0  # the status shown on pages is at most this old (it costs the store thread a few ms)
READERS = 2  # threads of the desk's reads: the node has a core or two, the links need one
SCANNERS = 2  # threads of the reads whose work grows with the store (``Desk.scan``), apart from the others


class Revalidated(Generic[T]):
    """A value fetched by ``fetch`` and served stale while it is fetched again in the background
    (stale-while-revalidate): ``get`` waits only while there is no value yet. At most one fetch runs
    at a time; a failed one is logged and leaves the previous value, to be tried again at the next
    ``get`` after ``ttl_s``."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl_s: float,
                 clock: Callable[[], float] = time.monotonic, what: str = "") -> None:
        self.fetch, self.ttl_s, self.clock, self.what = fetch, ttl_s, clock, what
        self._value: tuple[float, T] | None = None
        self._first = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> T:
        if self._value is None:
            async with self._first:  # the pages that come before the first answer share its fetch
                if self._value is None:
                    self._value = (self.clock(), await self.fetch())
            return self._value[1]
        fetched, value = self._value
        if self.clock() - fetched > self.ttl_s and self._refresh is None:
            self._refresh = asyncio.create_task(self._fetch_again())
        return value

    async def _fetch_again(self) -> None:
        try:
            self._value = (self.clock(), await self.fetch())
        except Exception as e:  # the previous value stays; the next get() after ttl_s tries again
            log.warning("desk_refresh_failed", what=self.what, error=f"{type(e).__name__}: {e}")
            self._value = (self.clock(), self._value[1]) if self._value is not None else None
        finally:
            self._refresh = None

    def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()


class Sessions:
    """In-memory state per sign-in, keyed by the token's digest (never the token itself)."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self._csrf: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self._visited: dict[str, str] = {}
        self._lock = threading.Lock()

    def idle(self, digest: str) -> bool:
        """Whether the sign-in has been idle too long (then it is forgotten here). A sign-in unknown here
        (made before the node restarted) counts from now."""
        now = self.clock()
        with self._lock:
            last = self._seen.get(digest)
            if last is not None and now - last > self.idle_s:
                self._forget(digest)
                return True
            self._seen[digest] = now
            return False

    def csrf(self, digest: str) -> str:
        with self._lock:
            token = self._csrf.get(digest)
            if token is None:
                token = self._csrf[digest] = secrets.token_urlsafe(32)
            return token

    def csrf_ok(self, digest: str, given: str | None) -> bool:
        with self._lock:
            want = self._csrf.get(digest)
        return bool(want and given) and hmac.compare_digest(str(want), str(given))

    def first_visit(self, digest: str, day: str) -> bool:
        with self._lock:
            if self._visited.get(digest) == day:
                return False
            self._visited[digest] = day
            return True

    def forget(self, digest: str) -> None:
        with self._lock:
            self._forget(digest)

    def _forget(self, digest: str) -> None:
        self._csrf.pop(digest, None)
        self._seen.pop(digest, None)
        self._visited.pop(digest, None)


class FormTokens:
    """One-time tokens for the sign-in form, valid ``ttl_s``; at most ``cap`` outstanding."""

    def __init__(self, ttl_s: float = 1800, cap: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.cap, self.clock = ttl_s, cap, clock
        self._tokens: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = self.clock() + self.ttl_s
            while len(self._tokens) > self.cap:
                self._tokens.popitem(last=False)
        return token

    def take(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expires = self._tokens.pop(str(token), None)
        return expires is not None and expires > self.clock()


class RateLimit:
    """At most ``count`` events per ``window_s`` per key (client address)."""

    def __init__(self, count: int = 30, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.count, self.window_s, self.clock = count, window_s, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and now - q[0] > self.window_s:
                q.popleft()
            if len(q) >= self.count:
                return False
            q.append(now)
            if len(self._events) > 10000:  # forget the quiet ones
                for k in [k for k, v in self._events.items() if not v]:
                    del self._events[k]
            return True


class Desk:
    """The desk of one running node: its runtime, settings, reader threads and session state."""

    def __init__(self, rt: NodeRuntime, settings: DeskSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.home = rt.home  # the node's: its acts, its admin socket
        self.ledger = rt.ledger
        self.code = rt.code
        self.name = rt.home.config.name
        self.policy = people.policy_of(rt.home)
        self.store = reader_store(rt.home)
        self.reader = ReaderHome(rt.home, self.store)
        self.reader_ledger = Ledger(self.store, rt.code, None, rt.home.root())  # reads never sign
        # a read folds nothing itself (its connections cannot write): Desk.read folds first, when it may
        self.readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="fednode-desk",
                                          initializer=app_alerts.fold_on_read_at_most, initargs=(0,))
        self.scanners = ThreadPoolExecutor(max_workers=SCANNERS, thread_name_prefix="fednode-desk-scan",
                                           initializer=app_alerts.fold_on_read_at_most, initargs=(0,))
        self.sessions = Sessions(idle_s=settings.idle_minutes * 60)
        self.login_forms = FormTokens()
        self.login_rate = RateLimit()
        self._index = HeldIndex()  # the desk's own view of the ticket records (reader threads, under the lock)
        self._index_lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._folded_at = -1  # the feed's counter when a read last folded
        self.shared = app_desk.Shared(ttl_s=SHARED_S)  # the overview's aggregated parts, per scope
        self._status: Revalidated[dict[str, Any]] = Revalidated(self._fetch_status, STATUS_TTL_S, what="status")

    def close(self) -> None:
        self._status.close()
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.scanners.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on a reader thread, after folding what the services have not (``fold``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, functools.partial(self._folded, fn, *args, **kwargs))

    async def scan(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``read`` for a read whose work grows with what the store holds (a search, a list, statistics):
        on threads of its own, so that the short reads of every page (the sign-in, one case, rendering)
        never queue behind searches over a million cases."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.scanners, functools.partial(self._folded, fn, *args, **kwargs))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on a reader thread, as it is (rendering a page)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, functools.partial(fn, *args, **kwargs))

    def _folded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.fold()
        return fn(*args, **kwargs)

    def fold(self) -> None:
        """Fold the feed's last records into the case index and the statistics (at most ``FOLD_ON_READ``)
        through the node's store, when the feed moved since the last fold here and the links are quiet."""
        if self.rt.links_busy():
            return
        feed = int(self.store.get_meta("local_seq", "0") or 0)
        if feed == self._folded_at:
            return
        with self._fold_lock:
            if feed == self._folded_at:
                return
            app_alerts.fold_on_read_at_most(FOLD_ON_READ)
            try:
                app_alerts.catch_up(self.home, self.ledger.store)
            finally:
                app_alerts.fold_on_read_at_most(0)
            self._folded_at = feed

    async def status(self) -> dict[str, Any]:
        """The node's status with its subtree (``status --tree``), at most ``STATUS_TTL_S`` old but for
        the time a refresh takes (``Revalidated``); ``as_of_us`` says when it was taken."""
        return await self._status.get()

    async def _fetch_status(self) -> dict[str, Any]:
        return {**await self.op("status", {"tree": True}), "as_of_us": int(time.time() * 1e6)}

    async def op(self, name: str, req: dict[str, Any]) -> Any:
        fn = admin.OPS.get(name)
        if fn is None:
            raise FednodeError(f"the admin op {name!r} is not registered in this program",
                               fix="start the node with `fednode run`")
        return await fn(self.rt, req)

    async def act(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        await self.rt.wait_recovered()
        result = await self.rt.db(fn, *args, **kwargs)
        self.rt.notify()
        return result

    def tickets_config(self) -> TicketsConfig:
        svc = ticket_service._ACTIVE.get(self.code)
        return svc.cfg if svc is not None else TicketsConfig.of_home(self.home)

    def tickets_read(self, req: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
        """A read of node/app/tickets.py ``execute`` (list, show, complaints) on a reader thread."""
        with self._index_lock:
            return app_tickets.execute(self.ledger, self.tickets_config(), req, clock=ticket_service.CLOCK,
                                       status=status, index=self._index, policy=self.policy)

    def with_index(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(..., index=the desk's HeldIndex)`` under its lock (reader threads)."""
        with self._index_lock:
            return fn(*args, index=self._index, **kwargs)


def reader_store(home: Home) -> Store:
    """The node's store opened again for the desk's readers: their own engine and connections, which
    cannot write (SQLite ``query_only``; PostgreSQL sessions whose transactions are read-only)."""
    store = Store.open(home.config.store_url, base_dir=home.dir, migrate=False)

    @event.listens_for(store.engine, "connect")
    def _read_only(dbapi_conn: Any, _record: Any) -> None:
        if store.is_sqlite:
            dbapi_conn.execute("PRAGMA query_only=ON")
            return
        dbapi_conn.autocommit = True  # a session setting, outside any transaction the pool would roll back
        dbapi_conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        dbapi_conn.autocommit = False

    return store


class ReaderHome(Home):
    """The node's home as the desk's reads see it: the same directory and configuration, the store
    through the desk's read-only connections."""

    def __init__(self, home: Home, store: Store) -> None:  # noqa: D107 — no config read again from disk
        self.dir = home.dir
        self.keys = home.keys
        self.node_home = home
        self.config = home.config
        self._store = self.reader_store = store

    def store(self, migrate: bool | None = None) -> Store:
        self.config = self.node_home.config  # a reload (SIGHUP) replaced it
        return self.reader_store
