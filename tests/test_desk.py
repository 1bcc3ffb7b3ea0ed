"""The supervision desk (issue 17), its security over real HTTP: real `fednode run` processes (province →
city → county), each serving its desk; the province's on HTTPS, the county's with a short idle timeout.

- no page and no API answers without a sign-in; the cookie is HttpOnly + SameSite=Strict (+ Secure under
  TLS); every answer carries a Content-Security-Policy without inline script; no page holds an inline
  script or style;
- a POST without the session's CSRF token is refused and changes nothing;
- another unit's ticket is 403 by URL guessing (page and API), an unknown one 404, and an act on it is
  refused and recorded under the person (监察日志);
- an XSS payload in a ticket subject renders as text;
- the API signs in with a bearer token and has the pages' permissions; idle sign-ins end (recorded);
- [desk] refuses plain HTTP off loopback and half a TLS configuration.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

from node.core.errors import ConfigError
from node.runtime.services.desk import DeskSettings
from tests.desklib import DeskTree as Tree
from tests.desklib import Http, altered_record, desk_tree
from tests.faultlib import wait_for

pytestmark = pytest.mark.slow

XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>整改\"'"
PAGES = ["/", "/alerts", "/tickets", "/tickets/new", "/complaints", "/cases", "/cases/3203032026", "/stats", "/stats.csv", "/worklog", "/status",
         "/tickets/320300-000001", "/alerts/anything"]
APIS = ["/api/v1/whoami", "/api/v1/overview", "/api/v1/alerts", "/api/v1/tickets", "/api/v1/tickets/320300-000001",
        "/api/v1/complaints", "/api/v1/cases", "/api/v1/cases/3203032026", "/api/v1/stats", "/api/v1/worklog", "/api/v1/status"]


@contextmanager
def pg_databases(codes: list[str]) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database per node (dropped afterwards), as tests/conftest.py's ``pg_url`` makes one."""
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL, _pg_admin_url

    names = {code: f"fednode_desk_{code}_{uuid.uuid4().hex[:8]}" for code in codes}
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            for name in names.values():
                c.execute(text(f'CREATE DATABASE "{name}"'))
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield {code: f"{base}/{name}" for code, name in names.items()}
    finally:
        with admin.connect() as c:
            for name in names.values():
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    """The three desks, every store on SQLite, then every store on the real PostgreSQL server (skipped
    without one, failed under FEDNODE_REQUIRE_PG=1 as everywhere else)."""
    with ExitStack() as stack:
        dbs = None
        if request.param == "postgres":
            if not request.getfixturevalue("pg_ok"):
                pytest.skip("PostgreSQL at 127.0.0.1:5432 does not answer")
            dbs = stack.enter_context(pg_databases(["320000", "320300", "320303"]))
        t = stack.enter_context(desk_tree(tmp_path_factory.mktemp(f"desk-{request.param}"), idle={"320303": 0.05},
                                          tls=("320000",), dbs=dbs))
        assert all(h.config.store_url.startswith("postgresql" if dbs else "sqlite") for h in t.cl.homes.values())
        yield t


# the desk limits sign-ins per client address (30 a minute): the later tests sign in from addresses of their own
SRC_VERIFY, SRC_ATTACH = "127.0.0.2", "127.0.0.3"


def signed_in(tree: Tree, node: str, login: str, source: str = "") -> Http:
    h = Http(tree.urls[node], source=source)
    r = h.login(login)
    assert r.status == 303 and r.header("Location") == "/", r.text
    return h


def issue_via_api(tree: Tree, subject: str, source: str = "") -> str:
    api = Http(tree.urls["320300"], source=source)
    api.api_login("zhang")
    r = api.post_json("/api/v1/tickets", {"to": "320303", "subject": subject, "body": "限期整改"})
    assert r.status == 201, r.text
    return str(r.json()["ticket"])


