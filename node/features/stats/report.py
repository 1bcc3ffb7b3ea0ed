"""Renderings of a breakdown (``query.breakdown``): terminal table, CSV and a self-contained HTML
report with inline SVG charts (no script, no network, no CDN: leaders open it anywhere)."""

from __future__ import annotations

import csv
import html as _html
import io
import unicodedata
from collections.abc import Callable
from typing import Any

from node.core.indicators import INDICATORS, RATES

_COLUMNS = list(INDICATORS)


def fmt_value(key: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 100:.1f}%" if key in RATES else f"{v:.2f}"


def fmt_change(key: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 100:+.1f}点" if key in RATES else f"{v * 100:+.1f}%"


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _pad(s: str, w: int, right: bool = False) -> str:
    fill = " " * max(0, w - _width(s))
    return fill + s if right else s + fill


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded by display width (CJK characters count 2), numbers right-aligned."""
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(_pad(c, widths[i], right=i > 0) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _cells(r: dict[str, Any]) -> list[str]:
    t = r["totals"]
    score = "—" if r["score"] is None else f"{r['score']:.1f}"
    return [r["label"], str(t["accepted"]), str(t["completed"]),
            *(fmt_value(k, r["indicators"][k]) for k in _COLUMNS), score, r["grade"] or "—",
            "" if r["rank"] is None else str(r["rank"])]


def text(data: dict[str, Any]) -> str:
    header = [{"division": "辖区", "dept": "部门", "item_type": "事项类型", "period": "期间"}[data["by"]],
              "受理", "办结", *INDICATORS.values(), "得分", "等级", "排名"]
    rows = [_cells(r) for r in data["rows"]] + [_cells(data["total"])]
    title = f"统计范围 {data['scope']}" + (f" / {data['subtree']}" if data.get("subtree") else "")
    title += f"  按{header[0]}" + (f"  期间 {data['at']}" if data.get("at") else "")
    out = [title, text_table(header, rows)]
    changes = [r for r in data["rows"] if r.get("mom") or r.get("yoy")]
    if changes:
        ch_header = [header[0], "指标", "本期", "环比", "同比"]
        ch_rows = []
        for r in changes:
            for k in ("done_rate", "on_time_rate", "satisfaction_rate"):
                ch_rows.append([r["label"], INDICATORS[k], fmt_value(k, r["indicators"][k]),
                                fmt_change(k, (r.get("mom") or {}).get(k)), fmt_change(k, (r.get("yoy") or {}).get(k))])
        out += ["", "环比 / 同比", text_table(ch_header, ch_rows)]
    if data.get("skipped"):
        out.append(f"\n{data['skipped']} unreadable record(s) skipped (they stay in the store)")
    return "\n".join(out)


def csv_text(data: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    totals_keys = list(data["total"]["totals"])
    w.writerow([data["by"], *totals_keys, *_COLUMNS, "score", "grade", "rank",
                *(f"mom_{k}" for k in _COLUMNS), *(f"yoy_{k}" for k in _COLUMNS)])
    for r in [*data["rows"], data["total"]]:
        ind = r["indicators"]
        mom, yoy = r.get("mom") or {}, r.get("yoy") or {}
        w.writerow([r["key"], *(r["totals"][k] for k in totals_keys),
                    *("" if ind[k] is None else round(ind[k], 6) for k in _COLUMNS),
                    "" if r["score"] is None else round(r["score"], 3), r["grade"] or "", r["rank"] or "",
                    *("" if mom.get(k) is None else round(mom[k], 6) for k in _COLUMNS),
                    *("" if yoy.get(k) is None else round(yoy[k], 6) for k in _COLUMNS)])
    return buf.getvalue()


# ---- HTML ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei",sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eef2f7}td:first-child,th:first-child{text-align:left}tr.total td{font-weight:bold;background:#f7f7f7}
.g-优秀{color:#0a7d2c}.g-良好{color:#1f5fbf}.g-合格{color:#a26b00}.g-不合格{color:#c0262d}
.charts{display:flex;flex-wrap:wrap;gap:24px}figure{margin:0}figcaption{font-size:14px;font-weight:bold}
"""


