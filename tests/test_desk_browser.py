"""The desk's acceptance flow in a real browser (issue 17): Debian's headless Chromium driven by Playwright
for Python (``executable_path``: browser downloads are impossible here), against real `fednode run`
processes (province 320000 on HTTPS → city 320300 → county 320303), each serving its desk.

A 监察员 at the city signs in, finds a red card raised at 320303 and turns it into a 督办 to 320303 in one
step; a 部门监察 at 320303 signs in on the county's desk, signs for it and replies; the city supervisor
concludes; the province's desk shows the whole history with the names. Screenshots of every page are
kept in test-artifacts/desk/ (gitignored). No page may raise a Content-Security-Policy violation or
any other console error, and no dialog may open (an XSS would).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.desklib import ARTIFACTS, CHROMIUM_ARGS, PASSWORD, Http, altered_record, chromium, desk_tree
from tests.desklib import DeskTree as Tree
from tests.faultlib import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    chromium()  # skip (or fail under FEDNODE_REQUIRE_BROWSER=1) before building anything
    with desk_tree(tmp_path_factory.mktemp("desk-browser"), tls=("320000",)) as t:
        yield t


class Browser:
    """One Chromium, a context per person; console errors and dialogs are collected and fail the test."""

    def __init__(self, pw: Any, exe: str) -> None:
        self.browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        self.problems: list[str] = []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def person(self, base: str, login: str) -> Any:
        ctx = self.browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN",
                                       ignore_https_errors=True)
        page = ctx.new_page()
        page.on("console", lambda m: self.problems.append(f"{login} console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"{login} page error: {e}"))
        page.on("dialog", lambda d: (self.problems.append(f"{login} dialog: {d.message}"), d.dismiss()))
        page.goto(base + "/login")
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        return page

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api_as(tree: Tree, node: str, login: str) -> Http:
    h = Http(tree.urls[node])
    h.api_login(login)
    return h


def state_at(h: Http, ticket: str) -> str | None:
    r = h.get(f"/api/v1/tickets/{ticket}")
    return r.json().get("state") if r.status == 200 else None


def test_red_card_to_ticket_to_conclusion_seen_by_the_province(tree: Tree) -> None:
    from playwright.sync_api import sync_playwright

    exe = chromium()
    city, county, province = tree.urls["320300"], tree.urls["320303"], tree.urls["320000"]
    # the county's red cards have reached the city
    zhang_api = api_as(tree, "320300", "zhang")
    wait_for(lambda: bool(zhang_api.get("/api/v1/alerts?level=3&division=320303").json()), 60,
             "red cards of 320303 reach the city")
    # the overview counts them from stats_alert_counts, which the stats fold keeps: a moment later
    wait_for(lambda: any(u["division"] == "320303" for u in zhang_api.get("/api/v1/overview").json()["alerts"]), 60,
             "the city's overview counts 320303's alerts")
    with sync_playwright() as pw:
        b = Browser(pw, exe)
        try:
            # -- the city's 监察员 finds a red card of 320303 and turns it into a 督办 ------------------------
            zhang = b.person(city, "zhang")
            assert "张三（监察员，320300）" in zhang.inner_text("[data-testid=me]")
            assert "320303" in zhang.inner_text("[data-testid=alerts-by-unit]")
            b.shot(zhang, "01-city-overview")
            zhang.goto(city + "/alerts?level=3&division=320303")
            rows = zhang.locator("[data-testid=alerts] tbody tr")
            assert rows.count() > 0 and "红牌" in rows.first.inner_text()
            b.shot(zhang, "02-city-red-cards")
            rows.first.locator("a", has_text="查看").click()
            zhang.wait_for_selector("[data-testid=escalate]")
            assert "红牌" in zhang.inner_text("h1")
            b.shot(zhang, "03-city-alert")
            zhang.click("[data-testid=escalate]")
            form = zhang.locator("[data-testid=issue-form]")
            assert form.locator("input[name=to]").input_value() == "320303"
            assert form.locator("input[name=alert_ids]").input_value()
            form.locator("textarea[name=body]").fill("请于答复期限内核实该办件超期原因，并报告整改情况。")
            b.shot(zhang, "04-city-issue-form")
            form.locator("button[type=submit]").click()
            zhang.wait_for_selector("[data-testid=ticket-state]")
            ticket = re.search(r"/tickets/([^?]+)", zhang.url).group(1)  # type: ignore[union-attr]
            assert zhang.inner_text("[data-testid=ticket-state]") == "已签发"
            b.shot(zhang, "05-city-ticket-issued")
            alert_id = zhang.locator("a[href^='/alerts/']").first.inner_text()
            zhang.goto(f"{city}/alerts/{alert_id}")
            assert zhang.inner_text("[data-testid=alert-state]") == "已转督办"  # the ticket cites it
            assert ticket in zhang.inner_text("main")

            # -- the county's 部门监察 signs for it and replies ---------------------------------------------
            wang_api = api_as(tree, "320303", "wang")
            wait_for(lambda: state_at(wang_api, ticket) == "delivered", 60, "the ticket reaches the county")
            wang = b.person(county, "wang")
            wang.goto(county + "/tickets?box=inbox")
            wang.locator("[data-testid=tickets]").get_by_text(ticket).click()
            wang.wait_for_selector("[data-testid=do-sign]")
            b.shot(wang, "06-county-ticket-delivered")
            wang.click("[data-testid=do-sign]")
            wang.wait_for_selector("[data-testid=done]")
            assert wang.inner_text("[data-testid=ticket-state]") == "已签收"
            wang.fill(".act-reply textarea[name=text]", "经核实，该件因材料补正超期；已责成经办人整改，并完善限时提醒。")
            # the evidence: picked in the browser, hashed there by desk.js; only its metadata is sent
            report = b"%PDF-1.4 " + "整改报告".encode() * 300
            wang.set_input_files(".act-reply [data-testid=attach-files]", files=[
                {"name": "整改报告.pdf", "mimeType": "application/pdf", "buffer": report}])
            wang.wait_for_selector(".act-reply textarea[name=attachments][data-hashed='1']")
            lines = wang.input_value(".act-reply textarea[name=attachments]")
            assert lines == f"整改报告.pdf | {len(report)} | {hashlib.sha256(report).hexdigest()} | application/pdf"
            b.shot(wang, "07a-county-reply-attachment")
            wang.click("[data-testid=do-reply]")
            wang.wait_for_selector("[data-testid=done]")
            assert wang.inner_text("[data-testid=ticket-state]") == "已答复"
            b.shot(wang, "07-county-replied")

            # -- the city's 监察员 concludes --------------------------------------------------------------
            wait_for(lambda: state_at(zhang_api, ticket) == "replied", 60, "the reply reaches the city")
            zhang.goto(f"{city}/tickets/{ticket}")
            zhang.fill(".act-conclude textarea[name=text]", "答复属实，整改到位，同意办结。")
            zhang.select_option(".act-conclude select[name=verdict]", "satisfactory")
            zhang.click("[data-testid=do-conclude]")
            zhang.wait_for_selector("[data-testid=done]")
            assert zhang.inner_text("[data-testid=ticket-state]") == "已办结"
            b.shot(zhang, "08-city-concluded")

            # -- the province sees the whole history, with names ------------------------------------------
            zhao_api = api_as(tree, "320000", "zhao")
            wait_for(lambda: state_at(zhao_api, ticket) == "concluded", 60, "the conclusion reaches the province")
            zhao = b.person(province, "zhao")
            assert zhao.url.startswith("https://")
            zhao.goto(f"{province}/tickets/{ticket}")
            timeline = zhao.inner_text("[data-testid=timeline]")
            for event, who in (("签发", "张三（监察员，320300）"), ("签收", "王五（部门监察，320303）"),
                               ("答复", "王五（部门监察，320303）"), ("办结", "张三（监察员，320300）")):
                assert re.search(rf"{event}\s+{re.escape(who)}", timeline), (event, who, timeline)
            assert zhao.inner_text("[data-testid=ticket-state]") == "已办结"
            attached = zhao.inner_text("[data-testid=timeline] [data-testid=attachments]")
            assert "整改报告.pdf" in attached and hashlib.sha256(report).hexdigest() in attached, attached
            assert not zhao.locator("[data-testid=actions]").count(), "the province may not act on the city's ticket"
            b.shot(zhao, "09-province-history")

            # -- the case seen whole, with its alerts and the ticket ---------------------------------------
            case_no = zhao_api.get(f"/api/v1/tickets/{ticket}").json()["case_nos"][0]
            zhao.goto(province + "/cases")
            zhao.fill("[data-testid=case-search] input[name=no]", case_no)
            zhao.click("[data-testid=case-search] button[type=submit]")
            zhao.wait_for_selector("[data-testid=case-timeline]")
            assert ticket in zhao.inner_text("main") and "受理" in zhao.inner_text("[data-testid=case-timeline]")
            # desk.js asks for the proofs once the page is shown: proved back to 320303, at the province
            zhao.wait_for_selector("[data-testid=case-verify]:text-is('已验证')", timeout=15000)
            b.shot(zhao, "17-province-case")
            # one byte of one of its records changed in the province's database: the badge says so
            accept = next(r["record"] for r in zhao_api.get(f"/api/v1/cases/{case_no}/verify").json()["records"]
                          if r["kind"] == "case.accept")
            with altered_record(tree.cl.homes["320000"], accept):
                zhao.reload()
                zhao.wait_for_selector("[data-testid=case-verify]:text-is('验证失败')", timeout=15000)
                assert accept in zhao.inner_text("[data-testid=case-verify-detail]")
                b.shot(zhao, "17a-province-case-verify-failed")
            zhao.goto(province + "/cases?state=超期办结")
            b.shot(zhao, "18-province-cases")

            # -- the other pages, as the province sees them ---------------------------------------------
            zhao.goto(province + "/")
            b.shot(zhao, "10-province-overview")
            zhao.goto(province + "/stats?by=division")
            zhao.wait_for_selector("#chart[data-rendered='1'] canvas", timeout=15000)
            assert "合计" in zhao.inner_text("[data-testid=stats]")
            b.shot(zhao, "11-province-stats")
            zhao.goto(province + "/worklog")
            people = zhao.inner_text("[data-testid=people]")
            assert "张三" in people and "王五" in people
            b.shot(zhao, "12-province-worklog")
            zhao.goto(province + "/status")
            assert "320303" in zhao.inner_text("[data-testid=links]")
            b.shot(zhao, "13-province-status")
            zhao.goto(province + "/alerts?level=3")
            b.shot(zhao, "14-province-alerts")
            zhao.goto(province + "/complaints")
            b.shot(zhao, "15-province-complaints")
            # signing out ends the session
            zhao.click("header form button[type=submit]")
            zhao.wait_for_url(province + "/login")
            zhao.goto(province + "/tickets")
            assert zhao.url.startswith(province + "/login")
            b.shot(zhao, "16-province-signed-out")
        finally:
            b.browser.close()
    assert not b.problems, b.problems
