"""The desk's pages (server-rendered, zh-CN). Each handler parses the request, calls one node.app use case
(through ``Desk.read`` / ``Desk.op`` / ``Desk.act``), and renders. Permissions are ``may()``'s, asked by
the use cases (and by ``app.desk.require`` before a page that only lists); nothing here decides who may.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from node.app import alerts as app_alerts
from node.app import cases as app_cases
from node.app import desk as app_desk
from node.app import tickets as app_tickets
from node.core.errors import FednodeError, UsageError
from node.features.cases.view import STATES as CASE_STATES
from node.features.people.roles import may
from node.features.stats import report
from node.interfaces.desk import labels
from node.interfaces.desk.web import (
    COOKIE,
    Session,
    client_key,
    current,
    desk_of,
    forget_cookie,
    page,
    render,
)

# ---- sign-in ---------------------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    if await current(request) is not None:
        return RedirectResponse("/", status_code=303)
    desk = desk_of(request)
    notice = "您已长时间未操作，请重新登录。" if request.query_params.get("idle") else ""
    return await render(request, "login.html", {"form_token": desk.login_forms.issue(), "notice": notice})


async def login_submit(request: Request) -> Response:
    desk = desk_of(request)
    form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
    login = str(form.get("login") or "").strip()

    async def again(message: str, status: int) -> Response:
        return await render(request, "login.html", {"form_token": desk.login_forms.issue(), "error": message,
                                                    "login": login}, status=status)

    if not desk.login_forms.take(str(form.get("form_token") or "")):
        return await again("登录页面已失效，请重新输入。", 403)
    if not desk.login_rate.allow(client_key(request)):
        return await again("登录尝试过于频繁，请一分钟后再试。", 429)
    try:
        result = await desk.op("people", {"action": "login", "login": login,
                                          "password": str(form.get("password") or ""), "via": "desk"})
    except FednodeError as e:
        if getattr(e, "code", "") == "forbidden":
            return await again("该账号已被锁定或停用，请联系系统管理员。", 403)
        return await again("用户名或口令错误。连续失败多次后账号将被锁定。", 401)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(COOKIE, f"{login}:{result['token']}", httponly=True, samesite="strict",
                    secure=desk.settings.tls, path="/")
    return resp


@page
async def logout(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    try:
        await desk.op("people", {"action": "logout", "auth": s.auth, "token": s.token})
    finally:
        desk.sessions.forget(s.digest)
    return forget_cookie(request, RedirectResponse("/login", status_code=303))


# ---- 总览 --------------------------------------------------------------------------------------------------------


async def _status(request: Request, s: Session) -> dict[str, Any] | None:
    return await desk_of(request).status() if may(s.person, "node.read") else None


@page
async def overview(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    data = await desk.read(desk.with_index, app_desk.overview, desk.store, desk.code, s.person,
                           await _status(request, s), shared=desk.shared)
    return await render(request, "overview.html", {"title": "总览", "data": data, "shared_s": desk.shared.ttl_s},
                        session=s)


# ---- 预警纠错 --------------------------------------------------------------------------------------------------------


def _int(text: Any, name: str) -> int | None:
    if text in (None, ""):
        return None
    try:
        return int(str(text))
    except ValueError:
        raise UsageError(f"{name} 须为整数：{text!r}", fix="请填写整数") from None


def _num(text: Any, name: str) -> float | None:
    if text in (None, ""):
        return None
    try:
        return float(str(text))
    except ValueError:
        raise UsageError(f"{name} 须为数字：{text!r}", fix="请填写数字，如 1 或 0.5") from None


@page
async def alerts(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    q = request.query_params
    app_desk.require(s.person, "alerts.read")
    rows = await desk.scan(app_alerts.list_alert_rows, desk.home, level=_int(q.get("level"), "级别"),
                           rule=q.get("rule") or None, division=(q.get("division") or "").strip() or None,
                           case=(q.get("case") or "").strip() or None, limit=500, person=s.person,
                           state=q.get("state") or None)
    return await render(request, "alerts.html", {"title": "预警纠错", "rows": list(reversed(rows)), "q": q,
                                                 "rules": labels.RULES, "states": labels.ALERT_STATES}, session=s)


@page
async def alert(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    alert_id = request.path_params["alert_id"]
    data = await desk.read(app_alerts.show_alert, desk.home, alert_id, s.person)
    return await render(request, "alert.html", {
        "title": f"预警 {alert_id}", "d": data, "results": labels.DISPOSALS,
        "may_handle": bool(may(s.person, "alerts.handle")), "may_issue": bool(may(s.person, "tickets.issue")),
        "done": request.query_params.get("done"),
    }, session=s)


@page
async def alert_dispose(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    alert_id = request.path_params["alert_id"]
    form = await request.form()
    note = str(form.get("note") or "").strip()
    if request.path_params["act"] == "reopen":
        await desk.run(app_alerts.reopen_alert, desk.home, s.auth, alert_id, note)
    else:
        await desk.run(app_alerts.dispose_alert, desk.home, s.auth, alert_id, str(form.get("result") or ""), note)
    return RedirectResponse(f"/alerts/{quote(alert_id)}?done={request.path_params['act']}", status_code=303)


# ---- 督查督办 ----------------------------------------------------------------------------------------------------------


@page
async def tickets(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    app_desk.require(s.person, "tickets.read")
    data = await desk.read(desk.tickets_read, {"action": "list", "auth": s.auth})
    box = request.query_params.get("box", "inbox")
    state = request.query_params.get("state") or ""
    from node.core.codes import within

    rows = data["tickets"]
    if box == "inbox":
        rows = [r for r in rows if within(r["to"], s.person.scope) and not within(r["issuer"], s.person.scope)]
    elif box == "outbox":
        rows = [r for r in rows if within(r["issuer"], s.person.scope)]
    if state:
        rows = [r for r in rows if r["state"] == state]
    return await render(request, "tickets.html", {
        "title": "督查督办", "rows": list(reversed(rows)), "box": box, "state": state,
        "states": labels.TICKET_STATES, "may_issue": bool(may(s.person, "tickets.issue")),
    }, session=s)


@page
async def ticket_new(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    app_desk.require(s.person, "tickets.issue")
    q = request.query_params
    units = await desk.read(app_desk.units, desk.store, desk.code, s.person, await _status(request, s))
    return await render(request, "ticket_new.html", {
        "title": "签发督办单", "units": units, "to": q.get("to", ""), "alert_id": q.get("alert", ""),
        "case_no": q.get("case", ""), "subject": q.get("subject", ""),
    }, session=s)


def _list_of(text: Any) -> list[str]:
    return [x for x in str(text or "").replace("，", ",").replace(",", " ").split() if x]


@page
async def ticket_issue(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    f = await request.form()
    req: dict[str, Any] = {"action": "issue", "to": str(f.get("to") or "").strip(),
                           "subject": str(f.get("subject") or "").strip(), "body": str(f.get("body") or "").strip(),
                           "case_nos": _list_of(f.get("case_nos")), "alert_ids": _list_of(f.get("alert_ids")),
                           "auth": s.auth}
    if not req["to"] or not req["subject"]:
        raise UsageError("请填写被督办单位和督办事由", fix="被督办单位和事由为必填项")
    for name, label in (("sign_days", "签收时限"), ("reply_days", "答复时限")):
        value = _num(f.get(name), label)
        if value is not None:
            req[name] = value
    result = await desk.op("tickets", req)
    return RedirectResponse(f"/tickets/{quote(result['ticket'])}?done=issue", status_code=303)


@page
async def ticket(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    no = request.path_params["ticket"]
    status = await desk.op("status", {"tree": True})  # fresh: whether the ticket reached its unit
    data = await desk.read(desk.tickets_read, {"action": "show", "ticket": no, "auth": s.auth}, status)
    return await render(request, "ticket.html", {
        "title": f"督办单 {no}", "t": data, "actions": app_desk.ticket_actions(data, s.person, desk.code),
        "done": request.query_params.get("done"), "verdicts": labels.VERDICTS, "satisfaction": labels.SATISFACTION,
    }, session=s)


def _attachments(text: str) -> list[dict[str, Any]]:
    """The reply form's attachments: one file a line, ``文件名 | 大小 | SHA-256 | 类型`` (类型 may be left out).
    The desk never receives the files: desk.js fills these lines in from files picked in the browser (hashed
    there), or the person types them (e.g. from `sha256sum`); the department keeps the files."""
    import mimetypes

    from node.features.tickets import lifecycle as lc

    out = []
    lines = [ln.strip() for ln in text.replace("｜", "|").splitlines() if ln.strip()]
    if len(lines) > lc.MAX_ATTACHMENTS:
        raise UsageError(f"附件最多 {lc.MAX_ATTACHMENTS} 个，填写了 {len(lines)} 个", fix="请删去多余的行")
    fmt = "每行一个文件：文件名 | 大小（字节） | SHA-256 | 类型（可省）"
    for i, line in enumerate(lines, start=1):
        parts = [x.strip() for x in line.rsplit("|", 3)]
        if len(parts) == 3 or (len(parts) == 4 and "/" not in parts[3]):
            parts = [x.strip() for x in line.rsplit("|", 2)] + [""]
        if len(parts) != 4:
            raise UsageError(f"附件第 {i} 行格式不对：{line}", fix=fmt)
        name, size, sha, media = parts
        if not size.isdigit():
            raise UsageError(f"附件第 {i} 行的大小须为字节数：{size}", fix=fmt)
        a = {"name": name, "size": int(size), "sha256": sha.lower(),
             "media_type": media or mimetypes.guess_type(name)[0] or "application/octet-stream"}
        problem = lc.check_attachment(a)
        if problem:
            raise UsageError(f"附件第 {i} 行有误：{problem}", fix=fmt)
        out.append(a)
    return out


_NUMBERS = {"days": ("延期天数", float), "reply_days": ("答复时限", float), "score": ("评分", int),
            "assign_no": ("认定序号", int)}


@page
async def ticket_act(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    no, verb = request.path_params["ticket"], request.path_params["verb"]
    if verb not in labels.VERBS:
        raise UsageError(f"未知的操作 {verb!r}", fix="请从督办单页面操作")
    f = await request.form()
    given: dict[str, Any] = {k: str(v).strip() for k, v in f.items() if k != "csrf"}
    for name, (label, kind) in _NUMBERS.items():
        if given.get(name):
            given[name] = _int(given[name], label) if kind is int else _num(given[name], label)
    given["disputed"] = given.get("disputed") == "1"
    if verb == "reply":
        given["attachments"] = _attachments(given.get("attachments") or "") or None
    await desk.op("tickets", {"action": "act", "verb": verb, "ticket": no,
                              "fields": app_tickets.act_fields(verb, given), "auth": s.auth})
    return RedirectResponse(f"/tickets/{quote(no)}?done={verb}", status_code=303)


# ---- 投诉处理 ------------------------------------------------------------------------------------------------------------


@page
async def complaints(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    app_desk.require(s.person, "complaints.read")
    data = await desk.read(desk.tickets_read, {"action": "complaints", "auth": s.auth})
    return await render(request, "complaints.html", {
        "title": "投诉处理", "rows": list(reversed(data["complaints"])),
        "may_register": bool(may(s.person, "complaints.register")), "done": request.query_params.get("done"),
    }, session=s)


@page
async def complaint_register(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    f = await request.form()
    complaint = {k: str(f.get(k) or "").strip() for k in ("complainant", "respondent_unit", "respondent_person",
                                                           "content", "source")}
    req: dict[str, Any] = {"action": "complaint", "complaint": complaint, "auth": s.auth,
                           "due_days": _num(f.get("due_days"), "办理时限") or 5.0}
    if str(f.get("to") or "").strip():
        req["to"] = str(f.get("to")).strip()
    result = await desk.op("tickets", req)
    return RedirectResponse(f"/tickets/{quote(result['ticket'])}?done=complaint", status_code=303)


# ---- 办件查询 ------------------------------------------------------------------------------------------------------------


@page
async def cases(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    q = request.query_params
    no = (q.get("no") or "").strip()
    if no:
        return RedirectResponse(f"/cases/{quote(no)}", status_code=303)
    app_desk.require(s.person, "cases.read")
    offset = _int(q.get("offset"), "起始") or 0
    data = await desk.scan(app_cases.list_cases, desk.reader, dept=q.get("dept") or "", item=q.get("item") or "",
                           state=q.get("state") or "", handler=q.get("handler") or "", since=q.get("since") or "",
                           offset=max(offset, 0), limit=50, person=s.person, count_beyond=app_desk.CASES_COUNTED_BEYOND)
    more = {k: v for k, v in q.items() if k != "offset" and v}
    return await render(request, "cases.html", {
        "title": "办件查询", "data": data, "q": q, "states": CASE_STATES,
        "next": f"/cases?{urlencode({**more, 'offset': offset + 50})}" if offset + 50 < data["total"] else "",
        "prev": f"/cases?{urlencode({**more, 'offset': max(offset - 50, 0)})}" if offset > 0 else "",
    }, session=s)


@page
async def case(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    data = await desk.read(app_cases.show_case, desk.reader, request.path_params["case_no"], s.person)
    # the proofs read every record from the case's up to its origin's next checkpoint (tens of ms): asked for
    # with ?verify=1, which desk.js requests as soon as the page is shown (the badge links to it without JS)
    verified = None
    if request.query_params.get("verify"):
        verified = await desk.read(app_cases.verify_case, desk.reader, data["case_no"], s.person)
    return await render(request, "case.html", {"title": f"办件 {data['case_no']}", "c": data, "v": verified},
                        session=s)


# ---- 统计与绩效 ---------------------------------------------------------------------------------------------------------


async def _stats(request: Request, s: Session) -> dict[str, Any]:
    desk = desk_of(request)
    q = request.query_params
    by = q.get("by") or "division"
    period = q.get("period") or "quarter"
    if by not in ("division", "dept", "item_type", "period") or period not in ("month", "quarter", "year"):
        raise UsageError("统计口径或期间无效", fix="请从页面选择")
    data: dict[str, Any] = await desk.scan(app_desk.stats, desk.home, desk.ledger.store, s.person, by=by,
                                           period=period, at=(q.get("at") or "").strip() or None,
                                           subtree=(q.get("subtree") or "").strip() or None)
    return data


@page
async def stats(request: Request, s: Session) -> Response:
    data = await _stats(request, s)
    chart = {"labels": [r["label"] for r in data["rows"]],
             "series": [{"name": name, "values": [r["indicators"][key] for r in data["rows"]]}
                        for key, name in (("done_rate", "办结率"), ("on_time_rate", "按时办结率"),
                                          ("satisfaction_rate", "满意度"))]}
    from node.core.indicators import INDICATORS

    return await render(request, "stats.html", {
        "title": "统计与绩效", "data": data, "chart": chart, "indicators": INDICATORS, "q": request.query_params,
        "query": request.url.query, "fmt": report.fmt_value,
    }, session=s)


@page
async def stats_csv(request: Request, s: Session) -> Response:
    data = await _stats(request, s)
    return Response(report.csv_text(data), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="fednode-stats.csv"'})


@page
async def stats_html(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    data = await _stats(request, s)
    html = report.html(data, title=f"{desk.name}（{desk.code}）电子监察统计分析")
    return HTMLResponse(html, headers={"Content-Disposition": 'attachment; filename="fednode-stats.html"'})


# ---- 监察日志 ------------------------------------------------------------------------------------------------------------


@page
async def worklog(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    actor = (request.query_params.get("actor") or "").strip() or None
    data = await desk.scan(app_desk.worklog, desk.store, desk.code, s.person, actor=actor, limit=200)
    return await render(request, "worklog.html", {"title": "监察日志", "data": data, "actor": actor or "",
                                                  "entries": list(reversed(data["entries"])),
                                                  "reminders": list(reversed(data["reminders"]))}, session=s)


# ---- 联网状态 ------------------------------------------------------------------------------------------------------------


@page
async def status(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    app_desk.require(s.person, "node.read", (s.person.scope,), "联网状态")
    data = await desk.op("status", {"tree": True})
    quarantine = await desk.scan(app_desk.quarantine_list, desk.store, s.person)
    return await render(request, "status.html", {
        "title": "联网状态", "st": data, "links": app_desk.links_of(data), "quarantine": quarantine,
        "may_operate": bool(may(s.person, "node.operate")), "done": request.query_params.get("done"),
    }, session=s)


@page
async def quarantine_replay(request: Request, s: Session) -> Response:
    desk = desk_of(request)
    f = await request.form()
    ids = [i for i in (_int(x, "编号") for x in f.getlist("id")) if i is not None]
    if not ids:
        raise UsageError("请选择要重放的隔离记录", fix="勾选一条或多条后再提交")
    await desk.act(app_desk.replay_quarantine, desk.ledger, desk.policy, s.auth, ids)
    return RedirectResponse("/status?done=replay", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview, methods=["GET"]),
        Route("/alerts", alerts, methods=["GET"]),
        Route("/alerts/{alert_id:path}/{act:str}", alert_dispose, methods=["POST"]),
        Route("/alerts/{alert_id:path}", alert, methods=["GET"]),
        Route("/tickets", tickets, methods=["GET"]),
        Route("/tickets", ticket_issue, methods=["POST"]),
        Route("/tickets/new", ticket_new, methods=["GET"]),
        Route("/tickets/{ticket}", ticket, methods=["GET"]),
        Route("/tickets/{ticket}/{verb}", ticket_act, methods=["POST"]),
        Route("/complaints", complaints, methods=["GET"]),
        Route("/complaints", complaint_register, methods=["POST"]),
        Route("/cases", cases, methods=["GET"]),
        Route("/cases/{case_no}", case, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats.csv", stats_csv, methods=["GET"]),
        Route("/stats/report.html", stats_html, methods=["GET"]),
        Route("/worklog", worklog, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/status/quarantine/replay", quarantine_replay, methods=["POST"]),
    ]
