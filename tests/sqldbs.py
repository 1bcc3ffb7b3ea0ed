"""Helpers of the SQL poll adapter's and the SQL exporter's tests: engines, and the source tables of the two
ready mappings with rows for them. The fixtures (a fresh database on SQLite, PostgreSQL or MariaDB) are
in tests/sqlfixtures.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, Table, Text, create_engine
from sqlalchemy.engine import Engine

from adapters import mappings
from adapters.drivers import engine_url

T0 = dt.datetime(2025, 10, 9, 9, 0, 0)


def engine(url: str) -> Engine:
    return create_engine(engine_url(url))


# ---- the source tables of the ready mappings ---------------------------------------------------------------


def source_tables(mapping: str, md: MetaData | None = None) -> dict[str, Table]:
    """The tables ``mapping`` reads: watermark DateTime, key Integer, every other column text; an index on
    (watermark, key) as adapters/sql_poll.py asks for."""
    md = md or MetaData()
    out = {}
    for tm in mappings.load(mapping)["tables"]:
        wm, key = tm["watermark"], tm["key"]
        cols = [c for c in mappings.columns_of(tm) if c not in (wm, key)]
        out[tm["table"]] = Table(tm["table"], md, Column(key, Integer, primary_key=True, autoincrement=False),
                                 Column(wm, DateTime), *[Column(c, Text) for c in cols],
                                 Index(f"ix_{tm['table'].lower()}_wm", wm, key))
    return out


def create(url: str, mapping: str) -> tuple[Engine, dict[str, Table]]:
    md = MetaData()
    tables = source_tables(mapping, md)
    eng = engine(url)
    md.create_all(eng)
    return eng, tables


def spxx_row(i: int, ts: dt.datetime, **over: Any) -> dict[str, Any]:
    """An exchange2009 审批 (SPXX) row: case i, step 1."""
    row = {"XH": i, "TBSJ": ts, "SBLSH": f"32030320251009{i:08d}", "SXBM": "320303-XK-001", "XZQHDM": "320303",
           "BMDM": "320303-SJ", "HJXH": "1", "HJDM": "SL", "HJMC": "受理", "SPR": "张三", "GW": "窗口",
           "SPYJ": "同意", "SPJG": "通过", "KSSJ": "20251009093000", "JSSJ": "20251009100000"}
    row.update(over)
    return row


def exchange2009_case(i: int, ts: dt.datetime) -> dict[str, list[dict[str, Any]]]:
    """One whole case in the four exchange2009 tables (ids = i)."""
    common = {"XH": i, "TBSJ": ts, "SBLSH": f"32030320251009{i:08d}", "SXBM": "320303-XK-001", "XZQHDM": "320303",
              "BMDM": "320303-SJ"}
    return {
        "SBXX": [{**common, "SQRLX": "自然人", "SQRMC": "李四", "SQRZJHM": "320303199001011234",
                  "SBCL": "申请书;身份证", "SBQD": "1", "SBSJ": "20251009090000"}],
        "SLXX": [{**common, "SLR": "王五", "SLJG": "1", "CNBJSJ": "20251020170000", "SLSJ": "20251009093000"}],
        "SPXX": [spxx_row(i, ts)],
        "BJXX": [{**common, "BJJG": "6", "ZZMC": "许可证", "ZZBH": f"XK-{i}", "ZZYXQ": "20301231", "SFJE": "0",
                  "BJSJ": "20251016150000"}],
    }


def gbt39046_case(i: int, ts: dt.datetime) -> dict[str, list[dict[str, Any]]]:
    """One whole case in the six gbt39046 tables (ids = i)."""
    common = {"id": i, "sync_time": ts, "case_no": f"32030320251009{i:08d}", "item_code": "320303-XK-001",
              "division": "320303", "dept": "320303-SJ"}
    return {
        "case_apply": [{**common, "applicant_type": "自然人", "applicant_name": "李四",
                        "applicant_id": "320303199001011234", "materials": "申请书;身份证", "channel_code": "2",
                        "assigned": "0", "apply_time": "2025-10-09 09:00:00"}],
        "case_accept": [{**common, "handler": "王五", "accept_result": "1", "promised_time": "20251020170000",
                         "case_kind": "2", "accept_time": "20251009093000"}],
        "case_process": [{**common, "step_no": "1", "step_code": "SH", "step_name": "审核", "handler": "赵六",
                          "post": "科员", "action": "通过", "start_time": "20251009100000",
                          "end_time": "20251009110000", "evidence": "现场核查记录"}],
        "case_special": [{**common, "special_no": "1", "special_kind": "2", "reason": "专家评审", "approver": "钱七",
                          "start_time": "20251010090000", "approved_days": "5"}],
        "case_special_end": [{**common, "special_no": "1", "end_time": "20251015090000"}],
        "case_complete": [{**common, "result_code": "6", "cert_name": "许可证", "cert_no": f"XK-{i}",
                           "cert_valid_until": "20301231", "fee": "0", "complete_time": "20251016150000"}],
    }


def insert(eng: Engine, tables: dict[str, Table], rows: dict[str, list[dict[str, Any]]]) -> None:
    with eng.begin() as c:
        for name, rs in rows.items():
            if rs:
                c.execute(tables[name].insert(), rs)
