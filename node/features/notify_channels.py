"""Notifiers that reach a person (预警 "通过网络或手机短信" to the handler, the leader...): mail through an SMTP
server (stdlib smtplib) and text messages through an HTTP SMS gateway.

Rules of this module:
- a message is an alert plus ``to`` (the person: name, login, phone, mail) and ``why`` (what the ladder of
  node/features/alerts/routing.py says they are told for); node/runtime/services/alerts.py builds it. A
  message without the address a channel needs fails at once, permanently (no retry helps until the
  directory or the user entry has it).
- secrets never sit in node.toml: the SMTP password and the gateway's token are read, at each send, from
  files of mode 0600 (``read_secret``; `fednode check` and `fednode run` refuse a file others can read).
- ``NotifyError.permanent``: a failure a retry cannot cure (login refused, number refused by the gateway,
  no address) skips the retries and goes straight to the dead-letter list; a timeout, a refused connection,
  HTTP 429/5xx are retried with backoff (node/features/notify.py ``deliver``).
- phone numbers are masked (``mask_phone``: 138****0000) in every log line and in what the CLI prints; the
  store keeps them whole (it is the node's, mode 0600).
- the SMS gateway's request is a template (``[notify] sms_body``) modelled on Alibaba Cloud's SendSms
  (``PhoneNumbers`` joined by commas, ``SignName``, ``TemplateCode``, ``TemplateParam`` as a JSON string,
  success when the answer's ``Code`` is ``"OK"``); Tencent Cloud's shape (``PhoneNumberSet``,
  ``SignName``, ``TemplateId``, ``TemplateParamSet``; success at ``Response.SendStatusSet.0.Code`` =
  ``"Ok"``) and the provinces' 政务短信平台 (free ``${text}``) are written with the same placeholders. The
  public clouds' request signatures (Alibaba's HMAC, Tencent's TC3) are not computed here: point
  ``sms_url`` at the provincial gateway or at a signing relay; a static token (``APPCODE ...`` of the
  cloud markets, ``Bearer ...``) goes in ``sms_token_file``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import smtplib
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import structlog

from node.core import configschema
from node.core.errors import FednodeError
from node.features.alerts.disposal import LEVEL_TEXT, RULE_TEXT

log = structlog.get_logger(__name__)
SCHEMA = configschema.NOTIFY
PERSONAL = ("smtp", "sms")  # channels that need a person's address: only the routed path (with ``to``) uses them
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class NotifyError(FednodeError):
    code = "notify"

    def __init__(self, message: str, *, fix: str = "", permanent: bool = False) -> None:
        super().__init__(message, fix=fix)
        self.permanent = permanent


# ---- helpers ---------------------------------------------------------------------------------------------


def mask_phone(phone: str) -> str:
    """138****0000 for a mobile number; the last two digits only for anything shorter."""
    p = str(phone or "").strip()
    digits = re.sub(r"\D", "", p)
    if len(digits) >= 11:
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) >= 4:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "*" * len(digits)


def mask_address(channel: str, address: str) -> str:
    """What a log line or the CLI shows of an address: a phone masked, a mail address as it is."""
    return mask_phone(address) if channel == "sms" else address


def resolve_path(path: str, base: Path | None) -> str:
    if not path:
        return ""
    p = Path(path)
    return str(p if p.is_absolute() or base is None else Path(base) / p)


def check_secret_file(path: str, key: str) -> None:
    """Refuse a secret file that is missing or that a group or other users may read (NotifyError naming the fix)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NotifyError(f"{key} {path} cannot be read: {e.strerror}", permanent=True,
                          fix=f"write the secret on the first line of {path}, then chmod 600 {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotifyError(f"{key} {path} is not a file", fix=f"give the path of a file holding the secret ({key})",
                          permanent=True)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise NotifyError(f"{key} {path} can be read by other users (mode {mode:04o}); it must be 0600",
                          fix=f"chmod 600 {path}", permanent=True)


def read_secret(path: str, key: str) -> str:
    """The first line of a 0600 secret file."""
    check_secret_file(path, key)
    with open(path, encoding="utf-8") as f:
        secret = f.readline().rstrip("\r\n")
    if not secret:
        raise NotifyError(f"{key} {path} is empty", fix=f"write the secret on its first line (chmod 600 {path})",
                          permanent=True)
    return secret


