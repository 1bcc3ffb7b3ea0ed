#!/usr/bin/env python3
"""Build the offline-install archives of fednode (`make dist`).

    python deploy/dist/build.py --out dist [--python 3.11 ...] [--platform manylinux_2_28_x86_64 ...]

Rules of this module:
- One archive per target (Python version x platform), named fednode-VERSION-cpXY-PLATFORM.tar.gz, with
  one top directory of the same name holding: install.sh; wheelhouse/ (the wheels of fednode and of
  every dependency, the postgres, mysql, oracle and mssql extras included, and pip's own wheel to bootstrap a venv without
  ensurepip); requirements.txt (every wheel but pip's pinned with its sha256: install.sh installs with
  --require-hashes); bundle.txt (the target, key=value, read by install.sh); systemd/fednode.service;
  doc/ (README.md, docs/, deploy/ without deploy/dist/); SHA256SUMS of every other file.
- Wheels only: a dependency without a wheel for the target fails the build. The server it is for has
  no package index and no compiler.
- The fednode wheel is built from a clean copy of the working tree in a temporary directory: nothing is
  written in the repository and no stale build/ file can slip into the wheel.
- Downloads go through pip with the machine's ordinary configuration (index, mirror, proxy, cache).
- Exit status: 0 every archive built, 1 pip or the build failed, 2 bad arguments. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXTRAS = "postgres,mysql,oracle,mssql"  # the drivers of the local systems' databases too (Runbook 8)
# legacy manylinux names and the glibc they stand for (PEP 600)
LEGACY = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
                                     "test-artifacts")


class BuildError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    python: str      # "3.11"
    glibc: int       # minor version of glibc 2.x the platform tag promises
    arch: str        # "x86_64", "aarch64"

    @property
    def tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def platform(self) -> str:
        return f"manylinux_2_{self.glibc}_{self.arch}"

    def pip_platforms(self) -> list[str]:
        """Every platform tag a wheel may carry to run on this target: pip expands only the legacy names."""
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(self.glibc, 4, -1)]
        tags += [f"{name}_{self.arch}" for name, m in LEGACY.items() if m <= self.glibc]
        return tags


def parse_platform(text: str) -> tuple[int, str]:
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", text)
    if m:
        return int(m.group(1)), m.group(2)
    m = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", text)
    if m:
        return LEGACY[m.group(1)], m.group(2)
    raise BuildError(f"--platform {text!r}: not a manylinux platform tag\n"
                     "fix: use manylinux_2_GLIBCMINOR_ARCH, e.g. manylinux_2_28_x86_64 or manylinux_2_28_aarch64", 2)


def parse_python(text: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}", text):
        raise BuildError(f"--python {text!r}: not a Python version\nfix: use MAJOR.MINOR, e.g. 3.11", 2)
    return text


def run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=cwd)
    if p.returncode != 0:
        raise BuildError(f"{what} failed (exit {p.returncode}): see pip's message above")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_fednode_wheel(work: Path) -> Path:
    src = work / "src"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE, symlinks=True)
    out = work / "fednode-wheel"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        "building the fednode wheel")
    wheels = sorted(out.glob("fednode-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"building the fednode wheel gave {[w.name for w in wheels]}, expected one wheel")
    return wheels[0]


def wheel_glibc(name: str) -> int:
    """The lowest glibc minor a wheel runs on (0: no glibc needed)."""
    platforms = name[:-len(".whl")].split("-")[-1].split(".")
    best: int | None = None
    for p in platforms:
        if p == "any":
            return 0
        m = re.match(r"manylinux_2_(\d+)_", p)
        g = int(m.group(1)) if m else next((v for k, v in LEGACY.items() if p.startswith(k + "_")), None)
        if g is not None:
            best = g if best is None else min(best, g)
    if best is None:
        raise BuildError(f"{name}: not a manylinux wheel")
    return best


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def copy_docs(dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in ("README.md", "LICENSE", "NOTICE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    if (REPO / "docs").is_dir():
        shutil.copytree(REPO / "docs", dest / "docs", ignore=COPY_IGNORE)
    shutil.copytree(REPO / "deploy", dest / "deploy",
                    ignore=lambda d, names: [*COPY_IGNORE(d, names), *(["dist"] if Path(d) == REPO / "deploy" else [])])


def build_target(target: Target, fednode_whl: Path, version: str, out: Path, work: Path) -> Path:
    name = f"fednode-{version}-{target.tag}-{target.platform}"
    top = work / name
    wheelhouse = top / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse), "--only-binary=:all:",
           "--python-version", target.python, "--implementation", "cp", "--abi", target.tag]
    for tag in target.pip_platforms():
        cmd += ["--platform", tag]
    run([*cmd, f"{fednode_whl}[{EXTRAS}]", "pip"], f"downloading the wheels for {target.tag} {target.platform}")

    wheels = sorted(wheelhouse.iterdir())
    strays = [w.name for w in wheels if w.suffix != ".whl"]
    if strays:
        raise BuildError(f"not wheels: {strays} (a source distribution cannot be installed without a compiler)")
    glibc_min = max(wheel_glibc(w.name) for w in wheels)
    pip_wheels = [w for w in wheels if w.name.startswith("pip-")]
    if len(pip_wheels) != 1:
        raise BuildError(f"expected one pip wheel in the wheelhouse, found {[w.name for w in pip_wheels]}")

    lines = [f"# fednode {version} for {target.tag} {target.platform}: every wheel of the wheelhouse, pinned"]
    for w in wheels:
        if w in pip_wheels:
            continue
        dist, ver = w.name.split("-")[:2]
        req = f"{dist}[{EXTRAS}]" if dist == "fednode" else dist
        lines.append(f"{req}=={ver} --hash=sha256:{sha256(w)}")
    (top / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    built = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    (top / "bundle.txt").write_text(
        f"name=fednode\nversion={version}\npython={target.python}\npython_tag={target.tag}\n"
        f"platform={target.platform}\narch={target.arch}\nglibc_min=2.{glibc_min}\n"
        f"pip_wheel={pip_wheels[0].name}\nextras={EXTRAS}\nbuilt={built}\ncommit={git_commit()}\n",
        encoding="utf-8")
    shutil.copy2(HERE / "install.sh", top / "install.sh")
    (top / "install.sh").chmod(0o755)
    (top / "systemd").mkdir()
    shutil.copy2(REPO / "deploy" / "systemd" / "fednode.service", top / "systemd" / "fednode.service")
    copy_docs(top / "doc")

    files = sorted(p for p in top.rglob("*") if p.is_file())
    (top / "SHA256SUMS").write_text(
        "".join(f"{sha256(p)}  {p.relative_to(top).as_posix()}\n" for p in files), encoding="utf-8")

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    archive = out / f"{name}.tar.gz"
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(top, arcname=name, recursive=False, filter=owner)
        for p in sorted(top.rglob("*")):
            tar.add(p, arcname=f"{name}/{p.relative_to(top).as_posix()}", recursive=False, filter=owner)
    os.replace(tmp, archive)
    print(f"{archive}  {archive.stat().st_size / 1e6:.1f} MB  {len(wheels)} wheels  glibc >= 2.{glibc_min}", flush=True)
    return archive


def main(argv: list[str] | None = None) -> int:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    parser = argparse.ArgumentParser(description="build one offline-install archive of fednode per target")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the archives go (default dist/)")
    parser.add_argument("--python", action="append", metavar="X.Y",
                        help=f"target Python version; repeat for more (default {here})")
    parser.add_argument("--platform", action="append", metavar="TAG",
                        help="target platform; repeat for more (default manylinux_2_28_<this machine's arch>)")
    args = parser.parse_args(argv)
    try:
        pythons = [parse_python(p) for p in args.python or [here]]
        platforms = [parse_platform(p) for p in args.platform or [f"manylinux_2_28_{os.uname().machine}"]]
        out: Path = args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fednode-dist-") as tmp:
            work = Path(tmp)
            whl = build_fednode_wheel(work)
            version = whl.name.split("-")[1]
            for py in pythons:
                for glibc, arch in platforms:
                    target = Target(py, glibc, arch)
                    build_target(target, whl, version, out, work / target.tag / target.platform)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
