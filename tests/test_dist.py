"""`make dist`: the offline-install archive installs with no package index reachable (issue 27).

- The archive is built by the real `make dist` (with `-o .venv/.installed` so the shared venv is never
  rebuilt, and BIN pointing at this interpreter), for this Python and this machine's architecture, into
  a temporary directory. Building downloads about 25 MB of wheels from the package index (pip's cache
  makes later runs quick): the tests are slow, and they SKIP when the index is unreachable (there is
  nothing to build the archive from), except when FEDNODE_REQUIRE_INDEX=1 (CI), where that fails.
- The install runs the archive's ./install.sh with PIP_NO_INDEX=1, an unreachable PIP_INDEX_URL, no pip
  configuration file, no PATH into any venv and, when this user may create one (root, or unprivileged
  user namespaces), inside a network namespace with no network at all. Then the installed
  `fednode --version` and `fednode demo --records 500` run from outside the repository.
- install.sh refuses a Python that does not match the archive's tag (exit 2, a fix line, nothing
  installed) and a damaged archive (exit 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
PLATFORM = f"manylinux_2_28_{os.uname().machine}"
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple/"  # the discard port: nothing answers

pytestmark = pytest.mark.slow


def package_index() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        p = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True, timeout=60)
        url = p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "https://pypi.org/simple/"
    return url


def index_unreachable(url: str) -> str | None:
    """Why the index cannot be used, or None when it answers."""
    probe = url.rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(probe, timeout=15) as r:  # noqa: S310 - the configured index
            r.read(1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{probe}: {e}"
    return None


def base_python() -> str:
    """This interpreter outside any venv (the test may run from .venv)."""
    for cand in (Path(sys.base_prefix) / "bin" / f"python{PY}", Path(getattr(sys, "_base_executable", ""))):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    pytest.skip(f"no base interpreter python{PY} found under {sys.base_prefix}")


def no_index_env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PIP_NO_INDEX": "1", "PIP_INDEX_URL": UNREACHABLE_INDEX, "PIP_EXTRA_INDEX_URL": UNREACHABLE_INDEX,
           "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1"}
    env.update(extra)
    return env


def offline_prefix() -> list[str]:
    """`unshare -n` (a network namespace with no interface up) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=30).returncode == 0:
        return [unshare, "-n"]
    return []


@dataclass(frozen=True)
class Bundle:
    archive: Path
    root: Path          # the unpacked top directory
    build_s: float


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    index = package_index()
    why = index_unreachable(index)
    if why:
        reason = f"package index unreachable, cannot build the archive (make dist downloads the wheels): {why}"
        if os.environ.get("FEDNODE_REQUIRE_INDEX") == "1":
            pytest.fail(f"{reason} (FEDNODE_REQUIRE_INDEX=1)")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    args = [f"DIST_DIR={out}", f"DIST_PYTHONS={PY}", f"DIST_PLATFORMS={PLATFORM}"]
    make = shutil.which("make")
    if make:
        cmd = [make, "-C", str(REPO), "-o", ".venv/.installed", "dist", f"BIN={Path(sys.executable).parent}", *args]
    else:
        cmd = [sys.executable, str(REPO / "deploy/dist/build.py"), "--out", str(out), "--python", PY,
               "--platform", PLATFORM]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    build_s = time.monotonic() - t0
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    name = f"fednode-{VERSION}-{TAG}-{PLATFORM}"
    archive = out / f"{name}.tar.gz"
    assert archive.is_file(), f"no {archive.name} in {sorted(x.name for x in out.iterdir())}\n{p.stdout[-2000:]}"
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(archive) as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {name}, "one top directory named like the archive"
        tar.extractall(unpacked, filter="data")
    print(f"\narchive {archive.name}: {archive.stat().st_size / 1e6:.1f} MB, built in {build_s:.1f} s")
    return Bundle(archive, unpacked / name, build_s)


