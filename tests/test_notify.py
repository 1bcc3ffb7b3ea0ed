"""Notifiers against real endpoints: an HTTP server on loopback for the webhook, real scripts for the
command notifier (an SMS gateway stand-in), and the configuration's refusals."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from node.features.notify import Dispatcher, NotifyConfig, NotifyError, WebhookNotifier

ALERT = {"alert_id": "case_time:320303:C1:3", "rule_id": "case_time", "category": "01", "level": 3, "object": "case",
         "case_no": "C1", "division": "320303", "message": "办件 C1 超过法定时限：红牌", "at": "2025-10-09T09:00:00+08:00",
         "source": "engine"}  # fmt: skip


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any], str]]
    fail_first: int

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        if server.fail_first > 0:
            server.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        server.received.append((self.path, json.loads(body), self.headers["Content-Type"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    server.fail_first = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sms-gateway.sh"
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_webhook_posts_the_alert_as_json(http_server: Any) -> None:
    WebhookNotifier(_url(http_server)).send(ALERT)
    [(path, body, ctype)] = http_server.received
    assert path == "/hooks/alerts" and body == ALERT and ctype.startswith("application/json")


def test_webhook_is_retried_then_delivered(http_server: Any) -> None:
    http_server.fail_first = 2
    cfg = NotifyConfig.from_section({"red": ["webhook"], "webhook_url": _url(http_server), "retries": 2})
    d = Dispatcher(cfg, retry_delay_s=0.01)
    assert d.dispatch([ALERT]) == []
    assert len(http_server.received) == 1 and d.sent == 1


def test_webhook_failure_is_reported_not_raised(http_server: Any) -> None:
    http_server.fail_first = 10
    cfg = NotifyConfig.from_section({"red": ["webhook"], "webhook_url": _url(http_server), "retries": 1})
    d = Dispatcher(cfg, retry_delay_s=0.01)
    with structlog.testing.capture_logs() as logs:
        failures = d.dispatch([ALERT])
    assert failures == [(ALERT["alert_id"], "webhook", failures[0][2])] and "503" in failures[0][2]
    assert d.failed == 1 and [e for e in logs if e["event"] == "notify_failed"]


def test_webhook_unreachable_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotifyError) as e:
        WebhookNotifier(f"http://127.0.0.1:{port}/x", timeout_s=2).send(ALERT)
    assert "unreachable" in e.value.message and e.value.fix


def test_command_gets_the_alert_on_stdin_and_in_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "sent.txt"
    script = _script(tmp_path, f'cat > "{out}"\necho >> "{out}"\necho "$FEDNODE_ALERT_LEVEL $FEDNODE_ALERT_ID" >> "{out}"\n')
    cfg = NotifyConfig.from_section({"red": ["log", "command"], "command": [str(script)]})
    d = Dispatcher(cfg)
    with structlog.testing.capture_logs() as logs:
        assert d.dispatch([ALERT]) == []
    body, env_line = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(body) == ALERT and env_line == f"3 {ALERT['alert_id']}"
    assert [e for e in logs if e["event"] == "alert" and e["alert_id"] == ALERT["alert_id"]]  # the log notifier
    assert d.sent == 2


def test_command_failure_and_missing_program(tmp_path: Path) -> None:
    script = _script(tmp_path, 'echo "gateway busy" >&2\nexit 3\n')
    d = Dispatcher(NotifyConfig.from_section({"red": ["command"], "command": [str(script)], "retries": 0}))
    [(alert_id, name, error)] = d.dispatch([ALERT])
    assert (alert_id, name) == (ALERT["alert_id"], "command") and "exited 3" in error and "gateway busy" in error
    d = Dispatcher(NotifyConfig.from_section({"red": ["command"], "command": [str(tmp_path / "nope")], "retries": 0}))
    [(_, _, error)] = d.dispatch([ALERT])
    assert "not found" in error


def test_levels_choose_the_notifiers(http_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "sms.txt"
    script = _script(tmp_path, f'cat >> "{out}"\necho >> "{out}"\n')
    cfg = NotifyConfig.from_section({"warn": [], "yellow": ["webhook"], "red": ["webhook", "command"],
                                     "webhook_url": _url(http_server), "command": [str(script)]})  # fmt: skip
    d = Dispatcher(cfg)
    alerts = [{**ALERT, "level": lv, "alert_id": f"a:{lv}"} for lv in (1, 2, 3, 4)]
    assert d.dispatch(alerts) == []
    assert [b["alert_id"] for _, b, _ in http_server.received] == ["a:2", "a:3"]
    assert [json.loads(line)["alert_id"] for line in out.read_text().split("\n") if line] == ["a:3"]
    # level 4 (serious) was not configured: the default, the log
    assert cfg.plan(alerts[3]) == ("log",)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"red": ["webhook"]}, "webhook_url"),
        ({"red": ["command"]}, "command"),
        ({"red": ["fax"]}, "red"),
        ({"red": ["sms"]}, "sms_url"),
        ({"serious": "smtp", "smtp_host": "mail"}, "smtp_sender"),
        ({"smtp_user": "u"}, "smtp_password_file"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
        ({"retries": -1}, "retries"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_notify_config_is_refused_with_a_fix(section: dict[str, Any], fragment: str) -> None:
    with pytest.raises(NotifyError) as e:
        NotifyConfig.from_section(section)
    assert fragment in e.value.message and e.value.fix
