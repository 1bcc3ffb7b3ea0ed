"""Record schemas: one valid example per kind, each rejection class, natural keys, and fuzzing."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.core import domain
from node.core.domain import (
    KINDS,
    NATURAL_KEYS,
    SCHEMAS,
    ValidationError,
    fields_of,
    natural_key,
    validate,
    validate_keyed,
)
from node.core.errors import FednodeError
from node.core.records import encode_payload

T = "2025-10-09T09:30:00+08:00"
CASE = {
    "case_no": "3203032025100900100001",
    "item_code": "320303010002",
    "division": "320303",
    "dept": "320303-SCJG",
    "time": T,
}

VALID: dict[str, dict[str, Any]] = {
    "item": {
        "item_code": "320303020002",
        "name": "对经营超过保质期食品的行政处罚",
        "item_type": "02",
        "dept": "320303-SCJG",
        "division": "320303",
        "case_kind": "2",
        "statutory_days": 90,
        "promised_days": 45,
        "unit": "workday",
        "steps": [
            {"step_code": "SL", "name": "受理", "limit_days": 1, "posts": ["窗口受理员"]},
            {"step_code": "CB", "name": "承办", "limit_days": 20, "posts": ["承办人"]},
            {"step_code": "SH", "name": "审核", "limit_days": 10, "posts": ["科室负责人"]},
            {"step_code": "PZ", "name": "批准", "limit_days": 10, "posts": ["分管领导", "主要领导"]},
            {"step_code": "BJ", "name": "办结", "limit_days": 4, "posts": ["发证窗口"]},
        ],
        "discretion": [
            {"circumstance": "从轻", "min_amount": 50000, "max_amount": 70000},
            {"circumstance": "从重", "min_amount": 90000, "max_amount": 100000},
        ],
        "risk_points": [{"step_code": "SH", "evidence": "法制审核意见书"}],
        "major_threshold": 100000,
    },
    "case.apply": {
        **CASE,
        "applicant_type": "法人",
        "applicant_name": "徐州恒泰餐饮管理有限公司",
        "applicant_id": "91320303MA1XY2345K",
        "materials": ["申请书", "营业执照副本复印件"],
        "channel_code": "2",
        "assigned": False,
        "amount": 1200000,
    },
    "case.accept": {
        **CASE,
        "handler": "王芳",
        "accepted": True,
        "promised_at": "2025-10-23T17:30:00+08:00",
        "case_kind": "2",
    },
    "case.step": {
        **CASE,
        "step_no": 3,
        "step_code": "SH",
        "step_name": "审核",
        "handler": "李强",
        "post": "科室负责人",
        "opinion": "同意承办意见",
        "action": "pass",
        "started_at": "2025-10-09T09:00:00+08:00",
        "ended_at": T,
        "amount": 60000,
        "circumstance": "从轻",
        "evidence": ["法制审核意见书"],
    },
    "case.suspend": {
        **CASE,
        "suspend_no": 1,
        "suspend_kind": "2",
        "reason": "组织听证",
        "approver": "赵建国",
        "started_at": T,
        "approved_days": 10,
    },
    "case.resume": {**CASE, "suspend_no": 1, "ended_at": T},
    "case.correction_notice": {**CASE, "notice_no": 1, "materials": ["从业人员健康证明"], "issuer": "周敏"},
    "case.correction_accepted": {**CASE, "notice_no": 1},
    "case.complete": {
        **CASE,
        "result_code": "6",
        "cert_name": "食品经营许可证",
        "cert_no": "JY13203030012345",
        "cert_valid_until": "2030-10-08",
        "fee": 0,
    },
    "case.collect": {**CASE, "collector": "陈静", "method": "窗口领取"},
    "case.evaluate": {**CASE, "satisfaction": "1"},
    "alert": {
        "alert_id": "R0101:case:3203032025100900100001:2",
        "rule_id": "R0101",
        "category": "01",
        "level": 2,
        "object": "case",
        "case_no": "3203032025100900100001",
        "step_no": 2,
        "division": "320303",
        "dept": "320303-SCJG",
        "item_code": "320303010002",
        "message": "超过承诺时限1个工作日未办结",
        "at": T,
        "source": "local",
    },
    "complaint.register": {
        "complaint_no": "TS320303202510090001",
        "complainant": "匿名",
        "respondent_unit": "云龙区市场监督管理局",
        "respondent_person": "王芳",
        "content": "食品经营许可超过承诺时限未办结",
        "source": "12345政务服务热线",
        "registered_at": T,
        "due_at": "2025-10-16T17:30:00+08:00",
        "division": "320303",
    },
    "market.transaction": {
        "market": "gov_procurement",
        "txn_no": "320303-GP-2025-0001",
        "project": "云龙区教育局2025年中小学信息化设备采购",
        "buyer": "云龙区教育局",
        "suppliers": ["徐州博远电子科技有限公司"],
        "bidders": 5,
        "amount": 980000.5,
        "budget": 1000000,
        "procedure": "公开招标",
        "award_at": T,
        "contract_at": "2025-10-20T10:00:00+08:00",
        "documents": ["招标公告", "中标通知书"],
        "division": "320303",
    },
    "project.record": {
        "project_no": "XM3203030001",
        "name": "云龙区水环境综合整治工程",
        "source": "地方政府专项债券",
        "category": "水利",
        "stage": "funds",
        "estimate": 350000000,
        "spent": 120000000,
        "progress_pct": 34.5,
        "detail": "累计拨付资金12000万元",
        "at": T,
        "division": "320303",
    },
}


def test_every_kind_has_an_example_and_a_key() -> None:
    assert set(VALID) == set(KINDS) == set(SCHEMAS) == set(NATURAL_KEYS)
    assert len(KINDS) == 15


@pytest.mark.parametrize("kind", KINDS)
def test_valid_example_round_trips(kind: str) -> None:
    out = validate(kind, copy.deepcopy(VALID[kind]))
    assert out == VALID[kind]
    assert validate(kind, out) == out  # idempotent
    encode_payload(out)  # always serialisable as compact UTF-8 JSON


def test_validation_error_shape() -> None:
    with pytest.raises(ValidationError) as ei:
        validate("case.evaluate", {**VALID["case.evaluate"], "satisfaction": "6"})
    e = ei.value
    assert isinstance(e, FednodeError)
    assert e.code == "invalid_record"
    assert (e.kind, e.field, e.value, e.rule) == ("case.evaluate", "satisfaction", "'6'", "unknown code")
    assert "1 非常满意" in e.fix
    d = e.as_dict()
    assert d["code"] == "invalid_record" and d["field"] == "satisfaction" and d["value"] == "'6'"
    assert "satisfaction" in str(e) and "unknown code" in str(e)


def _with(kind: str, **changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(VALID[kind])
    for k, v in changes.items():
        if v is _DROP:
            del p[k]
        else:
            p[k] = v
    return p


_DROP = object()
HUGE = "字" * 5000

# (kind, changes, field named, words in the rule)
REJECTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    # missing / null / empty required fields
    ("case.apply", {"case_no": _DROP}, "case_no", "required field is missing"),
    ("case.apply", {"applicant_name": None}, "applicant_name", "required field is null"),
    ("case.accept", {"handler": "   "}, "handler", "required field is empty"),
    ("item", {"steps": []}, "steps", "must not be empty"),
    ("alert", {"level": _DROP}, "level", "missing"),
    # wrong types
    ("case.step", {"step_no": "three"}, "step_no", "whole number"),
    ("case.step", {"step_no": 2.5}, "step_no", "whole number"),
    ("case.step", {"step_no": True}, "step_no", "boolean"),
    ("case.step", {"handler": 42}, "handler", "must be text"),
    ("case.step", {"evidence": "法制审核意见书"}, "evidence", "must be a list"),
    ("case.step", {"evidence": ["ok", 3]}, "evidence[1]", "must be text"),
    ("case.apply", {"materials": {"a": 1}}, "materials", "must be a list"),
    ("case.apply", {"assigned": "maybe"}, "assigned", "true or false"),
    ("case.apply", {"amount": "12万"}, "amount", "must be a number"),
    ("case.apply", {"amount": [1]}, "amount", "must be a number"),
    ("case.accept", {"accepted": 2}, "accepted", "true or false"),
    ("item", {"steps": [{"step_code": "SL", "name": "受理", "limit_days": 1, "posts": "窗口"}]}, "steps[0].posts", "list"),
    ("item", {"steps": ["SL"]}, "steps[0]", "must be an object"),
    ("project.record", {"estimate": {"v": 1}}, "estimate", "must be a number"),
    # non-finite and out-of-range numbers
    ("case.complete", {"fee": float("nan")}, "fee", "finite"),
    ("case.complete", {"fee": float("inf")}, "fee", "finite"),
    ("case.complete", {"fee": Decimal("NaN")}, "fee", "finite"),
    ("case.complete", {"fee": "1e999"}, "fee", "at most"),
    ("case.complete", {"fee": -5}, "fee", "at least 0"),
    ("case.complete", {"fee": 10**400}, "fee", "at most"),
    ("case.suspend", {"approved_days": 0}, "approved_days", "greater than 0"),
    ("project.record", {"progress_pct": 120}, "progress_pct", "at most 100"),
    ("case.step", {"step_no": 0}, "step_no", "between 1"),
    # bad dates
    ("case.apply", {"time": "2025-13-01 09:00:00"}, "time", "not a real date"),
    ("case.apply", {"time": "20250230093000"}, "time", "not a real date"),
    ("case.apply", {"time": "2025-02-30T09:30:00+08:00"}, "time", "not a real date"),
    ("case.apply", {"time": "0001-01-01T00:00:00+08:00"}, "time", "outside"),
    ("case.apply", {"time": "2" * 100}, "time", "not a date and time"),
    ("case.apply", {"time": "yesterday"}, "time", "not a date and time"),
    ("case.apply", {"time": "2025-10-09"}, "time", "without a time of day"),
    ("case.apply", {"time": date(2025, 10, 9)}, "time", "without a time of day"),
    ("case.apply", {"time": "1900-01-01 00:00:00"}, "time", "outside"),
    ("case.apply", {"time": 1760000000}, "time", "must be a date and time"),
    ("case.apply", {"time": "2025-10-09T09:30:00+25:00"}, "time", "not a real date"),
    ("case.complete", {"cert_valid_until": "2030-02-30"}, "cert_valid_until", "not a real date"),
    ("case.step", {"ended_at": "2025-10-09T08:00:00+08:00"}, "ended_at", "before started_at"),
    ("complaint.register", {"due_at": "2025-10-01 09:00:00"}, "due_at", "before registered_at"),
    # unknown codes
    ("item", {"item_type": "11"}, "item_type", "unknown code"),
    ("item", {"case_kind": "3"}, "case_kind", "unknown code"),
    ("item", {"unit": "hour"}, "unit", "unknown code"),
    ("case.complete", {"result_code": "4"}, "result_code", "unknown code"),
    ("case.apply", {"channel_code": "5"}, "channel_code", "unknown code"),
    ("case.evaluate", {"satisfaction": "0"}, "satisfaction", "unknown code"),
    ("case.suspend", {"suspend_kind": "3"}, "suspend_kind", "unknown code"),
    ("case.step", {"action": "approve"}, "action", "unknown code"),
    ("alert", {"category": "06"}, "category", "unknown code"),
    ("alert", {"level": 5}, "level", "unknown code"),
    ("alert", {"level": "黄牌"}, "level", "unknown code"),
    ("alert", {"object": "person"}, "object", "unknown code"),
    ("alert", {"source": "manual"}, "source", "unknown code"),
    ("market.transaction", {"market": "stock"}, "market", "unknown code"),
    ("project.record", {"stage": "done"}, "stage", "unknown code"),
    ("case.apply", {"division": "3203"}, "division", "6-digit"),
    # unknown fields
    ("case.apply", {"applicant_nmae": "x"}, "applicant_nmae", "unknown field"),
    ("item", {"steps": [{"step_code": "SL", "name": "受理", "limit_days": 1, "posts": ["a"], "x": 1}]},
     "steps[0].x", "unknown field"),
    # sizes
    ("complaint.register", {"content": "投" * 4001}, "content", "longer than the limit of 4000"),
    ("case.apply", {"applicant_name": HUGE}, "applicant_name", "longer than the limit"),
    ("case.apply", {"case_no": "C" * 65}, "case_no", "longer than the limit of 64"),
    ("case.apply", {"materials": ["申请书"] * 201}, "materials", "more than the limit of 200"),
    ("case.apply", {"materials": ["申请书", ""]}, "materials[1]", "must not be empty"),
    # encodings and control characters
    ("case.apply", {"applicant_name": "王\udcb7\udcbc"}, "applicant_name", "wrong encoding"),
    ("case.apply", {"applicant_name": "王\ufffd\ufffd"}, "applicant_name", "wrong encoding"),
    ("case.apply", {"applicant_name": "王芳".encode("gb18030")}, "applicant_name", "not valid UTF-8"),
    ("case.apply", {"applicant_name": "王\x00芳"}, "applicant_name", "control character"),
    ("case.apply", {"applicant_name": "王\n芳"}, "applicant_name", "line break"),
    # cross-field rules of the catalogue
    ("item", {"promised_days": 120}, "promised_days", "exceeds statutory_days"),
    ("item", {"risk_points": [{"step_code": "XX", "evidence": "记录"}]}, "risk_points[0].step_code", "names no step"),
    ("item", {"discretion": [{"circumstance": "一般", "min_amount": 9, "max_amount": 1}]},
     "discretion[0].max_amount", "below min_amount"),
    ("item", {"discretion": [{"circumstance": "一般", "min_amount": 1, "max_amount": 2}] * 2},
     "discretion[1].circumstance", "repeats"),
    ("item", {"steps": [{"step_code": "SL", "name": "受理", "limit_days": 1, "posts": ["a"]}] * 2},
     "steps[1].step_code", "repeats"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "changes", "field", "rule"), REJECTIONS, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in REJECTIONS]
)
def test_rejection_names_the_field(kind: str, changes: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as ei:
        validate(kind, _with(kind, **changes))
    e = ei.value
    assert e.field == field
    assert rule in e.rule, e.rule
    assert e.fix
    assert len(e.value) <= 80
    assert e.kind == kind


@pytest.mark.parametrize("bad", [None, [], "text", 3, [("case_no", "x")]])
def test_payload_must_be_an_object(bad: Any) -> None:
    with pytest.raises(ValidationError) as ei:
        validate("case.apply", bad)
    assert ei.value.field == "(payload)"


def test_non_text_field_name() -> None:
    with pytest.raises(ValidationError, match="not text"):
        validate("case.evaluate", {**VALID["case.evaluate"], 7: "x"})


@pytest.mark.parametrize("kind", ["case.unknown", "", "ITEM", None, 3])
def test_unknown_kind(kind: Any) -> None:
    with pytest.raises(ValidationError) as ei:
        validate(kind, {})
    assert ei.value.field == "kind" and "unknown record kind" in ei.value.rule
    with pytest.raises(ValidationError):
        natural_key(kind, {})


# ---- normalisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("20251009093000", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09 09:30:00", "2025-10-09T09:30:00+08:00"),
        ("2025/10/9 9:30:00", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09T09:30", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09T09:30:00+08:00", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09T01:30:00Z", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09T02:30:00+0100", "2025-10-09T09:30:00+08:00"),
        ("2025-10-09 09:30:00.250", "2025-10-09T09:30:00.250000+08:00"),
        (b"20251009093000", "2025-10-09T09:30:00+08:00"),
        (datetime(2025, 10, 9, 9, 30), "2025-10-09T09:30:00+08:00"),
        (datetime(2025, 10, 9, 1, 30, tzinfo=UTC), "2025-10-09T09:30:00+08:00"),
        (datetime(2025, 10, 9, 9, 30, tzinfo=timezone(timedelta(hours=8))), "2025-10-09T09:30:00+08:00"),
    ],
)
def test_time_formats(given: Any, expected: str) -> None:
    assert validate("case.evaluate", {**VALID["case.evaluate"], "time": given})["time"] == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("20301008", "2030-10-08"), ("2030-10-08", "2030-10-08"), (date(2030, 10, 8), "2030-10-08"),
     ("2030-10-08 00:00:00", "2030-10-08"), (datetime(2030, 10, 8, 23, 0), "2030-10-08"),
     ("9999-12-31", "9999-12-31"), ("2030-10-08T23:30:00+00:00", "2030-10-09")],
)  # fmt: skip
def test_date_formats(given: Any, expected: str) -> None:
    assert (
        validate("case.complete", {**VALID["case.complete"], "cert_valid_until": given})["cert_valid_until"]
        == expected
    )


def test_numbers_codes_and_text_are_normalised() -> None:
    out = validate(
        "case.step",
        {
            **VALID["case.step"],
            "step_no": "3",
            "amount": Decimal("60000.00"),
            "action": "通过",
            "handler": "  李强 ",
        },
    )
    assert out["step_no"] == 3 and out["amount"] == 60000 and isinstance(out["amount"], int)
    assert out["action"] == "pass" and out["handler"] == "李强"
    assert validate("case.step", {**VALID["case.step"], "amount": "12.50"})["amount"] == 12.5
    assert validate("case.step", {**VALID["case.step"], "amount": 7.0})["amount"] == 7
    assert validate("item", {**VALID["item"], "item_type": 2})["item_type"] == "02"  # integer column
    assert validate("item", {**VALID["item"], "unit": "工作日"})["unit"] == "workday"
    assert validate("case.complete", {**VALID["case.complete"], "result_code": 0})["result_code"] == "0"
    assert validate("alert", {**VALID["alert"], "level": "3"})["level"] == 3
    for yes in (True, 1, "1", "true", "是", "Y"):
        assert validate("case.accept", {**VALID["case.accept"], "accepted": yes})["accepted"] is True
    for no in (False, 0, "0", "false", "否", "n"):
        assert validate("case.accept", {**VALID["case.accept"], "accepted": no})["accepted"] is False


def test_optional_fields_and_defaults() -> None:
    minimal_apply = {
        k: v for k, v in VALID["case.apply"].items() if k not in ("materials", "assigned", "amount")
    }
    out = validate("case.apply", minimal_apply)
    assert out["materials"] == [] and out["assigned"] is False and "amount" not in out
    # absent, null and blank optional fields give the same payload (same bytes on re-delivery)
    refused = {**VALID["case.accept"], "accepted": False}
    del refused["promised_at"]
    a = validate("case.accept", refused)
    b = validate("case.accept", {**refused, "refuse_reason": None, "promised_at": None})
    c = validate("case.accept", {**refused, "refuse_reason": "  "})
    assert a == b == c and "refuse_reason" not in a  # refusal without reason stays valid: an anomaly
    item = {
        k: v
        for k, v in VALID["item"].items()
        if k not in ("discretion", "risk_points", "major_threshold", "unit")
    }
    out = validate("item", item)
    assert out["discretion"] == [] and out["risk_points"] == [] and out["major_threshold"] is None
    assert out["unit"] == "workday"


def test_anomalies_are_valid_records() -> None:
    # the rules engine, not validation, must see these
    validate("case.step", {**VALID["case.step"], "amount": 999999, "evidence": [], "post": "办公室科员"})
    validate("market.transaction", {**VALID["market.transaction"], "bidders": 1, "amount": 2e6,
                                    "contract_at": "2025-09-01T10:00:00+08:00"})  # fmt: skip
    validate("project.record", {**VALID["project.record"], "spent": 9e8})


def test_fields_of() -> None:
    f = fields_of("case.step")
    assert f["step_no"] is True and f["amount"] is False and list(f)[:5] == list(CASE)


# ---- the fast paths give exactly what the general code gives -------------------------------------------

_LOCAL_FORMS = st.sampled_from(["%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S+08:00"])


def _general_time(v: Any) -> Any:
    """What ``_time`` answered before its fast paths: the general parser's text, or its reason."""
    try:
        return domain._parse_moment(v, "t", need_time=True).isoformat()
    except domain._Fail as f:
        return ("fail", f.rule, f.fix)