def fields_of(message: Mapping[str, Any]) -> dict[str, str]:
    """The texts a mail, a text message or a gateway template are made of (configschema.SMS_FIELDS)."""
    rule_id = str(message.get("rule_id") or "")
    try:
        level = int(message.get("level") or 4)
    except (TypeError, ValueError):
        level = 4
    to = message.get("to") if isinstance(message.get("to"), Mapping) else {}
    return {"unit": str(message.get("dept") or message.get("division") or ""),
            "case_no": str(message.get("case_no") or message.get("complaint_no") or ""),
            "rule": RULE_TEXT.get(rule_id, rule_id), "rule_id": rule_id, "level": LEVEL_TEXT.get(level, str(level)),
            "alert_id": str(message.get("alert_id") or ""), "message": str(message.get("message") or ""),
            "why": str(message.get("why") or ""), "name": str((to or {}).get("name") or ""),
            "at": str(message.get("at") or "")}


def subject_of(message: Mapping[str, Any]) -> str:
    f = fields_of(message)
    case = f"办件 {f['case_no']}：" if f["case_no"] else ""
    return f"【电子监察{f['level']}】{f['unit']} {case}{f['rule']}".replace("  ", " ")


def text_of(message: Mapping[str, Any]) -> str:
    """The mail body in Chinese (what a person reads)."""
    f = fields_of(message)
    lines = [f"{f['name']}：" if f["name"] else "您好：", ""]
    if f["why"]:
        lines += [f["why"], ""]
    lines += [f"预警级别：{f['level']}", f"责任单位：{f['unit'] or '—'}"]
    if f["case_no"]:
        lines.append(f"办件编号：{f['case_no']}")
    lines += [f"监察规则：{f['rule']}（{f['rule_id']}）" if f["rule"] != f["rule_id"] else f"监察规则：{f['rule']}",
              f"情况说明：{f['message'] or '—'}", f"预警编号：{f['alert_id']}"]
    if f["at"]:
        lines.append(f"发出时间：{f['at']}")
    lines += ["", "请登录电子监察系统查看并处置。本邮件由电子监察节点自动发送，请勿直接回复。"]
    return "\n".join(lines) + "\n"


def sms_text(message: Mapping[str, Any]) -> str:
    """A text message in Chinese (``${text}``), short: level, unit, case, rule."""
    f = fields_of(message)
    case = f"办件{f['case_no']}" if f["case_no"] else ""
    return f"【{f['level']}】{f['unit']}{case}{f['rule']}，请及时处置。"


# ---- SMTP ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = SCHEMA.key("smtp_host").default
    port: int = SCHEMA.key("smtp_port").default
    security: str = SCHEMA.key("smtp_security").default
    ca_file: str = SCHEMA.key("smtp_ca_file").default
    user: str = SCHEMA.key("smtp_user").default
    password_file: str = SCHEMA.key("smtp_password_file").default
    sender: str = SCHEMA.key("smtp_sender").default
    timeout_s: float = float(SCHEMA.key("smtp_timeout_s").default)

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    def secrets(self) -> list[tuple[str, str]]:
        return [("smtp_password_file", self.password_file)] if self.password_file else []