def test_nothing_without_a_sign_in(tree: Tree) -> None:
    anon = Http(tree.urls["320300"])
    for path in PAGES:
        r = anon.get(path)
        assert r.status == 303 and r.header("Location").startswith("/login"), (path, r.status)
    for path in APIS:
        r = anon.get(path)
        assert r.status == 401 and r.json()["ok"] is False, (path, r.status)
    for path in ("/tickets", "/tickets/320300-000001/conclude", "/alerts/x/handle", "/logout", "/complaints",
                 "/status/quarantine/replay"):
        assert anon.post(path, {"subject": "x", "to": "320303"}).status == 303, path
    assert anon.post_json("/api/v1/tickets", {"to": "320303", "subject": "x"}).status == 401
    # a made-up or stolen-looking cookie is nobody
    forged = Http(tree.urls["320300"], cookies={"fednode_desk": "zhang:not-a-session"})
    assert forged.get("/").status == 303
    bearer = Http(tree.urls["320300"], bearer="zhang:not-a-session")
    assert bearer.get("/api/v1/whoami").status == 401


def test_cookie_flags_csp_and_no_inline_script(tree: Tree) -> None:
    h = Http(tree.urls["320300"])
    r = h.login("zhang")
    cookie = next(c for c in r.cookies_set() if c.startswith("fednode_desk="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain HTTP on loopback
    for path in ("/", "/alerts", "/tickets", "/tickets/new", "/complaints", "/stats", "/worklog", "/status",
                 "/static/desk.css", "/api/v1/whoami"):
        r = h.get(path)
        assert r.status == 200, (path, r.status, r.text[:300])
        csp = r.header("Content-Security-Policy")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert r.header("X-Content-Type-Options") == "nosniff" and r.header("X-Frame-Options") == "DENY"
        if r.header("Content-Type").startswith("text/html"):
            assert r.header("Cache-Control") == "no-store"
            for tag in re.findall(r"<script\b[^>]*>", r.text):
                assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
            assert not re.search(r"\sstyle\s*=|<style\b|\son[a-z]+\s*=", r.text), path
    login_page = Http(tree.urls["320300"]).get("/login")
    assert "unsafe-inline" not in login_page.header("Content-Security-Policy") and "<script" not in login_page.text
    # the province serves HTTPS: the cookie is Secure, HSTS is on
    p = Http(tree.urls["320000"])
    r = p.login("zhao")
    cookie = next(c for c in r.cookies_set() if c.startswith("fednode_desk="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert p.get("/").header("Strict-Transport-Security").startswith("max-age=")


def test_a_post_without_the_csrf_token_is_refused(tree: Tree) -> None:
    h = signed_in(tree, "320300", "zhang")
    before = h.get("/api/v1/tickets").json()["tickets"]
    for form in ({"to": "320303", "subject": "无令牌"}, {"to": "320303", "subject": "假令牌", "csrf": "x" * 43}):
        r = h.post("/tickets", form)
        assert r.status == 403 and "CSRF" in r.text, r.text[:300]
    # the API with the cookie needs X-CSRF-Token too
    r = h.post_json("/api/v1/tickets", {"to": "320303", "subject": "无令牌"})
    assert r.status == 403 and r.json()["code"] == "csrf"
    assert h.get("/api/v1/tickets").json()["tickets"] == before, "nothing was issued"
    assert h.post("/logout", {}).status == 403  # signing out is a form too
    # with the token it goes through
    token = h.csrf("/tickets/new")
    r = h.post("/tickets", {"to": "320303", "subject": "有令牌的督办", "csrf": token})
    assert r.status == 303 and r.header("Location").startswith("/tickets/320300-"), r.text[:300]
    r = h.post_json("/api/v1/tickets", {"to": "320303", "subject": "API 督办"},
                    **{"X-CSRF-Token": h.get("/api/v1/whoami").json()["csrf"]})
    assert r.status == 201, r.text


def test_another_units_ticket_is_403_unknown_404_and_the_refusal_is_recorded(tree: Tree) -> None:
    ticket = issue_via_api(tree, "越权测试")
    zhang = signed_in(tree, "320300", "zhang")
    assert zhang.get(f"/tickets/{ticket}").status == 200
    qian = signed_in(tree, "320300", "qian")  # supervisor of 320311: the ticket is 320300 → 320303
    r = qian.get(f"/tickets/{ticket}")
    assert r.status == 403 and "越权测试" not in r.text and "320311" in r.text
    assert ticket not in qian.get("/tickets?box=all").text
    api = Http(tree.urls["320300"])
    api.api_login("qian")
    assert api.get(f"/api/v1/tickets/{ticket}").status == 403
    assert all(t["ticket"] != ticket for t in api.get("/api/v1/tickets").json()["tickets"])
    assert qian.get("/tickets/320300-999999").status == 404
    assert api.get("/api/v1/tickets/320300-999999").status == 404
    # an act by URL: refused (403), and the refusal recorded under her name
    r = qian.post(f"/tickets/{ticket}/return", {"reason": "越权退回", "csrf": qian.csrf("/tickets")})
    assert r.status in (403, 409), r.text[:300]
    r = api.post_json(f"/api/v1/tickets/{ticket}/conclude", {"verdict": "satisfactory", "text": "越权办结"})
    assert r.status == 403 and r.json()["code"] == "forbidden"
    log = Http(tree.urls["320300"])
    log.api_login("zhang")

    def refused() -> bool:
        entries = log.get("/api/v1/worklog").json()["entries"]
        return any(e.get("action") == "refused" and (e.get("by") or {}).get("name") == "钱七" for e in entries)
    wait_for(refused, 30, "qian's refusal is in the work log")
    # the 系统管理员 may not issue a ticket at all (no form either)
    it = signed_in(tree, "320300", "it")
    assert it.get("/tickets/new").status == 403
    assert "督查督办" not in it.get("/").text  # no menu entry for what may() refuses


def test_an_xss_payload_in_a_subject_renders_as_text(tree: Tree) -> None:
    ticket = issue_via_api(tree, XSS)
    h = signed_in(tree, "320300", "zhang")
    for path in (f"/tickets/{ticket}", "/tickets?box=outbox"):
        page = h.get(path).text
        assert "<script>alert('x')</script>" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page, path
    data = h.get(f"/api/v1/tickets/{ticket}").json()
    assert data["subject"] == XSS


def test_api_bearer_sign_in_reads_and_sign_out(tree: Tree) -> None:
    api = Http(tree.urls["320300"])
    data = api.api_login("zhang")
    assert data["person"]["name"] == "张三" and ":" in data["token"]
    who = api.get("/api/v1/whoami").json()
    assert who["person"]["role_label"] == "监察员" and who["csrf"] is None and who["node"] == "320300"
    alerts = api.get("/api/v1/alerts?level=3&division=320303").json()
    assert alerts and all(a["level"] >= 3 and a["division"].startswith("320303") for a in alerts)
    # the overview's figures are shared for a few seconds (its "as_of" says when they were counted): an
    # earlier test's page may have counted before the alerts were folded
    wait_for(lambda: any(u["division"] == "320303" and u["all"][2] > 0
                         for u in api.get("/api/v1/overview").json()["alerts"]), 15, "the overview's red cards of 320303")
    assert re.fullmatch(r"\d\d:\d\d:\d\d", api.get("/api/v1/overview").json()["as_of"])
    assert api.get("/api/v1/status").json()["node"]["code"] == "320300"
    # a supervisor of 320311 sees none of 320303's alerts
    other = Http(tree.urls["320300"])
    other.api_login("qian")
    assert other.get("/api/v1/alerts").json() == []
    # wrong password: 401 with no token; sign-out ends the token
    bad = Http(tree.urls["320300"]).post_json("/api/v1/session", {"login": "zhang", "password": "wrong-Password1"})
    assert bad.status == 401 and "token" not in bad.json()
    assert api.request("DELETE", "/api/v1/session").status == 200
    assert api.get("/api/v1/whoami").status == 401


def test_an_idle_sign_in_ends_and_its_sign_out_is_recorded(tree: Tree) -> None:
    h = signed_in(tree, "320303", "wang")  # the county's desk: idle_minutes = 0.05 (3 s)
    assert h.get("/").status == 200
    time.sleep(4)
    r = h.get("/")
    assert r.status == 303 and r.header("Location") == "/login?idle=1"
    assert Http(tree.urls["320303"], cookies=dict(h.cookies)).get("/").status == 303
    # the sign-out the idle timeout made is in the county's work log, under wang
    r = subprocess.run([sys.executable, "-m", "node.interfaces.cli", "worklog", str(tree.cl.homes["320303"].dir), "--actor", "wang", "--limit", "0",
                        "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    actions = [e.get("action") for e in json.loads(r.stdout)["entries"]]
    assert "login" in actions and "logout" in actions and "visit" in actions, actions


def test_lockout_after_five_wrong_passwords(tree: Tree) -> None:
    tree.cl.call("320300", {"op": "people", "action": "add", "auth": {"os_user": "root"}, "login": "zhou",
                            "name": "周九", "roles": ["auditor"], "scope": "320300", "password": "Zhou-2026!pw"})
    h = Http(tree.urls["320300"])
    for _ in range(4):
        r = h.login("zhou", "wrong-Password1")
        assert r.status == 401 and "用户名或口令错误" in r.text
    r = h.login("zhou", "wrong-Password1")
    assert r.status == 403 and "锁定" in r.text
    r = h.login("zhou", "Zhou-2026!pw")  # the right password no longer helps
    assert r.status == 403 and "fednode_desk" not in "".join(r.cookies_set())


def test_desk_settings_refuse_plain_http_off_loopback(tmp_path: Path) -> None:
    where = "node.toml"
    assert DeskSettings.of_sections({}, tmp_path, where).enabled is False
    ok = DeskSettings.of_sections({"desk": {"listen": "127.0.0.1:8443"}}, tmp_path, where)
    assert ok.enabled and not ok.tls and ok.url == "http://127.0.0.1:8443/"
    with pytest.raises(ConfigError, match="not a loopback address"):
        DeskSettings.of_sections({"desk": {"listen": "0.0.0.0:8443"}}, tmp_path, where)
    with pytest.raises(ConfigError, match="go together"):
        DeskSettings.of_sections({"desk": {"listen": "0.0.0.0:8443", "tls_cert": "desk.crt"}}, tmp_path, where)
    with pytest.raises(ConfigError, match="does not exist"):
        DeskSettings.of_sections({"desk": {"listen": "0.0.0.0:8443", "tls_cert": "a.crt", "tls_key": "a.key"}},
                                 tmp_path, where)
    with pytest.raises(ConfigError, match="unknown field desk.listn"):
        DeskSettings.of_sections({"desk": {"listn": "127.0.0.1:1"}}, tmp_path, where)
    (tmp_path / "a.crt").write_text("x")
    (tmp_path / "a.key").write_text("x")
    tls = DeskSettings.of_sections({"desk": {"listen": "0.0.0.0:8443", "tls_cert": "a.crt", "tls_key": "a.key"}},
                                   tmp_path, where)
    assert tls.tls and tls.url == "https://127.0.0.1:8443/"


def test_disposing_of_an_alert_is_recorded_under_the_person_and_refused_out_of_scope(tree: Tree) -> None:
    api = Http(tree.urls["320300"])
    api.api_login("zhang")
    alert_id = api.get("/api/v1/alerts?level=3&division=320303&state=open").json()[0]["alert_id"]
    base = "/api/v1/alerts/" + alert_id
    other = Http(tree.urls["320300"])
    other.api_login("qian")
    r = other.post_json(base + "/dispose", {"result": "corrected", "note": "越权处置"})
    assert r.status == 403 and r.json()["code"] == "forbidden"
    assert other.get(base).status == 403
    r = api.post_json(base + "/handle", {"note": "已核实，责成整改"})  # `alerts handle`: 已纠正
    assert r.status == 200 and r.json()["by"]["name"] == "张三", r.text
    assert api.get(base).json()["state"] == "corrected"
    page = signed_in(tree, "320300", "zhang")
    r = page.post(f"/alerts/{alert_id}/reopen", {"note": "复查发现仍未整改", "csrf": page.csrf("/alerts")})
    assert r.status == 303 and r.header("Location").endswith("?done=reopen"), r.text[:300]
    r = page.post(f"/alerts/{alert_id}/dispose", {"result": "false-alarm", "note": "系统时钟误差，核销",
                                                  "csrf": page.csrf("/alerts")})
    assert r.status == 303, r.text[:300]
    assert api.get(base).json()["state"] == "false-alarm"
    shown = page.get(f"/alerts/{alert_id}").text
    assert "误报核销" in shown and "张三（监察员，320300）" in shown and "系统时钟误差，核销" in shown
    assert quote(alert_id) in page.get("/alerts?state=false-alarm&level=3").text
    assert quote(alert_id) not in page.get("/alerts?state=open&level=3").text

    def recorded() -> bool:
        entries = api.get("/api/v1/worklog").json()["entries"]
        return sum(1 for e in entries if str(e.get("action", "")).startswith("alerts") and e.get("target") == alert_id
                   and (e.get("by") or {}).get("name") == "张三") == 3
    wait_for(recorded, 30, "the three acts are in the work log under 张三")


def test_cases_of_another_unit_are_refused_and_an_unknown_case_is_404(tree: Tree) -> None:
    api = Http(tree.urls["320300"])
    api.api_login("zhang")
    listed = api.get("/api/v1/cases?limit=5").json()
    assert listed["total"] > 0 and len(listed["cases"]) == 5
    case_no = listed["cases"][0]["case_no"]
    shown = api.get(f"/api/v1/cases/{case_no}").json()
    assert shown["case_no"] == case_no and shown["division"] == "320303"
    other = Http(tree.urls["320300"])
    other.api_login("qian")
    assert other.get("/api/v1/cases").json()["total"] == 0
    assert other.get(f"/api/v1/cases/{case_no}").status == 403
    page = signed_in(tree, "320300", "qian")
    assert page.get(f"/cases/{case_no}").status == 403
    assert page.get("/cases/320303209912310000000").status == 404
    assert api.get("/api/v1/cases/NO-SUCH-CASE").status == 404


def test_case_verify_badge_turns_to_failure_when_a_stored_record_is_altered(tree: Tree) -> None:
    """The 办件 page's badge: every record of the case proved back to its origin's signed checkpoint. One byte
    of one stored record changed in the city's database (the store itself, behind the node's back) turns it
    to 验证失败 naming that record; put back, it is 已验证 again."""
    api = Http(tree.urls["320300"], source=SRC_VERIFY)
    api.api_login("zhang")
    page = signed_in(tree, "320300", "zhang", SRC_VERIFY)
    for listed in api.get("/api/v1/cases?limit=50").json()["cases"]:  # one past 受理, several records
        case_no = listed["case_no"]
        v = api.get(f"/api/v1/cases/{case_no}/verify").json()
        if any(r["kind"] == "case.accept" for r in v["records"]):
            break
    assert v["ok"] is True and v["checked"] >= 2 and v["failed"] == 0 and v["origins"] == ["320303"], v
    assert all(r["ok"] and r["signer"] == "320303" for r in v["records"])
    plain = page.get(f"/cases/{case_no}").text  # the page alone: the badge asks for the proofs (desk.js)
    assert f'data-verify-href="/cases/{case_no}?verify=1"' in plain and "已验证" not in plain
    shown = page.get(f"/cases/{case_no}?verify=1").text
    assert 'data-testid="case-verify">已验证<' in shown and "验证失败" not in shown
    target = next(r for r in v["records"] if r["kind"] == "case.accept")
    with altered_record(tree.cl.homes["320300"], target["record"]):
        bad = api.get(f"/api/v1/cases/{case_no}/verify").json()
        assert bad["ok"] is False and bad["failed"] >= 1, bad
        hit = next(r for r in bad["records"] if r["record"] == target["record"])
        assert hit["ok"] is False and hit["code"] == "altered" and "altered at rest" in hit["reason"], hit
        shown = page.get(f"/cases/{case_no}?verify=1").text
        assert 'data-testid="case-verify">验证失败<' in shown and "已验证<" not in shown
        assert target["record"] in shown and "存储的记录内容已被改动" in shown
    assert api.get(f"/api/v1/cases/{case_no}/verify").json()["ok"] is True
    # another unit's supervisor may not verify it either (the same may() as the case)
    other = Http(tree.urls["320300"], source=SRC_VERIFY)
    other.api_login("qian")
    assert other.get(f"/api/v1/cases/{case_no}/verify").status == 403


def test_a_reply_with_attachments_metadata_is_signed_and_shown_escaped_at_every_level(tree: Tree) -> None:
    """The county replies from its desk with two files' metadata (the files stay in the department); the
    reply's record carries them; the county, the city (issuer) and the province show them, as text."""
    import hashlib

    ticket = issue_via_api(tree, "附件登记", SRC_ATTACH)
    county = Http(tree.urls["320303"], source=SRC_ATTACH)
    county.api_login("wang")

    def state(h: Http) -> str | None:
        r = h.get(f"/api/v1/tickets/{ticket}")
        return r.json().get("state") if r.status == 200 else None

    wait_for(lambda: state(county) == "delivered", 60, "the ticket reaches the county")
    assert county.post_json(f"/api/v1/tickets/{ticket}/sign", {}).status == 200
    evil = "<img src=x onerror=alert(1)>整改\"'.pdf"
    sha1, sha2 = hashlib.sha256(b"report").hexdigest(), hashlib.sha256(b"photo").hexdigest()
    page = signed_in(tree, "320303", "wang", SRC_ATTACH)
    csrf = page.csrf(f"/tickets/{ticket}")
    form = page.get(f"/tickets/{ticket}").text
    assert 'name="attachments"' in form and "不上传" in form and 'type="file"' in form
    # a wrong line is refused in Chinese, nothing is written
    r = page.post(f"/tickets/{ticket}/reply", {"text": "答复", "attachments": f"a.pdf | 十二 | {sha1}", "csrf": csrf})
    assert r.status == 400 and "附件第 1 行的大小须为字节数" in r.text, r.text[:500]
    r = page.post(f"/tickets/{ticket}/reply", {"text": "答复", "attachments": "a.pdf | 12 | abc", "csrf": csrf})
    assert r.status == 400 and "sha256" in r.text
    assert state(county) == "signed_for"
    lines = f"{evil} | 1536 | {sha1} | application/pdf\nphoto.jpg | 5 | {sha2.upper()}"
    r = page.post(f"/tickets/{ticket}/reply", {"text": "已整改，见附件。", "attachments": lines, "csrf": csrf})
    assert r.status == 303, r.text[:500]
    want = [{"name": evil, "size": 1536, "sha256": sha1, "media_type": "application/pdf"},
            {"name": "photo.jpg", "size": 5, "sha256": sha2, "media_type": "image/jpeg"}]
    escaped = "&lt;img src=x onerror=alert(1)&gt;整改&#34;&#39;.pdf"
    zhang = Http(tree.urls["320300"], source=SRC_ATTACH)
    zhang.api_login("zhang")
    wait_for(lambda: state(zhang) == "replied", 60, "the reply reaches the city")
    zhao = Http(tree.urls["320000"], source=SRC_ATTACH)
    zhao.api_login("zhao")
    wait_for(lambda: state(zhao) == "replied", 60, "the reply reaches the province")
    county.api_login("wang")  # the county's desk ends a sign-in idle for 3 s (this tree): the waits may pass that
    for node, login in (("320303", "wang"), ("320300", "zhang"), ("320000", "zhao")):
        api = county if node == "320303" else zhang if node == "320300" else zhao
        r = api.get(f"/api/v1/tickets/{ticket}")
        assert r.status == 200, (node, r.status, r.text[:300])
        data = r.json()
        assert data["reply_attachments"] == want, node
        assert [e["detail"].get("attachments") for e in data["timeline"] if e["event"] == "reply"] == [want], node
        html = signed_in(tree, node, login, SRC_ATTACH).get(f"/tickets/{ticket}").text
        assert "<img src=x" not in html and escaped in html, node
        assert sha1 in html and sha2 in html and "1.5 KB" in html and "5 字节" in html, node
        assert "文件由被督办单位留存于本部门业务系统" in html, node


def test_the_demo_turns_on_every_desk_and_prints_its_url_with_the_people(tmp_path: Path) -> None:
    from bench.demo import DEMO_PEOPLE, TREE, build_tree, desk_lines, turn_on_desks
    from node.core.home import Home

    homes = build_tree(tmp_path, dbs=None)
    urls = turn_on_desks(homes)
    assert set(urls) == {code for code, *_ in TREE}
    for code, url in urls.items():
        s = DeskSettings.of_sections(Home(homes[code].dir).config.sections, homes[code].dir, "node.toml")
        assert s.enabled and not s.tls and s.url == url and url.startswith("http://127.0.0.1:")
    people = [{"node": n, "login": login, "name": name, "role": role} for n, login, name, role in DEMO_PEOPLE]
    text = "\n".join(desk_lines(urls, people, tmp_path / "demo-password.txt"))
    assert str(tmp_path / "demo-password.txt") in text
    for code, url in urls.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(code + " "))
        assert url in line and all(p["login"] in line for p in people if p["node"] == code), line