def _fast_time(v: Any) -> Any:
    try:
        return domain._time(v, "t")
    except domain._Fail as f:
        return ("fail", f.rule, f.fix)


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)), form=_LOCAL_FORMS,
       pad=st.sampled_from(["", " ", "\t"]))
def test_time_fast_paths_match_the_general_parser(moment: datetime, form: str, pad: str) -> None:
    text = pad + moment.strftime(form) + pad
    assert _fast_time(text) == _general_time(text)
    naive = moment.replace(microsecond=0)
    assert _fast_time(naive) == _general_time(naive)


@pytest.mark.parametrize("text", [
    "20251009240000", "2025-10-09 24:00:00", "20250229093000", "20240229093000", "20251309093000", "20251000093000",
    "20251009096000", "20251009093060", "19891231235959", "19900101000000", "21001231235959", "21010101000000",
    "00000101000000", "2025100909300٣", "２０２５１００９０９３０００", "2025-10-09 09:30:0", "2025-10-09_09:30:00",
    "2025-10-09 09:30:00+08:00", "2025-10-09T24:00:00+08:00", "1989-12-31T23:59:59+08:00", " 20251009093000 ",
])  # fmt: skip
def test_time_fast_paths_edge_cases(text: str) -> None:
    assert _fast_time(text) == _general_time(text)


