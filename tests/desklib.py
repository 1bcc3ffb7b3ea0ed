"""Shared tools of the desk's tests (tests/test_desk.py, tests/test_desk_browser.py).

- ``desk_tree``: a Cluster of real `fednode run` processes (province 320000 → city 320300 → county
  320303) with ``[desk] listen`` on each, red cards raised at 320303 before it starts (the rules
  processor over synthetic cases, as tests/test_alerts_cli.py does), and the people of the flow added
  through the admin op ``people`` (as root on the box would with `fednode users add`).
- ``Http``: a tiny HTTP client on urllib that keeps its cookies and never follows redirects, so a test
  sees the 303 to /login, the Set-Cookie flags and the security headers as they are.
- ``chromium``: Debian's /usr/bin/chromium for Playwright (never `playwright install`); skipped when
  absent unless FEDNODE_REQUIRE_BROWSER=1 (CI), like tests/test_stats_html.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from bench.demo import free_port
from tests.faultlib import Cluster, wait_for

PASSWORD = "Desk-2026!pw"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "desk"
# login -> (node, name, role, scope)
PEOPLE: dict[str, tuple[str, str, str, str]] = {
    "zhang": ("320300", "张三", "supervisor", "320300"),
    "qian": ("320300", "钱七", "supervisor", "320311"),  # a supervisor of another county, at the city node
    "it": ("320300", "孙八", "sysadmin", "320300"),
    "wang": ("320303", "王五", "dept_supervisor", "320303"),
    "zhao": ("320000", "赵六", "supervisor", "320000"),
}


def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        if os.environ.get("FEDNODE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed but FEDNODE_REQUIRE_BROWSER=1: apt-get install -y chromium")
        pytest.skip("headless Chromium not found (Debian package `chromium`); apt-get install -y chromium")
    return exe


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def with_alerts(home: Any) -> None:
    """Red cards (and lesser alerts) raised at ``home`` (stopped): synthetic cases, the rules at a fixed clock."""
    from node.app import ingest
    from node.core.calendar import CST
    from node.features.rules.overrides import load_calendar
    from node.features.rules.processor import RulesProcessor
    from node.features.rules.settings import RulesSettings

    ingest.append_chunked(home.ledger(), ingest.synthetic_items(home.code, 1500, 1))
    settings = RulesSettings()
    p = RulesProcessor(home.ledger(), settings, load_calendar(home.dir, settings),
                       clock=lambda: datetime(2026, 11, 28, 10, 0, tzinfo=CST))
    p.rebuild()
    while p.step()[0]:
        pass
    p.scan()
    home.close()


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (the desk's HTTPS in tests)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = directory / "desk.crt", directory / "desk.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


@dataclass
class DeskTree:
    cl: Cluster
    urls: dict[str, str]  # node -> http(s)://127.0.0.1:PORT

    def url(self, node: str, path: str = "/") -> str:
        return self.urls[node].rstrip("/") + path


@contextmanager
def desk_tree(base: Path, *, idle: dict[str, float] | None = None, tls: tuple[str, ...] = (),
              dbs: dict[str, str] | None = None) -> Iterator[DeskTree]:
    """The tree of desks; ``dbs``: a node's store URL (PostgreSQL), SQLite in its home otherwise."""
    cl = Cluster(base, dbs=dbs)
    urls = {}
    for code in cl.codes:
        port = free_port()
        cl.set_config(code, "desk", "listen", f"127.0.0.1:{port}")
        if code in (idle or {}):
            cl.set_config(code, "desk", "idle_minutes", (idle or {})[code])
        scheme = "http"
        if code in tls:
            crt, key = self_signed(cl.homes[code].dir)
            cl.set_config(code, "desk", "tls_cert", crt.name)
            cl.set_config(code, "desk", "tls_key", key.name)
            scheme = "https"
        urls[code] = f"{scheme}://127.0.0.1:{port}"
    with_alerts(cl.homes["320303"])
    with cl:
        cl.start()
        for login, (node, name, role, scope) in PEOPLE.items():
            cl.call(node, {"op": "people", "action": "add", "auth": {"os_user": "root"}, "login": login, "name": name,
                           "roles": [role], "scope": scope, "password": PASSWORD})
        tree = DeskTree(cl, urls)
        for code in cl.codes:  # the desk answers
            wait_for(lambda c=code: Http(tree.urls[c]).get("/login").status == 200, 30, f"the desk of {code} answers")
        yield tree


@contextmanager
def altered_record(home: Any, ref: str, marker: bytes = b'"handler":"') -> Iterator[None]:
    """One byte of the stored body of record ``ref`` (ORIGIN/CHANNEL/SEQ) changed right in ``home``'s database
    (behind the running node's back, as an intruder or a disk would), put back afterwards."""
    from sqlalchemy import and_, select, update

    from node.core import schema
    from node.core.records import channel_number
    from tests.faultlib import open_store

    origin, channel, seq = ref.split("/")
    t = schema.records
    where = and_(t.c.origin == origin, t.c.channel == channel_number(channel), t.c.seq == int(seq))
    store = open_store(home)
    try:
        with store.engine.begin() as c:
            body = bytes(c.execute(select(t.c.body).where(where)).scalar_one())
            i = body.index(marker) + len(marker)
            c.execute(update(t).where(where).values(body=body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]))
        yield
    finally:
        with store.engine.begin() as c:
            c.execute(update(t).where(where).values(body=body))
        store.close()


# ---- HTTP ------------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def cookies_set(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class Http:
    base: str
    cookies: dict[str, str] = field(default_factory=dict)
    bearer: str = ""
    source: str = ""  # e.g. 127.0.0.2: another client address (the desk limits sign-ins per address)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        u = urlsplit(self.base)
        src = (self.source, 0) if self.source else None
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname or "", u.port, timeout=60, context=ssl._create_unverified_context(), source_address=src)
        else:
            conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=60, source_address=src)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.bearer:
            h["Authorization"] = f"Bearer {self.bearer}"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            answer = Answer(r.status, r.headers, r.read())
        finally:
            conn.close()
        for line in answer.cookies_set():
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "Max-Age=0" in line or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return answer

    def get(self, path: str, **headers: str) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, Any] | None = None, **headers: str) -> Answer:
        return self.request("POST", path, urlencode(form or {}, doseq=True).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded", **headers})

    def post_json(self, path: str, data: Any, method: str = "POST", **headers: str) -> Answer:
        return self.request(method, path, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})

    def login(self, login: str, password: str = PASSWORD) -> Answer:
        page = self.get("/login")
        token = re.search(r'name="form_token" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        return self.post("/login", {"form_token": token.group(1), "login": login, "password": password})

    def csrf(self, path: str = "/") -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.get(path).text)
        assert m, f"no CSRF token on {path}"
        return m.group(1)

    def api_login(self, login: str, password: str = PASSWORD) -> dict[str, Any]:
        r = self.post_json("/api/v1/session", {"login": login, "password": password})
        assert r.status == 200, r.text
        data: dict[str, Any] = r.json()
        self.bearer = data["token"]
        return data
