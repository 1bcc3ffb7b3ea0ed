"""The older 申办/受理/审批/办结 exchange tables (2009-2012 deployed systems, DOMAIN.md): pinyin
column abbreviations, times as YYYYMMDDhhmmss text, ``TBSJ`` (同步时间) as the watermark and ``XH``
(序号) for ties. 审批 rows carry 通过/退回 as text; 受理 results are 1 (受理) / 0 (不予受理).

    SBXX 申办 (XH, TBSJ, SBLSH 申办流水号, SXBM 事项编码, XZQHDM 行政区划代码, BMDM 部门代码, SQRLX 申请人类型,
               SQRMC 申请人名称, SQRZJHM 证件号码, SBCL 申报材料 'a;b', SBQD 申办渠道, SBSJ 申办时间)
    SLXX 受理 (XH, TBSJ, SBLSH, SXBM, XZQHDM, BMDM, SLR 受理人, SLJG 受理结果, BSLYY 不予受理原因,
               CNBJSJ 承诺办结时间, SLSJ 受理时间)
    SPXX 审批 (XH, TBSJ, SBLSH, SXBM, XZQHDM, BMDM, HJXH 环节序号, HJDM 环节代码, HJMC 环节名称, SPR 审批人,
               GW 岗位, SPYJ 审批意见, SPJG 审批结果, KSSJ 开始时间, JSSJ 结束时间)
    BJXX 办结 (XH, TBSJ, SBLSH, SXBM, XZQHDM, BMDM, BJJG 办结结果, ZZMC 证照名称, ZZBH 证照编号,
               ZZYXQ 证照有效期, SFJE 收费金额, BJSJ 办结时间)
"""

from __future__ import annotations

from typing import Any

_COMMON = {"case_no": "SBLSH", "item_code": "SXBM", "division": "XZQHDM", "dept": "BMDM"}


def _t(table: str, kind: str, time_col: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"table": table, "kind": kind, "watermark": "TBSJ", "key": "XH",
            "fields": {**_COMMON, "time": time_col, **fields}}


MAPPING: dict[str, Any] = {
    "name": "exchange2009",
    "tables": [
        _t("SBXX", "case.apply", "SBSJ", {
            "applicant_type": "SQRLX", "applicant_name": "SQRMC", "applicant_id": "SQRZJHM",
            "materials": {"column": "SBCL", "split": ";"}, "channel_code": "SBQD"}),
        _t("SLXX", "case.accept", "SLSJ", {
            "handler": "SLR", "accepted": "SLJG", "refuse_reason": "BSLYY", "promised_at": "CNBJSJ"}),
        _t("SPXX", "case.step", "JSSJ", {
            "step_no": "HJXH", "step_code": "HJDM", "step_name": "HJMC", "handler": "SPR", "post": "GW",
            "opinion": "SPYJ", "action": "SPJG", "started_at": "KSSJ", "ended_at": "JSSJ"}),
        _t("BJXX", "case.complete", "BJSJ", {
            "result_code": "BJJG", "cert_name": "ZZMC", "cert_no": "ZZBH", "cert_valid_until": "ZZYXQ",
            "fee": "SFJE"}),
    ],
}