def test_validate_keyed_is_validate_then_natural_key() -> None:
    for kind in KINDS:
        payload, key = validate_keyed(kind, VALID[kind])
        assert payload == validate(kind, VALID[kind]) and key == natural_key(kind, payload) == KEYS[kind]
    raw = {**VALID["case.step"], "step_no": " 3 ", "case_no": " 3203032025100900100001 "}
    assert validate_keyed("case.step", raw)[1] == KEYS["case.step"]
    with pytest.raises(ValidationError) as ei:
        validate_keyed("case.step", {**VALID["case.step"], "step_no": "x"})
    assert ei.value.field == "step_no"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_validate_keyed_fuzzed(kind: str, data: st.DataObject) -> None:
    obj = copy.deepcopy(VALID[kind])
    obj[data.draw(st.sampled_from(sorted(SCHEMAS[kind])))] = data.draw(_json_like)
    try:
        payload = validate(kind, obj)
    except ValidationError as e:
        with pytest.raises(ValidationError) as ei:
            validate_keyed(kind, obj)
        assert ei.value.message == e.message
        return
    assert validate_keyed(kind, obj) == (payload, natural_key(kind, payload))


def test_field_name_checks_take_the_exact_path_for_unusual_keys() -> None:
    class Name(str):
        pass

    # str subclasses are text: accepted as before; a non-text or unknown name is reported as before
    assert validate("case.evaluate", {Name(k): v for k, v in VALID["case.evaluate"].items()}) == validate(
        "case.evaluate", VALID["case.evaluate"])
    for extra, rule in (({7: "x"}, "has a field name that is not text"), ({"nope": 1}, "unknown field")):
        with pytest.raises(ValidationError) as ei:
            validate("case.evaluate", {**VALID["case.evaluate"], **extra})
        assert ei.value.rule == rule


