"""Record schemas and validation for every payload kind in docs/records.md.

Rules of this module:
- one table per kind, ``field → (check, required, default)``, in ``SCHEMAS``; the tables *are* the
  schema, so a reader checks them against docs/records.md line by line;
- ``validate`` is the only gate between local data and the signed log. Whatever it is given it
  either returns a normalised payload or raises ``ValidationError`` naming the field, the value and
  the rule; nothing else escapes, because one bad row must go to quarantine, not stop an adapter;
- normalisation is deterministic (trimmed text, ``+08:00`` times, integral numbers as ints, absent
  optional fields left out or set to their stated default) so the same source row always gives the
  same payload bytes, whatever driver or file format delivered it;
- content anomalies the rules engine must see (refusal without reason, penalty outside its band,
  contract before award, spending above the estimate, …) are *valid* records; only data that cannot
  be true or cannot be read is rejected.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from node.core.errors import FednodeError

# China has observed no daylight saving time since 1991, so Asia/Shanghai is a fixed +08:00 for
# every date we accept; a fixed offset also keeps the output text identical on every host.
CST: Final = timezone(timedelta(hours=8))

MAX_TEXT: Final = 4000  # free text: opinions, reasons, complaint content
MAX_NAME: Final = 200  # names of people, units, items, documents
MAX_ID: Final = 64  # case numbers, item codes, handler ids
MAX_LIST: Final = 200  # materials, evidence, suppliers, steps …
MAX_AMOUNT: Final = 1e13  # yuan; ten trillion is beyond any single case or project
MAX_DAYS: Final = 3650
MIN_YEAR, MAX_YEAR = 1990, 2100  # outside this a date is a placeholder (1900-01-01) or a typo

_MISSING: Final[Any] = object()


class ValidationError(FednodeError):
    """A payload does not satisfy its kind's schema. Names the field, the value and the rule."""

    code = "invalid_record"

    def __init__(self, kind: str, field: str, value: Any, rule: str, *, fix: str = "") -> None:
        self.kind = kind
        self.field = field
        self.value = _show(value)
        self.rule = rule
        super().__init__(f"{kind or 'record'}: field {field!r} = {self.value}: {rule}", fix=fix)

    def as_dict(self) -> dict[str, str]:
        d = super().as_dict()
        d.update({"kind": self.kind, "field": self.field, "value": self.value, "rule": self.rule})
        return d


class _Fail(Exception):
    """Raised by checks, which do not know the kind; ``validate`` turns it into ValidationError."""

    def __init__(self, path: str, value: Any, rule: str, fix: str = "") -> None:
        super().__init__(rule)
        self.path, self.value, self.rule, self.fix = path, value, rule, fix


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3  # bounded depth: a deeply nested value must not blow the stack while reporting


