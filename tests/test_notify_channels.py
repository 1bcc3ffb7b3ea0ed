"""预警 to the handler "通过网络或手机短信" (issue 21): the smtp notifier against a real local SMTP server (aiosmtpd,
STARTTLS and SMTPS, a login whose password is in a 0600 file), the sms notifier against a real local HTTP
gateway (stdlib http.server: one that fails then succeeds, one that always fails), the dead-letter list and its
retry through the CLI, the recipients' addresses from the directory or the users, phone numbers masked in logs."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from node.core.home import Home
from node.features import worklog
from node.features.notify import NotifyConfig, deliver
from node.features.notify import load as load_dispatcher
from node.features.notify_channels import (
    NotifyError,
    SmsConfig,
    SmsNotifier,
    SmtpConfig,
    SmtpNotifier,
    mask_phone,
)
from node.runtime import configcheck
from node.runtime.services.alerts import route_once
from tests.desklib import self_signed
from tests.test_alert_disposal import run
from tests.test_directory import NOW, alert, case

PASSWORD = "邮件口令-s3cret"
MESSAGE = {"alert_id": "case_time:320303:C1:1:3", "rule_id": "case_time", "level": 3, "object": "case",
           "case_no": "C1", "division": "320303", "dept": "320303-ZJ", "message": "办件 C1 超过法定时限",
           "at": "2026-03-10T09:00:00+08:00",
           "to": {"name": "王芳", "login": "wangf", "phone": "13800000001", "mail": "wf@example.cn"},
           "why": "红牌（再次警告）：请上级领导限期督查督办"}


# ---- a real SMTP server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], email.message.EmailMessage]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.mails.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password.decode() == PASSWORD
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtpd(tmp_path: Path) -> Iterator[Any]:
    """start(security) -> (inbox, SmtpConfig) of a local SMTP server: starttls (required, with AUTH), ssl
    (SMTPS), or none (plain, no AUTH)."""
    controllers: list[Controller] = []
    crt, key = self_signed(tmp_path)

    def start(security: str = "starttls") -> tuple[Inbox, SmtpConfig]:
        inbox = Inbox()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        port = free_port()
        kw: dict[str, Any] = {}
        if security == "starttls":
            kw = {"tls_context": ctx, "require_starttls": True, "authenticator": inbox.authenticate,
                  "auth_required": True}
        elif security == "ssl":
            kw = {"ssl_context": ctx, "authenticator": inbox.authenticate, "auth_required": True,
                  "auth_require_tls": False}
        c = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="127.0.0.1", **kw)
        c.start()
        controllers.append(c)
        pw = tmp_path / "smtp.password"
        pw.write_text(PASSWORD + "\n", encoding="utf-8")
        pw.chmod(0o600)
        auth = {} if security == "none" else {"user": "jiancha@example.gov.cn", "password_file": str(pw)}
        return inbox, SmtpConfig(host="127.0.0.1", port=port, security=security, ca_file=str(crt),
                                 sender="电子监察 <jiancha@example.gov.cn>", timeout_s=5, **auth)

    yield start
    for c in controllers:
        c.stop()


def test_a_mail_in_chinese_through_starttls_with_a_login(smtpd: Any) -> None:
    inbox, cfg = smtpd("starttls")
    SmtpNotifier(cfg).send(MESSAGE)
    [(rcpt, msg)] = inbox.mails
    assert rcpt == ["wf@example.cn"] and inbox.logins == ["jiancha@example.gov.cn"]
    assert msg["Subject"] == "【电子监察红牌】320303-ZJ 办件 C1：办件超时"
    assert "=?utf-8?" in msg.as_string().split("\n\n")[0].lower()  # the subject travels encoded (RFC 2047)
    assert msg["To"].addresses[0].display_name == "王芳" and msg["From"].addresses[0].display_name == "电子监察"
    body = msg.get_content()
    for text in ("王芳：", "预警级别：红牌", "责任单位：320303-ZJ", "办件编号：C1", "监察规则：办件超时（case_time）",
                 "情况说明：办件 C1 超过法定时限", "再次警告"):
        assert text in body, text
    assert msg["X-Fednode-Alert"] == MESSAGE["alert_id"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # SMTPS: the whole session is TLS
def test_smtps_and_a_plain_relay(smtpd: Any) -> None:
    inbox, cfg = smtpd("ssl")
    SmtpNotifier(cfg).send(MESSAGE)
    assert [r for r, _m in inbox.mails] == [["wf@example.cn"]] and inbox.logins == ["jiancha@example.gov.cn"]
    relay, plain = smtpd("none")
    SmtpNotifier(plain).send({**MESSAGE, "level": 1})
    assert relay.mails[0][1]["Subject"].startswith("【电子监察预警】")


def test_smtp_refusals_are_clear_and_permanent(smtpd: Any, tmp_path: Path) -> None:
    inbox, cfg = smtpd("starttls")
    pw = Path(cfg.password_file)
    pw.chmod(0o644)
    with pytest.raises(NotifyError, match="mode 0644") as e:
        SmtpNotifier(cfg).send(MESSAGE)
    assert e.value.permanent and e.value.fix == f"chmod 600 {pw}"
    pw.write_text("wrong\n", encoding="utf-8")
    pw.chmod(0o600)
    with pytest.raises(NotifyError, match="refused the login") as e:
        SmtpNotifier(cfg).send(MESSAGE)
    assert e.value.permanent
    with pytest.raises(NotifyError, match="no mail address") as e:
        SmtpNotifier(cfg).send({**MESSAGE, "to": {"name": "王芳"}})
    assert e.value.permanent and "--email" in e.value.fix
    untrusted = SmtpConfig(**{**{f: getattr(cfg, f) for f in cfg.__slots__}, "ca_file": ""})  # type: ignore[attr-defined]
    with pytest.raises(NotifyError, match="not trusted"):
        SmtpNotifier(untrusted).send(MESSAGE)
    down = SmtpConfig(host="127.0.0.1", port=free_port(), security="starttls", sender="a@b.cn", timeout_s=2)
    with pytest.raises(NotifyError, match="unreachable") as e:
        SmtpNotifier(down).send(MESSAGE)
    assert not e.value.permanent  # a server that is down is retried
    assert inbox.mails == []


# ---- a real HTTP SMS gateway -----------------------------------------------------------------------------------


class _Gateway(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((body, dict(self.headers)))
        status, answer = server.answers.pop(0) if server.answers else server.default
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.requests, server.answers = [], []
    server.default = (200, {"Code": "OK", "Message": "OK", "BizId": "900619746936498440^0"})
    server.url = f"http://127.0.0.1:{server.server_address[1]}/sms/send"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_sms_in_the_shape_of_sendsms_with_a_token(gateway: Any, tmp_path: Path) -> None:
    token = tmp_path / "sms.token"
    token.write_text("APPCODE 0123456789abcdef\n", encoding="utf-8")
    token.chmod(0o600)
    cfg = SmsConfig(url=gateway.url, sign_name="电子监察", template_code="SMS_000001", token_file=str(token))
    SmsNotifier(cfg).send(MESSAGE)
    [(body, headers)] = gateway.requests
    assert body["PhoneNumbers"] == "13800000001" and body["SignName"] == "电子监察"
    assert body["TemplateCode"] == "SMS_000001"
    assert json.loads(body["TemplateParam"]) == {"unit": "320303-ZJ", "case": "C1", "rule": "办件超时", "level": "红牌"}
    assert headers["Authorization"] == "APPCODE 0123456789abcdef"
    # Tencent Cloud's shape and free text, by the template; success read at a nested path
    tencent = SmsConfig(url=gateway.url, body={"PhoneNumberSet": "${phones_list}", "SignName": "${sign_name}",
                                               "TemplateId": "${template_code}", "TemplateParamSet": ["${text}"]},
                        success_field="Response.SendStatusSet.0.Code", success_value="Ok", template_code="1")
    gateway.answers.append((200, {"Response": {"SendStatusSet": [{"Code": "Ok"}]}}))
    SmsNotifier(tencent).send(MESSAGE)
    body = gateway.requests[-1][0]
    assert body["PhoneNumberSet"] == ["13800000001"] and body["TemplateParamSet"] == [
        "【红牌】320303-ZJ办件C1办件超时，请及时处置。"]
    gateway.answers.append((200, {"Response": {"SendStatusSet": [{"Code": "FailedOperation.InsufficientBalance"}]}}))
    with pytest.raises(NotifyError, match="did not accept") as e:
        SmsNotifier(tencent).send(MESSAGE)
    assert e.value.permanent


def test_a_gateway_that_fails_then_succeeds_and_one_that_always_fails(gateway: Any) -> None:
    notifier = SmsNotifier(SmsConfig(url=gateway.url, timeout_s=5))
    slept: list[float] = []
    gateway.answers += [(503, {"Code": "ServiceUnavailable"}), (200, {"Code": "isv.BUSINESS_LIMIT_CONTROL"}),
                        (502, {})]  # down, throttled (a code that says "later"), a proxy's error: then accepted
    assert deliver(notifier, MESSAGE, retries=3, backoff_s=0.5, sleep=slept.append) == ("", 4)
    assert slept == [0.5, 1.0, 2.0]  # backoff: doubled each time
    gateway.default = (500, {"Code": "InternalError"})
    error, attempts = deliver(notifier, MESSAGE, retries=2, backoff_s=0, sleep=slept.append)
    assert attempts == 3 and "HTTP 500" in error and len(gateway.requests) == 7
    gateway.default = (200, {"Code": "isv.MOBILE_NUMBER_ILLEGAL"})  # the number refused: no retry helps
    error, attempts = deliver(notifier, MESSAGE, retries=2, backoff_s=0, sleep=slept.append)
    assert attempts == 1 and "MOBILE_NUMBER_ILLEGAL" in error
    assert "13800000001" not in deliver(notifier, {**MESSAGE, "to": {"name": "王芳", "phone": "1380000abc"}}, 0, 0)[0]


def test_mask_phone() -> None:
    assert mask_phone("13800000001") == "138****0001" and mask_phone("+86 138-0000-0001") == "861****0001"
    assert mask_phone("12345") == "***45" and mask_phone("") == ""


# ---- end to end: the ladder's people, the dead letters, the retry ---------------------------------------------------

CSV = """姓名,登录名,部门,电话,邮箱,承办人标识,身份,分管部门
王芳,wangf,320303-ZJ,,,WF001;王芳,承办人,
李局长,,320303-ZJ,13800000002,lijz@example.cn,,分管领导,320303-ZJ
"""


def test_handler_then_leader_by_mail_and_sms_dead_letters_and_retry(tree: Any, tmp_path: Path, smtpd: Any,
                                                                     gateway: Any,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    inbox, smtp = smtpd("starttls")
    home = Home(tree.county.dir)
    c = str(home.dir)
    (home.dir / "smtp.password").write_text(PASSWORD + "\n", encoding="utf-8")
    (home.dir / "smtp.password").chmod(0o600)
    with home.config.path.open("a", encoding="utf-8") as f:
        f.write(f'\n[notify]\nyellow = ["smtp", "sms"]\nred = ["smtp", "sms"]\nretries = 1\nretry_backoff_s = 0\n'
                f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\nsmtp_ca_file = "{smtp.ca_file}"\n'
                f'smtp_user = "jiancha@example.gov.cn"\nsmtp_password_file = "smtp.password"\n'
                f'smtp_sender = "电子监察 <jiancha@example.gov.cn>"\nsms_url = "{gateway.url}"\n'
                f'sms_sign_name = "电子监察"\nsms_template_code = "SMS_000001"\n')
    home = Home(tree.county.dir)
    (tmp_path / "dir.csv").write_text(CSV, encoding="utf-8")
    rc, _out, err = run(capsys, "directory", "import", c, str(tmp_path / "dir.csv"))
    assert rc == 0, err
    # 王芳's directory row has no phone or mail: her user entry has them
    rc, out, err = run(capsys, "users", "add", c, "--login", "wangf", "--name", "王芳", "--role", "承办人",
                       "--mobile", "13800000001", "--email", "wf@example.cn", "--no-password")
    assert rc == 0 and out["phone"] == "13800000001" and out["mail"] == "wf@example.cn", err
    rc, bad, _ = run(capsys, "users", "add", c, "--login", "zhaos", "--name", "赵四", "--role", "承办人",
                     "--mobile", "138-abc", "--no-password")
    assert rc == 2 and "--mobile" in bad["error"] and "13800000000" in bad["fix"]
    rc, rows, _ = run(capsys, "users", "list", c)
    assert {(u["login"], u["phone"], u["mail"]) for u in rows} >= {("wangf", "13800000001", "wf@example.cn")}
    capsys.readouterr()
    from node.interfaces.cli import main as cli

    assert cli.main(["users", "list", c]) == 0 and "wf@example.cn" in capsys.readouterr().out

    gateway.default = (503, {"Code": "ServiceUnavailable"})  # the SMS gateway is down all along
    from node.app import ingest

    rows_ = [*case("C1", "WF001"), alert("C1", 2), alert("C1", 3, n=2)]
    assert ingest.run_request(home.ledger(), {"records": [{**r, "position": f"t:{i}"} for i, r in enumerate(rows_)]}
                              )["accepted"] == len(rows_)
    with structlog.testing.capture_logs() as logs:
        payloads = route_once(home.ledger(), load_dispatcher(home.config.sections, home.dir), lambda: NOW)
    yellow, red = alert("C1", 2)["payload"]["alert_id"], alert("C1", 3, n=2)["payload"]["alert_id"]
    # the handler first (黄牌), the leader for the red card; mail delivered, every text message failed
    assert sorted((m["X-Fednode-Alert"], tuple(r)) for r, m in inbox.mails) == [
        (yellow, ("wf@example.cn",)), (red, ("lijz@example.cn",))]
    attempts = {(p["alert_id"], a["name"], a["channel"]): (a["outcome"], a["tries"]) for p in payloads
                for a in p["attempts"]}
    assert attempts == {(yellow, "王芳", "smtp"): ("sent", 1), (yellow, "王芳", "sms"): ("failed", 2),
                        (red, "李局长", "smtp"): ("sent", 1), (red, "李局长", "sms"): ("failed", 2)}
    failed = [x for x in logs if x["event"] == "notify_person_failed"]
    assert {x["address"] for x in failed} == {"138****0001", "138****0002"}
    assert "13800000001" not in json.dumps(logs, ensure_ascii=False, default=str)  # masked in every log line
    home.close()

    # the dead-letter list: a read that writes nothing
    db = home.dir / "store.db"
    before = db.stat().st_mtime_ns if db.exists() else 0
    rc, dead, err = run(capsys, "notify", "dead-letters", c)
    assert rc == 0 and dead["dead"] == 2, err
    assert {(x["name"], x["channel"], x["address"], x["attempts"]) for x in dead["letters"]} == {
        ("王芳", "sms", "138****0001", 2), ("李局长", "sms", "138****0002", 2)}
    assert all("HTTP 503" in x["last_error"] for x in dead["letters"])
    assert (db.stat().st_mtime_ns if db.exists() else 0) == before
    capsys.readouterr()
    assert cli.main(["notify", "dead-letters", c]) == 0
    human = capsys.readouterr().out
    assert "138****0001" in human and "13800000001" not in human and "待重发" in human

    # the gateway still down: the retry fails again, attempts added, still dead
    first = min(x["id"] for x in dead["letters"])
    rc, out, _ = run(capsys, "notify", "retry", c, str(first))
    assert rc == 1 and out["failed"] == 1
    rc, dead, _ = run(capsys, "notify", "dead-letters", c)
    assert {x["id"]: x["attempts"] for x in dead["letters"]}[first] == 4
    # the gateway is back: retry them all, as a person; they are delivered and recorded in that person's name
    gateway.default = (200, {"Code": "OK"})
    rc, out, err = run(capsys, "notify", "retry", c, "--all")
    assert rc == 0 and out["sent"] == 2 and out["failed"] == 0, err
    assert sorted(b["PhoneNumbers"] for b, _h in gateway.requests[-2:]) == ["13800000001", "13800000002"]
    rc, dead, _ = run(capsys, "notify", "dead-letters", c)
    assert dead == {"dead": 0, "letters": []}
    rc, done, _ = run(capsys, "notify", "dead-letters", c, "--all")
    assert {x["state"] for x in done["letters"]} == {"sent"} and all(x["resolved_by"] for x in done["letters"])
    rc, shown, _ = run(capsys, "alerts", "show", c, red)
    assert ("李局长", "sms", "sent") in {(n["name"], n["channel"], n["outcome"]) for n in shown["notified"]}
    rc, again, _ = run(capsys, "notify", "retry", c, str(first))
    assert rc != 0 and "already delivered" in again["error"]
    rc, none, _ = run(capsys, "notify", "retry", c)
    assert rc == 2 and "--all" in none["fix"]
    # the work log: the acting retry (the first, which failed, is not an act done; the reads are none)
    spooled = [json.loads(line) for line in (home.dir / worklog.SPOOL).read_text(encoding="utf-8").splitlines()]
    assert [p["action"] for p in spooled if p["action"].startswith("notify")] == ["notify retry"]
    assert [p["by"]["login"] for p in spooled if p["action"] == "notify retry"] == [done["letters"][0]["resolved_by"]]


def test_check_refuses_a_password_file_others_can_read(tree: Any) -> None:
    home = Home(tree.county.dir)
    pw = home.dir / "smtp.password"
    pw.write_text(PASSWORD + "\n", encoding="utf-8")
    pw.chmod(0o640)
    with home.config.path.open("a", encoding="utf-8") as f:
        f.write('\n[notify]\nred = ["smtp"]\nsmtp_host = "mail.example.gov.cn"\nsmtp_user = "jc"\n'
                'smtp_password_file = "smtp.password"\nsmtp_sender = "jc@example.gov.cn"\n')
    _cfg, problems = configcheck.check_home(home.dir)
    [p] = [p for p in problems if p.section == "notify"]
    assert "mode 0640" in p.message and p.fix == f"chmod 600 {pw}"
    pw.chmod(0o600)
    assert [p for p in configcheck.check_home(home.dir)[1] if p.section == "notify"] == []
    pw.unlink()
    [p] = [p for p in configcheck.check_home(home.dir)[1] if p.section == "notify"]
    assert "cannot be read" in p.message
    with pytest.raises(Exception, match="smtp_password_file"):
        NotifyConfig.from_section({"smtp_user": "jc", "smtp_host": "h", "smtp_sender": "a@b.cn"})
    home.close()


@pytest.mark.slow
def test_in_the_running_node_the_service_keeps_dead_letters_and_retry_goes_through_it(tmp_path: Path,
                                                                                     gateway: Any) -> None:
    """The routing service of `fednode run` sends, keeps what failed, and `notify retry` is done by the node
    (admin op ``notify``) while it runs; the delivery is recorded and reaches the province."""
    import os
    import subprocess
    import sys

    from tests.faultlib import COUNTY, PROVINCE, Cluster, wait_for

    def fednode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "FEDNODE_USER": ""})

    gateway.default = (503, {"Code": "ServiceUnavailable"})
    with Cluster(tmp_path) as cl:
        for key, value in (("yellow", ["sms"]), ("retries", 1), ("retry_backoff_s", 0), ("sms_url", gateway.url)):
            cl.set_config(COUNTY, "notify", key, value)
        county = str(cl.homes[COUNTY].dir)
        (tmp_path / "dir.csv").write_text(CSV, encoding="utf-8")
        assert fednode("directory", "import", county, str(tmp_path / "dir.csv")).returncode == 0
        r = fednode("users", "add", county, "--login", "wangf", "--name", "王芳", "--role", "承办人", "--mobile",
                    "13800000001", "--no-password")
        assert r.returncode == 0, r.stderr
        cl.start()
        rows_ = [*case("C1", "WF001"), alert("C1", 2)]
        out = cl.call(COUNTY, {"op": "ingest", "records": [{**r, "position": f"t:{i}"} for i, r in enumerate(rows_)]})
        assert out["ingested"] == len(rows_), out

        def dead_letters() -> dict[str, Any]:
            r = fednode("notify", "dead-letters", county, "--json")
            assert r.returncode == 0, r.stderr
            return dict(json.loads(r.stdout))

        wait_for(lambda: dead_letters()["dead"] == 1, 60, "the service keeps the failed text message")
        assert cl.status(COUNTY)["auto_tickets"]["dead_letters"] == 1
        [letter] = dead_letters()["letters"]
        assert (letter["name"], letter["channel"], letter["address"], letter["attempts"]) == (
            "王芳", "sms", "138****0001", 2)
        gateway.default = (200, {"Code": "OK"})
        r = fednode("notify", "retry", county, str(letter["id"]), "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        assert json.loads(r.stdout)["sent"] == 1 and gateway.requests[-1][0]["PhoneNumbers"] == "13800000001"
        assert dead_letters()["dead"] == 0
        yellow = alert("C1", 2)["payload"]["alert_id"]

        def province_knows() -> bool:
            r = fednode("alerts", "show", str(cl.homes[PROVINCE].dir), yellow, "--json")
            told = json.loads(r.stdout).get("notified", []) if r.returncode == 0 else []
            return ("王芳", "sms", "sent") in {(n["name"], n["channel"], n["outcome"]) for n in told}
        wait_for(province_knows, 90, "the province sees the retried delivery")


def test_users_with_the_handler_role_count_as_handlers_of_the_directory(tree: Any, tmp_path: Path) -> None:
    from node.app import directory as app_directory
    from node.app import notify as app_notify
    from node.app import people as app_people
    from node.features.alerts import routing

    home = Home(tree.county.dir)
    (tmp_path / "dir.csv").write_text(CSV, encoding="utf-8")
    app_directory.import_directory(home, str(tmp_path / "dir.csv"))
    for login, name, role, phone in (("zhaol", "赵六", "handler", "13900000006"), ("qianq", "钱七", "dept_supervisor",
                                                                                 "13900000007")):
        app_people.run_request(home, {"action": "add", "auth": {"os_user": "root"}, "login": login, "name": name,
                                      "roles": [role], "scope": "320303-ZJ", "phone": phone, "mail": ""})
    directory, supervisors = app_notify.ladder_people(home.store())
    a = {"alert_id": "x", "level": 2, "object": "case", "dept": "320303-ZJ", "division": "320303"}
    told, missing = routing.recipients(a, "zhaol", directory, supervisors)
    assert [(e.name, e.phone) for e, _w in told] == [("赵六", "13900000006")] and not missing
    told, missing = routing.recipients(a, "X9", directory, supervisors)  # unknown: the 部门监察 user is the contact
    assert [(e.name, e.phone) for e, _w in told] == [("钱七", "13900000007")] and missing
    assert [e.name for e in app_directory.load(home.store()).entries] == ["王芳", "李局长"]  # the import unchanged
    home.close()


def test_the_dead_letter_table_on_sqlite_and_postgresql(tmp_path: Path, store_url: str) -> None:
    from node.features import notify_dead as dead
    from tests.conftest import Tree

    t = Tree(tmp_path / "t", county_db=store_url)
    try:
        store = t.county.store()
        with store.write() as tx:
            assert dead.add(tx, [dead.new_row(MESSAGE, ch, "wangf", 3, f"{ch} down", "2026-03-16T10:00:00+08:00")
                                 for ch in ("sms", "smtp")]) == 2
        with store.read() as conn:
            sms, smtp = dead.rows(conn)
            assert (sms.channel, sms.address, sms.attempts, sms.message["to"]["name"]) == ("sms", "13800000001", 3, "王芳")
            assert smtp.address == "wf@example.cn" and sms.public()["address"] == "138****0001"
        with store.write() as tx:
            dead.settle(tx, sms, error="", attempts=1, by="zhang", at="2026-03-16T11:00:00+08:00")
            dead.settle(tx, smtp, error="still down", attempts=2, by="zhang", at="2026-03-16T11:00:00+08:00")
        with store.read() as conn:
            assert [(x.id, x.attempts, x.last_error) for x in dead.rows(conn)] == [(smtp.id, 5, "still down")]
            assert dead.count(conn) == 1 and dead.count(conn, dead.SENT) == 1
            [done] = [x for x in dead.rows(conn, include_sent=True) if x.state == dead.SENT]
            assert (done.resolved_by, done.attempts) == ("zhang", 4)
    finally:
        t.close()
