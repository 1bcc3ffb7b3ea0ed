"""People use cases: who is acting (``resolve``), may they (``authorize``), and the users themselves.

Rules of this module:
- ``may()`` (node/features/people/roles.py) is the one decision; ``authorize`` is the one place that
  asks it for an act, records a refusal (超越权限的自动告知并制止: an ``audit.action`` "refused" naming
  the person, the permission and why) and raises ``Refused`` (exit 2).
- Who acts travels as ``auth`` in every request: ``{"os_user": NAME}`` (the OS operator, from the CLI
  only: root on the box is 系统管理员 + 只读 at this node), ``{"login": L, "password": P}`` or
  ``{"login": L, "token": T}`` (a session of `fednode login` or the desk). The desk builds ``auth`` from
  its own session cookie and never accepts ``os_user`` from a browser.
- ``execute`` carries out one request on a ledger: in the running node (admin op ``people``, on the
  store thread) or, when it is stopped, in the CLI itself. Every change of a user and its attributed
  ``audit.action`` are one transaction. Passwords are never logged, stored or put in a record.
- ``stamp`` is what a record says of its person: ``by = {login, name, role, role_label, scope}``; the
  node's signature on the record vouches for it, so the province reads "张三 (监察员, 320303)".
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from node.app.remote import via_node_or_store
from node.core.codes import is_code, within
from node.core.errors import FednodeError, NotFound, UsageError
from node.core.home import Home
from node.core.ledger import Ledger, NewRecord
from node.features.people import accounts, users
from node.features.people.roles import ROLES, STATES, Decision, Person, Target, may, parse_role
from node.features.worklog import ACTION, action_payload

CST = timezone(timedelta(hours=8))
OS_PREFIX = "os:"
_LOGIN_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")
_PHONE_RE = re.compile(r"^\+?\d[\d -]{4,30}$")  # the contact fields of a user: what notify's sms and smtp send to
_MAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# The permission each CLI command needs (roles.py has the table of who holds which). A command not
# named here needs node.operate (系统管理员 only): a new command is closed until someone opens it.
COMMAND_PERMISSIONS: dict[str, str] = {
    "status": "node.read", "health": "node.read", "metrics": "node.read", "verify": "node.read",
    "proof": "node.read", "check": "node.read", "pki keys": "node.read", "adapters list": "node.read",
    "quarantine list": "node.read", "quarantine show": "node.read", "calendar show": "node.read",
    "worklog": "worklog.read", "stats": "stats.read",
    "alerts list": "alerts.read", "alerts show": "alerts.read", "alerts handle": "alerts.handle",
    "alerts dispose": "alerts.handle", "alerts reopen": "alerts.handle",
    "cases show": "cases.read", "cases list": "cases.read",
    "tickets drafts": "tickets.read", "tickets confirm": "tickets.issue", "tickets drop": "tickets.issue",
    "directory list": "node.read", "directory show": "node.read", "directory import": "users.manage",
    "notify dead-letters": "node.read", "notify retry": "node.operate",
    "tickets list": "tickets.read", "tickets show": "tickets.read", "tickets issue": "tickets.issue",
    "tickets sign": "tickets.sign", "tickets reply": "tickets.reply", "tickets conclude": "tickets.judge",
    "tickets return": "tickets.judge", "tickets extend-grant": "tickets.judge",
    "tickets extend-request": "tickets.extend_request", "tickets assign": "tickets.assign",
    "tickets assign-result": "tickets.assign",
    "complaints list": "complaints.read", "complaints show": "complaints.read",
    "complaints register": "complaints.register",
    "users list": "users.manage", "users add": "users.manage", "users lock": "users.manage",
    "users unlock": "users.manage", "users disable": "users.manage", "users enable": "users.manage",
    "users roles": "", "users passwd": "", "login": "", "logout": "", "whoami": "",
}
# Commands with no person: they build or run the node before it has people (or need none).
UNGUARDED = frozenset({"init", "run", "demo", "bench", "pki init-root", "pki request", "pki install", "login",
                       "users roles", "completion", "check"})


class Refused(FednodeError):
    code = "forbidden"
    exit_status = 2


class SignInFailed(FednodeError):
    code = "sign_in_failed"
    exit_status = 2


# ---- who acts --------------------------------------------------------------------------------------------


def os_person(node: str, os_user: str) -> Person:
    """The OS operator of the box: 系统管理员 and 只读 at the whole node, never a ticket's actor."""
    return Person(login=f"{OS_PREFIX}{os_user}", name=os_user, roles=("sysadmin", "auditor"), scope=node,
                  node=node, kind="os")