def test_archive_holds_every_wheel_the_unit_and_the_docs(bundle: Bundle) -> None:
    root = bundle.root
    assert os.access(root / "install.sh", os.X_OK)
    assert (root / "systemd" / "fednode.service").read_bytes() == (REPO / "deploy/systemd/fednode.service").read_bytes()
    assert (root / "doc" / "deploy" / "README.md").is_file() and (root / "doc" / "README.md").is_file()
    assert not (root / "doc" / "deploy" / "dist").exists()
    info = dict(line.split("=", 1) for line in (root / "bundle.txt").read_text(encoding="utf-8").splitlines())
    assert (info["version"], info["python_tag"], info["platform"]) == (VERSION, TAG, PLATFORM)

    wheels = {w.name for w in (root / "wheelhouse").iterdir()}
    assert all(w.endswith(".whl") for w in wheels), f"not only wheels: {wheels}"
    dists = {re.sub(r"[-_.]+", "-", w.split("-")[0]).lower() for w in wheels}
    # fednode's own dependencies, the postgres extra (psycopg with its binary part), the drivers of the local
    # systems' databases (mysql, oracle, mssql extras: a closed network cannot pip install them later), pip
    for needed in ("fednode", "grpcio", "grpcio-health-checking", "protobuf", "sqlalchemy", "greenlet",
                   "alembic", "cryptography", "apscheduler", "structlog", "chinese-calendar", "psycopg",
                   "psycopg-binary", "pymysql", "oracledb", "pymssql", "pip"):
        assert needed in dists, f"{needed} missing from the wheelhouse: {sorted(dists)}"

    reqs = [ln for ln in (root / "requirements.txt").read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    assert len(reqs) == len(wheels) - 1, "every wheel but pip's is pinned"
    assert all(re.fullmatch(r"\S+==\S+ --hash=sha256:[0-9a-f]{64}", ln) for ln in reqs), reqs
    assert f"fednode[postgres,mysql,oracle,mssql]=={VERSION}" in {ln.split(" ")[0] for ln in reqs}

    sums: dict[str, str] = {}
    for ln in (root / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, rel = ln.split("  ", 1)
        sums[rel] = digest
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(sums) == files
    grpc_whl = next(f for f in files if f.startswith("wheelhouse/grpcio-"))
    assert sums[grpc_whl] == hashlib.sha256((root / grpc_whl).read_bytes()).hexdigest()


def test_installs_with_no_index_then_version_and_demo_run(bundle: Bundle, tmp_path: Path) -> None:
    prefix = tmp_path / "opt-fednode"
    home = tmp_path / "home"
    home.mkdir()
    env = no_index_env(home, PYTHON=base_python())
    wrap = offline_prefix()
    t0 = time.monotonic()
    p = subprocess.run([*wrap, str(bundle.root / "install.sh"), str(prefix)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    install_s = time.monotonic() - t0
    assert p.returncode == 0, f"install.sh exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    print(f"\ninstalled {'in a network namespace with no network' if wrap else 'with no index'} in {install_s:.1f} s")
    assert "from this archive only" in p.stdout
    unit = prefix / "share" / "fednode" / "fednode.service"
    assert f"install -m 0644 {unit} /etc/systemd/system/fednode.service" in p.stdout
    assert "useradd --system" in p.stdout
    assert f"ExecStart={prefix}/bin/fednode run" in unit.read_text(encoding="utf-8")
    assert (prefix / "share" / "doc" / "fednode" / "deploy" / "README.md").is_file()

    for exe in (prefix / "venv" / "bin" / "fednode", prefix / "bin" / "fednode"):
        v = subprocess.run([str(exe), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert (v.returncode, v.stdout.strip()) == (0, f"fednode {VERSION}"), v.stderr
    # the installed copy runs, not the repository's; the postgres driver came with it
    imp = subprocess.run([str(prefix / "venv" / "bin" / "python"), "-c",
                          "import node, psycopg, grpc, pymysql, oracledb, pymssql; print(node.__file__); "
                          "print(psycopg.pq.__impl__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert imp.returncode == 0, imp.stderr
    node_file, impl = imp.stdout.split()
    assert Path(node_file).is_relative_to(prefix / "venv"), node_file
    assert impl == "binary"

    t0 = time.monotonic()
    demo = subprocess.run([str(prefix / "bin" / "fednode"), "demo", "--records", "500", "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, f"demo exited {demo.returncode}\n{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}"
    result = json.loads(demo.stdout)
    assert result["verified"] and result["lost"] == 0 and result["duplicates"] == 0
    assert result["records_at_root"] == result["records_born_at_leaves"] >= 1500
    print(f"demo --records 500 from the installed venv: {time.monotonic() - t0:.1f} s")

    # run again (an upgrade in place with the same archive): still no index, same result
    again = subprocess.run([*wrap, str(bundle.root / "install.sh"), str(prefix)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, f"second install.sh exited {again.returncode}\n{again.stdout}\n{again.stderr}"
    assert "upgrading" in again.stdout


def other_cpython() -> str | None:
    """A CPython of another minor version on this machine, if any."""
    for minor in range(9, 16):
        if minor == sys.version_info[1]:
            continue
        for cand in (shutil.which(f"python3.{minor}"), f"{Path.home()}/.pyenv/versions/3.{minor}/bin/python3.{minor}"):
            if not cand or not Path(cand).exists():
                continue
            p = subprocess.run([cand, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True,
                               timeout=30)
            if p.returncode == 0 and p.stdout.strip() == str(minor):
                return cand
    for found in sorted(Path.home().glob(".pyenv/versions/3.*/bin/python3")):
        p = subprocess.run([str(found), "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True,
                           timeout=30)
        if p.returncode == 0 and p.stdout.strip() not in ("", str(sys.version_info[1])):
            return str(found)
    return None


def copy_of(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest, symlinks=True)
    return dest


def reseal(root: Path, rel: str) -> None:
    """Rewrite one file's line in SHA256SUMS (the archive stays whole after an edit)."""
    sums = root / "SHA256SUMS"
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    lines = [f"{digest}  {rel}" if ln.endswith(f"  {rel}") else ln for ln in sums.read_text(encoding="utf-8").splitlines()]
    sums.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_install_refuses_another_python_and_a_damaged_archive(bundle: Bundle, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()

    # an archive whose tag is not this Python's (the same check whichever Python runs it)
    foreign = copy_of(bundle.root, tmp_path / "foreign")
    text = (foreign / "bundle.txt").read_text(encoding="utf-8")
    (foreign / "bundle.txt").write_text(text.replace(f"python={PY}\n", "python=3.99\n")
                                        .replace(f"python_tag={TAG}\n", "python_tag=cp399\n"), encoding="utf-8")
    reseal(foreign, "bundle.txt")
    cases = [(foreign, base_python(), "cp399")]
    other = other_cpython()
    if other:  # the real case: the archive for this Python, run with another one
        cases.append((bundle.root, other, TAG))
    for i, (root, python, wanted) in enumerate(cases):
        prefix = tmp_path / f"prefix-{i}"
        p = subprocess.run([str(root / "install.sh"), str(prefix)], cwd=tmp_path, env=no_index_env(home, PYTHON=python),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, f"{python}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        assert "this archive is for CPython" in p.stderr and wanted in p.stderr and "fix:" in p.stderr, p.stderr
        assert not prefix.exists(), "nothing is installed"

    # a damaged copy: exit 1 before anything is installed (the check needs coreutils' sha256sum)
    assert shutil.which("sha256sum"), "sha256sum (coreutils) is needed to check the archive"
    damaged = copy_of(bundle.root, tmp_path / "damaged")
    readme = damaged / "doc" / "deploy" / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\ntampered\n", encoding="utf-8")
    prefix = tmp_path / "prefix-damaged"
    p = subprocess.run([str(damaged / "install.sh"), str(prefix)], cwd=tmp_path,
                       env=no_index_env(home, PYTHON=base_python()), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "SHA256SUMS" in p.stderr, f"exit {p.returncode}\n{p.stderr}"
    assert not prefix.exists()

    # bad usage
    p = subprocess.run([str(bundle.root / "install.sh"), "a", "b"], cwd=tmp_path, env=no_index_env(home),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "usage:" in p.stderr
