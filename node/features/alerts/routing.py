"""Who is told of an alert (预警通知): the directory of responsible people and the seed's ladder. Pure.

The directory (通讯录) is one CSV file an operator imports (`fednode directory import DIR FILE.csv`, UTF-8
or GBK), one row a person. Columns (Chinese or English headers, in any order):

==========================  =====================  ==========================================================
column                      also                   meaning
==========================  =====================  ==========================================================
姓名                         name                   the person (required)
登录名                       login                  their login at this node, when they are a user of it
部门                         dept                   their department (a code such as 320303-ZJ) or unit
电话                         phone                  mobile number (the SMS gateway's address)
邮箱                         mail                   mail address
承办人标识                   handler_ids            the handler IDs the local systems write for them
                                                   (``case.accept.handler``, ``case.step.handler``),
                                                   separated by ``;``, ``、`` or ``,`` — their name counts too
身份                         duties                 承办人, 分管领导, 监察联系人, 监察员 (several: ``;``)
分管部门                     leads                  the departments a 分管领导 leads (default: their own)
==========================  =====================  ==========================================================

The ladder (seed 预警纠错, ``recipients``):

- 预警 (level 1): the handler of the step (step alerts) or of the case — 临近时限提醒;
- 黄牌 (level 2): the handler again — 初次警告;
- 红牌 (level 3): the 分管领导 of the case's department and the node's supervisors — 再次警告，限期督办;
- 严重违规 (level 4) and operator alerts: the supervisors and the department's 监察联系人.

A handler the directory does not know is replaced by the department's 监察联系人 (and, when the
department has none, the supervisors); the caller raises one operator alert per unknown handler.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from node.core.codes import is_code, within
from node.core.errors import UsageError

DUTIES = {"handler": "承办人", "leader": "分管领导", "contact": "监察联系人", "supervisor": "监察员"}
_DUTY_BY_LABEL = {**{v: k for k, v in DUTIES.items()}, **{k: k for k in DUTIES}, "监察": "contact",
                  "监察联络人": "contact", "领导": "leader"}
COLUMNS = {"name": ("姓名", "name"), "login": ("登录名", "login"), "dept": ("部门", "dept"),
           "phone": ("电话", "手机", "phone"), "mail": ("邮箱", "mail", "email"),
           "handler_ids": ("承办人标识", "handler_ids", "handler_id"), "duties": ("身份", "duties", "duty"),
           "leads": ("分管部门", "leads")}
WHY = {1: "预警：临近办理时限，请及时办理", 2: "黄牌（初次警告）：已超过办理时限，请立即办理",
       3: "红牌（再次警告）：请上级领导限期督查督办", 4: "严重违规：请监察人员核查处理"}


@dataclass(frozen=True)
class Entry:
    name: str
    login: str = ""
    dept: str = ""
    phone: str = ""
    mail: str = ""
    handler_ids: tuple[str, ...] = ()
    duties: tuple[str, ...] = ()
    leads: tuple[str, ...] = ()
    source: str = "directory"  # directory | user (a person of the node, from `fednode users`)

    @property
    def key(self) -> str:
        return self.login or self.name

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duty_labels"] = [DUTIES.get(x, x) for x in self.duties]
        return d

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Entry:
        kw: dict[str, Any] = {k: tuple(d[k]) if k in ("handler_ids", "duties", "leads") else d[k]
                              for k in cls.__dataclass_fields__ if k in d}
        return cls(**kw)


def _split(text: str) -> tuple[str, ...]:
    for sep in ("、", "；", ",", "，"):
        text = text.replace(sep, ";")
    return tuple(dict.fromkeys(x.strip() for x in text.split(";") if x.strip()))


def decode(data: bytes) -> str:
    """UTF-8 (with or without its BOM), else GBK/GB18030 (what spreadsheets in China save)."""
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UsageError("the file is neither UTF-8 nor GBK text", fix="save it from the spreadsheet as CSV (UTF-8 or GBK)")


def parse_csv(data: bytes, source: str = "directory.csv") -> list[Entry]:
    """The entries of a directory CSV; UsageError naming the row and the column otherwise."""
    rows = list(csv.reader(io.StringIO(decode(data))))
    if not rows:
        raise UsageError(f"{source} is empty", fix="one header row, then one row a person")
    header = [h.strip().lower() for h in rows[0]]
    where: dict[str, int] = {}
    for field_, names in COLUMNS.items():
        for i, h in enumerate(header):
            if h in names:
                where[field_] = i
    if "name" not in where:
        raise UsageError(f"{source}: no 姓名 (name) column in the header {rows[0]}",
                         fix="columns: 姓名,登录名,部门,电话,邮箱,承办人标识,身份,分管部门")
    out: list[Entry] = []
    seen: set[str] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue

        def cell(f: str, row: list[str] = row) -> str:
            i = where.get(f)
            return row[i].strip() if i is not None and i < len(row) else ""

        name = cell("name")
        if not name:
            raise UsageError(f"{source} row {n}: 姓名 is empty", fix="every row names a person")
        duties = []
        for d in _split(cell("duties")):
            if d not in _DUTY_BY_LABEL:
                raise UsageError(f"{source} row {n}: 身份 {d!r} is not one of {'、'.join(DUTIES.values())}",
                                 fix="身份: 承办人, 分管领导, 监察联系人 or 监察员 (several: ;)")
            duties.append(_DUTY_BY_LABEL[d])
        dept = cell("dept").upper() if is_code(cell("dept").upper()) else cell("dept")
        e = Entry(name=name, login=cell("login"), dept=dept, phone=cell("phone"), mail=cell("mail"),
                  handler_ids=_split(cell("handler_ids")), duties=tuple(dict.fromkeys(duties)),
                  leads=tuple(x.upper() if is_code(x.upper()) else x for x in _split(cell("leads"))))
        if e.key in seen:
            raise UsageError(f"{source} row {n}: {e.key} appears twice", fix="one row a person")
        seen.add(e.key)
        out.append(e)
    return out


@dataclass
class Directory:
    entries: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def handler(self, handler_id: str) -> Entry | None:
        """The person the local systems call ``handler_id`` (a handler ID of theirs, their login or name)."""
        if not handler_id:
            return None
        for e in self.entries:
            if handler_id in e.handler_ids:
                return e
        return next((e for e in self.entries if handler_id in (e.login, e.name)), None)

    def leaders(self, dept: str) -> list[Entry]:
        return [e for e in self.entries if "leader" in e.duties and _in(dept, e.leads or (e.dept,))]

    def contacts(self, dept: str) -> list[Entry]:
        return [e for e in self.entries if "contact" in e.duties and _in(dept, (e.dept,))]

    def supervisors(self) -> list[Entry]:
        return [e for e in self.entries if "supervisor" in e.duties]


def _in(dept: str, units: Iterable[str]) -> bool:
    return any(u and (dept == u or (is_code(dept) and is_code(u) and within(dept, u))) for u in units)


def recipients(alert: Mapping[str, Any], handler: str, directory: Directory,
               supervisors: Iterable[Entry] = ()) -> tuple[list[tuple[Entry, str]], bool]:
    """(who is told and why, whether ``handler`` is missing from the directory) for ``alert`` (the ladder)."""
    level = int(alert.get("level", 4) or 4)
    dept = str(alert.get("dept") or alert.get("division") or "")
    sups = _dedup([*supervisors, *directory.supervisors()])
    why = WHY.get(level, WHY[4])
    out: list[Entry] = []
    missing = False
    if level <= 2 and alert.get("object") != "supervisor":
        person = directory.handler(handler)
        if person is not None:
            out = [person]
        else:
            missing = bool(handler)
            out = directory.contacts(dept) or sups
            why += f"（承办人 {handler or '未知'} 不在通讯录中，转告部门监察联系人）"
    elif level == 3 and alert.get("object") != "supervisor":
        owner = directory.handler(handler)
        missing = bool(handler) and owner is None
        out = [*(directory.leaders(owner.dept if owner and owner.dept else dept) or directory.contacts(dept)), *sups]
    else:
        out = [*sups, *directory.contacts(dept)]
    return [(e, why) for e in _dedup(out)], missing


def _dedup(entries: Iterable[Entry]) -> list[Entry]:
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.key not in seen:
            seen.add(e.key)
            out.append(e)
    return out