def stamp(person: Person, role: str = "") -> dict[str, Any]:
    """``by`` of a record: who acted, in which role (the role that allowed the act), for which scope."""
    role = role or (person.roles[0] if person.roles else "")
    return {"login": person.login, "name": person.name, "role": role, "role_label": ROLES.get(role, role),
            "scope": person.scope}


def now_cst() -> datetime:
    return datetime.now(CST)


def _iso(t: datetime) -> str:
    return t.astimezone(CST).isoformat(timespec="seconds")


def resolve(ledger: Ledger, policy: accounts.LoginPolicy, auth: Any, now: datetime) -> Person:
    """The person ``auth`` names, signed in (password or session) and active; else SignInFailed/Refused."""
    if not isinstance(auth, dict) or not auth:
        raise UsageError("nobody is named as acting", fix="give --as LOGIN (or set FEDNODE_USER)")
    if "os_user" in auth:
        return os_person(ledger.code, str(auth["os_user"]))
    login = str(auth.get("login", ""))
    with ledger.store.read() as conn:
        user = users.get(conn, login)
        found = users.session(conn, accounts.token_digest(str(auth["token"]))) if "token" in auth else None
    if "token" in auth:
        if found is None or found[0] != login or datetime.fromisoformat(found[1]) <= now or user is None:
            raise SignInFailed(f"the sign-in of {login} has ended or is not valid", fix=f"sign in again: "
                               f"`fednode login DIR --as {login}` (or give --password-file)")
        return _active(user.person(ledger.code))
    if "password" in auth:
        return authenticate(ledger, policy, login, str(auth["password"]), now)
    raise UsageError(f"no password or sign-in for {login}",
                     fix=f"give --password-file F, answer the prompt, or sign in first: `fednode login DIR --as {login}`")


def _active(person: Person) -> Person:
    if person.state != "active":
        raise Refused(f"the account {person.login} ({person.name}) is {person.state}",
                      fix="a 系统管理员 unlocks it: `fednode users unlock DIR LOGIN`" if person.state == "locked"
                      else "a 系统管理员 re-enables it: `fednode users enable DIR LOGIN`")
    return person


def authenticate(ledger: Ledger, policy: accounts.LoginPolicy, login: str, password: str, now: datetime) -> Person:
    """Check a password. A failure is counted (and recorded); ``max_failures`` in the window lock the account."""
    with ledger.store.read() as conn:
        user = users.get(conn, login)
    wrong = SignInFailed(f"wrong login or password for {login!r} at {ledger.code}",
                         fix=f"check the login and the password; after {policy.max_failures} failures in "
                         f"{int(policy.window.total_seconds() // 60)} minutes the account locks")
    if user is None:
        accounts.check_password("", password)  # the same work as for a real user: no timing oracle on logins
        raise wrong
    person = user.person(ledger.code)
    if user.state != "active":
        _active(person)
    ok, rehash = accounts.check_password(user.password_hash, password)
    if ok:
        if user.failures or rehash:
            fixed = user.changed(user.changed_by, user.changed_at, failures=(),
                                 password_hash=rehash or user.password_hash)
            with ledger.store.write() as tx:
                users.put(tx, fixed, new=False)
        return person
    failures, lock = accounts.after_failure(list(user.failures), now, policy)
    after = user.changed("system", _iso(now), failures=tuple(failures), state="locked" if lock else user.state)
    detail = {"failures": len(failures), "locked": lock}
    _append(ledger, person, "login failed", login, detail, now, also=lambda tx: users.put(tx, after, new=False))
    if lock:
        raise Refused(f"{login} ({user.name}) is locked after {len(failures)} failed sign-ins",
                      fix="a 系统管理员 unlocks it: `fednode users unlock DIR LOGIN`")
    raise wrong


def _append(ledger: Ledger, person: Person, action: str, target: str, detail: dict[str, Any], now: datetime,
            role: str = "", also: Any = None) -> dict[str, Any]:
    payload = action_payload(person.login, action, target, detail, now)
    payload["by"] = stamp(person, role)
    ledger.append([NewRecord(ACTION, payload)], also=also)
    return payload


# ---- may they --------------------------------------------------------------------------------------------


def authorize(ledger: Ledger, person: Person, permission: str, target: Target | None, now: datetime,
              *, command: str = "") -> Decision:
    """``may()``, and a refusal recorded and raised (exit 2) when not."""
    decision = may(person, permission, target)
    if decision:
        return decision
    what = (target.what if target else "") or command or permission
    _append(ledger, person, "refused", what, {"permission": permission, "command": command,
                                              "reason": decision.reason}, now)
    raise Refused(decision.reason, fix=_refusal_fix(person, permission))


