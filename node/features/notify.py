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

  Levels not listed use ``["log"]``. A notifier named for a level must be configured (a webhook
  needs ``webhook_url``, a command needs ``command``): a typo is an error at start, not a silence.
  Each key's type, default and range is node.configschema.NOTIFY (docs/configuration.md); this
  module checks what ties keys together.
- sans-I/O where it can be: ``NotifyConfig.from_section`` validates, ``plan`` says which notifiers
  an alert goes to; ``Notifier.send`` does the I/O (``urllib``, ``subprocess``).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from node.core import configschema
from node.core.errors import ConfigError, FednodeError

log = structlog.get_logger(__name__)

SCHEMA = configschema.NOTIFY  # the keys of [notify], their types, defaults and ranges (docs/configuration.md)
LEVEL_KEYS = {1: "warn", 2: "yellow", 3: "red", 4: "serious"}
NOTIFIERS = configschema.NOTIFIERS
KEYS = SCHEMA.known  # what [notify] may hold (node/runtime/configcheck.py reports any other key with a "did you mean")


class NotifyError(FednodeError):
    code = "notify"


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    levels: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: {lv: tuple(SCHEMA.key(k).default) for lv, k in LEVEL_KEYS.items()})
    webhook_url: str = SCHEMA.key("webhook_url").default
    webhook_timeout_s: float = float(SCHEMA.key("webhook_timeout_s").default)
    command: tuple[str, ...] = tuple(SCHEMA.key("command").default)
    command_timeout_s: float = float(SCHEMA.key("command_timeout_s").default)
    retries: int = SCHEMA.key("retries").default

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, *, where: str = "node.toml [notify]") -> NotifyConfig:
        """Each key is checked by the schema (node.configschema.NOTIFY); here only what ties keys together."""
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
        return cls(levels, url, float(v["webhook_timeout_s"]), tuple(command), float(v["command_timeout_s"]),
                   int(v["retries"]))

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
        body = json.dumps(alert, ensure_ascii=False).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (operator URL)
                status = resp.status
        except urllib.error.HTTPError as e:
            raise NotifyError(f"webhook {self.url} answered HTTP {e.code}",
                              fix="check the receiving service's log") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise NotifyError(f"webhook {self.url} unreachable: {reason}",
                              fix="check notify.webhook_url and that the service is up") from None
        if not 200 <= status < 300:
            raise NotifyError(f"webhook {self.url} answered HTTP {status}", fix="check the receiving service's log")


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


class Dispatcher:
    """Sends alerts to the notifiers their level names. Blocking: run it off the event loop."""

    def __init__(self, config: NotifyConfig, *, retry_delay_s: float = 0.5) -> None:
        self.config = config
        self.retry_delay_s = retry_delay_s
        self.notifiers: dict[str, Notifier] = {"log": LogNotifier()}
        if config.webhook_url:
            self.notifiers["webhook"] = WebhookNotifier(config.webhook_url, config.webhook_timeout_s)
        if config.command:
            self.notifiers["command"] = CommandNotifier(config.command, config.command_timeout_s)
        self.sent = 0
        self.failed = 0

    def dispatch(self, alerts: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
        """Deliver every alert; return the failures as (alert_id, notifier, error). Never raises."""
        failures = []
        for alert in alerts:
            for name in self.config.plan(alert):
                notifier = self.notifiers.get(name)
                if notifier is None:
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
        error = ""
        for attempt in range(self.config.retries + 1):
            try:
                notifier.send(alert)
                return None
            except FednodeError as e:
                error = f"{e.message} (fix: {e.fix})" if e.fix else e.message
            except Exception as e:  # a notifier must never take the service down
                error = f"{type(e).__name__}: {e}"
            if attempt < self.config.retries:
                time.sleep(self.retry_delay_s * (attempt + 1))
        return error


def load(sections: Mapping[str, Any]) -> Dispatcher:
    try:
        return Dispatcher(NotifyConfig.from_section(sections.get("notify")))
    except NotifyError as e:
        raise ConfigError(e.message, fix=e.fix) from None


__all__ = ["CommandNotifier", "Dispatcher", "LogNotifier", "NotifyConfig", "NotifyError", "WebhookNotifier", "load"]
