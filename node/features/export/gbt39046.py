"""The GB/T 39046 layout of the provincial exchange database (前置库): the tables and how a record becomes a
row (pure: records in, rows out; no I/O).

Rules of this module:
- one table per case event kind, with the columns of the ``gbt39046`` source mapping
  (adapters/mappings/gbt39046.py), so what a node exports reads back as records with
  ``mapping = "gbt39046"`` (the province's own poller, or another fednode); the four kinds that mapping
  leaves out get tables of the same style (case_correction, case_correction_end, case_collect,
  case_evaluate);
- ``supervision`` (表11 电子监察): one row per alert (预警 / 黄牌 / 红牌 / 严重违规), keyed by ``alert_id``;
  ``supervision_ticket`` (督办单): one row per ticket, its state projected from every ticket.* record
  held (node/features/tickets/lifecycle.py), keyed by ``ticket_no``;
- every row is keyed by the record's natural key (node/core/domain.py NATURAL_KEYS: ``case_no``,
  ``case_no + step_no`` ...), so writing it again is an upsert, never a second row; ``record_id``
  (``origin/channel/seq``) names the signed record it comes from, ``id`` is the node's change-feed
  position (``local_seq``) and ``sync_time`` the time it was written (数据同步时间: the watermark a
  reader polls by, with ``id`` for ties);
- times are written as the national exchange format writes them, ``YYYYMMDDhhmmss`` in Beijing time;
  dates ``YYYYMMDD``; lists ``a;b``; booleans ``1``/``0``; amounts as decimals.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, Numeric, String, Table, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import SchemaItem

from adapters.mappings import gbt39046 as source_mapping
from node.core.domain import ALERT_LEVELS, NATURAL_KEYS
from node.core.records import channel_name

NAME = "gbt39046"
CST = dt.timezone(dt.timedelta(hours=8))

TIME_FIELDS = frozenset({"time", "promised_at", "started_at", "ended_at", "at"})
DATE_FIELDS = frozenset({"cert_valid_until"})
NUMBER_FIELDS = frozenset({"amount", "fee", "approved_days"})
BOOL_FIELDS = frozenset({"assigned", "accepted"})
LIST_FIELDS = frozenset({"materials", "evidence"})
INT_FIELDS = frozenset({"step_no", "suspend_no", "notice_no", "level"})
LONG_TEXT = frozenset({"opinion", "refuse_reason", "reason", "message", "materials", "evidence"})


def key_string(length: int) -> Any:
    """A key column: case-sensitive on MySQL/MariaDB too (their default collations fold case)."""
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def _case_tables() -> dict[str, tuple[str, dict[str, tuple[str, ...]]]]:
    """kind -> (table, column -> the record fields it holds, the first one present wins): the source mapping's
    six tables reversed, and four more. Where the mapping reads one column into two fields (``end_time`` is
    both ``time`` and ``ended_at`` of a step), the column holds the specific field, else ``time``, and the
    event's own ``time`` gets a column of its own, ``event_time``."""
    out: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {}
    for tm in source_mapping.MAPPING["tables"]:
        cols: dict[str, tuple[str, ...]] = {}
        for f, spec in tm["fields"].items():
            col = spec if isinstance(spec, str) else spec["column"]
            cols[col] = tuple(sorted((*cols.get(col, ()), f), key=lambda x: x == "time"))
        if any(len(fs) > 1 for fs in cols.values()):
            cols["event_time"] = ("time",)
        out[tm["kind"]] = (tm["table"], cols)
    common = {"case_no": ("case_no",), "item_code": ("item_code",), "division": ("division",), "dept": ("dept",)}
    out["case.correction_notice"] = ("case_correction", {**common, "notice_time": ("time",),
                                                         "notice_no": ("notice_no",), "materials": ("materials",),
                                                         "issuer": ("issuer",)})
    out["case.correction_accepted"] = ("case_correction_end", {**common, "accept_time": ("time",),
                                                               "notice_no": ("notice_no",)})
    out["case.collect"] = ("case_collect", {**common, "collect_time": ("time",), "collector": ("collector",),
                                            "method": ("method",)})
    out["case.evaluate"] = ("case_evaluate", {**common, "evaluate_time": ("time",),
                                              "satisfaction": ("satisfaction",)})
    return out


CASE_TABLES = _case_tables()

ALERT_FIELDS = {"alert_id": "alert_id", "rule_id": "rule_id", "category": "category", "level": "level",
                "object": "object", "case_no": "case_no", "step_no": "step_no", "division": "division",
                "dept": "dept", "item_code": "item_code", "message": "message", "at": "occur_time",
                "source": "source"}
TICKET_COLUMNS = ("ticket_no", "issuer", "target", "subject", "content", "basis", "rule_id", "case_nos", "alert_ids",
                  "complaint_no", "issue_time", "sign_deadline", "reply_deadline", "state", "delivered_time",
                  "sign_time", "reply_time", "reply_text", "replied_on_time", "returns", "conclude_time", "verdict",
                  "score", "conclusion", "reminders", "escalations")


def _column(name: str, field: str, key: bool) -> Column[Any]:
    if field in INT_FIELDS:
        return Column(name, Integer, primary_key=key, autoincrement=False, nullable=not key)
    if key:
        return Column(name, key_string(200 if field == "alert_id" else 64), primary_key=True)
    if field in NUMBER_FIELDS:
        return Column(name, Numeric(20, 4))
    if field in TIME_FIELDS:
        return Column(name, String(14))
    if field in DATE_FIELDS:
        return Column(name, String(8))
    if field in BOOL_FIELDS:
        return Column(name, String(1))
    if field in LONG_TEXT:
        return Column(name, Text)
    return Column(name, String(200))