@pytest.mark.parametrize(("given", "expected"), [
    (3, 3), ("3", 3), (" 3 ", 3), ("+3", 3), ("03", 3), (3.0, 3), (Decimal("3.00"), 3),
    ("٣", "must be a whole number"), ("3.5", "must be a whole number"), (0, "must be between 1 and 10000"),
    ("10001", "must be between 1 and 10000"), (True, "must be a number, not a boolean"), ("", "required field is empty"),
])  # fmt: skip
def test_step_numbers(given: Any, expected: Any) -> None:
    try:
        got: Any = validate("case.step", {**VALID["case.step"], "step_no": given})["step_no"]
    except ValidationError as e:
        got = e.rule
    assert got == expected


@pytest.mark.parametrize(("given", "ok"), [
    ("320303", True), (" 320303 ", True), ("32030", False), ("3203033", False), ("３２０３０３", False),
    ("32030a", False), (320303, False),
])  # fmt: skip
def test_division_codes(given: Any, ok: bool) -> None:
    if ok:
        assert validate("case.evaluate", {**VALID["case.evaluate"], "division": given})["division"] == given.strip()
    else:
        with pytest.raises(ValidationError) as ei:
            validate("case.evaluate", {**VALID["case.evaluate"], "division": given})
        assert ei.value.field == "division"