def _refusal_fix(person: Person, permission: str) -> str:
    from node.features.people.roles import who_may

    holders = "、".join(who_may(permission)) or "无"
    if person.kind == "os":
        return f"请以具有此权限的人员（{holders}）身份操作：--as LOGIN；`fednode users list DIR` 列出本节点人员"
    return f"请由具有此权限的人员（{holders}）办理，或请系统管理员调整您的角色或辖区"


def command_permission(command: str) -> str:
    return COMMAND_PERMISSIONS.get(command, "node.operate")


# ---- the one place a request is carried out ----------------------------------------------------------------


def execute(ledger: Ledger, policy: accounts.LoginPolicy, req: dict[str, Any], now: datetime | None = None) -> Any:
    now = now or now_cst()
    action = req.get("action")
    if action == "login":
        return _login(ledger, policy, req, now)
    person = resolve(ledger, policy, req.get("auth"), now)
    if action == "whoami":
        return {"person": stamp(person), "roles": list(person.roles), "kind": person.kind, "node": ledger.code}
    if action == "authorize":
        permission = str(req.get("permission") or "")
        role = ""
        if permission:
            target = Target(codes=tuple(req.get("codes") or ()), owners=frozenset(req.get("owners") or ()),
                            handler=str(req.get("handler") or ""), what=str(req.get("what", "")))
            role = authorize(ledger, person, permission, target if req.get("codes") else None, now,
                             command=str(req.get("command", ""))).role
        return {"person": stamp(person, role), "kind": person.kind, "roles": list(person.roles)}
    if action == "logout":
        gone = [0]

        def drop(tx: Any) -> None:
            gone[0] = users.drop_session(tx, accounts.token_digest(str(req.get("token", ""))))

        _append(ledger, person, "logout", person.login, {}, now, also=drop)
        return {"signed_out": bool(gone[0])}
    if action == "passwd" and req.get("login") in (None, person.login) and person.kind == "user":
        return _set_password(ledger, person, person.login, str(req["password"]), now, own=True)
    authorize(ledger, person, "users.manage", None, now, command=f"users {action}")
    if action == "list":
        with ledger.store.read() as conn:
            return {"users": [u.public() for u in users.all_users(conn)]}
    if action == "add":
        return _add(ledger, person, req, now)
    if action == "passwd":
        return _set_password(ledger, person, str(req["login"]), str(req["password"]), now, own=False)
    if action in ("lock", "unlock", "disable", "enable"):
        return _set_state(ledger, person, str(req["login"]), action, now)
    raise UsageError(f"unknown people action {action!r}", fix="a CLI bug")


def _login(ledger: Ledger, policy: accounts.LoginPolicy, req: dict[str, Any], now: datetime) -> dict[str, Any]:
    login = str(req.get("login", ""))
    person = authenticate(ledger, policy, login, str(req.get("password", "")), now)
    token = accounts.new_token()
    expires = now + policy.session
    via = str(req.get("via", "cli"))

    def keep(tx: Any) -> None:
        users.drop_expired(tx, now)
        users.add_session(tx, accounts.token_digest(token), login, via, _iso(now), _iso(expires))

    _append(ledger, person, "login", login, {"via": via}, now, also=keep)
    return {"token": token, "expires_at": _iso(expires), "person": stamp(person)}


def _check_scope(ledger: Ledger, scope: str) -> str:
    scope = scope.strip().upper() or ledger.code
    if not is_code(scope) or not within(scope, ledger.code):
        raise UsageError(f"scope {scope!r} is not {ledger.code} or a code below it",
                         fix=f"give --scope {ledger.code}, or a county/department code of its subtree")
    return scope


