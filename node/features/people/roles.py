"""Who may do what, on whose cases: the roles, the permission table and ``may()``, the one decision.

Every caller asks ``may(person, action, target)``: the CLI before a command runs, the use cases of
node/app before they write, the desk before it shows a button. There is no second copy of these rules.

Reading the table
-----------------
One row per action, one column per role. ``S``: allowed on targets inside the person's scope (their
jurisdiction code and everything below it, node/core/codes.py ``within``). ``O``: allowed only on what
is the person's own (a ticket assigned to them, an alert or a case they handle). ``-``: never.

Two rules hold whatever the table says:
- only an ``active`` person may do anything (locked and disabled people are refused);
- nobody disposes of, answers or judges their own case: an action on a target whose ``handler`` is
  the person is refused unless the table grants it as ``O`` (a 承办人 may answer and object to what is
  his own, never dispose of its alert).

``target=None`` asks "may this role do this at all?" (the CLI's check before it knows the target).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.core.codes import within

# ---- roles ----------------------------------------------------------------------------------------------

ROLES: dict[str, str] = {
    "sysadmin": "系统管理员",
    "supervisor": "监察员",
    "leader": "监察领导",
    "dept_supervisor": "部门监察",
    "handler": "承办人",
    "auditor": "只读",
}
ROLE_BY_LABEL = {label: role for role, label in ROLES.items()}

# ---- the table ------------------------------------------------------------------------------------------

_COLUMNS = ("sysadmin", "supervisor", "leader", "dept_supervisor", "handler", "auditor")
_TABLE = """
action                   sysadmin supervisor leader dept_supervisor handler auditor  label
node.operate             S        -          -      -               -       -        运行维护（节点、证书、适配器、日历、隔离区）
users.manage             S        -          -      -               -       -        用户管理
node.read                S        S          S      -               -       S        查看联网状态与运行情况
worklog.read             S        S          S      -               -       S        查看监察日志
tickets.read             -        S          S      S               O       S        查看督办单
tickets.issue            -        S          S      -               -       -        签发督办单
tickets.sign             -        S          S      S               -       -        签收督办单
tickets.assign           -        S          S      S               -       -        认定责任（分派、认定结果）
tickets.reply            -        S          S      S               O       -        答复督办单
tickets.extend_request   -        S          S      S               O       -        申请延期
tickets.judge            -        S          S      -               -       -        审核答复（办结、退回、批准延期）
tickets.override         -        -          S      -               -       -        督办升级与改判
complaints.read          -        S          S      S               -       S        查看投诉
complaints.register      -        S          S      -               -       -        登记投诉
alerts.read              -        S          S      S               O       S        查看预警
alerts.handle            -        S          S      S               -       -        处置预警
alerts.object            -        -          -      -               O       -        对预警提出异议
cases.read               -        S          S      S               O       S        查看办件全过程
stats.read               -        S          S      S               -       S        查看统计与绩效
stats.signoff            -        -          S      -               -       -        绩效评估签批
"""


def _parse(text: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    grants: dict[str, dict[str, str]] = {}
    labels: dict[str, str] = {}
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert tuple(lines[0].split()[1:7]) == _COLUMNS, "the table's columns are the roles, in order"
    for line in lines[1:]:
        action, *marks = line.split(None, 7)
        assert all(m in ("S", "O", "-") for m in marks[:6]), f"bad mark in the row of {action}"
        grants[action] = {role: mark for role, mark in zip(_COLUMNS, marks[:6], strict=True) if mark != "-"}
        labels[action] = marks[6].strip()
    return grants, labels


GRANTS, ACTION_LABELS = _parse(_TABLE)
ACTIONS = tuple(GRANTS)

# ---- what may() looks at ----------------------------------------------------------------------------------

STATES = ("active", "locked", "disabled")
STATE_LABELS = {"active": "正常", "locked": "已锁定", "disabled": "已停用"}


@dataclass(frozen=True, slots=True)
class Person:
    """Someone acting at a node: a user of its store, or the OS operator (``kind = "os"``)."""

    login: str
    name: str
    roles: tuple[str, ...]
    scope: str  # jurisdiction code
    state: str = "active"
    node: str = ""
    kind: str = "user"  # user | os

    def label(self, role: str | None = None) -> str:
        """``张三 (监察员, 320303)``: how records and pages name the person."""
        role = role or (self.roles[0] if self.roles else "")
        return f"{self.name} ({ROLES.get(role, role)}, {self.scope})"


@dataclass(frozen=True, slots=True)
class Target:
    """What an action is about. ``codes``: the jurisdictions it concerns (a ticket: its issuer and its
    target; any one inside the person's scope is enough). ``owners``: logins or names whose own it is
    (a ticket's responsible persons). ``handler``: the person whose case it is (never judged by them)."""

    codes: tuple[str, ...] = ()
    owners: frozenset[str] = field(default_factory=frozenset)
    handler: str = ""
    what: str = ""  # for messages: "督办单 320300-000001"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    action: str
    role: str = ""  # the role that allowed it
    reason: str = ""  # why not, in Chinese, naming the role, the permission and who has it

    def __bool__(self) -> bool:
        return self.allowed


def who_may(action: str) -> list[str]:
    """The labels of the roles that hold ``action`` (for refusal messages and `users roles`)."""
    return [ROLES[r] for r in _COLUMNS if r in GRANTS.get(action, {})]


def may(person: Person, action: str, target: Target | None = None) -> Decision:
    """May ``person`` do ``action`` on ``target``? Pure: the table and the rules above, nothing else."""
    if action not in GRANTS:
        raise KeyError(f"unknown action {action!r}: add it to the table in node/features/people/roles.py")
    label = ACTION_LABELS[action]
    if person.state != "active":
        return Decision(False, action, reason=f"{person.name} 的账号{STATE_LABELS.get(person.state, person.state)}，"
                                              "不能进行任何操作；请系统管理员处理")
    held = [r for r in person.roles if r in GRANTS[action]]
    if not held:
        roles = "、".join(ROLES.get(r, r) for r in person.roles) or "无角色"
        return Decision(False, action, reason=f"{person.name}（{roles}）无权{label}（{action}）；"
                                              f"有此权限的角色：{'、'.join(who_may(action)) or '无'}")
    if target is None:
        return Decision(True, action, role=held[0])
    own = person.login in target.owners or person.name in target.owners
    mine = bool(target.handler) and target.handler in (person.login, person.name)
    what = target.what or "该对象"
    for role in held:
        mark = GRANTS[action][role]
        if mark == "O":
            if own or mine:
                return Decision(True, action, role=role)
            continue
        if mine:
            return Decision(False, action, reason=f"{person.name} 是{what}的承办人，不能{label}自己的案件")
        if any(within(code, person.scope) for code in target.codes):
            return Decision(True, action, role=role)
    if held and all(GRANTS[action][r] == "O" for r in held):
        return Decision(False, action, reason=f"{what}不是分派给 {person.name} 的，不能{label}")
    return Decision(False, action, reason=f"{what}（{'、'.join(target.codes) or '无辖区'}）不在 {person.name} "
                                          f"的辖区 {person.scope} 内，不能{label}")


def parse_role(text: str) -> str:
    """A role id from its id or its Chinese label; ValueError naming the roles otherwise."""
    text = text.strip()
    if text in ROLES:
        return text
    if text in ROLE_BY_LABEL:
        return ROLE_BY_LABEL[text]
    raise ValueError(f"unknown role {text!r}; roles: " + ", ".join(f"{r} ({label})" for r, label in ROLES.items()))


def table_rows() -> list[dict[str, object]]:
    """The table as data (for `users roles --json` and the desk)."""
    return [{"action": a, "label": ACTION_LABELS[a],
             "roles": {r: GRANTS[a].get(r, "-") for r in _COLUMNS}} for a in ACTIONS]