def _show(value: Any) -> str:
    """A short, safe rendering of an offending value (at most 80 characters)."""
    if value is _MISSING:
        return "(missing)"
    try:
        if isinstance(value, str | bytes):
            text = repr(value[:81])
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            text = f"<int of {value.bit_length()} bits>"  # str() of a huge int raises ValueError
        else:
            text = _repr.repr(value)
    except Exception:  # a value whose repr fails must still be reportable
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _typename(v: Any) -> str:
    return {dict: "an object", list: "a list", tuple: "a list", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


# ---- codes (DOMAIN.md, GB/T 39046-2020) --------------------------------------------------------------

ITEM_TYPES: Final = {
    "01": "许可", "02": "处罚", "03": "强制", "04": "征收", "05": "给付", "06": "检查",
    "07": "确认", "08": "奖励", "09": "裁决", "10": "其他", "20": "公共服务",
}  # fmt: skip
CASE_KINDS: Final = {"1": "即办件", "2": "承诺件"}
UNITS: Final = {"workday": "工作日", "day": "自然日"}
CHANNEL_CODES: Final = {"1": "窗口", "2": "网上", "3": "移动端", "4": "快递", "9": "其他"}
STEP_ACTIONS: Final = {"pass": "通过", "return": "退回", "other": "其他"}
SUSPEND_KINDS: Final = {"1": "延长审批", "2": "其他特别程序"}
RESULT_CODES: Final = {
    "0": "出证办结", "1": "退回", "2": "作废", "3": "删除", "5": "补正不来办结", "6": "准予许可", "7": "不予许可",
}  # fmt: skip
SATISFACTION: Final = {"1": "非常满意", "2": "满意", "3": "基本满意", "4": "不满意", "5": "非常不满意"}
ALERT_CATEGORIES: Final = {"01": "时效", "02": "流程", "03": "内容", "04": "收费", "05": "廉政风险点"}
ALERT_LEVELS: Final = {1: "预警", 2: "黄牌", 3: "红牌", 4: "严重违规"}
ALERT_OBJECTS: Final = {
    "case": "办件", "step": "环节", "special": "特别程序", "complaint": "投诉",
    "supervisor": "监察人员", "market": "重点市场", "project": "重大项目",
}  # fmt: skip
ALERT_SOURCES: Final = {"engine": "规则引擎", "local": "本地系统"}
MARKETS: Final = {
    "drug": "药品采购", "gov_procurement": "政府采购", "land": "土地市场",
    "construction": "建筑市场", "equipment": "机电设备市场",
}  # fmt: skip
PROJECT_STAGES: Final = {
    "basic": "基本信息", "design": "设计", "tender": "招投标", "progress": "进度",
    "funds": "资金", "quality": "质量",
}  # fmt: skip

# Exchange systems of the 2009-2012 era write some codes as their Chinese labels.
_ACTION_ALIASES: Final = {
    "通过": "pass",
    "同意": "pass",
    "退回": "return",
    "不同意": "return",
    "其他": "other",
}
_UNIT_ALIASES: Final = {"工作日": "workday", "自然日": "day", "日": "day"}


# ---- checks: (value, path) -> normalised value, or raise _Fail -------------------------------------

Check = Callable[[Any, str], Any]

# C0 controls (except tab/newline/CR), lone surrogates (a decode with surrogateescape: wrong
# encoding) and U+FFFD (a lossy decode: wrong encoding) cannot be stored or are already corrupted.
_BAD_MULTI = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffd]")
_BAD_SINGLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffd]")
_FIX_ENCODING = "decode the source with its real encoding (GB18030 for most local Chinese systems)"