def _bar_chart(title: str, labels: list[str], values: list[float | None], *, percent: bool, chart_id: str,
               show: Callable[[float], str] | None = None) -> str:
    """Horizontal bars, one per group; the value is printed beside each bar."""
    bar_h, gap, left, width = 22, 8, 130, 300
    top = 6
    h = top + len(labels) * (bar_h + gap) + 10
    vmax = 1.0 if percent else max([v for v in values if v is not None] + [1e-9])
    parts = [f'<figure id="{chart_id}"><figcaption>{_html.escape(title)}</figcaption>',
             f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{h}" role="img"'
             f' aria-label="{_html.escape(title)}">']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * (bar_h + gap)
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 6}" text-anchor="end" font-size="13">'
                     f'{_html.escape(label)}</text>')
        if v is None:
            parts.append(f'<text x="{left + 4}" y="{y + bar_h - 6}" font-size="13" fill="#888">—</text>')
            continue
        w = max(0.0, min(1.0, v / vmax)) * width
        color = "#2f6fd6" if not percent or v >= 0.9 else ("#e0a100" if v >= 0.6 else "#d0343b")
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        shown = show(v) if show else fmt_value("done_rate" if percent else "cards_per_100", v)
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar_h - 6}" font-size="13">{_html.escape(shown)}</text>')
    parts.append("</svg></figure>")
    return "".join(parts)


def html(data: dict[str, Any], *, title: str = "电子监察统计分析") -> str:
    rows = data["rows"]
    labels = [r["label"] for r in rows]
    charts = [
        _bar_chart(INDICATORS[k], labels, [r["indicators"][k] for r in rows], percent=k in RATES, chart_id=f"chart-{k}")
        for k in ("done_rate", "on_time_rate", "report_rate", "satisfaction_rate", "cards_per_100")
    ]
    charts.append(_bar_chart("综合得分", labels, [None if r["score"] is None else r["score"] / 100 for r in rows],
                             percent=True, chart_id="chart-score", show=lambda v: f"{v * 100:.1f}"))
    head = ["受理", "办结", *INDICATORS.values(), "得分", "等级", "排名"]
    first = {"division": "辖区", "dept": "部门", "item_type": "事项类型", "period": "期间"}[data["by"]]
    body = []
    for r, cls in [*((r, "") for r in rows), (data["total"], "total")]:
        cells = _cells(r)
        tds = "".join(f"<td>{_html.escape(c)}</td>" for c in cells[:-2])
        grade = cells[-2]
        body.append(f'<tr class="{cls}" data-key="{_html.escape(r["key"])}">{tds}'
                    f'<td class="g-{_html.escape(grade)}">{_html.escape(grade)}</td><td>{cells[-1]}</td></tr>')
    changes = ""
    if any(r.get("mom") or r.get("yoy") for r in rows):
        crow = []
        for r in rows:
            for k in ("done_rate", "on_time_rate", "satisfaction_rate"):
                crow.append("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in (
                    r["label"], INDICATORS[k], fmt_value(k, r["indicators"][k]),
                    fmt_change(k, (r.get("mom") or {}).get(k)), fmt_change(k, (r.get("yoy") or {}).get(k)))) + "</tr>")
        changes = (f"<h2>环比 / 同比</h2><table><tr><th>{first}</th><th>指标</th><th>本期</th><th>环比</th>"
                   f"<th>同比</th></tr>{''.join(crow)}</table>")
    scope = _html.escape(data["scope"] + (f" / {data['subtree']}" if data.get("subtree") else ""))
    period = _html.escape(data.get("at") or "全部期间")
    return (
        "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
        f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_html.escape(title)}</h1><p>统计范围 {scope}；期间 {period}；按{first}</p>"
        f"<h2>指标</h2><table id=\"indicators\"><tr><th>{first}</th>"
        + "".join(f"<th>{_html.escape(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
        + changes + f"<h2>图表</h2><div class=\"charts\">{''.join(charts)}</div></body></html>"
    )
