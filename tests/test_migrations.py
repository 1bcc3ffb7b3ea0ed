"""Alembic migrations, on SQLite and on the real PostgreSQL server.

- the schema the migrations build is exactly node.schema.metadata (autogenerate finds no difference);
- opening an existing store again runs no DDL and keeps its data;
- every revision can be downgraded and upgraded again, down to base and back to head.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select, text

from node.core import migrate, schema
from node.core.records import BULK
from node.core.store import Row, Store


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS))
    return cfg


def run_alembic(engine: Engine, fn: Any, revision: str) -> None:
    """Run an alembic command on ``engine`` the way node.migrate does (one write transaction)."""
    cfg = alembic_config()
    with engine.connect().execution_options(fednode_write=True) as conn:
        cfg.attributes["connection"] = conn
        fn(cfg, revision)
        if conn.in_transaction():
            conn.commit()


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, schema.metadata))


def snapshot(engine: Engine) -> dict[str, Any]:
    """The schema as the database reports it: columns (type, nullability), primary keys, indexes."""
    insp = inspect(engine)
    return {
        t: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "indexes": sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"])) for ix in insp.get_indexes(t)),
        }
        for t in sorted(insp.get_table_names())
    }


def user_tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def append_some(store: Store, n: int = 3) -> None:
    from node.core.crypto import chain_over

    with store.write() as tx:
        head = tx.head("320303", BULK)
        rows = [Row(head.seq + 1 + i, b"body %d" % (head.seq + 1 + i), b"", b"", "case.step", "", 1) for i in range(n)]
        res = tx.append("320303", BULK, rows)
        assert res.head.chain == chain_over(head.chain, [r.body for r in rows])[-1]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    yield s
    s.close()


FRESH_DIFF = """
import json, sys
from node.core import migrate, schema  # what node/migrations/env.py sees: node.schema and nothing else
from tests.test_migrations import schema_diff
from node.core.store import Store
store = Store.open(sys.argv[1])
print(json.dumps({"tables": sorted(schema.metadata.tables), "diff": [str(d) for d in schema_diff(store.engine)]}))
store.close()
"""


def test_migrated_schema_equals_metadata(store: Store, store_url: str) -> None:
    """Compared in a fresh interpreter that imports node.schema as alembic's env.py does, so the result
    cannot depend on which other modules this test process happened to import first."""
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-c", FRESH_DIFF, store_url], capture_output=True, text=True, cwd=root,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    fresh = json.loads(p.stdout)
    assert user_tables(store.engine) == set(fresh["tables"]), "tables the migrations create vs node.schema.metadata"
    assert fresh["diff"] == [], "node/schema.py and node/migrations/ disagree:\n" + "\n".join(fresh["diff"])
    # the unique and secondary indexes the store relies on exist with the right columns
    insp = inspect(store.engine)
    for table in schema.metadata.sorted_tables:
        want = {(ix.name, tuple(c.name for c in ix.columns), bool(ix.unique)) for ix in table.indexes}
        got = {(ix["name"], tuple(ix["column_names"]), bool(ix["unique"])) for ix in insp.get_indexes(table.name)}
        assert want <= got, (table.name, want - got)
        pk = insp.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name


def test_opening_an_existing_store_again_is_idempotent(store_url: str) -> None:
    first = Store.open(store_url)
    append_some(first, 5)
    heads = first.heads()
    built = snapshot(first.engine)
    try:
        # again while the first is still open, then again after it is closed
        for _ in range(2):
            again = Store.open(store_url, migrate=False)
            ddl: list[str] = []

            @event.listens_for(again.engine, "before_cursor_execute")
            def record(conn: Any, cursor: Any, statement: str, *args: Any, ddl: list[str] = ddl) -> None:
                if statement.lstrip().split(None, 1)[0].upper() in ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"):
                    ddl.append(statement)

            migrate.upgrade(again.engine)
            assert ddl == [], "opening a migrated store changed it"
            assert again.heads() == heads and again.count() == 5
            with again.engine.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                    migrate.head_revision()
                ]
            assert snapshot(again.engine) == built
            again.close()
            first.close()
        reopened = Store.open(store_url)  # the ordinary way, with migrate=True
        append_some(reopened, 2)
        assert reopened.head("320303", BULK).seq == 7
        reopened.close()
    finally:
        first.close()


def test_downgrade_to_base_and_upgrade_again(store: Store) -> None:
    engine = store.engine
    built = snapshot(engine)
    append_some(store)
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]  # base → head
    assert revisions and revisions[-1] == migrate.head_revision()
    # stairway: each step down and up again leaves the schema that step's upgrade builds
    for i in reversed(range(len(revisions))):
        below = revisions[i - 1] if i else "base"
        run_alembic(engine, command.downgrade, below)
        assert migrate.current_revision(engine) == (None if below == "base" else below)
        run_alembic(engine, command.upgrade, revisions[i])
        assert migrate.current_revision(engine) == revisions[i]
        run_alembic(engine, command.downgrade, below)
    assert user_tables(engine) == set()
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert snapshot(engine) == built
    # a store on the re-created schema starts empty and works
    assert store.heads() == {} and store.count() == 0 and store.count("checkpoints") == 0
    append_some(store, 4)
    with store.read() as conn:
        assert conn.execute(select(schema.heads.c.seq)).scalar_one() == 4