def _as_str(v: Any, path: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(path, v, "bytes that are not valid UTF-8", _FIX_ENCODING) from None
    raise _Fail(path, v, f"must be text, not {_typename(v)}", "send this field as a JSON string")


# text checks by function → (max_len, bad-character pattern), so _apply can accept the usual value, a
# clean str within the limit, without calling the check (see _apply)
_TEXT_LIMITS: dict[Check, tuple[int, re.Pattern[str]]] = {}


def _text(max_len: int, *, single_line: bool = True) -> Check:
    bad = _BAD_SINGLE if single_line else _BAD_MULTI

    def check(v: Any, path: str) -> str:
        # str is what every source delivers: skip the call that converts bytes
        s = v.strip() if type(v) is str else _as_str(v, path).strip()
        if not s:
            raise _Fail(path, v, "must not be empty", "give a value, or leave an optional field out")
        if len(s) > max_len:
            raise _Fail(
                path,
                v,
                f"is {len(s)} characters, longer than the limit of {max_len}",
                "shorten it; attach long documents by reference, not inline",
            )
        m = bad.search(s)
        if m:
            ch = m.group()
            if "\ud800" <= ch <= "\udfff" or ch == "\ufffd":
                raise _Fail(
                    path,
                    v,
                    f"contains U+{ord(ch):04X}: the text was decoded with the wrong encoding",
                    _FIX_ENCODING,
                )
            what = "a line break" if ch in "\n\r\t" else f"control character U+{ord(ch):04X}"
            raise _Fail(path, v, f"contains {what}", "remove it (names and codes are single-line text)")
        return s

    _TEXT_LIMITS[check] = (max_len, bad)
    return check


_DIVISION_RE = re.compile(r"\d{6}", re.ASCII)


def _division(v: Any, path: str) -> str:
    if type(v) is str and _DIVISION_RE.fullmatch(s := v.strip()):  # six ASCII digits pass ID too
        return s
    s = ID(v, path)
    if not _DIVISION_RE.fullmatch(s):
        raise _Fail(path, v, "must be a 6-digit division code (行政区划代码)", "use e.g. 320303 for 云龙区")
    return s


_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?", re.ASCII)
_INT_RE = re.compile(r"[+-]?\d{1,18}", re.ASCII)


def _to_number(v: Any, path: str) -> int | float | Decimal:
    if isinstance(v, bool):
        raise _Fail(path, v, "must be a number, not a boolean", "send a JSON number")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _Fail(path, v, "must be a finite number", "send a real amount, or leave the field out")
        return v
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise _Fail(path, v, "must be a finite number", "send a real amount, or leave the field out")
        return v
    if isinstance(v, str | bytes | bytearray):
        s = _as_str(v, path).strip()
        if len(s) > 64:
            raise _Fail(
                path, v, "must be a number", "send digits with an optional decimal point, e.g. 5000 or 12.5"
            )
        # CSV files and old exchange tables carry numbers as text; accept plain decimal notation only
        if _NUM_RE.fullmatch(s):
            try:
                return Decimal(s)
            except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
                pass
        raise _Fail(
            path, v, "must be a number", "send digits with an optional decimal point, e.g. 5000 or 12.5"
        )
    raise _Fail(path, v, f"must be a number, not {_typename(v)}", "send a JSON number")


def _plain(n: int | float | Decimal) -> int | float:
    """Integral values become ints so 5000, 5000.0 and Decimal('5000.00') give the same bytes."""
    if isinstance(n, int):
        return n
    integral = n == n.to_integral_value() if isinstance(n, Decimal) else n.is_integer()
    return int(n) if integral else float(n)


def _number(lo: float, hi: float, *, above_lo: bool = False) -> Check:
    def check(v: Any, path: str) -> int | float:
        n = _to_number(v, path)
        if n < lo or n > hi or (above_lo and n == lo):
            low = f"greater than {lo:g}" if above_lo else f"at least {lo:g}"
            raise _Fail(path, v, f"must be {low} and at most {hi:g}", "check the unit and the value")
        return _plain(n)

    return check


def _integer(lo: int, hi: int) -> Check:
    def check(v: Any, path: str) -> int:
        if type(v) is int and lo <= v <= hi:  # the usual values first: a plain int, or digits as text
            return v
        if type(v) is str and (s := v.strip()).isdigit() and s.isascii() and len(s) <= 18 and lo <= int(s) <= hi:
            return int(s)
        if isinstance(v, str | bytes | bytearray):
            s = _as_str(v, path).strip()
            if not _INT_RE.fullmatch(s):
                raise _Fail(path, v, "must be a whole number", "send digits only, e.g. 3")
            n: int | float | Decimal = int(s)
        else:
            n = _to_number(v, path)
        if not lo <= n <= hi:
            raise _Fail(path, v, f"must be between {lo} and {hi}", "check the numbering")
        whole = _plain(n)
        if isinstance(whole, float):
            raise _Fail(path, v, "must be a whole number", "send an integer, e.g. 3")
        return whole

    return check


_TRUE = frozenset({"true", "t", "yes", "y", "1", "是"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "否"})


def _boolean(v: Any, path: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Fail(path, v, "must be true or false", "send a JSON boolean (1/0 and 是/否 are accepted too)")


def _listing(codes: Mapping[Any, str]) -> str:
    return ", ".join(f"{c} {label}" for c, label in codes.items())


def _code(codes: Mapping[str, str], aliases: Mapping[str, str] | None = None) -> Check:
    widths = {len(c) for c in codes}
    width = widths.pop() if len(widths) == 1 else 0

    def check(v: Any, path: str) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**6:
            s = str(v)  # integer columns drop leading zeros: 1 means "01"
        elif isinstance(v, str):
            s = v.strip()
        else:
            raise _Fail(
                path, v, f"must be a code (text), not {_typename(v)}", f"use one of: {_listing(codes)}"
            )
        if s in codes:
            return s
        if aliases and s in aliases:
            return aliases[s]
        if width and s.isascii() and s.isdigit() and len(s) < width and s.zfill(width) in codes:
            return s.zfill(width)
        raise _Fail(path, v, "unknown code", f"use one of: {_listing(codes)}")

    return check


def _int_code(codes: Mapping[int, str]) -> Check:
    def check(v: Any, path: str) -> int:
        n: Any = v
        if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() and len(v.strip()) < 4:
            n = int(v.strip())
        if isinstance(n, bool) or not isinstance(n, int) or n not in codes:
            raise _Fail(path, v, "unknown code", f"use one of: {_listing(codes)}")
        return n

    return check


_DT_RE = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)
_COMPACT_RE = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2}))?", re.ASCII)
_FIX_TIME = (
    "use ISO-8601 (2025-10-09T09:30:00+08:00), 'YYYY-MM-DD hh:mm:ss' or YYYYMMDDhhmmss; "
    "times without an offset are read as Asia/Shanghai"
)


