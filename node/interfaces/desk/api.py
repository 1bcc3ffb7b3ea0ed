"""The desk's JSON API under /api/v1/: the same use cases and the same permissions as the pages, for a
provincial platform or a script. Sign in with ``POST /api/v1/session`` {login, password}; then send
``Authorization: Bearer LOGIN:TOKEN``. Errors are ``{"ok": false, "code", "error", "fix"}`` with the
HTTP status of the error's class (node/interfaces/desk/web.py)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.app import alerts as app_alerts
from node.app import cases as app_cases
from node.app import desk as app_desk
from node.app import tickets as app_tickets
from node.app.people import stamp
from node.core.errors import FednodeError, UsageError
from node.features.people.roles import may
from node.interfaces.desk.web import Session, api, api_error, client_key, csrf_of, desk_of


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(data, ensure_ascii=False, default=str)), status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("the request body is not JSON", fix="send a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError("the request body is not a JSON object", fix="send a JSON object")
    return body


async def session_open(request: Request) -> Response:
    desk = desk_of(request)
    if not desk.login_rate.allow(client_key(request)):
        return JSONResponse({"ok": False, "code": "rate_limited", "error": "too many sign-in attempts",
                             "fix": "wait a minute"}, status_code=429)
    try:
        body = await _body(request)
        result = await desk.op("people", {"action": "login", "login": str(body.get("login", "")),
                                          "password": str(body.get("password", "")), "via": "desk-api"})
    except FednodeError as e:
        return api_error(e)
    login = str(body.get("login", ""))
    return ok({"token": f"{login}:{result['token']}", "expires_at": result["expires_at"], "person": result["person"]})


@api
async def session_close(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    result = await desk.op("people", {"action": "logout", "auth": s.auth, "token": s.token})
    desk.sessions.forget(s.digest)
    return ok(result)


@api
async def whoami(request: Request, s: Session) -> Response:
    p = s.person
    return ok({"person": stamp(p), "roles": list(p.roles), "node": desk_of(request).code,
               "csrf": csrf_of(request, s) if s.via == "cookie" else None})


@api
async def overview(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    status = await desk.status() if may(s.person, "node.read") else None
    return ok(await desk.read(desk.with_index, app_desk.overview, desk.store, desk.code, s.person, status,
                              shared=desk.shared))


@api
async def alerts(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    q = request.query_params
    app_desk.require(s.person, "alerts.read")
    level = q.get("level")
    return ok(await desk.scan(app_alerts.list_alert_rows, desk.home,
                              level=int(level) if level and level.isdigit() else None, rule=q.get("rule") or None,
                              division=q.get("division") or None, case=q.get("case") or None,
                              limit=int(q.get("limit") or 500) if (q.get("limit") or "500").isdigit() else 500,
                              person=s.person, state=q.get("state") or None))


@api
async def alert(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    return ok(await desk.read(app_alerts.show_alert, desk.home, request.path_params["alert_id"], s.person))


@api
async def alert_act(request: Request, s: Session) -> Response:
    """POST .../dispose {result: corrected|false-alarm|ticket, note, ticket?}, .../reopen {note},
    .../handle {note} (已纠正)."""
    desk = desk_of(request)
    body = await _body(request)
    alert_id, act, note = request.path_params["alert_id"], request.path_params["act"], str(body.get("note", ""))
    if act == "reopen":
        return ok(await desk.run(app_alerts.reopen_alert, desk.home, s.auth, alert_id, note))
    if act == "handle":
        return ok(await desk.run(app_alerts.handle_alert, desk.home, s.auth, alert_id, note))
    if act == "dispose":
        return ok(await desk.run(app_alerts.dispose_alert, desk.home, s.auth, alert_id, str(body.get("result", "")),
                                  note, ticket=str(body.get("ticket", ""))))
    raise UsageError(f"unknown alert act {act!r}", fix="dispose, reopen or handle")


@api
async def tickets(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    return ok(await desk.read(desk.tickets_read, {"action": "list", "auth": s.auth,
                                                  "state": request.query_params.get("state") or None}))


@api
async def ticket(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    status = await desk.op("status", {"tree": True})
    return ok(await desk.read(desk.tickets_read, {"action": "show", "ticket": request.path_params["ticket"],
                                                  "auth": s.auth}, status))


@api
async def ticket_issue(request: Request, s: Session) -> Response:
    body = await _body(request)
    req: dict[str, Any] = {k: body[k] for k in ("to", "subject", "body", "case_nos", "alert_ids", "sign_days", "reply_days")
           if k in body}
    if not req.get("to") or not req.get("subject"):
        raise UsageError("to and subject are required", fix='send {"to": "320303", "subject": "..."}')
    return ok(await desk_of(request).op("tickets", {"action": "issue", **req, "auth": s.auth}), status=201)


@api
async def ticket_act(request: Request, s: Session) -> Response:
    body = await _body(request)
    verb = request.path_params["verb"]
    if verb not in app_tickets.VERB_FIELDS and verb != "sign":
        raise UsageError(f"unknown verb {verb!r}", fix="one of: sign, " + ", ".join(app_tickets.VERB_FIELDS))
    return ok(await desk_of(request).op("tickets", {
        "action": "act", "verb": verb, "ticket": request.path_params["ticket"],
        "fields": app_tickets.act_fields(verb, body), "auth": s.auth}))


@api
async def complaints(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    return ok(await desk.read(desk.tickets_read, {"action": "complaints", "auth": s.auth}))


@api
async def cases(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    q = request.query_params
    app_desk.require(s.person, "cases.read")

    def number(name: str, default: int) -> int:
        v = q.get(name) or ""
        return int(v) if v.isdigit() else default

    return ok(await desk.scan(app_cases.list_cases, desk.reader, dept=q.get("dept") or "", item=q.get("item") or "",
                              state=q.get("state") or "", handler=q.get("handler") or "",
                              since=q.get("since") or "", offset=number("offset", 0), limit=number("limit", 50),
                              person=s.person, count_beyond=app_desk.CASES_COUNTED_BEYOND))


@api
async def case(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    return ok(await desk.read(app_cases.show_case, desk.reader, request.path_params["case_no"], s.person))


@api
async def case_verify(request: Request, s: Session) -> Response:
    """The case's records proved back to the nodes that wrote them (node/app/cases.py ``verify_case``)."""
    desk = desk_of(request)
    return ok(await desk.read(app_cases.verify_case, desk.reader, request.path_params["case_no"], s.person))


