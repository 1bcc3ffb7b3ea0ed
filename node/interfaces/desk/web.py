"""What every page and API call of the desk shares: who is signed in, CSRF, errors, rendering, headers.

Rules of this module:
- The sign-in is node/app/people.py's session: the cookie ``fednode_desk`` (HttpOnly, SameSite=Strict,
  Secure under TLS, no lifetime: it ends with the browser) holds ``LOGIN:TOKEN``; an API client sends
  ``Authorization: Bearer LOGIN:TOKEN`` instead. Each request resolves it again (a locked, disabled
  or signed-out person is out at once); a sign-in idle longer than ``[desk] idle_minutes`` is signed
  out (recorded, node/app/people.py) and sent to the sign-in page.
- Every POST of a page carries the session's CSRF token (form field ``csrf``); an API call with the
  cookie carries it in ``X-CSRF-Token`` (a bearer call needs none: a browser never sends that header
  on its own). A request without it is refused (403) before anything runs.
- Errors map to HTTP statuses by their class (SignInFailed 401, Refused 403, NotFound 404, a usage or
  ticket error 400 / 409); their message is shown as text, never as markup.
- Templates autoescape everything (Jinja2 ``autoescape=True``); no inline script or style is ever
  written, and the Content-Security-Policy forbids both.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from node.app import desk as app_desk
from node.app import people
from node.core.calendar import CST
from node.core.errors import FednodeError, NotFound, UsageError
from node.features.people import accounts
from node.features.people.roles import ROLES, Person, may
from node.features.tickets import lifecycle as lc
from node.interfaces.desk import labels
from node.interfaces.desk.backend import Desk

log = structlog.get_logger(__name__)
HERE = Path(__file__).resolve().parent
COOKIE = "fednode_desk"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                         trim_blocks=True, lstrip_blocks=True)
labels.install(ENV)


@dataclass(frozen=True)
class Session:
    login: str
    token: str
    person: Person
    digest: str
    via: str  # cookie | bearer

    @property
    def auth(self) -> dict[str, str]:
        return {"login": self.login, "token": self.token}


def desk_of(request: Request) -> Desk:
    d: Desk = request.app.state.desk
    return d


def client_key(request: Request) -> str:
    return request.client.host if request.client else "?"


def _credentials(request: Request) -> tuple[str, str, str] | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        raw, via = header[7:].strip(), "bearer"
    else:
        raw, via = request.cookies.get(COOKIE, ""), "cookie"
    login, sep, token = raw.partition(":")
    if not sep or not login or not token:
        return None
    return login, token, via


async def current(request: Request) -> Session | None:
    """The signed-in person of this request, or None (also when the sign-in ended or went idle)."""
    cached = request.scope.get("fednode.session")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    creds = _credentials(request)
    if creds is None:
        return None
    login, token, via = creds
    desk = desk_of(request)
    digest = accounts.token_digest(token)
    if desk.sessions.idle(digest):
        request.scope["fednode.idle"] = True
        with contextlib.suppress(FednodeError):  # the sign-out is recorded in the person's name
            await desk.op("people", {"action": "logout", "auth": {"login": login, "token": token}, "token": token})
        return None
    try:
        person = await desk.run(app_desk.signed_in, desk.reader_ledger, desk.policy, login, token)
    except (people.SignInFailed, people.Refused, UsageError):
        desk.sessions.forget(digest)
        return None
    session = Session(login, token, person, digest, via)
    request.scope["fednode.session"] = session
    day = datetime.now(CST).date().isoformat()
    if desk.sessions.first_visit(digest, day):  # the day's "was here" (node/features/worklog.py): once
        try:
            await desk.op("audit.visit", {"payload": {"actor": login, "detail": {"via": "desk"},
                                                      "by": people.stamp(person)}})
        except FednodeError as e:
            log.warning("desk_visit_not_recorded", login=login, error=e.message)
    return session


def csrf_of(request: Request, s: Session) -> str:
    return desk_of(request).sessions.csrf(s.digest)


# ---- errors ----------------------------------------------------------------------------------------------------


def status_of(e: FednodeError) -> int:
    code = str(getattr(e, "code", ""))  # an error that came back through the admin socket keeps only its code
    if isinstance(e, people.SignInFailed) or code == people.SignInFailed.code:
        return 401
    if isinstance(e, people.Refused) or code == people.Refused.code:
        return 403
    if isinstance(e, NotFound | lc.UnknownTicket) or code in (NotFound.code, lc.UnknownTicket.code):
        return 404
    if isinstance(e, lc.TransitionRefused | lc.NotAuthorised):
        return 409
    if isinstance(e, UsageError | lc.TicketError):
        return 400
    return 503 if "recovering" in e.message else 400


# ---- pages --------------------------------------------------------------------------------------------------------

NAV = (
    ("/", "总览", ""),
    ("/alerts", "预警纠错", "alerts.read"),
    ("/tickets", "督查督办", "tickets.read"),
    ("/complaints", "投诉处理", "complaints.read"),
    ("/cases", "办件查询", "cases.read"),
    ("/stats", "统计与绩效", "stats.read"),
    ("/worklog", "监察日志", "worklog.read"),
    ("/status", "联网状态", "node.read"),
)


def nav_of(person: Person, path: str) -> list[dict[str, Any]]:
    out = []
    for href, label, permission in NAV:
        if (permission and not may(person, permission)):
            continue
        active = path == href if href == "/" else path.startswith(href)
        out.append({"href": href, "label": label, "active": active})
    return out


async def render(request: Request, template: str, context: dict[str, Any], status: int = 200,
                 session: Session | None = None) -> HTMLResponse:
    """The page, rendered on a reader thread (a long table never holds the loop)."""
    desk = desk_of(request)
    ctx = {"desk": {"code": desk.code, "name": desk.name}, "request_path": request.url.path, **context}
    if session is not None:
        ctx.update(me=session.person, me_role=" / ".join(ROLES.get(r, r) for r in session.person.roles),
                   nav=nav_of(session.person, request.url.path), csrf=csrf_of(request, session))
    html = await desk.run(ENV.get_template(template).render, ctx)
    return HTMLResponse(html, status_code=status)


def forget_cookie(request: Request, resp: Response) -> Response:
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=desk_of(request).settings.tls)
    return resp


def to_login(request: Request, idle: bool = False) -> Response:
    return forget_cookie(request, RedirectResponse("/login" + ("?idle=1" if idle else ""), status_code=303))


Handler = Callable[[Request, Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in people: GET renders; POST needs the session's CSRF token (form field)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        s = await current(request)
        if s is None:
            return to_login(request, idle=bool(request.scope.get("fednode.idle")))
        if request.method == "POST":
            form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
            if not desk_of(request).sessions.csrf_ok(s.digest, str(form.get("csrf") or "")):
                return await render(request, "error.html", {"title": "请求被拒绝", "status": 403,
                                                            "message": "表单已失效或缺少安全令牌（CSRF），请刷新页面后重试。"},
                                    status=403, session=s)
        try:
            return await handler(request, s)
        except FednodeError as e:
            code = status_of(e)
            if code == 401:
                return to_login(request)
            return await render(request, "error.html", {"title": labels.ERROR_TITLES.get(code, "操作未完成"),
                                                        "status": code, "message": e.message, "fix": e.fix},
                                status=code, session=s)

    return wrapped


# ---- the API --------------------------------------------------------------------------------------------------------


def api_error(e: FednodeError) -> JSONResponse:
    return JSONResponse({"ok": False, **e.as_dict()}, status_code=status_of(e))


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An API call for signed-in people (cookie or bearer); a write with the cookie needs X-CSRF-Token."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        s = await current(request)
        if s is None:
            return JSONResponse({"ok": False, "code": "sign_in_required", "error": "not signed in",
                                 "fix": "POST /api/v1/session with login and password, then send "
                                        "Authorization: Bearer LOGIN:TOKEN"}, status_code=401)
        if request.method not in ("GET", "HEAD") and s.via == "cookie" and \
                not desk_of(request).sessions.csrf_ok(s.digest, request.headers.get("x-csrf-token")):
            return JSONResponse({"ok": False, "code": "csrf", "error": "missing or wrong X-CSRF-Token",
                                 "fix": "send the session's CSRF token (GET /api/v1/whoami) in X-CSRF-Token"},
                                status_code=403)
        try:
            return await handler(request, s)
        except FednodeError as e:
            return api_error(e)

    return wrapped


# ---- headers of every answer ------------------------------------------------------------------------------------


class SecurityHeaders:
    """Pure ASGI middleware: CSP without inline script or style, no framing, no sniffing, no referrer,
    nothing cached but the static files; HSTS under TLS."""

    def __init__(self, app: Any, tls: bool = False) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["Content-Security-Policy"] = CSP
                h["X-Content-Type-Options"] = "nosniff"
                h["X-Frame-Options"] = "DENY"
                h["Referrer-Policy"] = "no-referrer"
                h["Cross-Origin-Opener-Policy"] = "same-origin"
                h["Cache-Control"] = "no-cache" if static else "no-store"
                if self.tls:
                    h["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)