def _check_year(year: int, v: Any, path: str, max_year: int = MAX_YEAR) -> None:
    if not MIN_YEAR <= year <= max_year:
        raise _Fail(path, v, f"year {year} is outside {MIN_YEAR}-{max_year}",
                    "a placeholder date (e.g. 1900-01-01) means 'unknown': leave the field out")  # fmt: skip


def _parse_moment(v: Any, path: str, *, need_time: bool, max_year: int = MAX_YEAR) -> datetime:
    if isinstance(v, date):
        _check_year(v.year, v, path, max_year)  # before any conversion: year 1 or 9999 would overflow it
    if isinstance(v, datetime):
        try:
            dt = v.replace(tzinfo=CST) if v.tzinfo is None else v.astimezone(CST)
        except (ValueError, OverflowError):
            raise _Fail(path, v, "is not a representable date and time", _FIX_TIME) from None
    elif isinstance(v, date):
        if need_time:
            raise _Fail(path, v, "is a date without a time of day", _FIX_TIME)
        dt = datetime(v.year, v.month, v.day, tzinfo=CST)
    elif isinstance(v, str | bytes | bytearray):
        s = _as_str(v, path).strip()
        if len(s) > 64:
            raise _Fail(path, v, "is not a date and time", _FIX_TIME)
        m = _COMPACT_RE.fullmatch(s)
        offset = None
        if m:
            parts = m.groups()
        else:
            m = _DT_RE.fullmatch(s)
            if not m:
                raise _Fail(path, v, "is not a date and time", _FIX_TIME)
            parts, offset = m.groups()[:7], m.group(8)
        if need_time and parts[3] is None:
            raise _Fail(path, v, "is a date without a time of day", _FIX_TIME)
        try:
            y, mo, d, h, mi, sec = (int(p) if p else 0 for p in parts[:6])
            _check_year(y, v, path, max_year)
            micro = int(parts[6].ljust(6, "0")) if len(parts) > 6 and parts[6] else 0
            if offset is None:
                tz = CST
            elif offset == "Z":
                tz = UTC
            else:
                sign = -1 if offset[0] == "-" else 1
                hh, mm = int(offset[1:3]), int(offset[-2:])
                tz = timezone(sign * timedelta(hours=hh, minutes=mm))
            dt = datetime(y, mo, d, h, mi, sec, micro, tzinfo=tz).astimezone(CST)
        except (ValueError, OverflowError):
            raise _Fail(path, v, "is not a real date and time", _FIX_TIME) from None
    else:
        raise _Fail(path, v, f"must be a date and time, not {_typename(v)}", _FIX_TIME)
    _check_year(dt.year, v, path, max_year)
    return dt


_CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+08:00", re.ASCII)


_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}", re.ASCII)


def _local_time(iso: str) -> str | None:
    """``YYYY-MM-DDThh:mm:ss`` (ASCII digits, no offset: read as +08:00) → its canonical text, or None
    when the general parser must decide (and word the reason). Same checks as ``_parse_moment``: a real
    calendar date and time of day (hour 24 refused explicitly, whatever fromisoformat allows), year in
    range."""
    if iso[11:13] >= "24":
        return None
    try:
        year = datetime.fromisoformat(iso).year
    except ValueError:
        return None
    return iso + "+08:00" if MIN_YEAR <= year <= MAX_YEAR else None


