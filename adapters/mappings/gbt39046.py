"""GB/T 39046-2020-style tables (政务服务平台基础数据规范): one table per case event, English column
names after the standard's data items, a ``sync_time`` timestamp (数据同步时间) as the watermark and
an integer ``id`` for ties. Times may be timestamps or YYYYMMDDhhmmss text.

    case_apply     (id, sync_time, case_no, item_code, division, dept, applicant_type, applicant_name,
                    applicant_id, materials 'a;b', channel_code, assigned, amount, apply_time)
    case_accept    (id, sync_time, case_no, item_code, division, dept, handler, accept_result 1/0,
                    refuse_reason, promised_time, case_kind, accept_time)
    case_process   (id, sync_time, case_no, item_code, division, dept, step_no, step_code, step_name,
                    handler, post, opinion, action, start_time, end_time, amount, circumstance,
                    evidence 'a;b')
    case_special   (id, sync_time, case_no, item_code, division, dept, special_no, special_kind, reason,
                    approver, start_time, approved_days)
    case_special_end (id, sync_time, case_no, item_code, division, dept, special_no, end_time)
    case_complete  (id, sync_time, case_no, item_code, division, dept, result_code, cert_name, cert_no,
                    cert_valid_until, fee, complete_time)
"""

from __future__ import annotations

from typing import Any

_COMMON = {"case_no": "case_no", "item_code": "item_code", "division": "division", "dept": "dept"}


def _t(table: str, kind: str, time_col: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"table": table, "kind": kind, "watermark": "sync_time", "key": "id",
            "fields": {**_COMMON, "time": time_col, **fields}}


MAPPING: dict[str, Any] = {
    "name": "gbt39046",
    "tables": [
        _t("case_apply", "case.apply", "apply_time", {
            "applicant_type": "applicant_type", "applicant_name": "applicant_name",
            "applicant_id": "applicant_id", "materials": {"column": "materials", "split": ";"},
            "channel_code": "channel_code", "assigned": "assigned", "amount": "amount"}),
        _t("case_accept", "case.accept", "accept_time", {
            "handler": "handler", "accepted": "accept_result", "refuse_reason": "refuse_reason",
            "promised_at": "promised_time", "case_kind": "case_kind"}),
        _t("case_process", "case.step", "end_time", {
            "step_no": "step_no", "step_code": "step_code", "step_name": "step_name", "handler": "handler",
            "post": "post", "opinion": "opinion", "action": "action", "started_at": "start_time",
            "ended_at": "end_time", "amount": "amount", "circumstance": "circumstance",
            "evidence": {"column": "evidence", "split": ";"}}),
        _t("case_special", "case.suspend", "start_time", {
            "suspend_no": "special_no", "suspend_kind": "special_kind", "reason": "reason",
            "approver": "approver", "started_at": "start_time", "approved_days": "approved_days"}),
        _t("case_special_end", "case.resume", "end_time", {"suspend_no": "special_no", "ended_at": "end_time"}),
        _t("case_complete", "case.complete", "complete_time", {
            "result_code": "result_code", "cert_name": "cert_name", "cert_no": "cert_no",
            "cert_valid_until": "cert_valid_until", "fee": "fee"}),
    ],
}