def _add(ledger: Ledger, actor: Person, req: dict[str, Any], now: datetime) -> dict[str, Any]:
    login = str(req.get("login", "")).strip()
    if not _LOGIN_RE.match(login):
        raise UsageError(f"login {login!r} is not valid",
                         fix="2..64 characters: lower-case letters, digits, '_', '.', '-', starting with a letter")
    name = str(req.get("name", "")).strip()
    if not name:
        raise UsageError("--name is empty", fix="give the person's name as people read it, e.g. --name 张三")
    try:
        roles = tuple(dict.fromkeys(parse_role(r) for r in req.get("roles") or ()))
    except ValueError as e:
        raise UsageError(str(e), fix="`fednode users roles` shows the roles") from None
    if not roles:
        raise UsageError("no role given", fix="give --role, e.g. --role 监察员 (`fednode users roles` lists them)")
    scope = _check_scope(ledger, str(req.get("scope") or ""))
    password = req.get("password")
    password_hash = ""
    if password:
        problem = accounts.password_problem(str(password))
        if problem:
            raise UsageError(f"the password is too weak: {problem}", fix="choose a longer, mixed password")
        password_hash = accounts.hash_password(str(password))
    phone, mail = str(req.get("phone") or "").strip(), str(req.get("mail") or "").strip()
    if phone and not _PHONE_RE.match(phone):
        raise UsageError(f"--mobile {phone!r} is not a phone number", fix="digits, e.g. --mobile 13800000000")
    if mail and not _MAIL_RE.match(mail):
        raise UsageError(f"--email {mail!r} is not a mail address", fix="e.g. --email zhangsan@example.gov.cn")
    with ledger.store.read() as conn:
        if users.get(conn, login) is not None:
            raise UsageError(f"user {login} already exists at {ledger.code}",
                             fix="choose another login; `fednode users list DIR` shows them")
    at = _iso(now)
    user = users.User(login=login, name=name, roles=roles, scope=scope, password_hash=password_hash,
                      phone=phone, mail=mail,
                      created_at=at, created_by=actor.login, changed_at=at, changed_by=actor.login)
    _append(ledger, actor, "users add", login, {"name": name, "roles": list(roles), "scope": scope}, now,
            role="sysadmin", also=lambda tx: users.put(tx, user, new=True))
    return user.public()


def _get(ledger: Ledger, login: str) -> users.User:
    with ledger.store.read() as conn:
        user = users.get(conn, login)
    if user is None:
        raise NotFound(f"no user {login!r} at {ledger.code}", fix="`fednode users list DIR` shows the users")
    return user


def _set_state(ledger: Ledger, actor: Person, login: str, verb: str, now: datetime) -> dict[str, Any]:
    user = _get(ledger, login)
    state = {"lock": "locked", "unlock": "active", "disable": "disabled", "enable": "active"}[verb]
    assert state in STATES
    after = user.changed(actor.login, _iso(now), state=state,
                         failures=() if state == "active" else user.failures)

    def write(tx: Any) -> None:
        users.put(tx, after, new=False)
        if state != "active":
            users.drop_sessions_of(tx, login)  # a locked or departed person is signed out everywhere

    _append(ledger, actor, f"users {verb}", login, {"state": state}, now, role="sysadmin", also=write)
    return after.public()


def _set_password(ledger: Ledger, actor: Person, login: str, password: str, now: datetime, *, own: bool) -> dict[str, Any]:
    problem = accounts.password_problem(password)
    if problem:
        raise UsageError(f"the password is too weak: {problem}", fix="choose a longer, mixed password")
    user = _get(ledger, login)
    after = user.changed(actor.login, _iso(now), password_hash=accounts.hash_password(password), failures=())

    def write(tx: Any) -> None:
        users.put(tx, after, new=False)
        users.drop_sessions_of(tx, login)

    _append(ledger, actor, "users passwd", login, {"own": own}, now, role="" if own else "sysadmin", also=write)
    return after.public()


# ---- through the running node, else on the store ------------------------------------------------------------


def policy_of(home: Home) -> accounts.LoginPolicy:
    return accounts.LoginPolicy.of_sections(home.config.sections)


def run_request(home: Home, req: dict[str, Any]) -> tuple[Any, str]:
    return via_node_or_store(home, {"op": "people", **req},
                             lambda: execute(home.ledger(), policy_of(home), req))


def authorize_target(home: Home, auth: dict[str, Any], permission: str, target: Target,
                     command: str = "") -> dict[str, Any]:
    """``authorize`` for a use case that runs in the CLI process (e.g. `alerts handle`): through the running
    node, else on the store. Returns ``by`` (stamp) of the person; raises Refused (recorded) when not."""
    result, _via = run_request(home, {"action": "authorize", "auth": auth, "permission": permission,
                                      "codes": list(target.codes), "owners": sorted(target.owners),
                                      "handler": target.handler, "what": target.what, "command": command})
    return dict(result["person"])


def person_of(by: dict[str, Any], roles: list[str], kind: str, node: str) -> Person:
    """The Person a `check_command` result names (for filtering reads in the CLI process with may())."""
    return Person(login=by["login"], name=by["name"], roles=tuple(roles), scope=by["scope"], node=node, kind=kind)


def check_command(home: Home, auth: dict[str, Any], command: str) -> dict[str, Any]:
    """Before a CLI command runs: the person, signed in, whose roles hold the command's permission
    (its targets are checked again by the use case). Returns ``{"person": by, "kind": ...}``."""
    permission = command_permission(command)
    result, _via = run_request(home, {"action": "authorize", "auth": auth, "permission": permission,
                                      "command": command})
    return dict(result)
