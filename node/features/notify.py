"""Notifications of alerts: a pluggable notifier per level (log, webhook, command).

Rules of this module:
- the alert record in the node's log is the truth; a notification is a courtesy copy. A notifier
  that fails is logged (with what failed and the fix) and retried a few times; it never blocks,
  crashes or rolls back the rules service that produced the alert.
- ``[notify]`` in node.toml chooses, per level, which notifiers run::

      [notify]
      warn = ["log"]                       # 预警
      yellow = ["log", "webhook"]          # 黄牌
      red = ["log", "webhook", "command"]  # 红牌
      serious = ["log", "webhook", "command"]  # 严重违规 and operator alerts
      webhook_url = "http://127.0.0.1:8080/alerts"   # HTTP POST, body = the alert as JSON
      webhook_timeout_s = 5
      command = ["/usr/local/bin/sms-gateway", "--to", "13800000000"]  # alert JSON on stdin
      command_timeout_s = 10
      retries = 2
      retry_backoff_s = 1                  # then 2, 4... seconds
      smtp_host = "mail.example.gov.cn"    # the smtp notifier (node/features/notify_channels.py)
      smtp_user = "jiancha@example.gov.cn"
      smtp_password_file = "smtp.password" # mode 0600, relative to the node home
      smtp_sender = "电子监察 <jiancha@example.gov.cn>"
      sms_url = "https://sms.example.gov.cn/api/send"   # the sms notifier: an HTTP SMS gateway

  Levels not listed use ``["log"]``. A notifier named for a level must be configured (a webhook
  needs ``webhook_url``, a command needs ``command``, smtp ``smtp_host`` and ``smtp_sender``, sms
  ``sms_url``): a typo is an error at start, not a silence. ``smtp`` and ``sms`` reach a person: only the
  routed path (node/runtime/services/alerts.py: the directory's ladder, a message with ``to``) uses them;
  ``Dispatcher.dispatch`` (every alert, nobody in particular) skips them.
- ``deliver`` is the one retry loop: ``retries`` further attempts, waiting ``retry_backoff_s`` then twice
  as long each time; a permanent failure (``NotifyError.permanent``) is not retried.
  Each key's type, default and range is node.configschema.NOTIFY (docs/configuration.md); this
  module checks what ties keys together.
- sans-I/O where it can be: ``NotifyConfig.from_section`` validates, ``plan`` says which notifiers
  an alert goes to; ``Notifier.send`` does the I/O (``urllib``, ``subprocess``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from node.core import configschema
from node.core.errors import ConfigError, FednodeError
from node.features.notify_channels import (
    PERSONAL,
    NotifyError,
    SmsConfig,
    SmsNotifier,
    SmtpConfig,
    SmtpNotifier,
    check_secret_file,
    post_json,
    resolve_path,
)

log = structlog.get_logger(__name__)

SCHEMA = configschema.NOTIFY  # the keys of [notify], their types, defaults and ranges (docs/configuration.md)
LEVEL_KEYS = {1: "warn", 2: "yellow", 3: "red", 4: "serious"}
NOTIFIERS = configschema.NOTIFIERS
KEYS = SCHEMA.known  # what [notify] may hold (node/runtime/configcheck.py reports any other key with a "did you mean")


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    levels: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: {lv: tuple(SCHEMA.key(k).default) for lv, k in LEVEL_KEYS.items()})
    webhook_url: str = SCHEMA.key("webhook_url").default
    webhook_timeout_s: float = float(SCHEMA.key("webhook_timeout_s").default)
    command: tuple[str, ...] = tuple(SCHEMA.key("command").default)
    command_timeout_s: float = float(SCHEMA.key("command_timeout_s").default)
    retries: int = SCHEMA.key("retries").default
    retry_backoff_s: float = float(SCHEMA.key("retry_backoff_s").default)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, *, where: str = "node.toml [notify]",
                     base: Path | None = None) -> NotifyConfig:
        """Each key is checked by the schema (node.configschema.NOTIFY); here only what ties keys together.
        ``base``: the node home, that relative file names are relative to."""
        section = dict(section or {})
        unknown = set(section) - KEYS
        if unknown:
            raise NotifyError(f"{where}: unknown setting(s) {sorted(unknown)}",
                              fix=configschema.unknown_key_fix(sorted(unknown)[0], KEYS))
        v = {key: SCHEMA.get(section, key, where, error=NotifyError) for key in KEYS}
        levels = {lv: tuple(dict.fromkeys([v[key]] if isinstance(v[key], str) else v[key]))
                  for lv, key in LEVEL_KEYS.items()}
        url: str = v["webhook_url"]
        command = [v["command"]] if isinstance(v["command"], str) else v["command"]
        used = {n for names in levels.values() for n in names}
        if "webhook" in used and not url:
            raise NotifyError(f"{where}: a level uses the webhook notifier but webhook_url is not set",
                              fix="set webhook_url, or remove \"webhook\" from the levels")
        if "command" in used and not command:
            raise NotifyError(f"{where}: a level uses the command notifier but command is not set",
                              fix="set command = [\"/path/to/script\", ...], or remove \"command\" from the levels")
        smtp = SmtpConfig(host=v["smtp_host"], port=int(v["smtp_port"]), security=v["smtp_security"],
                          ca_file=resolve_path(v["smtp_ca_file"], base), user=v["smtp_user"],
                          password_file=resolve_path(v["smtp_password_file"], base), sender=v["smtp_sender"],
                          timeout_s=float(v["smtp_timeout_s"]))
        sms = SmsConfig(url=v["sms_url"], sign_name=v["sms_sign_name"], template_code=v["sms_template_code"],
                        params=dict(v["sms_params"]), body=dict(v["sms_body"]), success_field=v["sms_success_field"],
                        success_value=v["sms_success_value"], token_file=resolve_path(v["sms_token_file"], base),
                        token_header=v["sms_token_header"], timeout_s=float(v["sms_timeout_s"]))
        if "smtp" in used and not (smtp.host and smtp.sender):
            raise NotifyError(f"{where}: a level uses the smtp notifier but smtp_host or smtp_sender is not set",
                              fix="set smtp_host = \"mail.example.gov.cn\" and smtp_sender = \"电子监察 "
                                  "<jiancha@example.gov.cn>\", or remove \"smtp\" from the levels")
        if smtp.user and not smtp.password_file:
            raise NotifyError(f"{where}: smtp_user is set but smtp_password_file is not",
                              fix="put the password on the first line of a file (chmod 600) and set "
                                  "smtp_password_file = \"smtp.password\" (relative to the node home); never "
                                  "the password itself in node.toml")
        if smtp.password_file and not smtp.user:
            raise NotifyError(f"{where}: smtp_password_file is set but smtp_user is not",
                              fix="set smtp_user to the login at the mail server")
        if smtp.security == "none" and smtp.user:
            raise NotifyError(f"{where}: smtp_security = \"none\" would send the password in clear",
                              fix="use smtp_security = \"starttls\" or \"ssl\"")
        if "sms" in used and not sms.url:
            raise NotifyError(f"{where}: a level uses the sms notifier but sms_url is not set",
                              fix="set sms_url = \"https://sms.example.gov.cn/api/send\" (the SMS gateway), or "
                                  "remove \"sms\" from the levels")
        return cls(levels, url, float(v["webhook_timeout_s"]), tuple(command), float(v["command_timeout_s"]),
                   int(v["retries"]), float(v["retry_backoff_s"]), smtp, sms)

    def check_secrets(self) -> None:
        """The secret files named exist and only their owner may read them (`fednode check`, `fednode run`)."""
        for key, path in [*self.smtp.secrets(), *self.sms.secrets()]:
            check_secret_file(path, key)

    def plan(self, alert: Mapping[str, Any]) -> tuple[str, ...]:
        """Which notifiers an alert goes to."""
        return self.levels.get(int(alert.get("level", 4)), ("log",))


class Notifier(Protocol):
    name: str

    def send(self, alert: Mapping[str, Any]) -> None:
        """Deliver one alert; raise NotifyError on failure."""


class LogNotifier:
    name = "log"

    def send(self, alert: Mapping[str, Any]) -> None:
        log.warning("alert", alert_id=alert.get("alert_id"), level=alert.get("level"), rule=alert.get("rule_id"),
                    division=alert.get("division"), case_no=alert.get("case_no"), message=alert.get("message"))


class WebhookNotifier:
    """HTTP POST of the alert as JSON; any 2xx is delivered."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def send(self, alert: Mapping[str, Any]) -> None:
        post_json(self.url, json.dumps(alert, ensure_ascii=False).encode("utf-8"), {}, self.timeout_s,
                  f"webhook {self.url}", answered_fix="check the receiving service's log",
                  unreachable_fix="check notify.webhook_url and that the service is up")


