"""Enrolment with a key fingerprint (issue 27): `pki request` prints the SHA-256 of the request's three
public keys, `pki sign --fingerprint F` refuses a request with other keys (same code and name: what a
swapped file looks like), `pki sign` and `pki install` print the same bundle fingerprint, and the
request file shows the name as written (no \\u escapes). Real `fednode` processes on real homes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from node.core import pki

REPO = Path(__file__).resolve().parent.parent
FP = re.compile(r"\b((?:[0-9a-f]{4} ){15}[0-9a-f]{4})\b")


def fednode(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_enrolment_with_fingerprints(tmp_path: Path) -> None:
    prov, city, impostor = tmp_path / "320000", tmp_path / "320300", tmp_path / "impostor"
    ok(fednode("init", prov, "--code", "320000", "--name", "江苏省", "--level", "province", "--listen", "127.0.0.1:7700"))
    ok(fednode("pki", "init-root", prov))
    for d in (city, impostor):  # the impostor copies code and name: only the keys differ
        ok(fednode("init", d, "--code", "320300", "--name", "徐州市", "--level", "city", "--parent", "127.0.0.1:7700"))

    p = ok(fednode("pki", "request", city))
    assert "徐州市" in p.stdout and "\\u" not in p.stdout  # readable as written
    (tmp_path / "city.csr").write_text(p.stdout, encoding="utf-8")
    m = FP.search(p.stderr)
    assert m, p.stderr
    fingerprint = m.group(1)
    req = pki.Request.from_json(p.stdout)
    assert pki.request_fingerprint(req) == fingerprint
    again = json.loads(ok(fednode("pki", "request", city, "--json")).stdout)
    assert again["key_fingerprint"] == fingerprint  # same keys, same fingerprint
    read_out = " ".join(fingerprint.split()[:4])  # what is read over the phone

    p = ok(fednode("pki", "request", impostor))
    (tmp_path / "impostor.csr").write_text(p.stdout, encoding="utf-8")
    assert FP.search(p.stderr).group(1) != fingerprint  # type: ignore[union-attr]

    # the swapped request: refused, nothing signed
    p = fednode("pki", "sign", prov, tmp_path / "impostor.csr", "--fingerprint", read_out, "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    err = json.loads(p.stdout)
    assert err["code"] == "fingerprint_mismatch" and "nothing was signed" in err["error"] and err["fix"]
    assert "fednode_bundle" not in p.stdout
    # a fingerprint too short or not hex is a usage error
    for bad in ("3f2a", "zzzz zzzz zzzz zzzz"):
        p = fednode("pki", "sign", prov, tmp_path / "city.csr", "--fingerprint", bad)
        assert p.returncode == 2 and "fingerprint" in p.stderr and "fednode_bundle" not in p.stdout, p.stderr

    # the real one, read out with colons and capitals: signed, bundle fingerprint printed
    p = ok(fednode("pki", "sign", prov, tmp_path / "city.csr", "--fingerprint", read_out.upper().replace(" ", ":")))
    (tmp_path / "city.bundle").write_text(p.stdout, encoding="utf-8")
    assert "matches the fingerprint given" in p.stderr
    bundle_fp = re.search(r"bundle fingerprint\s+((?:[0-9a-f]{4} ){15}[0-9a-f]{4})", p.stderr)
    assert bundle_fp, p.stderr
    assert pki.bundle_fingerprint(pki.Bundle.from_json(p.stdout)) == bundle_fp.group(1)
    p = ok(fednode("pki", "install", city, tmp_path / "city.bundle", "--json"))
    assert json.loads(p.stdout)["bundle_fingerprint"] == bundle_fp.group(1)
    p = ok(fednode("pki", "sign", prov, tmp_path / "city.csr"))  # no --fingerprint: signed, with a warning
    assert "NOT checked" in p.stderr


def test_fingerprint_matching() -> None:
    fp = "3f2a 91bc 07de 55a1 9c0e 1111 2222 3333 4444 5555 6666 7777 8888 9999 aaaa bbbb"
    assert pki.fingerprint_matches("3f2a91bc07de55a1", fp)
    assert pki.fingerprint_matches("3F2A:91BC:07DE:55A1:9C0E", fp)
    assert not pki.fingerprint_matches("3f2a 91bc 07de 55a2", fp)
    assert not pki.fingerprint_matches(fp.replace("bbbb", "bbbc"), fp)