def _trace(table: str) -> list[SchemaItem]:
    """The columns every table ends with, and the (sync_time, id) index a reader polls by."""
    return [Column("origin", String(64), nullable=False), Column("record_id", String(100), nullable=False),
            Column("id", BigInteger, nullable=False), Column("sync_time", DateTime, nullable=False),
            Index(f"ix_{table}_sync"[:60], "sync_time", "id")]


def tables(md: MetaData | None = None, prefix: str = "") -> dict[str, Table]:
    """Every table of the layout (name -> Table), on ``md``; ``prefix`` goes before each table name."""
    md = md or MetaData()
    out: dict[str, Table] = {}

    def table(name: str, items: list[SchemaItem], comment: str) -> Table:
        return Table(prefix + name, md, *items, *_trace(prefix + name), comment=comment,
                     mysql_charset="utf8mb4", mariadb_charset="utf8mb4")

    for kind, (name, columns) in CASE_TABLES.items():
        keys = NATURAL_KEYS[kind]
        out[name] = table(name, [_column(col, fs[0], fs[0] in keys) for col, fs in columns.items()],
                          f"{kind} (GB/T 39046)")
    out["supervision"] = table("supervision", [*[_column(col, f, f == "alert_id") for f, col in ALERT_FIELDS.items()],
                                               Column("level_name", String(8))],
                               "表11 电子监察: alerts (预警/黄牌/红牌/严重违规)")
    ticket_cols: list[SchemaItem] = [Column("ticket_no", key_string(64), primary_key=True)]
    for c in TICKET_COLUMNS[1:]:
        if c in ("returns", "score", "reminders", "escalations"):
            ticket_cols.append(Column(c, Integer))
        elif c in ("replied_on_time",):
            ticket_cols.append(Column(c, String(1)))
        elif c.endswith(("_time", "_deadline")):
            ticket_cols.append(Column(c, String(14)))
        elif c in ("content", "basis", "case_nos", "alert_ids", "reply_text", "conclusion"):
            ticket_cols.append(Column(c, Text))
        else:
            ticket_cols.append(Column(c, String(200)))
    out["supervision_ticket"] = table("supervision_ticket", ticket_cols, "督办单: supervision tickets")
    return out


def key_columns(table: Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


# ---- values ------------------------------------------------------------------------------------------------


def exchange_time(v: Any) -> str | None:
    """``2025-10-09T09:30:00+08:00`` → ``20251009093000`` (Beijing time)."""
    if not isinstance(v, str) or not v:
        return None
    t = dt.datetime.fromisoformat(v)
    if t.tzinfo is None:
        t = t.replace(tzinfo=CST)
    return t.astimezone(CST).strftime("%Y%m%d%H%M%S")


def _value(field: str, v: Any) -> Any:
    if v is None:
        return None
    if field in TIME_FIELDS:
        return exchange_time(v)
    if field in DATE_FIELDS:
        return str(v).replace("-", "")
    if field in LIST_FIELDS:
        return ";".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)
    if field in BOOL_FIELDS:
        return "1" if v else "0"
    if field in NUMBER_FIELDS:
        return Decimal(str(v))
    if field in INT_FIELDS:
        return int(v)
    return v if isinstance(v, str) else str(v)


def trace(origin: str, channel: int, seq: int, local_seq: int, now: dt.datetime) -> dict[str, Any]:
    """The trace columns: the signed record a row comes from (``320303/bulk/17``), its feed position, the time."""
    return {"origin": origin, "record_id": f"{origin}/{channel_name(channel)}/{seq}", "id": local_seq,
            "sync_time": now}


def case_row(kind: str, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(table, row without its trace columns) of a case event; None for a kind the layout has no table for."""
    spec = CASE_TABLES.get(kind)
    if spec is None:
        return None
    name, columns = spec
    row = {}
    for col, fs in columns.items():
        f = next((f for f in fs if payload.get(f) is not None), fs[0])
        row[col] = _value(f, payload.get(f))
    return name, row


def alert_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    row = {col: _value(f, payload.get(f)) for f, col in ALERT_FIELDS.items()}
    row["level_name"] = ALERT_LEVELS.get(row["level"], "") if row["level"] is not None else ""
    return row


def ticket_row(st: Any) -> dict[str, Any]:
    """The row of one ticket's projected state (node/features/tickets/lifecycle.TicketState)."""
    return {
        "ticket_no": st.ticket, "issuer": st.issuer, "target": st.to, "subject": st.subject, "content": st.body,
        "basis": st.basis, "rule_id": st.rule_id, "case_nos": ";".join(st.case_nos),
        "alert_ids": ";".join(st.alert_ids), "complaint_no": st.complaint_no,
        "issue_time": exchange_time(st.issued_at), "sign_deadline": exchange_time(st.deadlines.get("sign")),
        "reply_deadline": exchange_time(st.deadlines.get("reply")), "state": st.state,
        "delivered_time": exchange_time(st.delivered_at), "sign_time": exchange_time(st.signed_at),
        "reply_time": exchange_time(st.replied_at), "reply_text": st.reply_text,
        "replied_on_time": None if st.replied_on_time is None else ("1" if st.replied_on_time else "0"),
        "returns": st.returns, "conclude_time": exchange_time(st.concluded_at), "verdict": st.verdict,
        "score": st.score, "conclusion": st.conclusion, "reminders": len(st.reminders),
        "escalations": len(st.escalations),
    }
