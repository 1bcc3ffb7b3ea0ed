"""How the desk names things in Chinese (zh-CN), and the template filters that use these names.
Rendering only: no decision is taken here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2

from node.features.people.roles import ROLES
from node.features.rules.engine import LEVEL_NAMES

TICKET_STATES = {"issued": "已签发", "delivered": "已送达", "signed_for": "已签收", "replied": "已答复",
                 "returned": "退回重办", "concluded": "已办结", None: "—"}
EVENTS = {"issue": "签发", "delivered": "送达", "sign": "签收", "reply": "答复", "conclude": "办结",
          "return": "退回重办", "extend_request": "申请延期", "extend_grant": "批准延期", "remind": "催办",
          "escalate": "上报", "assign": "认定分派", "assign_result": "认定结果"}
VERBS = {"sign": "签收", "assign": "认定分派", "assign-result": "报告认定结果", "reply": "答复",
         "extend-request": "申请延期", "extend-grant": "批准延期", "return": "退回重办", "conclude": "办结"}
VERDICTS = {"satisfactory": "满意", "basically": "基本满意", "unsatisfactory": "不满意"}
SATISFACTION = {"1": "非常满意", "2": "满意", "3": "基本满意", "4": "不满意", "5": "非常不满意"}
LINK_STATES = {"connected": "已连接", "connecting": "连接中", "down": "中断", "refused": "被拒绝"}
DIRECTIONS = {"up": "上级", "down": "下级"}
RULES = {"case_time": "办件超时", "step_time": "环节超时", "special_time": "特别程序超时", "complaint_time": "投诉超时",
         "permission": "超越权限", "workflow": "流程异常", "discretion": "自由裁量偏离", "refusal_reason": "不予受理无理由",
         "risk_evidence": "风险点未采取预控措施", "major": "重大事项", "calendar_year_missing": "工作日历缺年份",
         "ticket.escalate": "督办逾期上报", "alert_unhandled": "预警未处置", "login": "未定期登录",
         "ticket_inactive": "督办未落实"}
ALERT_STATES = {"open": "待处置", "disposed": "已处置", "corrected": "已纠正", "false-alarm": "误报核销",
                "ticket": "已转督办"}
DISPOSALS = {"corrected": "已纠正", "false-alarm": "误报核销（须说明理由）"}
ERROR_TITLES = {400: "操作未完成", 403: "无权操作", 404: "未找到", 409: "当前状态不允许此操作", 503: "节点暂不可用"}
ACTIONS = {"login": "登录", "logout": "退出", "login failed": "登录失败", "refused": "越权被拒", "visit": "查看",
           "alerts handle": "处置预警", "quarantine replay": "隔离区重放", "ticket.issue": "签发督办",
           "ticket.sign": "签收督办", "ticket.reply": "答复督办", "ticket.conclude": "办结督办",
           "ticket.return": "退回重办", "ticket.assign": "认定分派", "ticket.assign_result": "认定结果",
           "ticket.extend_request": "申请延期", "ticket.extend_grant": "批准延期",
           "complaint.register": "登记投诉", "users add": "添加用户", "users lock": "锁定用户",
           "users unlock": "解锁用户", "users disable": "停用用户", "users enable": "启用用户",
           "users passwd": "修改口令", "alerts dispose": "处置预警", "alerts reopen": "重新打开预警"}


VERIFY_FAILURES = {"altered": "存储的记录内容已被改动，与其链值不符", "chain_mismatch": "无法链接到来源节点签名的检查点",
                   "bad_signature": "签名无效", "missing_checkpoint": "来源节点尚未签署覆盖该记录的检查点（稍后再验）",
                   "missing_record": "链上的记录缺失", "malformed_record": "记录已损坏，无法解析",
                   "unknown_key": "签名密钥不在本树的密钥环中", "revoked_key": "签名密钥已被吊销",
                   "key_not_for_origin": "签名密钥不属于来源节点", "certificate": "证书不属于本树的根证书"}


def verify_failure(r: Any) -> str:
    """Why a record of a case failed verification, in Chinese (the engineer's message stays in the API)."""
    if not isinstance(r, dict):
        return ""
    return VERIFY_FAILURES.get(str(r.get("code") or ""), "验证未通过")


def when(text: Any) -> str:
    """ISO-8601 → ``2026-11-28 10:00`` (in the writer's offset, which is +08:00)."""
    if not text:
        return "—"
    try:
        return datetime.fromisoformat(str(text)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(text)


def when_us(us: Any) -> str:
    from node.core.calendar import CST

    try:
        return datetime.fromtimestamp(int(us) / 1e6, CST).strftime("%Y-%m-%d %H:%M:%S") if us else "—"
    except (TypeError, ValueError):
        return "—"


def who(by: Any, fallback: Any = "") -> str:
    """``张三（监察员，320300）`` from a record's ``by``."""
    if isinstance(by, dict) and by.get("name"):
        role = by.get("role_label") or ROLES.get(str(by.get("role", "")), "")
        return f"{by['name']}（{role}，{by.get('scope', '')}）" if role else str(by["name"])
    return str(fallback or "—")


DETAIL = {"text": "内容", "verdict": "结论", "score": "评分", "satisfaction": "满意度", "reason": "理由",
          "days": "延期（工作日）", "reply_deadline": "答复期限", "responsible_unit": "责任单位",
          "responsible_person": "责任人", "finding": "认定意见", "assign_no": "序号", "result": "结果",
          "disputed": "有异议", "deadline": "期限", "due": "到期"}
_SHOWN_ABOVE = frozenset({"to", "subject", "body", "case_nos", "alert_ids", "sign_deadline", "complaint_no", "basis",
                          "rule_id"})


def detail(d: Any, event: str = "") -> list[tuple[str, str]]:
    """A timeline entry's fields as (label, text), in Chinese; what the page shows above is left out."""
    if not isinstance(d, dict):
        return []
    out = []
    for k, v in d.items():
        if v in (None, "", [], {}) or (event == "issue" and k in _SHOWN_ABOVE) or k == "attachments":
            continue  # attachments: a list of their own (ticket.html)
        if k == "verdict":
            v = VERDICTS.get(v, v)
        elif k == "satisfaction":
            v = SATISFACTION.get(str(v), v)
        elif k == "deadline":
            v = {"sign": "签收", "reply": "答复"}.get(v, v)
        elif k in ("reply_deadline", "due"):
            v = when(v)
        elif isinstance(v, bool):
            v = "是" if v else "否"
        elif isinstance(v, list | tuple):
            v = "、".join(str(x) for x in v)
        out.append((DETAIL.get(k) or str(k), str(v)))
    return out


CASE_FIELDS = {"applicant_type": "申请人类型", "applicant_name": "申请人", "applicant_id": "证件号码", "materials": "材料",
               "channel_code": "渠道", "assigned": "市政府交办", "accepted": "受理", "case_kind": "办件类型",
               "promised_at": "承诺办结", "notice_no": "通知序号", "issuer": "通知人", "at": "时间", "reason": "理由",
               "result_code": "办结结果", "kind": "种类", "approver": "批准人", "start": "开始", "end": "结束",
               "approved_days": "批准天数", "fee": "收费", "certificate_name": "证照", "certificate_no": "证照号",
               "satisfaction": "满意度", "refuse_reason": "不予受理理由", "accepted_at": "补正受理", "amount": "金额",
               "department": "部门", "how": "方式", "who": "领取人"}
_CASE_VALUES = {"channel_code": {"1": "窗口", "2": "网上", "3": "移动端", "4": "快递", "9": "其他"},
                "case_kind": {"1": "即办件", "2": "承诺件"},
                "result_code": {"0": "出证办结", "1": "退回", "2": "作废", "3": "删除", "5": "补正不来办结", "6": "准予许可",
                                "7": "不予许可"},
                "satisfaction": SATISFACTION, "kind": {"1": "延长审批", "2": "其他特别程序"}}


def case_fields(d: Any, skip: Any = ()) -> list[tuple[str, str]]:
    """A case event's fields as (label, text) in Chinese."""
    out = []
    for k, v in (d or {}).items():
        if k in skip or v in (None, "", [], {}):
            continue
        if isinstance(v, bool):
            v = "是" if v else "否"
        elif isinstance(v, list | tuple):
            v = "、".join(str(x) for x in v)
        elif k in _CASE_VALUES:
            v = _CASE_VALUES[k].get(str(v), v)
        elif isinstance(v, str) and len(v) >= 19 and v[4] == "-" and "T" in v:
            v = when(v)
        out.append((CASE_FIELDS.get(k) or str(k), str(v)))
    return out


def who_or_system(by: Any, actor: Any = "") -> str:
    return "系统（自动）" if actor == "system" and not by else who(by, actor)


def size(n: Any) -> str:
    """Bytes as people read them: 1.2 MB, 34 KB, 512 字节."""
    try:
        b = int(n)
    except (TypeError, ValueError):
        return str(n)
    for unit, step in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if b >= step:
            return f"{b / step:.1f} {unit}"
    return f"{b} 字节"


def install(env: jinja2.Environment) -> None:
    env.filters.update(
        when=when, when_us=when_us, who=who_or_system, detail=detail, case_fields=case_fields,
        ticket_state=lambda s: TICKET_STATES.get(s, s),
        event=lambda e: EVENTS.get(e, e),
        verb=lambda v: VERBS.get(v, v),
        verdict=lambda v: VERDICTS.get(v, v or "—"),
        satisfaction=lambda v: SATISFACTION.get(str(v), v or "—"),
        alert_state=lambda v: ALERT_STATES.get(v, v or "待处置"),
        level=lambda n: LEVEL_NAMES.get(int(n or 0), str(n)),
        rule=lambda r: RULES.get(r, r),
        link_state=lambda s: LINK_STATES.get(s, s),
        direction=lambda d: DIRECTIONS.get(d, d),
        role=lambda r: ROLES.get(r, r),
        action=lambda a: ACTIONS.get(a, a),
        verify_failure=verify_failure, size=size,
    )
