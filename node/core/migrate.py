"""Schema migrations (Alembic), run programmatically so `fednode` needs no alembic.ini.

Rules of this module:
- An existing store is upgraded only on purpose: by `fednode run` (the service, at start) and by
  `fednode migrate DIR` (the upgrade runbook). Every other command checks the version and, on an
  older store, stops with exit 2 naming those two commands (``StoreOutdated``): a read never changes
  the schema by accident, and an operator decides when an upgrade runs (after the backup).
- A new, empty database gets this program's schema when it is first opened (`fednode init`, the
  target of `fednode store copy`): there is nothing to upgrade there.
- A store whose version this program does not know was migrated by a newer fednode: refused
  (``StoreTooNew``), never downgraded.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from node.core.errors import UsageError

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreOutdated(UsageError):
    code = "store_outdated"


class StoreTooNew(UsageError):
    code = "store_too_new"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def is_empty(engine: Engine) -> bool:
    """No table at all: a database nothing was ever stored in."""
    return not inspect(engine).get_table_names()


def upgrade(engine: Engine, revision: str = "head") -> None:
    if current_revision(engine) == head_revision():
        return
    cfg = _config()
    with engine.connect().execution_options(fednode_write=True) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if conn.in_transaction():
            conn.commit()


def ensure_current(engine: Engine, home_dir: Path | str | None = None) -> None:
    """Create the schema of an empty store; refuse (exit 2) one at another version than this program's."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None and is_empty(engine):
        upgrade(engine)
        return
    where = str(home_dir) if home_dir else "DIR"
    if current is None or current in known_revisions():
        raise StoreOutdated(
            f"存储的数据结构是旧版本 {current or '(none)'}，本版本 fednode 需要 {head}；除 `fednode run` 和 "
            f"`fednode migrate` 外的命令不会升级它 / the store's schema is at version {current or '(none)'}, this "
            f"fednode needs {head}; no command but `fednode run` and `fednode migrate` upgrades it",
            fix=f"先备份（deploy/README.md 运行手册 3），再运行 `fednode migrate {where}`，或启动节点（`fednode run` 启动时升级）"
                f" / back up first (deploy/README.md, Runbook 3), then run `fednode migrate {where}`, or start the "
                "node (`fednode run` upgrades at start)")
    raise StoreTooNew(
        f"存储的数据结构版本 {current} 来自更新版本的 fednode，本版本只认识到 {head} / the store's schema version "
        f"{current} was written by a newer fednode; this one knows versions up to {head}",
        fix="安装迁移过此存储的 fednode 版本，或恢复升级前的备份（运行手册 5：回退） / install the fednode version that "
            "migrated this store, or restore the backup taken before the upgrade (Runbook 5, rolling back)")
