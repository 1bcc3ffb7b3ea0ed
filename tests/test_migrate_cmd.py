"""Migrations on purpose only (issue 27): `fednode run` and `fednode migrate DIR` upgrade an older store;
every other command refuses it (exit 2) and names them, so a read never upgrades by accident.

The store is really taken back to an older schema (Alembic downgrade: the newest tables dropped), the
commands are real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from bench import demo
from node.core import migrate
from node.core.home import Home
from node.core.store import Store

REPO = Path(__file__).resolve().parent.parent
OLDER = "0006"


def fednode(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def open_raw(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def downgrade(home: Home, revision: str = OLDER) -> None:
    store = open_raw(home)
    try:
        cfg = migrate._config()
        with store.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()
    finally:
        store.close()


def revision(home: Home) -> str | None:
    store = open_raw(home)
    try:
        return migrate.current_revision(store.engine)
    finally:
        store.close()


def tables(home: Home) -> set[str]:
    store = open_raw(home)
    try:
        return set(inspect(store.engine).get_table_names())
    finally:
        store.close()


def test_only_run_and_migrate_upgrade(tmp_path: Path) -> None:
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:1])
    home = Home(homes["320000"].dir)
    head = migrate.head_revision()
    assert head != OLDER and revision(home) == head
    full = tables(home)
    downgrade(home)
    assert revision(home) == OLDER and tables(home) < full

    for cmd in (["status"], ["verify"], ["metrics"], ["pki", "keys"], ["quarantine", "list"]):
        p = fednode(*cmd, home.dir, "--json")
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "fednode migrate" in p.stderr and f"fednode migrate {home.dir}" in p.stderr, p.stderr
        assert OLDER in p.stderr and "旧版本" in p.stderr, p.stderr
        assert json.loads(p.stdout)["code"] == "store_outdated"
        assert revision(home) == OLDER, f"`{' '.join(cmd)}` upgraded the store"

    p = fednode("migrate", home.dir, "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["from"] == OLDER and data["to"] == head and data["migrated"] is True
    assert revision(home) == head and tables(home) == full
    p = fednode("migrate", home.dir)
    assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout + p.stderr
    p = fednode("status", home.dir, "--json")
    assert p.returncode == 0, p.stderr

    # `fednode run` upgrades at start
    downgrade(home)
    proc = demo.start(home.dir)
    try:
        demo.wait_admin(home)
        assert revision(home) == head
    finally:
        demo.stop_all({"320000": proc})


def test_a_newer_store_is_refused(tmp_path: Path) -> None:
    homes = demo.build_tree(tmp_path / "tree", demo.TREE[:1])
    home = Home(homes["320000"].dir)
    store = open_raw(home)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        store.close()
    for cmd in (["status"], ["migrate"]):
        p = fednode(*cmd, home.dir, "--json")
        assert p.returncode == 2 and "9999" in p.stderr and "newer fednode" in p.stderr, p.stdout + p.stderr
        assert json.loads(p.stdout)["code"] == "store_too_new"
    assert revision(home) == "9999"


def test_a_new_store_gets_its_schema(tmp_path: Path) -> None:
    """An empty database is created, not refused (init, the target of `store copy`)."""
    store = Store.open(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
    finally:
        store.close()
