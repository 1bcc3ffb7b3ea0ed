"""The desk's ASGI app (Starlette) for one running node: pages, the JSON API, static files, headers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from node.interfaces.desk import api, pages
from node.interfaces.desk.backend import Desk
from node.interfaces.desk.web import HERE, SecurityHeaders
from node.runtime.services.desk import DeskSettings

if TYPE_CHECKING:
    from node.runtime.process import NodeRuntime

MAX_BODY = 1024 * 1024


class DeskApp(Starlette):
    def close(self) -> None:
        self.state.desk.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"ok": False, "code": "http", "error": exc.detail}, status_code=exc.status_code)
    text = {404: "未找到该页面", 405: "不支持此请求方式", 413: "请求过大"}.get(exc.status_code, str(exc.detail))
    return PlainTextResponse(text, status_code=exc.status_code)


def make_app(rt: NodeRuntime, settings: DeskSettings) -> DeskApp:
    routes: list[Any] = [*pages.routes(), *api.routes(),
                         Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static")]
    app = DeskApp(routes=routes, middleware=[Middleware(SecurityHeaders, tls=settings.tls)],
                  exception_handlers={HTTPException: _http_error}, max_body_size=MAX_BODY)
    app.state.desk = Desk(rt, settings)
    return app