def _time(v: Any, path: str) -> str:
    # Fast paths for the three forms sources really send (validation is on the ingest path, and the
    # general parser costs ~10 us a value); each gives exactly what the general parser would give,
    # and anything they do not accept goes to the general parser, which words the reason.
    if type(v) is str:
        s = v.strip()
        n = len(s)
        if n == 14:
            if s.isdigit() and s.isascii():  # YYYYMMDDhhmmss (exchange tables)
                out = _local_time(f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:{s[12:14]}")
                if out is not None:
                    return out
        elif n == 19:
            if _LOCAL_TIME.fullmatch(s):  # YYYY-MM-DD hh:mm:ss (GB/T 39046 text columns, CSV)
                out = _local_time(f"{s[0:10]}T{s[11:19]}")
                if out is not None:
                    return out
        elif n == 25 and _CANONICAL_TIME.fullmatch(s):  # already canonical (our own records, most APIs)
            try:
                if MIN_YEAR <= datetime.fromisoformat(s).year <= MAX_YEAR:
                    return s
            except ValueError:
                pass
    elif type(v) is datetime and v.tzinfo is None and MIN_YEAR <= v.year <= MAX_YEAR:  # SQL TIMESTAMP columns
        return v.replace(tzinfo=CST).isoformat()
    return _parse_moment(v, path, need_time=True).isoformat()


def _date(v: Any, path: str) -> str:
    # validity dates: 9999-12-31 is how many systems write 长期有效 (no expiry)
    return _parse_moment(v, path, need_time=False, max_year=9999).date().isoformat()


def _str_list(item: Check, max_items: int = MAX_LIST) -> Check:
    def check(v: Any, path: str) -> list[Any]:
        if not isinstance(v, list | tuple):
            raise _Fail(path, v, f"must be a list, not {_typename(v)}", "send a JSON array of strings")
        if len(v) > max_items:
            raise _Fail(
                path,
                v,
                f"has {len(v)} entries, more than the limit of {max_items}",
                "split the record or send fewer entries",
            )
        return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]

    return check


def _obj_list(schema: Mapping[str, Spec], max_items: int = MAX_LIST, *, non_empty: bool = False) -> Check:
    def check(v: Any, path: str) -> list[dict[str, Any]]:
        if not isinstance(v, list | tuple):
            raise _Fail(path, v, f"must be a list, not {_typename(v)}", "send a JSON array of objects")
        if len(v) > max_items:
            raise _Fail(
                path,
                v,
                f"has {len(v)} entries, more than the limit of {max_items}",
                "split the record or send fewer entries",
            )
        if non_empty and not v:
            raise _Fail(path, v, "must not be empty", "list at least one entry")
        return [_apply(schema, x, f"{path}[{i}].") for i, x in enumerate(v)]

    return check


ID = _text(MAX_ID)
NAME = _text(MAX_NAME)
TEXT = _text(MAX_TEXT, single_line=False)
DAYS = _number(0, MAX_DAYS)
AMOUNT = _number(0, MAX_AMOUNT)
SEQ_NO = _integer(1, 10_000)  # step_no, suspend_no, notice_no count from 1


# ---- schema tables ----------------------------------------------------------------------------------

Spec = tuple[Check, bool, Any]  # (check, required, default — _MISSING: left out when absent)


def req(check: Check) -> Spec:
    return (check, True, _MISSING)


def opt(check: Check, default: Any = _MISSING) -> Spec:
    return (check, False, default)


_STEP_DEF: Final = {
    "step_code": req(ID),
    "name": req(NAME),
    "limit_days": req(DAYS),
    "posts": req(_str_list(NAME)),
}
_DISCRETION: Final = {"circumstance": req(NAME), "min_amount": req(AMOUNT), "max_amount": req(AMOUNT)}
_RISK_POINT: Final = {"step_code": req(ID), "evidence": req(NAME)}

_CASE: Final = {
    "case_no": req(ID),
    "item_code": req(ID),
    "division": req(_division),
    "dept": req(ID),
    "time": req(_time),
}