def test_ended_before_started_compares_times_not_text() -> None:
    base = {**VALID["case.step"], "started_at": "2025-10-09 09:30:00"}
    for ended, ok in (("2025-10-09 09:30:00", True), ("2025-10-09T09:30:00.5", True), ("2025-10-09T01:29:59Z", False),
                      ("2025-10-09T10:29:59+09:00", False), ("2025-10-09T01:30:00Z", True)):  # fmt: skip
        if ok:
            validate("case.step", {**base, "ended_at": ended})
        else:
            with pytest.raises(ValidationError) as ei:
                validate("case.step", {**base, "ended_at": ended})
            assert ei.value.field == "ended_at" and "is before started_at" in ei.value.rule


# ---- natural keys ------------------------------------------------------------------------------------

KEYS = {
    "item": "item:320303:320303020002",
    "case.apply": "case.apply:3203032025100900100001",
    "case.accept": "case.accept:3203032025100900100001",
    "case.step": "case.step:3203032025100900100001:3",
    "case.suspend": "case.suspend:3203032025100900100001:1",
    "case.resume": "case.resume:3203032025100900100001:1",
    "case.correction_notice": "case.correction_notice:3203032025100900100001:1",
    "case.correction_accepted": "case.correction_accepted:3203032025100900100001:1",
    "case.complete": "case.complete:3203032025100900100001",
    "case.collect": "case.collect:3203032025100900100001",
    "case.evaluate": "case.evaluate:3203032025100900100001",
    "alert": "alert:R0101%3Acase%3A3203032025100900100001%3A2",
    "complaint.register": "complaint.register:TS320303202510090001",
    "market.transaction": "market.transaction:gov_procurement:320303-GP-2025-0001",
    "project.record": "project.record:XM3203030001:funds:2025-10-09T09%3A30%3A00+08%3A00",
}


