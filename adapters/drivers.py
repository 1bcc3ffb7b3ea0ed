"""Database URLs of local systems and their drivers: which package each needs, and which fednode extra
installs it. Used by the SQL poll adapter (sources) and the SQL exporter (the 前置库 target).

Rules of this module:
- a URL without a driver gets the driver fednode's extras install, not SQLAlchemy's default:
  ``mysql://`` and ``mariadb://`` → PyMySQL (``fednode[mysql]``; SQLAlchemy's default is mysqlclient,
  which needs a C compiler and the MySQL client headers), ``mssql://`` → pymssql (``fednode[mssql]``;
  SQLAlchemy's default pyodbc needs unixODBC and Microsoft's ODBC driver), ``oracle://`` →
  python-oracledb in thin mode (``fednode[oracle]``: no Oracle client), ``postgresql://`` → psycopg 3
  (``fednode[postgres]``). 人大金仓 KingbaseES speaks the PostgreSQL protocol: ``kingbase://`` (or
  ``kingbasees://``) is a ``postgresql://`` URL (default port 54321). A URL that names its driver
  (``mysql+mysqldb://``) keeps it.
- 达梦 DM: its driver ``dmPython`` and SQLAlchemy dialect ``dmSQLAlchemy`` ship with the DM server
  (``$DM_HOME/drivers/python/``), not on a package index: the operator installs both into fednode's
  environment, then ``dm+dmPython://USER:PASSWORD@HOST:5236``.
- a missing driver is a ConfigError that names the package and the command that installs it
  (``pip install 'fednode[mysql]'``), never a bare "No module named ...".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from node.core.errors import ConfigError

# the driver a bare dialect gets
DEFAULT_DRIVER = {"mysql": "pymysql", "mariadb": "pymysql", "mssql": "pymssql", "oracle": "oracledb",
                  "postgresql": "psycopg"}
# dialect names that are other names of PostgreSQL (KingbaseES is wire-compatible)
POSTGRES_ALIASES = frozenset({"postgres", "kingbase", "kingbasees", "kingbase8"})
# (dialect, driver) -> (extra, package). extra "": no extra of fednode installs it
DRIVERS: dict[tuple[str, str], tuple[str, str]] = {
    ("mysql", "pymysql"): ("mysql", "PyMySQL"),
    ("mariadb", "pymysql"): ("mysql", "PyMySQL"),
    ("mysql", "mysqldb"): ("", "mysqlclient"),
    ("mariadb", "mysqldb"): ("", "mysqlclient"),
    ("mariadb", "mariadbconnector"): ("", "mariadb"),
    ("mysql", "mysqlconnector"): ("", "mysql-connector-python"),
    ("oracle", "oracledb"): ("oracle", "oracledb"),
    ("oracle", "cx_oracle"): ("", "cx_Oracle"),
    ("mssql", "pymssql"): ("mssql", "pymssql"),
    ("mssql", "pyodbc"): ("", "pyodbc"),
    ("postgresql", "psycopg"): ("postgres", "psycopg[binary]"),
    ("postgresql", "psycopg2"): ("", "psycopg2-binary"),
}
DM_FIX = ("install the driver shipped with the DM server into fednode's environment: "
          "pip install $DM_HOME/drivers/python/dmPython $DM_HOME/drivers/python/dmSQLAlchemy, "
          "then url = \"dm+dmPython://USER:PASSWORD@HOST:5236\" (deploy/README.md, 达梦)")


def engine_url(url: str) -> str:
    """The URL SQLAlchemy gets: the driver of fednode's extra for a bare dialect, KingbaseES as PostgreSQL."""
    u = make_url(url)
    dialect, _, driver = u.drivername.partition("+")
    if dialect in POSTGRES_ALIASES:
        dialect = "postgresql"
    if not driver and dialect in DEFAULT_DRIVER:
        driver = DEFAULT_DRIVER[dialect]
    name = f"{dialect}+{driver}" if driver else dialect
    if name != u.drivername:
        u = u.set(drivername=name)
    return u.render_as_string(hide_password=False)


def install_fix(url: str) -> str:
    """What to install for ``url``'s driver (the fix of a missing-driver error)."""
    try:
        dialect, _, driver = make_url(engine_url(url)).drivername.partition("+")
    except ArgumentError:
        return "check the URL: dialect+driver://user:password@host:port/database"
    if dialect == "dm":
        return DM_FIX
    extra, package = DRIVERS.get((dialect, driver), ("", driver or dialect))
    restart = ", then restart the node (systemctl restart fednode)"
    if extra:
        return f"pip install 'fednode[{extra}]' into fednode's environment (e.g. /opt/fednode/bin/pip){restart}"
    return (f"pip install {package} into fednode's environment (e.g. /opt/fednode/bin/pip){restart}; or use the "
            f"driver fednode's extra installs: {dialect}://... (see deploy/README.md, source databases)")


def make_engine(url: str, where: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (driver per ``engine_url``), or a ConfigError naming what to install."""
    try:
        return create_engine(engine_url(url), **kwargs)
    except NoSuchModuleError as e:  # an unknown dialect (DM without its dialect package, a typo)
        dialect = str(e).rsplit(":", 1)[-1].strip()
        if dialect.split(".")[0] == "dm":
            raise ConfigError(f"{where}: url names the 达梦 DM database, whose SQLAlchemy dialect is not installed",
                              fix=DM_FIX) from None
        raise ConfigError(f"{where}: url names an unknown database dialect {dialect!r}",
                          fix="use mysql://, mariadb://, postgresql://, kingbase://, oracle://, mssql:// or "
                              "sqlite:/// (deploy/README.md, source databases)") from None
    except ImportError as e:  # the dialect is known, its driver module is not installed
        raise ConfigError(f"{where}: the database driver for {make_url(url).drivername}:// is not installed ({e})",
                          fix=install_fix(url)) from None
    except (SQLAlchemyError, ValueError) as e:
        raise ConfigError(f"{where}: url cannot be used ({e})",
                          fix="check the SQLAlchemy URL: dialect://user:password@host:port/database") from None