SCHEMAS: Final[dict[str, dict[str, Spec]]] = {
    "item": {
        "item_code": req(ID),
        "name": req(NAME),
        "item_type": req(_code(ITEM_TYPES)),
        "dept": req(ID),
        "dept_name": opt(NAME),
        "division": req(_division),
        "case_kind": req(_code(CASE_KINDS)),
        "statutory_days": req(DAYS),
        "promised_days": req(DAYS),
        "unit": opt(_code(UNITS, _UNIT_ALIASES), "workday"),
        "steps": req(_obj_list(_STEP_DEF, non_empty=True)),
        "discretion": opt(_obj_list(_DISCRETION), ()),
        "risk_points": opt(_obj_list(_RISK_POINT), ()),
        "major_threshold": opt(AMOUNT, None),
    },
    "case.apply": {
        **_CASE,
        "applicant_type": req(NAME),
        "applicant_name": req(NAME),
        "applicant_id": req(ID),
        "materials": opt(_str_list(NAME), ()),
        "channel_code": req(_code(CHANNEL_CODES)),
        "assigned": opt(_boolean, False),
        "amount": opt(AMOUNT),
    },
    "case.accept": {
        **_CASE,
        "handler": req(NAME),
        "accepted": req(_boolean),
        "refuse_reason": opt(TEXT),
        "promised_at": opt(_time),
        "case_kind": opt(_code(CASE_KINDS)),
    },
    "case.step": {
        **_CASE,
        "step_no": req(SEQ_NO),
        "step_code": req(ID),
        "step_name": req(NAME),
        "handler": req(NAME),
        "post": req(NAME),
        "opinion": opt(TEXT),
        "action": req(_code(STEP_ACTIONS, _ACTION_ALIASES)),
        "started_at": req(_time),
        "ended_at": opt(_time),
        "amount": opt(AMOUNT),
        "circumstance": opt(NAME),
        "evidence": opt(_str_list(NAME), ()),
    },
    "case.suspend": {
        **_CASE,
        "suspend_no": req(SEQ_NO),
        "suspend_kind": req(_code(SUSPEND_KINDS)),
        "reason": req(TEXT),
        "approver": req(NAME),
        "started_at": req(_time),
        "approved_days": req(_number(0, MAX_DAYS, above_lo=True)),
    },
    "case.resume": {**_CASE, "suspend_no": req(SEQ_NO), "ended_at": req(_time)},
    "case.correction_notice": {
        **_CASE,
        "notice_no": req(SEQ_NO),
        "materials": req(_str_list(NAME)),
        "issuer": req(NAME),
    },
    "case.correction_accepted": {**_CASE, "notice_no": req(SEQ_NO)},
    "case.complete": {
        **_CASE,
        "result_code": req(_code(RESULT_CODES)),
        "cert_name": opt(NAME),
        "cert_no": opt(ID),
        "cert_valid_until": opt(_date),
        "fee": opt(AMOUNT),
    },
    "case.collect": {**_CASE, "collector": req(NAME), "method": opt(NAME)},
    "case.evaluate": {**_CASE, "satisfaction": req(_code(SATISFACTION))},
    "alert": {
        "alert_id": req(_text(MAX_NAME)),
        "rule_id": req(ID),
        "category": req(_code(ALERT_CATEGORIES)),
        "level": req(_int_code(ALERT_LEVELS)),
        "object": req(_code(ALERT_OBJECTS)),
        "case_no": opt(ID),
        "step_no": opt(SEQ_NO),
        "division": req(_division),
        "dept": opt(ID),
        "item_code": opt(ID),
        "message": req(TEXT),
        "at": req(_time),
        "source": req(_code(ALERT_SOURCES)),
    },
    "complaint.register": {
        "complaint_no": req(ID),
        "complainant": req(NAME),
        "respondent_unit": req(NAME),
        "respondent_person": opt(NAME),
        "content": req(TEXT),
        "source": req(NAME),
        "registered_at": req(_time),
        "due_at": req(_time),
        "division": req(_division),
    },
    "market.transaction": {
        "market": req(_code(MARKETS)),
        "txn_no": req(ID),
        "project": req(NAME),
        "buyer": req(NAME),
        "suppliers": opt(_str_list(NAME), ()),
        "bidders": opt(_integer(0, 10_000)),
        "amount": opt(AMOUNT),
        "budget": opt(AMOUNT),
        "procedure": opt(NAME),
        "award_at": opt(_time),
        "contract_at": opt(_time),
        "documents": opt(_str_list(NAME), ()),
        "division": req(_division),
    },
    "project.record": {
        "project_no": req(ID),
        "name": req(NAME),
        "source": opt(NAME),
        "category": opt(NAME),
        "stage": req(_code(PROJECT_STAGES)),
        "estimate": opt(AMOUNT),
        "spent": opt(AMOUNT),
        "progress_pct": opt(_number(0, 100)),
        "detail": opt(TEXT),
        "at": req(_time),
        "division": req(_division),
    },
}

KINDS: Final[tuple[str, ...]] = tuple(SCHEMAS)

# Natural keys: the fields that identify one source row. Case events follow docs/records.md; item
# adds the division because district catalogues commonly reuse the same local item codes.
NATURAL_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "item": ("division", "item_code"),
    "case.apply": ("case_no",),
    "case.accept": ("case_no",),
    "case.step": ("case_no", "step_no"),
    "case.suspend": ("case_no", "suspend_no"),
    "case.resume": ("case_no", "suspend_no"),
    "case.correction_notice": ("case_no", "notice_no"),
    "case.correction_accepted": ("case_no", "notice_no"),
    "case.complete": ("case_no",),
    "case.collect": ("case_no",),
    "case.evaluate": ("case_no",),
    "alert": ("alert_id",),
    "complaint.register": ("complaint_no",),
    "market.transaction": ("market", "txn_no"),
    "project.record": ("project_no", "stage", "at"),
}