@api
async def stats(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    q = request.query_params
    return ok(await desk.scan(app_desk.stats, desk.home, desk.ledger.store, s.person, by=q.get("by") or "division",
                              period=q.get("period") or "quarter", at=q.get("at") or None,
                              subtree=q.get("subtree") or None))


@api
async def worklog(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    return ok(await desk.scan(app_desk.worklog, desk.store, desk.code, s.person,
                              actor=request.query_params.get("actor") or None, limit=500))


@api
async def status(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    app_desk.require(s.person, "node.read", (s.person.scope,), "联网状态")
    data = await desk.op("status", {"tree": True})
    return ok({**data, "link_rows": app_desk.links_of(data)})


def routes() -> list[Route]:
    p = "/api/v1"
    return [
        Route(f"{p}/session", session_open, methods=["POST"]),
        Route(f"{p}/session", session_close, methods=["DELETE"]),
        Route(f"{p}/whoami", whoami, methods=["GET"]),
        Route(f"{p}/overview", overview, methods=["GET"]),
        Route(f"{p}/alerts", alerts, methods=["GET"]),
        Route(f"{p}/alerts/{{alert_id:path}}/{{act:str}}", alert_act, methods=["POST"]),
        Route(f"{p}/alerts/{{alert_id:path}}", alert, methods=["GET"]),
        Route(f"{p}/tickets", tickets, methods=["GET"]),
        Route(f"{p}/tickets", ticket_issue, methods=["POST"]),
        Route(f"{p}/tickets/{{ticket}}", ticket, methods=["GET"]),
        Route(f"{p}/tickets/{{ticket}}/{{verb}}", ticket_act, methods=["POST"]),
        Route(f"{p}/complaints", complaints, methods=["GET"]),
        Route(f"{p}/cases", cases, methods=["GET"]),
        Route(f"{p}/cases/{{case_no}}", case, methods=["GET"]),
        Route(f"{p}/cases/{{case_no}}/verify", case_verify, methods=["GET"]),
        Route(f"{p}/stats", stats, methods=["GET"]),
        Route(f"{p}/worklog", worklog, methods=["GET"]),
        Route(f"{p}/status", status, methods=["GET"]),
    ]