@pytest.mark.parametrize("kind", KINDS)
def test_natural_key(kind: str) -> None:
    assert natural_key(kind, VALID[kind]) == KEYS[kind]


def test_natural_key_of_raw_row_matches_validated_payload() -> None:
    raw = {**VALID["case.step"], "step_no": "3", "case_no": " 3203032025100900100001 "}
    assert (
        natural_key("case.step", raw)
        == natural_key("case.step", validate("case.step", raw))
        == KEYS["case.step"]
    )
    raw_p = {**VALID["project.record"], "at": "20251009093000"}
    assert natural_key("project.record", raw_p) == KEYS["project.record"]


def test_natural_keys_cannot_collide_through_separators() -> None:
    a = natural_key("case.step", {**VALID["case.step"], "case_no": "A:1", "step_no": 2})
    b = natural_key("case.step", {**VALID["case.step"], "case_no": "A", "step_no": 12})
    c = natural_key("case.step", {**VALID["case.step"], "case_no": "A%3A1", "step_no": 2})
    assert len({a, b, c}) == 3


def test_natural_key_errors() -> None:
    with pytest.raises(ValidationError) as ei:
        natural_key("case.step", {"case_no": "X"})
    assert ei.value.field == "step_no"
    with pytest.raises(ValidationError) as ei:
        natural_key("case.step", {"case_no": "X", "step_no": "x"})
    assert ei.value.field == "step_no"
    with pytest.raises(ValidationError):
        natural_key("case.step", ["X", 1])  # type: ignore[arg-type]