class SmtpNotifier:
    """One mail per message to ``to.mail``, UTF-8 subject and body, through ``smtplib``."""

    name = "smtp"

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg

    def build(self, message: Mapping[str, Any]) -> EmailMessage:
        to = message.get("to") if isinstance(message.get("to"), Mapping) else None
        mail = str((to or {}).get("mail") or "").strip()
        if not mail or "@" not in mail:
            who = (to or {}).get("name") or (to or {}).get("login") or "the recipient"
            raise NotifyError(f"{who} has no mail address", permanent=True,
                              fix="add their 邮箱 to the directory (fednode directory import) or to their user "
                                  "entry (fednode users add --email)")
        msg = EmailMessage()
        name, addr = parseaddr(self.cfg.sender)
        msg["From"] = Address(display_name=name, addr_spec=addr) if name else addr
        local, _, domain = mail.partition("@")
        msg["To"] = Address(display_name=str((to or {}).get("name") or ""), username=local, domain=domain)
        msg["Subject"] = subject_of(message)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=addr.partition("@")[2] or None)
        msg["X-Fednode-Alert"] = str(message.get("alert_id") or "")
        msg.set_content(text_of(message), charset="utf-8")
        return msg

    def send(self, message: Mapping[str, Any]) -> None:
        msg = self.build(message)
        cfg = self.cfg
        where = f"mail server {cfg.host}:{cfg.effective_port}"
        password = read_secret(cfg.password_file, "smtp_password_file") if cfg.user else ""
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
        try:
            smtp: smtplib.SMTP
            if cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, timeout=cfg.timeout_s, context=context)
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout_s)
            with smtp:
                smtp.ehlo()
                if cfg.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise NotifyError(f"{where} does not offer STARTTLS", permanent=True,
                                          fix="use smtp_security = \"ssl\" with its SMTPS port, or a server that "
                                              "offers STARTTLS (\"none\" only for a relay on loopback)")
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if cfg.user:
                    _login(smtp, cfg.user, password)
                smtp.send_message(msg)
        except NotifyError:
            raise
        except smtplib.SMTPAuthenticationError as e:
            raise NotifyError(f"{where} refused the login of {cfg.user}: {e.smtp_code} {_text(e.smtp_error)}",
                              fix="check smtp_user and the password in smtp_password_file", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as e:
            codes = "; ".join(f"{_text(err[1])}" for err in e.recipients.values())
            raise NotifyError(f"{where} refused the recipient: {codes}", permanent=True,
                              fix="check the person's 邮箱 in the directory or their user entry") from None
        except smtplib.SMTPSenderRefused as e:
            raise NotifyError(f"{where} refused the sender {cfg.sender}: {_text(e.smtp_error)}", permanent=True,
                              fix="set smtp_sender to an address the server lets this login use") from None
        except ssl.SSLCertVerificationError as e:
            raise NotifyError(f"{where}: its certificate is not trusted ({e.verify_message})", permanent=True,
                              fix="give its CA in smtp_ca_file (PEM)") from None
        except smtplib.SMTPResponseException as e:
            raise NotifyError(f"{where} answered {e.smtp_code} {_text(e.smtp_error)}",
                              fix="see the mail server's log", permanent=e.smtp_code >= 550) from None
        except (smtplib.SMTPException, OSError) as e:  # refused, reset, timed out, TLS handshake...
            raise NotifyError(f"{where} unreachable: {type(e).__name__}: {e}",
                              fix="check smtp_host, smtp_port, smtp_security and that the server is up") from None


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """``smtp.login``; smtplib encodes the credentials as ASCII, so a password with other characters goes
    as RFC 4616 AUTH PLAIN in UTF-8 (what the mail servers in use accept)."""
    try:
        smtp.login(user, password)
        return
    except UnicodeEncodeError:
        pass
    if "plain" not in smtp.esmtp_features.get("auth", "").lower().split():
        raise NotifyError("the mail password or login holds non-ASCII characters and the server offers no AUTH "
                          "PLAIN to carry them", fix="use an ASCII password, or a server that offers AUTH PLAIN",
                          permanent=True)
    token = base64.b64encode(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")).decode("ascii")
    code, resp = smtp.docmd("AUTH", "PLAIN " + token)
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, resp)


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


# ---- SMS gateway -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmsConfig:
    url: str = SCHEMA.key("sms_url").default
    sign_name: str = SCHEMA.key("sms_sign_name").default
    template_code: str = SCHEMA.key("sms_template_code").default
    params: Mapping[str, str] = field(default_factory=lambda: dict(SCHEMA.key("sms_params").default))
    body: Mapping[str, Any] = field(default_factory=lambda: dict(SCHEMA.key("sms_body").default))
    success_field: str = SCHEMA.key("sms_success_field").default
    success_value: str = SCHEMA.key("sms_success_value").default
    token_file: str = SCHEMA.key("sms_token_file").default
    token_header: str = SCHEMA.key("sms_token_header").default
    timeout_s: float = float(SCHEMA.key("sms_timeout_s").default)

    def secrets(self) -> list[tuple[str, str]]:
        return [("sms_token_file", self.token_file)] if self.token_file else []


def _fill(template: Any, values: Mapping[str, Any]) -> Any:
    """The body template with its placeholders filled: a string that is one placeholder becomes its value
    (a list or a table stays one), a string with several becomes text."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if isinstance(template, str):
        if template in values:
            return values[template]
        return re.sub(r"\$\{[a-z_]+\}", lambda m: _as_text(values.get(m.group(0), m.group(0))), template)
    return template


def _as_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


PERMANENT_HTTP = (400, 401, 403, 404, 405, 413, 422)  # a request the endpoint will never take: not retried


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float, where: str, *,
              answered_fix: str, unreachable_fix: str) -> bytes:
    """POST ``body`` (JSON) to ``url``; the answer's body (64 KiB at most) when it is 2xx, else NotifyError
    (permanent for the codes of PERMANENT_HTTP). The webhook and the SMS gateway both post through it."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json; charset=utf-8", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (operator URL)
            status, raw = resp.status, resp.read(65536)
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace").strip()
        raise NotifyError(f"{where} answered HTTP {e.code}{': ' + detail if detail else ''}", fix=answered_fix,
                          permanent=e.code in PERMANENT_HTTP) from None
    except (urllib.error.URLError, OSError) as e:
        raise NotifyError(f"{where} unreachable: {getattr(e, 'reason', e)}", fix=unreachable_fix) from None
    if not 200 <= status < 300:
        raise NotifyError(f"{where} answered HTTP {status}", fix=answered_fix)
    return bytes(raw)


def _at_path(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


class SmsNotifier:
    """One HTTP POST (JSON) per message to ``to.phone``, the body made from ``sms_body``; delivered when the
    answer is 2xx and, with ``sms_success_field``, that field holds ``sms_success_value``."""

    name = "sms"

    def __init__(self, cfg: SmsConfig) -> None:
        self.cfg = cfg

    def request_body(self, message: Mapping[str, Any]) -> dict[str, Any]:
        to = message.get("to") if isinstance(message.get("to"), Mapping) else None
        phone = re.sub(r"[\s-]", "", str((to or {}).get("phone") or ""))
        if not re.fullmatch(r"\+?\d{5,20}", phone):
            who = (to or {}).get("name") or (to or {}).get("login") or "the recipient"
            raise NotifyError(f"{who} has no mobile number" if not phone else
                              f"{who}'s phone {mask_phone(phone)} is not a number", permanent=True,
                              fix="add their 电话 to the directory (fednode directory import) or to their user "
                                  "entry (fednode users add --mobile)")
        f = fields_of(message)
        params = {name: f[field_] for name, field_ in self.cfg.params.items()}
        values: dict[str, Any] = {"${phones}": phone, "${phones_list}": [phone], "${sign_name}": self.cfg.sign_name,
                                  "${template_code}": self.cfg.template_code, "${params}": params,
                                  "${params_json}": json.dumps(params, ensure_ascii=False),
                                  "${text}": sms_text(message)}
        body: dict[str, Any] = _fill(dict(self.cfg.body), values)
        return body

    def send(self, message: Mapping[str, Any]) -> None:
        cfg = self.cfg
        body = json.dumps(self.request_body(message), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        if cfg.token_file:
            headers[cfg.token_header] = read_secret(cfg.token_file, "sms_token_file")
        where = f"SMS gateway {cfg.url}"
        raw = post_json(cfg.url, body, headers, cfg.timeout_s, where,
                        answered_fix="see the gateway's answer; check sms_url and sms_token_file",
                        unreachable_fix="check sms_url and that the gateway is up (sms_timeout_s)")
        if not cfg.success_field:
            return
        try:
            answer = json.loads(raw.decode("utf-8", "replace") or "null")
        except ValueError:
            raise NotifyError(f"{where} answered something that is not JSON: {raw[:120]!r}",
                              fix="check sms_url (is it the gateway's API?) or set sms_success_field = \"\"") from None
        got = _at_path(answer, cfg.success_field)
        if str(got) != cfg.success_value:
            text = json.dumps(answer, ensure_ascii=False)[:300]
            raise NotifyError(f"{where} did not accept the message: {cfg.success_field} = {got!r}, not "
                              f"{cfg.success_value!r} ({text})",
                              fix="see the gateway's error code (sign name, template, number, balance)",
                              permanent=got is not None and not _transient(str(got)))


def _transient(code: str) -> bool:
    """A gateway code that says "try again later" (flow control, busy, throttled)."""
    c = code.lower()
    return any(w in c for w in ("limit", "control", "busy", "throttl", "timeout", "frequency", "系统繁忙"))


__all__ = ["PERSONAL", "NotifyError", "SmsConfig", "SmsNotifier", "SmtpConfig", "SmtpNotifier", "check_secret_file",
           "fields_of", "mask_address", "mask_phone", "post_json", "read_secret", "resolve_path", "sms_text", "subject_of", "text_of"]