# ---- cross-field rules (only what cannot be true; anomalies stay valid) ------------------------------


def _moment(p: dict[str, Any], name: str) -> datetime:
    return datetime.fromisoformat(p[name])


def _not_before(later: str, earlier: str) -> Callable[[dict[str, Any]], None]:
    def rule(p: dict[str, Any]) -> None:
        # Normalised times are all +08:00 ISO text of one shape, so text order is time order; the text
        # comparison spares parsing both on every row, the parse confirms the rare hit.
        if later in p and earlier in p and p[later] < p[earlier] and _moment(p, later) < _moment(p, earlier):
            raise _Fail(
                later,
                p[later],
                f"is before {earlier} ({p[earlier]})",
                "a record cannot end before it starts; check both times",
            )

    return rule


def _item_rules(p: dict[str, Any]) -> None:
    if p["promised_days"] > p["statutory_days"]:
        raise _Fail(
            "promised_days",
            p["promised_days"],
            f"exceeds statutory_days ({p['statutory_days']})",
            "the promised limit (承诺时限) may only shorten the statutory limit (法定时限)",
        )
    seen: dict[str, int] = {}
    for i, step in enumerate(p["steps"]):
        if step["step_code"] in seen:
            raise _Fail(
                f"steps[{i}].step_code",
                step["step_code"],
                f"repeats steps[{seen[step['step_code']]}]",
                "each step of the fixed workflow needs its own step_code",
            )
        seen[step["step_code"]] = i
    for i, rp in enumerate(p["risk_points"]):
        if rp["step_code"] not in seen:
            raise _Fail(
                f"risk_points[{i}].step_code",
                rp["step_code"],
                "names no step of this item",
                f"use one of the item's step codes: {', '.join(seen)}",
            )
    circumstances: set[str] = set()
    for i, band in enumerate(p["discretion"]):
        if band["min_amount"] > band["max_amount"]:
            raise _Fail(
                f"discretion[{i}].max_amount",
                band["max_amount"],
                f"is below min_amount ({band['min_amount']})",
                "swap or correct the band limits",
            )
        if band["circumstance"] in circumstances:
            raise _Fail(
                f"discretion[{i}].circumstance",
                band["circumstance"],
                "repeats an earlier band",
                "give each circumstance one band",
            )
        circumstances.add(band["circumstance"])


_CROSS_RULES: Final[dict[str, tuple[Callable[[dict[str, Any]], None], ...]]] = {
    "item": (_item_rules,),
    "case.step": (_not_before("ended_at", "started_at"),),
    "complaint.register": (_not_before("due_at", "registered_at"),),
}


# ---- entry points ------------------------------------------------------------------------------------


_Field = tuple[str, Check, bool, Any, tuple[int, re.Pattern[str]] | None]
_Compiled = tuple[Mapping[str, Spec], frozenset[str], tuple[_Field, ...]]
_COMPILED: dict[int, _Compiled] = {}
_STR_ONLY: Final = frozenset({str})


def _compiled(schema: Mapping[str, Spec]) -> _Compiled:
    """A schema table as a flat tuple and a name set, built once per table (the tables never change)."""
    c = _COMPILED.get(id(schema))
    if c is None or c[0] is not schema:
        fields = tuple((name, check, required, default, _TEXT_LIMITS.get(check))
                       for name, (check, required, default) in schema.items())
        c = _COMPILED[id(schema)] = (schema, frozenset(schema), fields)
    return c


