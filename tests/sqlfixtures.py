"""Fixtures of the SQL tests: the MariaDB server of this machine (127.0.0.1:3306, root, no password; a fresh
database per test), and ``sql_url``: a fresh database on SQLite, PostgreSQL (tests/conftest.py) and
MariaDB in turn; ``node``: an enrolled province home (SQLite store). A test module takes them with ``pytest_plugins = ("tests.sqlfixtures",)``.

MariaDB tests skip when the server does not answer, except with FEDNODE_REQUIRE_MYSQL=1 (CI), where they
fail: they must not be able to skip silently there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from adapters.drivers import engine_url
from node.app import enrol

MYSQL_ADMIN_URL = os.environ.get("FEDNODE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")


def mysql_available() -> bool:
    try:
        eng = create_engine(engine_url(MYSQL_ADMIN_URL), connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def mysql_ok() -> bool:
    ok = mysql_available()
    if not ok and os.environ.get("FEDNODE_REQUIRE_MYSQL") == "1":
        pytest.fail(f"MariaDB/MySQL is required (FEDNODE_REQUIRE_MYSQL=1) but {MYSQL_ADMIN_URL} does not answer")
    return ok


@pytest.fixture
def mysql_url(mysql_ok: bool) -> Iterator[str]:
    """A fresh, empty MariaDB database (utf8mb4), dropped after the test."""
    if not mysql_ok:
        pytest.skip(f"MariaDB at {MYSQL_ADMIN_URL} does not answer")
    name = f"fednode_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(engine_url(MYSQL_ADMIN_URL))
    with admin.begin() as c:
        c.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield MYSQL_ADMIN_URL.rstrip("/") + "/" + name
    with admin.begin() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each of the three servers the SQL tests run against."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("mysql_url"))


@pytest.fixture
def node(tmp_path: Path) -> Any:
    h = enrol.init(tmp_path / "320000", code="320000", name="江苏省", level="province")
    enrol.init_root(h)
    yield h
    h.close()
