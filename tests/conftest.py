"""Shared fixtures: stores on SQLite and on the real PostgreSQL server, and an enrolled tree of homes.

PostgreSQL tests use FEDNODE_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres) to
create a fresh database per test. Without a server they skip, except when FEDNODE_REQUIRE_PG=1 (CI),
where they fail: the PostgreSQL tests must not be able to skip silently there.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from node.app import enrol
from node.app import people as app_people
from node.core import pki
from node.core.home import Home

PG_ADMIN_URL = os.environ.get("FEDNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin_url() -> str:
    return PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)


def pg_available() -> bool:
    try:
        eng = create_engine(_pg_admin_url(), connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_ok() -> bool:
    ok = pg_available()
    if not ok and os.environ.get("FEDNODE_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (FEDNODE_REQUIRE_PG=1) but {PG_ADMIN_URL} does not answer")
    return ok


@pytest.fixture
def pg_url(pg_ok: bool) -> Iterator[str]:
    if not pg_ok:
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} does not answer")
    name = f"fednode_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


def enrol_child(parent: Home, directory: Path, code: str, name: str, level: str, db: str = "") -> Home:
    child = enrol.init(directory, code=code, name=name, level=level, db=db)
    bundle = enrol.sign(parent, pki.Request.from_json(enrol.request(child).to_json()))
    enrol.install(child, pki.Bundle.from_json(bundle.to_json()))
    return child


class Tree:
    """province 320000 → city 320300 → counties 320303, 320311 (each its own home, SQLite)."""

    def __init__(self, base: Path, county_db: str = "") -> None:
        self.province = enrol.init(base / "320000", code="320000", name="江苏省", level="province")
        enrol.init_root(self.province)
        self.city = enrol_child(self.province, base / "320300", "320300", "徐州市", "city")
        self.county = enrol_child(self.city, base / "320303", "320303", "云龙区", "county", db=county_db)
        self.other = enrol_child(self.city, base / "320311", "320311", "泉山区", "county")

    def close(self) -> None:
        for h in (self.province, self.city, self.county, self.other):
            h.close()


# ---- people (issue 16): every act on a ticket, complaint or alert is a person's -----------------------------

PERSON_PASSWORD = "Test-Person-2026!"  # tests only: what add_person gives everyone


def add_person(home: Home, login: str, name: str, role: str, scope: str = "", *, session: bool = False) -> list[str]:
    """Add a person to ``home`` (through its running node's admin socket, else on its store, as the OS
    operator = 系统管理员) and return the argv that acts as them: ``--as LOGIN --password-file F`` (F next to
    the home, mode 600, never inside it). ``session=True`` also signs them in the way `fednode login` does
    (DIR/sessions/LOGIN), so the argv is only ``--as LOGIN`` and commands skip the argon2 check."""
    app_people.run_request(home, {"action": "add", "auth": {"os_user": "root"}, "login": login, "name": name,
                                  "roles": [role], "scope": scope, "password": PERSON_PASSWORD})
    pw = home.dir.parent / f".pw-{home.code}-{login}"
    pw.write_text(PERSON_PASSWORD + "\n", encoding="utf-8")
    pw.chmod(0o600)
    if not session:
        return ["--as", login, "--password-file", str(pw)]
    sign_in(home, login)
    return ["--as", login]


def sign_in(home: Home, login: str) -> dict[str, str]:
    """`fednode login DIR --as LOGIN`: a session kept in DIR/sessions/LOGIN; returns the ``auth`` of it."""
    result, _via = app_people.run_request(home, {"action": "login", "login": login, "password": PERSON_PASSWORD,
                                                 "via": "cli"})
    sessions = home.dir / "sessions"
    sessions.mkdir(mode=0o700, exist_ok=True)
    path = sessions / login
    path.write_text(result["token"], encoding="utf-8")
    path.chmod(0o600)
    return {"login": login, "token": str(result["token"])}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    t = Tree(tmp_path)
    yield t
    t.close()


@pytest.fixture(autouse=True)
def _log_to_the_real_stderr() -> Iterator[None]:
    """Tests that call node.cli.main in-process reconfigure structlog onto pytest's captured stream, which
    closes after the test: point logging back at the real stderr after every test."""
    yield
    from node.runtime import logging as node_logging

    node_logging.configure("warning", stream=sys.__stderr__)