# ---- fuzzing: whatever comes in, only ValidationError goes out -----------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**5000), max_value=10**5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.binary(max_size=30),
    st.text(max_size=10).map(lambda s: s.encode("gb18030", "replace")),
    st.text(max_size=10).map(lambda s: s.encode("gb18030", "replace").decode("utf-8", "surrogateescape")),
    st.datetimes(),
    st.dates(),
    st.sampled_from(
        ["", " ", "20251009093000", "2025-10-09 09:30:00", "1", "01", "pass", "nan", "1e5", "是", HUGE]
    ),
)
_json_like = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_outcome(kind: str, obj: Any) -> None:
    try:
        out = validate(kind, obj)
    except ValidationError as e:
        assert "unreadable" not in e.rule, e  # our own bug, not bad input
        assert len(e.value) <= 80 and e.fix
        return
    encode_payload(out)
    for v in out.values():
        if isinstance(v, float):
            assert math.isfinite(v)
    assert validate(kind, out) == out


@FUZZ
@given(kind=st.sampled_from(KINDS), obj=_json_like)
def test_fuzz_random_values(kind: str, obj: Any) -> None:
    _check_outcome(kind, obj)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_one_field_replaced(kind: str, data: st.DataObject) -> None:
    obj = copy.deepcopy(VALID[kind])
    field = data.draw(st.sampled_from(sorted(SCHEMAS[kind])))
    value = data.draw(_json_like)
    obj[field] = value
    try:
        validate(kind, obj)
    except ValidationError as e:
        assert "unreadable" not in e.rule, e
        # the replaced field is the one named (or a cross-field rule that involves it)
        assert (
            e.field.split("[")[0] == field
            or e.field in ("promised_days", "ended_at", "due_at")
            or (kind == "item" and field == "steps")
        ), (field, e)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_fields_dropped_and_added(kind: str, data: st.DataObject) -> None:
    obj = copy.deepcopy(VALID[kind])
    for name in data.draw(st.lists(st.sampled_from(sorted(obj)), max_size=4)):
        obj.pop(name, None)
    obj.update(data.draw(st.dictionaries(st.text(max_size=12), _scalars, max_size=3)))
    _check_outcome(kind, obj)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), size=st.integers(min_value=4001, max_value=2_000_000))
