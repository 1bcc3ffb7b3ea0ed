"""Seeded, reproducible synthetic data: an item catalogue, then interleaved case flows.

Used by ``fednode ingest --synthetic N [--seed S]``, the demo and the benchmarks.

Rules of this module:
- ``generate(n, seed)`` yields exactly ``n`` (kind, payload) pairs, and the same arguments always
  yield the same pairs: the only randomness is one ``random.Random(seed)``, and nothing iterates a
  set or depends on hashing;
- payloads follow docs/records.md and pass ``node.domain.validate``, but the generator never calls
  it: it must produce well over 100k events/s for the benchmarks;
- the catalogue comes first; after it every record is in time order, and times fall only inside
  office hours (08:30-17:30) of official working days (chinese-calendar, 调休 included), so cases
  straddle the National Day and Spring Festival holidays the way real ones do;
- a known share of cases carries each anomaly the rules engine must find (see ``RATES``), so tests
  and demos can count on seeing every one of them.

Time inside the generator is an int count of *working seconds* since 08:30 of the first working
day; day ``t // WORK_LEN``, clock ``t % WORK_LEN``. That makes "N working days later" an addition.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import random
from bisect import bisect
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from itertools import accumulate
from typing import Any, Final

import chinese_calendar

from node.core.errors import UsageError

WORK_START: Final = 8 * 3600 + 30 * 60  # 08:30
WORK_LEN: Final = 9 * 3600  # until 17:30
CST: Final = timezone(timedelta(hours=8))
DEFAULT_START: Final = datetime(2025, 1, 2, 9, 0, tzinfo=CST)
DEFAULT_END: Final = date(2026, 12, 31)

# Share of cases (or of records of that sort) that carry each anomaly or feature.
RATES: Final = {
    "refused": 0.05,  # 不予受理 …
    "refused_without_reason": 0.25,  # … of which this share gives no reason (anomaly)
    "correction": 0.08,  # 补正告知
    "correction_never_back": 0.12,  # … of which the applicant never returns: result 5
    "suspend": 0.07,  # 特别程序
    "suspend_late": 0.15,  # … of which the resume comes after the approved end
    "unauthorised": 0.03,  # a step done by a post not allowed to do it (超越权限)
    "skipped": 0.02,  # a step left out (流程异常)
    "out_of_order": 0.015,  # two steps swapped (流程异常)
    "returned": 0.03,  # 审核 sends the case back to 承办 once (normal, but exercises the rules)
    "outside_discretion": 0.07,  # penalty outside its band (自由裁量偏离)
    "missing_evidence": 0.05,  # risk-point step without its evidence (风险点未采取预控措施)
    "overdue": 0.07,  # completed after the promised limit
    "past_statutory": 0.02,  # completed after the statutory limit
    "stalled": 0.015,  # accepted, then nothing more happens (open overdue case)
    "major": 0.04,  # amount above the item's major threshold
    "assigned": 0.01,  # 市委市政府交办
    "single_bidder": 0.06,
    "over_budget": 0.06,
    "contract_before_award": 0.04,
    "overspent": 0.06,  # share of project records with spending above the approved estimate (about)
}
# Share of arrivals that are not cases.
_OTHER_ARRIVALS: Final = (("complaint", 0.03), ("market", 0.025), ("project", 0.025))
# Measured mean records per arrival (cases and others); sets the arrival rate so a run of any
# size spreads over the whole period.
_EVENTS_PER_ARRIVAL: Final = 8.3

DIVISION_NAMES: Final = {
    "320000": "江苏省", "320300": "徐州市", "320302": "鼓楼区", "320303": "云龙区", "320305": "贾汪区",
    "320311": "泉山区", "320312": "铜山区", "320321": "丰县", "320322": "沛县", "320324": "睢宁县",
    "320381": "新沂市", "320382": "邳州市",
}  # fmt: skip
# suffix → (name after the division name, short name used in 文号)
DEPTS: Final = {
    "ZJ": ("住房和城乡建设局", "建"),
    "SCJG": ("市场监督管理局", "市监"),
    "WJ": ("卫生健康委员会", "卫"),
    "ST": ("生态环境局", "环"),
    "JT": ("交通运输局", "交"),
    "ZRZY": ("自然资源和规划局", "自然资源"),
    "CG": ("城市管理局", "城管"),
    "RF": ("人民防空办公室", "人防"),
    "GA": ("公安分局", "公"),
    "RS": ("人力资源和社会保障局", "人社"),
}

_FULL_STEPS: Final = (
    ("SL", "受理", 0.1, ("窗口受理员", "综合窗口")),
    ("CB", "承办", 0.4, ("承办人",)),
    ("SH", "审核", 0.2, ("科室负责人",)),
    ("PZ", "批准", 0.2, ("分管领导", "主要领导")),
    ("BJ", "办结", 0.1, ("发证窗口", "窗口受理员")),
)
_SHORT_STEPS: Final = (
    ("SL", "受理", 0.2, ("窗口受理员", "综合窗口")),
    ("CB", "承办", 0.5, ("承办人",)),
    ("BJ", "办结", 0.3, ("发证窗口", "窗口受理员")),
)
# posts that exist in every department: count of people per post
_STAFFING: Final = {
    "窗口受理员": 3, "综合窗口": 2, "发证窗口": 1, "承办人": 6, "科室负责人": 2, "分管领导": 2,
    "主要领导": 1, "办公室科员": 2, "临时聘用人员": 1,
}  # fmt: skip

_LIC_MATERIALS: Final = ("申请书", "营业执照副本复印件", "法定代表人身份证明", "授权委托书")
_PEN_MATERIALS: Final = ("立案审批表", "现场检查笔录", "询问笔录", "证据材料清单")

# code suffix, name, type, dept, case_kind, statutory, promised, weight, certificate, extra
# materials, risk points, discretion bands (circumstance, min, max yuan), major threshold, fee (yuan)
ITEMS: Final[tuple[tuple[Any, ...], ...]] = (
    ("010001", "建筑工程施工许可证核发", "01", "ZJ", "2", 15, 7, 6, "建筑工程施工许可证",
     ("建设工程规划许可证", "施工合同", "安全生产措施证明", "资金到位证明"), (("SH", "施工现场踏勘记录"),), (),
     50_000_000, None),
    ("010002", "食品经营许可", "01", "SCJG", "2", 20, 10, 10, "食品经营许可证",
     ("经营场所平面图", "食品安全管理制度", "从业人员健康证明"), (("SH", "现场核查记录"),), (), None, None),
    ("010003", "公共场所卫生许可", "01", "WJ", "2", 20, 10, 5, "公共场所卫生许可证",
     ("卫生检测报告", "从业人员健康合格证明", "卫生管理制度"), (("SH", "现场审查记录"),), (), None, None),
    ("010004", "排污许可证核发", "01", "ST", "2", 30, 15, 3, "排污许可证",
     ("排污许可证申请表", "自行监测方案", "环境影响评价批复"), (("SH", "专家技术评估意见"),), (), None, None),
    ("010005", "道路货物运输经营许可", "01", "JT", "2", 20, 8, 4, "道路运输经营许可证",
     ("车辆技术等级评定证明", "驾驶员从业资格证", "安全生产管理制度"), (), (), None, None),
    ("010006", "建设工程规划许可证核发", "01", "ZRZY", "2", 20, 10, 3, "建设工程规划许可证",
     ("建设用地使用权证明", "设计方案总平面图", "建筑施工图"), (("PZ", "规划委员会审议纪要"),), (),
     100_000_000, None),
    ("010007", "户外广告设施设置审批", "01", "CG", "2", 20, 5, 3, "户外广告设置许可决定书",
     ("设置位置效果图", "结构安全检测报告"), (), (), None, None),
    ("020001", "对未取得施工许可证擅自施工的行政处罚", "02", "ZJ", "2", 90, 60, 2, "行政处罚决定书",
     _PEN_MATERIALS, (("SH", "法制审核意见书"), ("PZ", "集体讨论记录")),
     (("从轻", 10_000, 50_000), ("一般", 50_000, 150_000), ("从重", 150_000, 300_000)), 200_000, None),
    ("020002", "对经营超过保质期食品的行政处罚", "02", "SCJG", "2", 90, 45, 3, "行政处罚决定书",
     _PEN_MATERIALS, (("SH", "法制审核意见书"),),
     (("从轻", 50_000, 70_000), ("一般", 70_000, 90_000), ("从重", 90_000, 100_000)), 100_000, None),
    ("020003", "对超标排放大气污染物的行政处罚", "02", "ST", "2", 90, 60, 2, "行政处罚决定书",
     _PEN_MATERIALS, (("SH", "法制审核意见书"), ("PZ", "集体讨论记录")),
     (("从轻", 100_000, 400_000), ("一般", 400_000, 700_000), ("从重", 700_000, 1_000_000)), 500_000, None),
    ("040001", "城市基础设施配套费征收", "04", "ZJ", "2", 10, 3, 4, "缴款通知书",
     ("建设工程规划许可证", "建筑面积测绘报告"), (("CB", "缴费核定单"),), (), None, (50_000, 3_000_000)),
    ("040002", "防空地下室易地建设费征收", "04", "RF", "2", 15, 5, 2, "缴款通知书",
     ("人防审查意见", "建筑面积测绘报告"), (("CB", "易地建设费核定单"),), (), None, (20_000, 800_000)),
    ("200001", "居民身份证换领", "20", "GA", "2", 60, 20, 12, "居民身份证",
     ("户口簿", "原居民身份证"), (), (), None, (20, 20)),
    ("200002", "社会保障卡申领", "20", "RS", "1", 1, 1, 10, "社会保障卡", ("身份证复印件", "近期免冠照片"),
     (), (), None, None),
    ("200003", "就业登记", "20", "RS", "1", 1, 1, 8, "就业登记证明", ("身份证复印件", "劳动合同"),
     (), (), None, None),
    ("200004", "无犯罪记录证明开具", "20", "GA", "2", 5, 1, 8, "无犯罪记录证明", ("身份证复印件", "户口簿"),
     (), (), None, None),
)  # fmt: skip


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_SURNAMES: Final = tuple(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴孔汤"
)
_GIVEN: Final = _words(
    "伟 芳 娜 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 霞 平 刚 斌 鹏 辉 玲 婷 建国 建华 志强 志明 海燕 红梅 "
    "玉兰 春梅 晓东 晓明 文博 子涵 梓轩 浩然 欣怡 雨涵 思远 一鸣 宇航 佳怡 秀英 桂英 秀兰 国强 立新 "
    "卫东 振华 永刚 德明 爱华 淑珍 丽娟 海波 俊杰 慧敏 晨曦 若曦 子豪 紫涵 家乐 嘉怡 文静 金凤"
)
_BRANDS: Final = _words(
    "恒泰 华润 宏达 鑫源 金盛 中天 汉源 彭城 淮海 苏北 大彭 泰和 永盛 新元 博远 天正 嘉禾 瑞丰 东方 "
    "龙腾 鼎盛 汇通 长兴 锦程 盛世 徐工 云祥 和顺"
)
_INDUSTRIES: Final = _words(
    "建设工程 建筑安装 餐饮管理 食品 商贸 物流 运输 环保科技 化工 医药连锁 房地产开发 物业管理 机械制造 "
    "电子科技 文化传媒 广告 酒店管理"
)
_COMPANY_SUFFIX: Final = ("有限公司", "有限公司", "有限责任公司", "股份有限公司")
_CHANNELS: Final = (("1", 45), ("2", 38), ("3", 12), ("4", 4), ("9", 1))
_SATISFACTION_GOOD: Final = (("1", 52), ("2", 34), ("3", 10), ("4", 3), ("5", 1))
_SATISFACTION_BAD: Final = (("1", 10), ("2", 20), ("3", 30), ("4", 28), ("5", 12))
_COLLECT: Final = (("窗口领取", 60), ("邮寄送达", 28), ("电子证照下载", 12))
_REFUSE_REASONS: Final = (
    "申请事项不属于本机关职权范围，已告知向有关行政机关申请",
    "申请人不具备法定申请资格",
    "申请材料存在虚假内容",
    "依法不需要取得行政许可",
)
_SUSPEND_REASONS: Final = {
    "1": ("情况复杂，需延长审批期限", "涉及多部门会商，经批准延长办理期限"),
    "2": ("组织听证", "组织专家评审", "委托第三方检验检测", "现场勘验", "公示期"),
}
_COMPLAINT_SOURCES: Final = ("12345政务服务热线", "来信", "来访", "网上信访", "市长信箱", "上级交办")
_COMPLAINT_TEMPLATES: Final = (
    "办理{item}时窗口工作人员态度生硬，多次往返仍未办结",
    "{item}超过承诺时限未办结，也未说明原因",
    "办理{item}时被要求提交清单以外的材料",
    "{item}网上申报后长期显示“审核中”，电话无人接听",
    "反映{item}办理过程中有工作人员暗示“找关系”",
    "对{item}的处理结果不服，认为适用标准不一致",
)
_MARKETS: Final = {
    "drug": (
        ("{d}人民医院{y}年度常用药品集中带量采购", "{d}中医院{y}年度中药饮片采购"),
        ("公开招标", "带量采购"),
    ),
    "gov_procurement": (
        ("{d}教育局{y}年中小学信息化设备采购", "{d}政务服务中心办公家具采购", "{d}城市管理局环卫车辆采购"),
        ("公开招标", "竞争性磋商", "竞争性谈判", "询价", "单一来源采购"),
    ),
    "land": (("{d}{y}-{n}号地块国有建设用地使用权出让",), ("挂牌出让", "拍卖出让", "招标出让")),
    "construction": (
        (
            "{d}第{n}中学教学楼新建工程施工",
            "{d}老旧小区改造工程（{y}年第{n}批）",
            "{d}市政道路雨污分流改造工程",
        ),
        ("公开招标", "邀请招标"),
    ),
    "equipment": (
        ("{d}污水处理厂提标改造设备采购", "{d}人民医院医用电梯采购及安装"),
        ("公开招标", "邀请招标"),
    ),
}
_BUYERS: Final = {
    "drug": ("人民医院", "中医院", "妇幼保健院"),
    "gov_procurement": ("教育局", "政务服务中心", "城市管理局"),
    "land": ("自然资源和规划局",),
    "construction": ("住房和城乡建设局", "教育局", "城市建设投资有限公司"),
    "equipment": ("人民医院", "水务局", "城市管理局"),
}
_MARKET_DOCS: Final = ("招标公告", "招标文件", "评标报告", "中标通知书", "合同文本")
_PROJECTS: Final = (
    ("{d}城市轨道交通配套道路工程", "交通"),
    ("{d}水环境综合整治工程", "水利"),
    ("{d}第二人民医院新建工程", "医疗卫生"),
    ("{d}棚户区改造安置房项目", "保障性住房"),
    ("{d}故黄河生态廊道建设工程", "生态环保"),
    ("{d}污水处理厂扩建工程", "市政"),
    ("{d}中小学校舍提升工程", "教育"),
    ("{d}智慧城市运营中心建设项目", "信息化"),
    ("{d}三环东路快速化改造工程", "交通"),
    ("{d}体育中心新建工程", "文化体育"),
)
_PROJECT_SOURCES: Final = ("财政预算内投资", "地方政府专项债券", "中央预算内投资", "政府和社会资本合作")
_PROJECT_STAGES: Final = ("basic", "design", "tender", "progress", "funds", "quality")
_STAGE_DETAIL: Final = {
    "basic": "项目立项批复，概算{e}万元",
    "design": "初步设计及概算审批完成",
    "tender": "施工总承包招标完成，中标单位{c}",
    "progress": "形象进度{p}%，主体结构施工中",
    "funds": "累计拨付资金{s}万元，占概算{r}%",
    "quality": "质量监督抽检合格，未发现重大质量问题",
}
_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
_USCC_CHARS: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS: Final = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_WEIGHTS: Final = (3, 7, 9, 10, 5, 8, 4, 2)

_clock_cache: list[str] = []


def _clock() -> list[str]:
    """'hh:mm:ss+08:00' for every second of the office day, built once (formatting is the hot path)."""
    if not _clock_cache:
        for s in range(WORK_START, WORK_START + WORK_LEN):
            _clock_cache.append(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+08:00")
    return _clock_cache


def _num(x: float) -> int | float:
    """Integral values as ints, as node.domain.validate normalises them: generated bytes = stored bytes."""
    return int(x) if x.is_integer() else x


def _round_to(x: float, digits: int) -> int | float:
    return _num(float(round(x, digits)))


def is_workday(d: date) -> bool:
    """Official working day. Beyond the years chinese-calendar knows: Monday to Friday except the
    fixed-date holidays (the lunar ones and 调休 cannot be guessed; the node's calendar loads them)."""
    try:
        return bool(chinese_calendar.is_workday(d))
    except NotImplementedError:
        return d.weekday() < 5 and (d.month, d.day) not in _FIXED_HOLIDAYS


_FIXED_HOLIDAYS: Final = frozenset({(1, 1), (5, 1), (10, 1), (10, 2), (10, 3)})


def _weighted(pairs: tuple[tuple[str, int], ...]) -> tuple[tuple[str, ...], list[float]]:
    total = sum(w for _, w in pairs)
    return tuple(c for c, _ in pairs), [c / total for c in accumulate(w for _, w in pairs)]


class _Generator:
    def __init__(self, n_events: int, seed: int, division: str, start: datetime | None) -> None:
        if not (
            isinstance(division, str) and len(division) == 6 and division.isascii() and division.isdigit()
        ):
            raise UsageError(f"{division!r} is not a division code", fix="use a 6-digit code such as 320303")
        if n_events < 0:
            raise UsageError(
                f"n_events must not be negative (got {n_events})", fix="ask for 0 or more events"
            )
        self.n = n_events
        self.rng = random.Random(seed)
        self.division = division
        self.dname = DIVISION_NAMES.get(division, f"{division}区")
        self.seed3 = f"{seed % 1000:03d}"
        start = start or DEFAULT_START
        start = start.replace(tzinfo=CST) if start.tzinfo is None else start.astimezone(CST)
        end = max(DEFAULT_END, start.date() + timedelta(days=365))
        self.days: list[date] = []
        self.prefix: list[str] = []
        self.compact: list[str] = []
        self._next_day = start.date()
        self._extend_to(end)
        span_days = len(self.days)
        offset = start.hour * 3600 + start.minute * 60 + start.second - WORK_START
        first_is_start = self.days[0] == start.date()
        self.t0 = min(max(offset, 0), WORK_LEN - 1) if first_is_start else 0
        self.clock = _clock()
        cases_and_more = max(1.0, (n_events - len(ITEMS)) / _EVENTS_PER_ARRIVAL)
        # arrivals stop ~25 working days before the end, so flows still open then finish inside it
        self.mean_gap = max(1.0, (max(1, span_days - 25) * WORK_LEN - self.t0) / cases_and_more)
        self.tick = itertools.count()  # heap tie-breaker: keeps a flow's records in push order
        self.heap: list[tuple[int, int, str, dict[str, Any]]] = []
        self.counters = {"case": 0, "complaint": 0, "market": 0, "project": 0, "cert": 0}
        self.channels = _weighted(_CHANNELS)
        self.sat_good = _weighted(_SATISFACTION_GOOD)
        self.sat_bad = _weighted(_SATISFACTION_BAD)
        self.collect_ways = _weighted(_COLLECT)
        self.arrival_kinds = _weighted(
            (("case", 1000 - sum(int(w * 1000) for _, w in _OTHER_ARRIVALS)),)
            + tuple((k, int(w * 1000)) for k, w in _OTHER_ARRIVALS)
        )
        self._build_people()
        self._build_catalogue()
        self.projects: list[dict[str, Any]] = []

    # ---- calendar ----------------------------------------------------------------------------------

    def _extend_to(self, until: date) -> None:
        d = self._next_day
        while d <= until:
            if is_workday(d):
                self.days.append(d)
                iso = d.isoformat()
                self.prefix.append(iso + "T")
                self.compact.append(iso.replace("-", ""))
            d += timedelta(days=1)
        self._next_day = d

    # No bounds checks here (hot path): run() keeps the calendar 500 working days ahead of the
    # latest arrival, longer than any flow lasts.
    def ts(self, t: int) -> str:
        return self.prefix[t // WORK_LEN] + self.clock[t % WORK_LEN]

    def day_end(self, day: int) -> str:
        return self.prefix[day] + "17:30:00+08:00"

    def day_date(self, day: int) -> date:
        return self.days[day]

    # ---- people and organisations ------------------------------------------------------------------

    def _name(self) -> str:
        r = self.rng
        return r.choice(_SURNAMES) + r.choice(_GIVEN)

    def _person_id(self) -> str:
        r = self.rng
        birth = date(1950, 1, 1) + timedelta(days=r.randrange(20000))
        body = f"{self.division}{birth:%Y%m%d}{r.randrange(1000):03d}"
        return body + _ID_CHECK[sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]

    def _uscc(self) -> str:
        r = self.rng
        org = "".join(r.choice("0123456789ABCDEFGHJKLMNPQRTUWXY") for _ in range(8))
        vals = [_USCC_CHARS.index(c) for c in org]
        c9 = 11 - sum(v * w for v, w in zip(vals, _ORG_WEIGHTS, strict=True)) % 11
        org += "X" if c9 == 10 else ("0" if c9 == 11 else str(c9))
        body = "91" + self.division + org
        check = (
            31 - sum(_USCC_CHARS.index(c) * w for c, w in zip(body, _USCC_WEIGHTS, strict=True)) % 31
        ) % 31
        return body + _USCC_CHARS[check]

    def _build_people(self) -> None:
        r = self.rng
        self.persons = [(self._name(), self._person_id()) for _ in range(3000)]
        companies = []
        for _ in range(600):
            name = f"徐州{r.choice(_BRANDS)}{r.choice(_INDUSTRIES)}{r.choice(_COMPANY_SUFFIX)}"
            companies.append((name, self._uscc(), self._name()))
        self.companies = companies
        # staff[dept][post] = names; the same people handle every case of their department
        self.staff: dict[str, dict[str, list[str]]] = {
            dept: {post: [self._name() for _ in range(k)] for post, k in _STAFFING.items()} for dept in DEPTS
        }

    def _build_catalogue(self) -> None:
        div = self.division
        self.items: list[dict[str, Any]] = []
        for row in ITEMS:
            (suffix, name, itype, dept, case_kind, statutory, promised, weight, cert,
             materials, risks, bands, major, fee) = row  # fmt: skip
            template = _SHORT_STEPS if case_kind == "1" else _FULL_STEPS
            steps = [
                {"step_code": code, "name": sname, "limit_days": _num(max(0.5, round(promised * share * 2) / 2)),
                 "posts": list(posts)}
                for code, sname, share, posts in template
            ]  # fmt: skip
            dept_code = f"{div}-{dept}"
            payload = {
                "item_code": f"{div}{suffix}",
                "name": name,
                "item_type": itype,
                "dept": dept_code,
                "dept_name": self.dname + DEPTS[dept][0],
                "division": div,
                "case_kind": case_kind,
                "statutory_days": statutory,
                "promised_days": promised,
                "unit": "workday",
                "steps": steps,
                "discretion": [
                    {"circumstance": c, "min_amount": lo, "max_amount": hi} for c, lo, hi in bands
                ],
                "risk_points": [{"step_code": s, "evidence": e} for s, e in risks],
                "major_threshold": major,
            }
            base_materials = _PEN_MATERIALS if itype == "02" else (_LIC_MATERIALS if itype != "20" else ())
            self.items.append(
                {
                    "payload": payload,
                    "code": payload["item_code"],
                    "type": itype,
                    "dept": dept_code,
                    "dept_suffix": dept,
                    "case_kind": case_kind,
                    "statutory": statutory,
                    "promised": promised,
                    "steps": [(s["step_code"], s["name"], s["limit_days"], s["posts"]) for s in steps],
                    "risk": dict(risks),
                    "bands": bands,
                    "major": major,
                    "fee": fee,
                    "cert": cert,
                    "materials": list(dict.fromkeys(base_materials + materials))
                    if itype != "02"
                    else list(materials),
                }
            )
        self.item_cum = [c / sum(r[7] for r in ITEMS) for c in accumulate(r[7] for r in ITEMS)]

    # ---- output --------------------------------------------------------------------------------------

    def push(self, t: int, kind: str, payload: dict[str, Any]) -> None:
        heapq.heappush(self.heap, (t, next(self.tick), kind, payload))

    def run(self) -> Iterator[tuple[str, dict[str, Any]]]:
        left = self.n
        for item in self.items:
            if left <= 0:
                return
            yield "item", copy.deepcopy(item["payload"])
            left -= 1
        r = self.rng.random
        heap = self.heap
        kinds, cum = self.arrival_kinds
        arrival = self.t0
        makers = {
            "case": self._case,
            "complaint": self._complaint,
            "market": self._market,
            "project": self._project,
        }
        while left > 0:
            # every record of an arrival is at or after the arrival, so creating arrivals lazily
            # up to the earliest pending record keeps the output in time order
            while not heap or arrival <= heap[0][0]:
                if arrival // WORK_LEN + 500 >= len(self.days):
                    self._extend_to(self._next_day + timedelta(days=800))
                makers[kinds[bisect(cum, r())]](arrival)
                arrival += 1 + int(self.rng.expovariate(1.0) * self.mean_gap)
            _, _, kind, payload = heapq.heappop(heap)
            yield kind, payload
            left -= 1

    # ---- case flow ------------------------------------------------------------------------------------

    def _case(self, t: int) -> None:
        rng = self.rng
        r = rng.random
        prefix, clock = self.prefix, self.clock

        def ts(t: int) -> str:
            return prefix[t // WORK_LEN] + clock[t % WORK_LEN]

        heap, tick, heappush = self.heap, self.tick, heapq.heappush

        def push(t: int, kind: str, payload: dict[str, Any]) -> None:
            heappush(heap, (t, next(tick), kind, payload))

        it = self.items[bisect(self.item_cum, r())]
        self.counters["case"] += 1
        day = t // WORK_LEN
        case_no = f"{self.division}{self.compact[day]}{self.seed3}{self.counters['case']:06d}"
        base = {"case_no": case_no, "item_code": it["code"], "division": self.division, "dept": it["dept"]}
        staff = self.staff[it["dept_suffix"]]
        itype = it["type"]

        # apply --------------------------------------------------------------------------------------
        person = itype == "20" or (itype != "04" and r() < 0.25)
        if person:
            applicant, applicant_id = self.persons[int(r() * len(self.persons))]
            agent = applicant
        else:
            applicant, applicant_id, agent = self.companies[int(r() * len(self.companies))]
        materials = it["materials"]
        if len(materials) > 2 and r() < 0.3:
            materials = materials[:-1]
        apply: dict[str, Any] = {
            **base,
            "time": ts(t),
            "applicant_type": "自然人" if person else "法人",
            "applicant_name": applicant,
            "applicant_id": applicant_id,
            "materials": list(materials),
            "channel_code": "9" if itype == "02" else self.channels[0][bisect(self.channels[1], r())],
            "assigned": r() < RATES["assigned"],
        }
        major = it["major"]
        if major is not None:
            apply["amount"] = _round_to(
                major * (1.05 + r() * 2 if r() < RATES["major"] else 0.02 + r() * 0.9), -2
            )
        push(t, "case.apply", apply)

        # accept -------------------------------------------------------------------------------------
        t += 300 + int(r() * (1800 if it["case_kind"] == "1" else WORK_LEN * 0.8))
        clerk_post = "窗口受理员" if r() < 0.7 else "综合窗口"
        clerks = staff[clerk_post]
        clerk = clerks[int(r() * len(clerks))]
        if itype != "02" and r() < RATES["refused"]:
            accept = {
                **base,
                "time": ts(t),
                "handler": clerk,
                "accepted": False,
                "case_kind": it["case_kind"],
            }
            if r() >= RATES["refused_without_reason"]:
                accept["refuse_reason"] = rng.choice(_REFUSE_REASONS)
            push(t, "case.accept", accept)
            if r() < 0.3:
                t += 600 + int(r() * WORK_LEN)
                push(t, "case.evaluate", {**base, "time": ts(t), "satisfaction": self._pick(self.sat_bad)})
            return
        accept_day = t // WORK_LEN
        promised = it["promised"]
        push(
            t,
            "case.accept",
            {**base, "time": ts(t), "handler": clerk, "accepted": True, "case_kind": it["case_kind"],
             "promised_at": self.day_end(accept_day + promised)},
        )  # fmt: skip

        # how long the case will take in counted working time, decided up front
        x = r()
        if x < RATES["past_statutory"]:
            work = int((it["statutory"] + 1.2 + r() * 4) * WORK_LEN)
            late = True
        elif x < RATES["past_statutory"] + RATES["overdue"]:
            work = int((promised * (1.02 + r() * 0.15) + 0.3 + r() * 4) * WORK_LEN)
            late = True
        else:
            work = int(promised * WORK_LEN * (0.1 + r() * 0.8))
            late = False

        # steps --------------------------------------------------------------------------------------
        plan = list(it["steps"])  # (code, name, limit, posts)
        anomaly = r()
        if len(plan) == 5:
            if anomaly < RATES["skipped"]:
                del plan[2 + int(r() * 2)]  # 审核 or 批准 left out
            elif anomaly < RATES["skipped"] + RATES["out_of_order"]:
                plan[2], plan[3] = plan[3], plan[2]
            elif anomaly < RATES["skipped"] + RATES["out_of_order"] + RATES["returned"]:
                plan[2:3] = [(*plan[2], "return"), plan[1], plan[2]]
        unauthorised = int(r() * len(plan)) if r() < RATES["unauthorised"] else -1
        weights = [(s[2] or 0.5) * (0.2 + rng.expovariate(1.0)) for s in plan]
        wsum = sum(weights)
        correction = r() < RATES["correction"]
        suspend_after = int(1 + r() * (len(plan) - 2)) if itype != "20" and r() < RATES["suspend"] else -1
        stall_after = int(r() * len(plan)) if r() < RATES["stalled"] else -1
        bands = it["bands"]
        risk = it["risk"]
        handler = clerk
        amount_circ: tuple[float, str] | None = None
        if bands:
            circ, lo, hi = rng.choice(bands)
            if r() < RATES["outside_discretion"]:
                amount = hi * (1.1 + r() * 0.8) if r() < 0.7 else lo * (0.3 + r() * 0.6)
            else:
                amount = lo + (hi - lo) * r()
            amount_circ = (_round_to(amount, -2), circ)

        for i, step in enumerate(plan):
            code, sname, _limit, posts = step[:4]
            if i == unauthorised:
                post = rng.choice([p for p in _STAFFING if p not in posts])
                handler = rng.choice(staff[post])
            elif i == 0:
                post = clerk_post if clerk_post in posts else posts[0]
                handler = clerk if clerk_post in posts else rng.choice(staff[post])
            else:
                post = posts[int(r() * len(posts))]
                people = staff[post]
                handler = people[int(r() * len(people))]
            started = t + 60 + int(r() * 600)
            t = started + int(work * weights[i] / wsum)
            action = step[4] if len(step) > 4 else "pass"
            ended = ts(t)
            payload: dict[str, Any] = {
                **base,
                "time": ended,
                "step_no": i + 1,
                "step_code": code,
                "step_name": sname,
                "handler": handler,
                "post": post,
                "opinion": _OPINIONS[code] if action == "pass" else "材料核实不充分，退回承办人补充调查",
                "action": action,
                "started_at": ts(started),
                "ended_at": ended,
                "evidence": [],
            }
            if code in risk and r() >= RATES["missing_evidence"]:
                payload["evidence"] = [risk[code]]
            if amount_circ is not None and code in ("CB", "PZ"):
                payload["amount"], payload["circumstance"] = amount_circ
                if code == "CB" and action == "pass":
                    payload["opinion"] = (
                        f"经调查，违法事实清楚，证据确凿，拟按“{amount_circ[1]}”情节处罚款{amount_circ[0]}元"
                    )
            push(t, "case.step", payload)
            if i == stall_after:
                return
            if i == 0 and correction:
                t += 300 + int(r() * 3600)
                push(t, "case.correction_notice",
                     {**base, "time": ts(t), "notice_no": 1, "materials": materials[-2:] or ["补充说明材料"],
                      "issuer": handler})  # fmt: skip
                if r() < RATES["correction_never_back"]:
                    t += int((5 + r() * 10) * WORK_LEN)
                    push(t, "case.complete", {**base, "time": ts(t), "result_code": "5"})
                    return
                t += int((0.5 + r() * 6) * WORK_LEN)
                push(t, "case.correction_accepted", {**base, "time": ts(t), "notice_no": 1})
            if i == suspend_after:
                t = self._suspend(t, base, staff, promised, late)

        # complete, collect, evaluate ------------------------------------------------------------------
        t += 120 + int(r() * 1800)
        complete: dict[str, Any] = {**base, "time": ts(t)}
        x = r()
        if itype == "01":
            result = "0" if x < 0.5 else "6" if x < 0.92 else "7" if x < 0.97 else "1" if x < 0.985 else "2"
        elif itype == "02":
            result = "0" if x < 0.95 else "2" if x < 0.98 else "3"
        else:
            result = "0" if x < 0.96 else "1"
        complete["result_code"] = result
        certified = result in ("0", "6")
        if certified:
            self.counters["cert"] += 1
            year = self.day_date(t // WORK_LEN).year
            complete["cert_name"] = it["cert"]
            if itype == "02":
                short = DEPTS[it["dept_suffix"]][1]
                complete["cert_no"] = f"{self.dname[:1]}{short}罚决字〔{year}〕{self.counters['cert']}号"
            else:
                complete["cert_no"] = f"{it['code'][-4:]}{year}{self.counters['cert']:07d}"
            if itype == "01":
                valid = self.day_date(t // WORK_LEN)
                complete["cert_valid_until"] = (
                    f"{valid.year + (3 if r() < 0.5 else 5)}-{valid:%m-%d}".replace("-02-29", "-02-28")
                )
        fee = it["fee"]
        if fee is not None and certified:
            lo, hi = fee
            complete["fee"] = lo if lo == hi else _round_to(lo + (hi - lo) * r() ** 2, 2)
        push(t, "case.complete", complete)
        if certified and r() < 0.85:
            t += 600 + int(r() * 4 * WORK_LEN)
            push(t, "case.collect",
                 {**base, "time": ts(t), "collector": agent, "method": self._pick(self.collect_ways)})  # fmt: skip
        if r() < 0.6:
            t += 60 + int(r() * WORK_LEN)
            scale = self.sat_bad if late or result in ("1", "7") else self.sat_good
            push(t, "case.evaluate", {**base, "time": ts(t), "satisfaction": self._pick(scale)})

    def _suspend(
        self, t: int, base: dict[str, Any], staff: dict[str, list[str]], promised: int, late: bool
    ) -> int:
        r = self.rng.random
        for no in (1, 2) if r() < 0.1 else (1,):
            kind = "1" if r() < 0.4 else "2"
            approved = max(2, int(promised * (0.3 + r() * 0.7))) if kind == "1" else 3 + int(r() * 18)
            t += 300 + int(r() * 3600)
            self.push(
                t,
                "case.suspend",
                {**base, "time": self.ts(t), "suspend_no": no, "suspend_kind": kind,
                 "reason": self.rng.choice(_SUSPEND_REASONS[kind]), "approver": self.rng.choice(staff["分管领导"]),
                 "started_at": self.ts(t), "approved_days": approved},
            )  # fmt: skip
            if r() < RATES["suspend_late"]:
                t += int((approved + 0.2 + r() * 3) * WORK_LEN)
            else:
                t += int(approved * (0.3 + r() * 0.65) * WORK_LEN)
            self.push(
                t, "case.resume", {**base, "time": self.ts(t), "suspend_no": no, "ended_at": self.ts(t)}
            )
        return t

    def _pick(self, table: tuple[tuple[str, ...], list[float]]) -> str:
        return table[0][bisect(table[1], self.rng.random())]

    # ---- complaints, key markets, major projects ------------------------------------------------------

    def _complaint(self, t: int) -> None:
        r = self.rng.random
        it = self.items[bisect(self.item_cum, r())]
        self.counters["complaint"] += 1
        day = t // WORK_LEN
        payload = {
            "complaint_no": f"TS{self.division}{self.compact[day]}{self.seed3}{self.counters['complaint']:05d}",
            "complainant": "匿名" if r() < 0.2 else self._name(),
            "respondent_unit": it["payload"]["dept_name"],
            "content": self.rng.choice(_COMPLAINT_TEMPLATES).format(item=it["payload"]["name"]),
            "source": self.rng.choice(_COMPLAINT_SOURCES),
            "registered_at": self.ts(t),
            "due_at": self.day_end(day + (5 if r() < 0.5 else 15)),
            "division": self.division,
        }
        if r() < 0.7:
            payload["respondent_person"] = self.rng.choice(self.staff[it["dept_suffix"]]["窗口受理员"])
        self.push(t, "complaint.register", payload)

    def _market(self, t: int) -> None:
        rng = self.rng
        r = rng.random
        market = rng.choice(tuple(_MARKETS))
        names, procedures = _MARKETS[market]
        self.counters["market"] += 1
        year = self.day_date(t // WORK_LEN).year
        project = rng.choice(names).format(d=self.dname, y=year, n=1 + int(r() * 30))
        budget = _round_to(10 ** (5 + r() * 3.5), -3)
        bidders = 1 if r() < RATES["single_bidder"] else 3 + int(r() * 10)
        procedure = rng.choice(procedures)
        if procedure == "单一来源采购":
            bidders = 1
        amount = budget * ((1.02 + r() * 0.2) if r() < RATES["over_budget"] else (0.78 + r() * 0.21))
        winner = self.companies[int(r() * len(self.companies))][0]
        award = t
        if r() < RATES["contract_before_award"]:
            contract = max(0, award - int((1 + r() * 5) * WORK_LEN))
        else:
            contract = award + int((1 + r() * 20) * WORK_LEN)
        at = max(award, contract)
        payload = {
            "market": market,
            "txn_no": f"{self.division}-{market.upper()}-{year}{self.seed3}{self.counters['market']:05d}",
            "project": project,
            "buyer": self.dname + rng.choice(_BUYERS[market]),
            "suppliers": [winner],
            "bidders": bidders,
            "amount": _round_to(amount, 2),
            "budget": budget,
            "procedure": procedure,
            "award_at": self.ts(award),
            "contract_at": self.ts(contract),
            "documents": list(_MARKET_DOCS[: 3 + int(r() * 3)]),
            "division": self.division,
        }
        self.push(at, "market.transaction", payload)

    def _project(self, t: int) -> None:
        rng = self.rng
        r = rng.random
        if len(self.projects) < 4 or (len(self.projects) < 12 and r() < 0.1):
            self.counters["project"] += 1
            k = self.counters["project"] - 1
            name, category = _PROJECTS[k % len(_PROJECTS)]
            phase = f"（{k // len(_PROJECTS) + 1}期）" if k >= len(_PROJECTS) else ""
            # half the projects are already under way when supervision starts recording them
            progress = 20 + r() * 65 if r() < 0.5 else 0.0
            pace = 1.15 + r() * 0.25 if r() < RATES["overspent"] * 3 else 0.85 + r() * 0.13
            estimate = _round_to(10 ** (7 + r() * 2.5), -4)
            self.projects.append(
                {"no": f"XM{self.division}{self.seed3}{self.counters['project']:04d}",
                 "name": name.format(d=self.dname) + phase, "category": category,
                 "source": rng.choice(_PROJECT_SOURCES), "estimate": estimate, "pace": pace,
                 "stage": 3 if progress else 0, "spent": estimate * progress / 100 * pace, "progress": progress,
                 "last": -1}
            )  # fmt: skip
            p = self.projects[-1]
        else:
            p = self.projects[int(r() * len(self.projects))]
        t = max(t, p["last"] + 1)  # two records of one project never share a timestamp (natural key)
        p["last"] = t
        stage = _PROJECT_STAGES[p["stage"]] if p["stage"] < 3 else rng.choice(_PROJECT_STAGES[3:])
        p["stage"] += 1
        if stage in ("progress", "funds"):
            p["progress"] = min(100.0, p["progress"] + 2 + r() * 10)
            p["spent"] = max(p["spent"], p["estimate"] * p["progress"] / 100 * p["pace"])
            if p["progress"] >= 100.0:
                self.projects.remove(p)  # finished: make room for a new one
        detail = _STAGE_DETAIL[stage].format(
            e=round(p["estimate"] / 10_000),
            c=self.companies[int(r() * len(self.companies))][0],
            p=round(p["progress"], 1),
            s=round(p["spent"] / 10_000),
            r=round(100 * p["spent"] / p["estimate"], 1),
        )
        self.push(
            t,
            "project.record",
            {"project_no": p["no"], "name": p["name"], "source": p["source"], "category": p["category"],
             "stage": stage, "estimate": p["estimate"], "spent": _round_to(p["spent"], 2),
             "progress_pct": _round_to(p["progress"], 1), "detail": detail, "at": self.ts(t), "division": self.division},
        )  # fmt: skip


_OPINIONS: Final = {
    "SL": "申请材料齐全，符合法定形式，予以受理",
    "CB": "经审查，材料真实有效，符合规定条件，拟同意",
    "SH": "同意承办意见",
    "PZ": "同意",
    "BJ": "已制发结果文书，通知申请人领取",
}


def generate(
    n_events: int, seed: int = 0, *, division: str = "320303", start: datetime | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield exactly ``n_events`` (kind, payload) pairs: the item catalogue, then time-ordered flows.

    ``start`` (default 2025-01-02 09:00 Asia/Shanghai; naive means Asia/Shanghai) is when the first
    case arrives; arrivals spread to the end of 2026 (at least a year) whatever ``n_events`` is.
    Every payload is a fresh dict, so callers may keep or change them.
    """
    return _Generator(n_events, seed, division, start).run()


def catalogue(division: str = "320303") -> list[dict[str, Any]]:
    """The item records ``generate`` starts with, for tests and demos that only need the catalogue."""
    return [kind_payload[1] for kind_payload in generate(len(ITEMS), division=division)]