class CommandNotifier:
    """Runs a program (e.g. an SMS gateway script) with the alert as JSON on stdin and in the
    environment (FEDNODE_ALERT_LEVEL, FEDNODE_ALERT_MESSAGE); exit status 0 is delivered."""

    name = "command"

    def __init__(self, argv: Sequence[str], timeout_s: float = 10.0) -> None:
        self.argv = list(argv)
        self.timeout_s = timeout_s

    def send(self, alert: Mapping[str, Any]) -> None:
        import os

        env = {**os.environ, "FEDNODE_ALERT_ID": str(alert.get("alert_id", "")),
               "FEDNODE_ALERT_LEVEL": str(alert.get("level", "")),
               "FEDNODE_ALERT_MESSAGE": str(alert.get("message", ""))}  # fmt: skip
        try:
            done = subprocess.run(self.argv, input=json.dumps(alert, ensure_ascii=False).encode("utf-8"),
                                  capture_output=True, timeout=self.timeout_s, env=env, check=False)
        except FileNotFoundError:
            raise NotifyError(f"notify command {self.argv[0]} not found", fix="check notify.command") from None
        except PermissionError:
            raise NotifyError(f"notify command {self.argv[0]} is not executable",
                              fix=f"chmod +x {self.argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise NotifyError(f"notify command {self.argv[0]} did not finish within {self.timeout_s:g} s",
                              fix="make it faster, or raise notify.command_timeout_s") from None
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise NotifyError(f"notify command {self.argv[0]} exited {done.returncode}: {err}",
                              fix="run it by hand with an alert on stdin to see why")


