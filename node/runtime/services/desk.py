"""The supervision desk's web server in the running node: uvicorn, on the node's own event loop.

Rules of this module:
- The runtime owns the server, the interface owns the pages: node/interfaces/desk registers its app
  factory here on import (``register_app``), as node/interfaces/admin registers its ops on
  node.runtime.admin; the runtime never imports an interface.
- ``[desk] listen`` unset or "": no desk, nothing listens. Plain HTTP only on a loopback address;
  anywhere else ``tls_cert`` and ``tls_key`` are required (``DeskSettings.of_sections``, also the
  check `fednode run` and `fednode check` apply before anything starts).
- uvicorn runs as a task of the node's loop (``Server.serve`` with its signal capture switched off:
  SIGTERM, SIGINT and SIGHUP stay the node's). The socket is bound here first, so a port in use is a
  clear exit 2, never uvicorn's ``sys.exit``.
- Store work of the pages never runs on the loop: the app runs reads on its own reader threads and
  acts through the admin ops (``rt.db``), see node/interfaces/desk/backend.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from node.core import configschema as schema
from node.core.errors import ConfigError, UsageError
from node.runtime.service import Service

if TYPE_CHECKING:
    from node.core.config import Config
    from node.runtime.process import NodeRuntime

log = structlog.get_logger(__name__)


# ---- [desk] ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeskSettings:
    listen: str = ""
    tls_cert: str = ""  # absolute paths once loaded
    tls_key: str = ""
    idle_minutes: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def url(self) -> str:
        host, _, port = self.listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{host}:{port}/"

    @classmethod
    def of_sections(cls, sections: Mapping[str, Any], base: Path, where: str) -> DeskSettings:
        """From node.toml's ``[desk]``: every key checked against the schema, then the rules between them."""
        body = sections.get("desk")
        if body is None:
            return cls()
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [desk] must be a table", fix="write [desk] with key = value lines")
        _kept, issues = schema.split("desk", body)
        if issues:
            raise ConfigError(f"{where}: {issues[0].message}", fix=issues[0].fix)
        spec = schema.SECTIONS["desk"]
        values = {k: spec.get(body, k, where, label=f"desk.{k}") for k in spec.names}
        listen, cert, key = str(values["listen"]), str(values["tls_cert"]), str(values["tls_key"])
        if bool(cert) != bool(key):
            raise ConfigError(f"{where}: desk.tls_cert and desk.tls_key go together (one is empty)",
                              fix="give both the certificate chain and its private key, or neither (loopback only)")
        if listen and not cert and not schema._loopback_hostport(listen):  # the [adapters.push] rule too
            raise ConfigError(f"{where}: desk.listen = {listen!r} is not a loopback address and the desk has no "
                              "certificate: passwords and sessions would cross the network in clear",
                              fix='set desk.tls_cert and desk.tls_key (PEM files in the node home), or listen on '
                                  '"127.0.0.1:PORT" behind a TLS proxy')
        paths = []
        for name, value in (("tls_cert", cert), ("tls_key", key)):
            if not value:
                paths.append("")
                continue
            p = Path(value) if Path(value).is_absolute() else base / value
            if listen and not p.is_file():
                raise ConfigError(f"{where}: desk.{name} = {value!r}: {p} does not exist",
                                  fix=f"put the PEM file at {p}, or correct desk.{name}")
            paths.append(str(p))
        return cls(listen=listen, tls_cert=paths[0], tls_key=paths[1], idle_minutes=float(values["idle_minutes"]))

    @classmethod
    def of_home(cls, home: Any) -> DeskSettings:
        return cls.of_sections(home.config.sections, home.dir, str(home.config.path))


def _check(cfg: Config) -> None:
    DeskSettings.of_sections(cfg.sections, cfg.path.parent, str(cfg.path))


CONFIG_CHECKS: dict[str, Callable[[Config], Any]] = {"desk": _check}


# ---- the app the interface registers -----------------------------------------------------------------------


class DeskApp(Protocol):
    """An ASGI app with ``close()`` (its reader threads), made by node/interfaces/desk for one runtime."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    def close(self) -> None: ...


AppFactory = Callable[["NodeRuntime", DeskSettings], DeskApp]
_FACTORY: list[AppFactory] = []


def register_app(factory: AppFactory) -> AppFactory:
    """Called by node/interfaces/desk on import: how the running node makes the desk's app."""
    _FACTORY[:] = [factory]
    return factory


# ---- the server -------------------------------------------------------------------------------------------------


def bind(address: str) -> socket.socket:
    """A listening-ready TCP socket on ``address`` (HOST:PORT), or UsageError (exit 2) saying why not."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot listen on {address} ([desk] listen): {e}",
                         fix="use an address of this machine, e.g. 127.0.0.1:8443") from None
    family, kind, proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
    try:
        sock.bind(sockaddr)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {address} ([desk] listen): {e.strerror or e}",
                         fix=f"stop the process holding it (`ss -ltnp 'sport = :{port}'`), or change [desk] listen "
                             "in node.toml") from None
    sock.set_inheritable(False)
    return sock


def _server_class() -> Any:
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        """uvicorn without its own signal handlers: the node's loop owns SIGTERM, SIGINT and SIGHUP."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return EmbeddedServer


class DeskService(Service):
    name = "desk"

    def __init__(self, rt: NodeRuntime) -> None:
        super().__init__(rt)
        self.settings = DeskSettings()
        self.app: DeskApp | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.error = ""

    async def start(self) -> None:
        self.settings = DeskSettings.of_home(self.rt.home)
        if not self.settings.enabled:
            return
        if not _FACTORY:
            self.error = "the desk's pages are not installed in this program"
            log.warning("desk_unavailable", reason=self.error, fix="start the node with `fednode run`")
            return
        import uvicorn

        sock = bind(self.settings.listen)
        self.app = _FACTORY[0](self.rt, self.settings)
        config = uvicorn.Config(
            self.app, http="h11", ws="none", lifespan="off", log_config=None, access_log=False,
            server_header=False, proxy_headers=False, timeout_graceful_shutdown=3,
            ssl_certfile=self.settings.tls_cert or None, ssl_keyfile=self.settings.tls_key or None,
        )
        self._server = _server_class()(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        log.info("desk_listening", address=self.settings.listen, url=self.settings.url, tls=self.settings.tls)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception:
                log.exception("desk_stop_failed")
        if self.app is not None:
            self.app.close()

    async def reload(self) -> None:
        try:
            new = DeskSettings.of_home(self.rt.home)
        except Exception as e:  # checked before the reload is applied; never fatal
            log.error("desk_reload_failed", error=str(e))
            return
        if new != self.settings:
            log.warning("reload_needs_restart", field="[desk]", note="the desk's address, certificate and idle "
                        "timeout change at the next start")

    def status(self) -> dict[str, Any] | None:
        if not self.settings.enabled:
            return None
        return {"listen": self.settings.listen, "tls": self.settings.tls, "url": self.settings.url,
                "running": self._task is not None and not self._task.done(), "error": self.error}


SERVICES = [DeskService]
