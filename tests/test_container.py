"""The container files (issue 27): the base image pinned by digest in both stages, everything `fednode`
offers in the image (bench/ for `demo` and `bench`), the volume's owner documented where the uid is set,
and a .dockerignore that sends the sources and nothing else (no .venv, .git, node homes, stores, keys).

.dockerignore is read with the builder's own rules (moby patternmatcher: Go filepath.Match patterns
with ``**``, the last matching pattern wins, ``!`` re-includes, a pattern matching a directory covers
what is inside it).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _regex(line.lstrip("!").strip("/"))))
    return rules


def sent(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the builder gets ``path`` (relative, /-separated)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def test_dockerignore_sends_the_sources_only() -> None:
    rules = dockerignore()
    for path in ("pyproject.toml", "README.md", "node/core/store.py", "node/core/migrations/versions/0001_initial.py",
                 "node/core/migrations/script.py.mako", "adapters/base.py", "proto/fednode/v1/fednode_pb2.py",
                 "bench/demo.py"):
        assert sent(path, rules), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "dist/fednode.tar.gz", "deploy/README.md",
                 "node/__pycache__/x.cpython-311.pyc", "store.db", "tmp/320303/keys/sign.key", "node/x/keys/tls.crt",
                 "demo/320000/node.toml", "demo/320000/store.db-wal", "x/admin.sock", ".mypy_cache/x"):
        assert not sent(path, rules), path
    # every file the build stage copies is sent
    for src in copied_sources():
        for f in ([REPO / src] if (REPO / src).is_file() else (REPO / src).rglob("*")):
            rel = f.relative_to(REPO).as_posix()
            if f.is_file() and "__pycache__" not in rel:
                assert sent(rel, rules), rel


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def copied_sources() -> list[str]:
    return [src for op, rest in instructions() if op == "COPY" and "--from" not in rest for src in rest.split()[:-1]]


def test_base_image_by_digest_and_everything_in_the_image() -> None:
    ins = instructions()
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # both stages, the one pinned image
    assert {"pyproject.toml", "README.md", "node", "adapters", "proto", "bench"} <= set(copied_sources())
    text = CONTAINERFILE.read_text(encoding="utf-8")
    assert "ARG FEDNODE_UID=10001" in text and "install -d -o 10001 -g 10001 -m 0700" in text
