"""Shell completion (issue 27): `fednode completion bash` is a script bash really completes with: the
commands, the nested ones, options, choices and node homes as directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash")


def fednode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = fednode("completion", "bash")
    assert p.returncode == 0, p.stderr
    path = tmp_path_factory.mktemp("completion") / "fednode.bash"
    path.write_text(p.stdout, encoding="utf-8")
    return path


def complete(script: Path, line: str, cwd: Path) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), with the script sourced."""
    assert BASH is not None
    words = line.split(" ")
    prog = (f"source {script}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE={line!r}; COMP_POINT={len(line)}\n"
            "_shtab_fednode fednode \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n')
    p = subprocess.run([BASH, "--norc", "--noprofile", "-c", prog], capture_output=True, text=True, timeout=60,
                       cwd=cwd)
    assert p.returncode == 0, p.stderr
    return [w.strip() for w in p.stdout.splitlines() if w.strip()]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_commands_options_and_homes(bash_script: Path, tmp_path: Path) -> None:
    (tmp_path / "320303").mkdir()
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert {"status", "health", "migrate", "pki", "completion"} <= set(complete(bash_script, "fednode ", tmp_path))
    assert complete(bash_script, "fednode hea", tmp_path) == ["health"]
    assert {"request", "sign", "install", "rotate", "revoke", "keys"} <= set(complete(bash_script, "fednode pki ", tmp_path))
    assert "--fingerprint" in complete(bash_script, "fednode pki sign --f", tmp_path)
    assert set(complete(bash_script, "fednode completion ", tmp_path)) == {"bash", "zsh", "tcsh"}
    homes = complete(bash_script, "fednode status 32", tmp_path)
    assert homes and all(h.startswith("320303") for h in homes)  # a directory, not the file beside it
    assert not any("notes" in h for h in complete(bash_script, "fednode status ", tmp_path))


def test_every_shell_and_json() -> None:
    for shell in ("zsh", "tcsh"):
        p = fednode("completion", shell)
        assert p.returncode == 0 and "fednode" in p.stdout and "migrate" in p.stdout, p.stderr
    p = fednode("completion", "bash", "--json")
    assert p.returncode == 0 and '"script"' in p.stdout
    p = fednode("completion", "fish")
    assert p.returncode == 2