def test_huge_fields_are_rejected_cheaply(kind: str, size: int) -> None:
    obj = copy.deepcopy(VALID[kind])
    text_fields = {"item": "name", "alert": "message", "complaint.register": "content", "market.transaction": "project",
                   "project.record": "detail"}  # fmt: skip
    name = text_fields.get(kind, "case_no")
    obj[name] = "x" * size
    with pytest.raises(ValidationError) as ei:
        validate(kind, obj)
    assert ei.value.field == name and "longer than the limit" in ei.value.rule
    assert len(ei.value.value) <= 80


def test_deeply_nested_value() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValidationError) as ei:
        validate("case.apply", {**VALID["case.apply"], "materials": deep})
    assert ei.value.field == "materials[0]"
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValidationError):
        validate("case.apply", {**VALID["case.apply"], "materials": looped})


@pytest.mark.parametrize("encoding", ["gb18030", "gbk", "gb2312", "utf-16"])
def test_wrongly_decoded_text_is_caught(encoding: str) -> None:
    raw = "徐州市云龙区市场监督管理局".encode(encoding)
    for text in (raw.decode("utf-8", "replace"), raw.decode("utf-8", "surrogateescape")):
        with pytest.raises(ValidationError) as ei:
            validate("case.collect", {**VALID["case.collect"], "collector": text})
        assert ei.value.field == "collector"


def test_json_round_trip_of_every_example() -> None:
    for kind in KINDS:
        payload = validate(kind, VALID[kind])
        assert validate(kind, json.loads(encode_payload(payload))) == payload