def _apply(schema: Mapping[str, Spec], obj: Any, prefix: str) -> dict[str, Any]:
    _, names, fields = _compiled(schema)
    # The usual row, a dict whose keys are all known field names of exact type str, passes these
    # checks at C speed; any other row takes the loop, which finds and names the offending key.
    if not (type(obj) is dict and names.issuperset(obj) and _STR_ONLY.issuperset(map(type, obj))):
        where = prefix[:-1] if prefix else "(payload)"
        if not isinstance(obj, Mapping):
            raise _Fail(where, obj, f"must be an object, not {_typename(obj)}", "send a JSON object {...}")
        for key in obj:
            if not isinstance(key, str):
                raise _Fail(where, key, "has a field name that is not text", "field names are strings")
            if key not in schema:
                raise _Fail(
                    prefix + key,
                    obj[key],
                    "unknown field",
                    f"allowed fields: {', '.join(schema)}; see docs/records.md",
                )
    out: dict[str, Any] = {}
    get = obj.get
    for name, check, required, default, text in fields:
        v = get(name, _MISSING)
        if text is not None and type(v) is str:
            # the text check inlined for the value nearly every row has; any other value (empty, too
            # long, a bad character, not str) takes the general path below, which words the reason
            s = v.strip()
            if s and len(s) <= text[0] and text[1].search(s) is None:
                out[name] = s
                continue
        if v is _MISSING or v is None or (isinstance(v, str) and not v.strip()):
            if required:
                state = "missing" if v is _MISSING else ("null" if v is None else "empty")
                raise _Fail(
                    prefix + name, v, f"required field is {state}", f"add {name} (see docs/records.md)"
                )
            if default is not _MISSING:
                out[name] = list(default) if isinstance(default, tuple) else default
            continue
        out[name] = check(v, prefix + name)
    return out


def validate(kind: str, obj: Any) -> dict[str, Any]:
    """Check ``obj`` against ``kind``'s schema; return the normalised payload or raise ValidationError."""
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ValidationError(
            str(kind)[:80] if isinstance(kind, str) else "",
            "kind",
            kind,
            "unknown record kind",
            fix=f"use one of: {', '.join(KINDS)}",
        )
    try:
        payload = _apply(schema, obj, "")
        for rule in _CROSS_RULES.get(kind, ()):
            rule(payload)
        return payload
    except _Fail as f:
        raise ValidationError(kind, f.path, f.value, f.rule, fix=f.fix) from None
    except RecursionError:
        raise ValidationError(
            kind, "(payload)", obj, "is nested too deeply", fix="flatten the record"
        ) from None
    except Exception as e:  # a hostile Mapping or value type; never let it stop an adapter
        raise ValidationError(
            kind,
            "(payload)",
            obj,
            f"unreadable value ({type(e).__name__}: {_show(str(e))})",
            fix="send plain JSON types",
        ) from None


def _key_part(value: Any) -> str:
    # ':' separates the parts and '%' escapes; so distinct rows can never share a key
    return str(value).replace("%", "%25").replace(":", "%3A")


def natural_key(kind: str, payload: Mapping[str, Any]) -> str:
    """The identity of the source row, e.g. ``case.step:3203032025100900100001:3``.

    Key fields are normalised first, so a raw row and its validated payload give the same key.
    """
    fields = NATURAL_KEYS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ValidationError(
            str(kind)[:80] if isinstance(kind, str) else "",
            "kind",
            kind,
            "unknown record kind",
            fix=f"use one of: {', '.join(KINDS)}",
        )
    if not isinstance(payload, Mapping):
        raise ValidationError(
            kind,
            "(payload)",
            payload,
            f"must be an object, not {_typename(payload)}",
            fix="send a JSON object {...}",
        )
    parts = [kind]
    for name in fields:
        check = SCHEMAS[kind][name][0]
        v = payload.get(name, _MISSING)
        try:
            if v is _MISSING or v is None:
                raise _Fail(name, v, "key field is missing", f"{kind} is identified by {', '.join(fields)}")
            parts.append(_key_part(check(v, name)))
        except _Fail as f:
            raise ValidationError(kind, f.path, f.value, f.rule, fix=f.fix) from None
    return ":".join(parts)


def validate_keyed(kind: str, obj: Any) -> tuple[dict[str, Any], str]:
    """``validate`` and ``natural_key`` in one step (the ingest path): the key is built from the payload
    just normalised, so its fields are not checked a second time. Same results, same errors."""
    payload = validate(kind, obj)
    parts = [kind]
    for name in NATURAL_KEYS.get(kind, ()):
        v = payload.get(name)
        if v is None:  # cannot happen while every key field is required; natural_key words it
            return payload, natural_key(kind, payload)
        parts.append(_key_part(v))
    if len(parts) == 1:
        return payload, natural_key(kind, payload)
    return payload, ":".join(parts)


def fields_of(kind: str) -> dict[str, bool]:
    """Field name → required, for a kind (for adapters building column mappings)."""
    return {name: spec[1] for name, spec in SCHEMAS[kind].items()}