def deliver(notifier: Notifier, message: Mapping[str, Any], retries: int, backoff_s: float,
            sleep: Callable[[float], None] = time.sleep) -> tuple[str, int]:
    """Send ``message``, retrying ``retries`` times with backoff (``backoff_s``, then twice as long each time);
    a permanent failure is not retried. Returns (the last error, "" when delivered; the attempts made). Never
    raises."""
    error = ""
    attempts = 0
    for attempt in range(retries + 1):
        attempts += 1
        try:
            notifier.send(message)
            return "", attempts
        except NotifyError as e:
            error = f"{e.message} (fix: {e.fix})" if e.fix else e.message
            if e.permanent:
                break
        except FednodeError as e:
            error = f"{e.message} (fix: {e.fix})" if e.fix else e.message
        except Exception as e:  # noqa: BLE001 — a notifier must never take the service down
            error = f"{type(e).__name__}: {e}"
        if attempt < retries:
            sleep(backoff_s * (2 ** attempt))
    return error, attempts


class Dispatcher:
    """Sends alerts to the notifiers their level names. Blocking: run it off the event loop."""

    def __init__(self, config: NotifyConfig, *, retry_delay_s: float | None = None) -> None:
        self.config = config
        self.retry_delay_s = config.retry_backoff_s if retry_delay_s is None else retry_delay_s
        self.notifiers: dict[str, Notifier] = {"log": LogNotifier()}
        if config.webhook_url:
            self.notifiers["webhook"] = WebhookNotifier(config.webhook_url, config.webhook_timeout_s)
        if config.command:
            self.notifiers["command"] = CommandNotifier(config.command, config.command_timeout_s)
        if config.smtp.host:
            self.notifiers["smtp"] = SmtpNotifier(config.smtp)
        if config.sms.url:
            self.notifiers["sms"] = SmsNotifier(config.sms)
        self.sent = 0
        self.failed = 0

    def deliver(self, channel: str, message: Mapping[str, Any]) -> tuple[str, int]:
        """(error or "", attempts) of one message through one channel, with the configured retries."""
        notifier = self.notifiers.get(channel)
        if notifier is None:
            return f"notifier {channel} is not configured ([notify] in node.toml)", 0
        error, attempts = deliver(notifier, message, self.config.retries, self.retry_delay_s)
        if error:
            self.failed += 1
        else:
            self.sent += 1
        return error, attempts

    def dispatch(self, alerts: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
        """Deliver every alert; return the failures as (alert_id, notifier, error). Never raises."""
        failures = []
        for alert in alerts:
            for name in self.config.plan(alert):
                notifier = self.notifiers.get(name)
                if notifier is None or name in PERSONAL:  # a mail or a text needs a person: the routed path's
                    continue
                error = self._send(notifier, alert)
                if error is None:
                    self.sent += 1
                else:
                    self.failed += 1
                    failures.append((str(alert.get("alert_id", "")), name, error))
                    log.error("notify_failed", notifier=name, alert_id=alert.get("alert_id"), error=error,
                              note="the alert record is stored; only this notification was lost")
        return failures

    def _send(self, notifier: Notifier, alert: Mapping[str, Any]) -> str | None:
        error, _attempts = deliver(notifier, alert, self.config.retries, self.retry_delay_s)
        return error or None


def load(sections: Mapping[str, Any], base: Path | None = None) -> Dispatcher:
    """The dispatcher of node.toml's [notify]; ``base`` = the node home (relative secret files)."""
    try:
        return Dispatcher(NotifyConfig.from_section(sections.get("notify"), base=base))
    except NotifyError as e:
        raise ConfigError(e.message, fix=e.fix) from None


__all__ = ["CommandNotifier", "Dispatcher", "LogNotifier", "NotifyConfig", "NotifyError", "SmsNotifier",
           "SmtpNotifier", "WebhookNotifier", "deliver", "load"]
