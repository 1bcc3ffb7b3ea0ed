"""The real `fednode` console script, run as a subprocess: enrolment, status, verify, proofs, errors.

A module fixture builds province 320000 → city 320300 → county 320303 with `fednode init` and the
`pki` commands (all with --json) in a temporary directory and ingests synthetic records at the county.
Tests that change a home work on a copy of it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proto.fednode.v1 import fednode_pb2 as pb

_SCRIPT = Path(sys.executable).parent / "fednode"
FEDNODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "node.interfaces.cli"]
CHANNEL_NUMBERS = {"control": 1, "monitor": 2, "bulk": 3}


def fednode(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDNODE_HOME"}
    return subprocess.run([*FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=180, env=env,
                          cwd=cwd)


def ok(*args: Any) -> subprocess.CompletedProcess[str]:
    p = fednode(*args)
    assert p.returncode == 0, f"fednode {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def js(*args: Any) -> Any:
    """Run with --json; it must succeed and print exactly one JSON document on stdout."""
    return json.loads(ok(*args, "--json").stdout)


@dataclass
class Chain:
    base: Path
    province: Path
    city: Path
    county: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    base = tmp_path_factory.mktemp("cli")
    p, c, d = base / "p", base / "c", base / "d"
    nodes = {p: ("320000", "江苏省", "province"), c: ("320300", "徐州市", "city"), d: ("320303", "云龙区", "county")}
    # independent steps run side by side (each command is a separate process)
    with ThreadPoolExecutor(3) as pool:
        for home, made in zip(nodes, pool.map(
            lambda h: js("init", h, "--code", nodes[h][0], "--name", nodes[h][1], "--level", nodes[h][2]), nodes
        ), strict=True):
            assert (made["code"], made["level"]) == (nodes[home][0], nodes[home][2])
        root = pool.submit(js, "pki", "init-root", p)
        requests = dict(zip((c, d), pool.map(lambda h: js("pki", "request", h), (c, d)), strict=True))
        assert root.result()["path"] == "320000"
    for home, parent, parent_code in ((c, p, "320000"), (d, c, "320300")):
        code = nodes[home][0]
        assert requests[home]["code"] == code
        csr = base / f"{code}.csr"
        csr.write_text(json.dumps(requests[home]), encoding="utf-8")
        bundle = js("pki", "sign", parent, csr)
        assert bundle["code"] == code
        bundle_file = base / f"{code}.bundle"
        bundle_file.write_text(json.dumps(bundle), encoding="utf-8")
        installed = js("pki", "install", home, bundle_file)
        assert installed["path"] == bundle["path"] and installed["parent_code"] == parent_code
    assert js("ingest", d, "--synthetic", "400", "--seed", "7")["ingested"] == 400
    return Chain(base, p, c, d)


def copy_home(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def chain_heads(db: Path) -> dict[tuple[str, str], tuple[int, str]]:
    """Every log's head, recomputed from the stored bodies with sqlite3 and hashlib alone (DESIGN §3)."""
    names = {v: k for k, v in CHANNEL_NUMBERS.items()}
    out: dict[tuple[str, str], tuple[int, str]] = {}
    with sqlite3.connect(db) as conn:
        logs = conn.execute("SELECT DISTINCT origin, channel FROM records").fetchall()
        for origin, channel in logs:
            prev, n = bytes(32), 0
            for seq, body in conn.execute(
                "SELECT seq, body FROM records WHERE origin = ? AND channel = ? ORDER BY seq", (origin, channel)
            ):
                n += 1
                assert seq == n
                prev = hashlib.sha256(prev + hashlib.sha256(body).digest()).digest()
            out[(origin, names[channel])] = (n, prev.hex())
    conn.close()
    return out


# ---- enrolment ---------------------------------------------------------------------------------------


def test_init_and_pki_build_the_chain(chain: Chain) -> None:
    """The certificates the commands wrote chain county → city → province root, paths in the URI SAN."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    def load(home: Path, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((home / "keys" / name).read_bytes())

    root = load(chain.province, "root.crt")
    for home, path in ((chain.province, "320000"), (chain.city, "320000/320300"),
                       (chain.county, "320000/320300/320303")):
        tls = load(home, "tls.crt")
        san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"fednode:{path}" in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert isinstance(tls.public_key(), ec.EllipticCurvePublicKey)
        assert load(home, "root.crt") == root  # every node trusts the same root
    # county certificates are issued by the city's CA, whose certificate is issued by the province's
    county_tls, city_ca = load(chain.county, "tls.crt"), load(chain.city, "ca.crt")
    county_tls.verify_directly_issued_by(city_ca)
    city_ca.verify_directly_issued_by(load(chain.province, "ca.crt"))
    assert 'parent_code = "320300"' in (chain.county / "node.toml").read_text(encoding="utf-8")


def test_pki_sign_refuses_codes_outside_the_signers_subtree(chain: Chain, tmp_path: Path) -> None:
    other = tmp_path / "x"
    js("init", other, "--code", "320400", "--name", "常州市", "--level", "city")
    csr_320400 = tmp_path / "320400.csr"
    csr_320400.write_text(ok("pki", "request", other).stdout, encoding="utf-8")
    csr_320000 = tmp_path / "320000.csr"
    csr_320000.write_text(ok("pki", "request", chain.province).stdout, encoding="utf-8")
    for code, csr, as_json in (("320400", csr_320400, False), ("320000", csr_320000, True)):
        p = fednode("pki", "sign", chain.city, csr, *(["--json"] if as_json else []))
        assert p.returncode != 0, p.stdout
        assert code in p.stderr and "320300" in p.stderr
        assert re.search(r"(outside|not inside) the subtree", p.stderr), p.stderr
        if as_json:
            err = json.loads(p.stdout)
            assert err["ok"] is False and err["code"] == "certificate_outside_subtree" and code in err["error"]
        else:
            assert p.stdout == "", "no bundle may be printed"
    # the same request is fine where it belongs: the refusal was about the subtree, not the request
    assert js("pki", "sign", chain.province, csr_320400)["path"] == "320000/320400"


def test_key_files_are_0600(chain: Chain, tmp_path: Path) -> None:
    county = copy_home(chain.county, tmp_path / "d")
    rotated = js("pki", "rotate", county)
    assert rotated["old_key_id"] != rotated["new_key_id"]
    for home in (chain.province, chain.city, chain.county, county):
        keys = home / "keys"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o700
        found = sorted(keys.rglob("*.key"))
        assert {k.name for k in found} >= {"tls.key", "ca.key", "sign.key"}
        for key in found:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert (chain.province / "keys" / "root.key").exists()
    assert not (chain.city / "keys" / "root.key").exists()
    assert len(list((county / "keys" / "retired").glob("*.key"))) == 1


# ---- status, verify, proof ------------------------------------------------------------------------------


def test_status_json_lists_every_log_with_seq_and_head(chain: Chain) -> None:
    status = js("status", chain.county)
    logs = {(lg["origin"], lg["channel"]): (lg["seq"], lg["head"]) for lg in status["logs"]}
    assert all(set(lg) >= {"origin", "channel", "seq", "head"} for lg in status["logs"])
    assert logs == chain_heads(chain.county / "store.db")
    assert sum(seq for seq, _ in logs.values()) == 401  # the key announcement and the ingested records
    human = ok("status", chain.county).stdout
    seq, head = logs[("320303", "control")]
    assert re.search(rf"320303\s+control\s+seq\s+{seq}\s+head {head[:16]}", human), human


def _stored(db: Path, channel: str, seq: int) -> bytes:
    with sqlite3.connect(db) as conn:
        body = conn.execute("SELECT body FROM records WHERE origin='320303' AND channel=? AND seq=?",
                            (CHANNEL_NUMBERS[channel], seq)).fetchone()[0]
    conn.close()
    return bytes(body)


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_verify_names_the_damaged_record(chain: Chain, tmp_path: Path, damage: str) -> None:
    county = copy_home(chain.county, tmp_path / "d")
    report = js("verify", county)
    assert report["ok"] is True and report["problems"] == []
    assert report["records"] == 401
    # damage bulk seq 7 behind fednode's back
    db = county / "store.db"
    body = _stored(db, "bulk", 7)
    with sqlite3.connect(db) as conn:
        if damage == "flip":
            i = len(body) // 2
            tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
            conn.execute("UPDATE records SET body=? WHERE origin='320303' AND channel=3 AND seq=7", (tampered,))
        else:
            conn.execute("DELETE FROM records WHERE origin='320303' AND channel=3 AND seq=7")
    conn.close()
    p = fednode("verify", county, "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] is False
    assert [(x["origin"], x["channel"], x["seq"]) for x in report["problems"]] == [("320303", "bulk", "7")]
    assert report["problems"][0]["code"] == ("chain_mismatch" if damage == "flip" else "missing_record")
    human = fednode("verify", county)
    assert human.returncode == 1
    assert "320303/bulk seq 7" in human.stdout


def _proof(home: Path, tmp_path: Path, channel: str = "bulk", seq: int = 5) -> tuple[Path, dict[str, Any]]:
    out = ok("proof", home, "320303", channel, seq).stdout
    path = tmp_path / f"{channel}-{seq}.proof"
    path.write_text(out, encoding="utf-8")
    return path, json.loads(out)


@pytest.fixture(scope="module")
def bulk_proof(chain: Chain) -> tuple[Path, dict[str, Any]]:
    return _proof(chain.county, chain.base)


def test_proof_round_trip(chain: Chain, tmp_path: Path, bulk_proof: tuple[Path, dict[str, Any]]) -> None:
    proof, doc = bulk_proof
    assert (doc["origin"], doc["channel"], doc["seq"]) == ("320303", "bulk", 5)
    for trust in ([], [chain.province]):  # on its own, and on another node of the tree
        result = js("verify", "--proof", proof, *trust)
        assert result["ok"] is True
        assert (result["origin"], result["channel"], result["seq"], result["signer"]) == ("320303", "bulk", 5, "320303")
        assert result["checkpoint_seq"] >= 5
    human = ok("verify", "--proof", proof, "--root", chain.province / "keys" / "root.crt").stdout
    assert "proof OK: 320303/bulk seq 5" in human
    control, _ = _proof(chain.county, tmp_path, "control", 1)  # the key announcement: a signed record
    assert js("verify", "--proof", control, chain.city)["seq"] == 1


def _rewrite(out: Path, doc: dict[str, Any], change: Any) -> Path:
    proof = pb.RecordProof.FromString(base64.b64decode(doc["proof"]))
    change(proof)
    out.write_text(json.dumps({**doc, "proof": base64.b64encode(proof.SerializeToString()).decode()}), encoding="utf-8")
    return out


def _flip(data: bytes, at: int | None = None) -> bytes:
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.mark.parametrize(
    ("part", "code"),
    [
        ("record_body", "chain_mismatch"),
        ("following_body", "chain_mismatch"),
        ("previous_chain", "chain_mismatch"),
        ("checkpoint_signature", "bad_signature"),
        ("checkpoint_body", "bad_signature"),
    ],
)
def test_tampered_proof_is_refused(chain: Chain, tmp_path: Path, bulk_proof: tuple[Path, dict[str, Any]], part: str,
                                  code: str) -> None:
    path, doc = bulk_proof

    def change(p: pb.RecordProof) -> None:
        if part == "record_body":
            p.record.body = _flip(p.record.body)
        elif part == "following_body":
            assert len(p.following_bodies) > 0
            p.following_bodies[0] = _flip(p.following_bodies[0])
        elif part == "previous_chain":
            p.previous_chain = _flip(p.previous_chain, 0)
        elif part == "checkpoint_signature":
            p.checkpoint.signature = _flip(p.checkpoint.signature)
        else:
            cpb = pb.CheckpointBody.FromString(p.checkpoint.body)
            cpb.chain = _flip(cpb.chain, 0)
            p.checkpoint.body = cpb.SerializeToString()

    tampered = _rewrite(tmp_path / "tampered.proof", doc, change)
    res = fednode("verify", "--proof", tampered, "--root", chain.province / "keys" / "root.crt", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    assert json.loads(res.stdout)["code"] == code


def test_proof_file_with_altered_readable_fields_is_refused(chain: Chain, tmp_path: Path,
                                                            bulk_proof: tuple[Path, dict[str, Any]]) -> None:
    """The proof file shows origin/seq/payload in clear beside the signed proof; a reader trusts what
    they see, so `verify --proof` must refuse a file whose shown fields disagree with what it proves."""
    _, doc = bulk_proof
    for field, value in (("payload", doc["payload"].replace("1", "9", 1) + " "), ("seq", 6)):
        tampered = tmp_path / f"shown-{field}.proof"
        tampered.write_text(json.dumps({**doc, field: value}), encoding="utf-8")
        res = fednode("verify", "--proof", tampered, "--root", chain.province / "keys" / "root.crt")
        assert res.returncode != 0, f"a proof file showing an altered {field!r} was accepted:\n{res.stdout}"


def test_proof_from_another_tree_is_refused_against_our_root(chain: Chain, tmp_path: Path) -> None:
    stranger = tmp_path / "s"
    js("init", stranger, "--code", "320000", "--name", "假省", "--level", "province")
    js("pki", "init-root", stranger)
    forged = tmp_path / "forged.proof"
    forged.write_text(ok("proof", stranger, "320000", "control", 1).stdout, encoding="utf-8")
    for trust in (["--root", chain.province / "keys" / "root.crt"], [chain.county]):
        res = fednode("verify", "--proof", forged, *trust, "--json")  # self-consistent, but not our tree
        assert res.returncode == 1, res.stdout
        assert json.loads(res.stdout)["code"] == "certificate"


# ---- configuration and usage errors ---------------------------------------------------------------------


COMMANDS_READING_CONFIG = [("status",), ("verify",), ("pki", "request"), ("pki", "rotate")]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace("[node]\n", '[node]\ncolour = "red"\n'), "node.colour"),
        (lambda t: t.replace('code = "320303"', 'code = "32O303"'), "node.code"),
        (lambda t: t.replace('level = "county"', 'level = "borough"'), "node.level"),
        (lambda t: re.sub(r"jitter_s = \d+", 'jitter_s = "ten"', t), "reconcile.jitter_s"),
        (lambda t: t.replace('name = "云龙区"\n', ""), "node.name"),
    ],
    ids=["unknown-field", "bad-code", "bad-level", "bad-type", "missing-field"],
)
def test_config_errors_exit_2_naming_file_and_field(chain: Chain, tmp_path: Path, edit: Any, field: str) -> None:
    home = tmp_path / "d"
    home.mkdir()
    text = (chain.county / "node.toml").read_text(encoding="utf-8")
    edited = edit(text)
    assert edited != text
    (home / "node.toml").write_text(edited, encoding="utf-8")
    toml = str(home / "node.toml")
    command = COMMANDS_READING_CONFIG[sum(map(ord, field)) % len(COMMANDS_READING_CONFIG)]
    p = fednode(*command, home, "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    assert toml in p.stderr and field in p.stderr, p.stderr  # the operator's message
    assert "fix:" in p.stderr
    err = json.loads(p.stdout)  # and the script's
    assert err["ok"] is False and err["code"] == "config" and toml in err["error"] and field in err["error"]
    assert err["fix"]


def test_missing_config_file_and_bad_usage_exit_2(chain: Chain, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    p = fednode("status", empty)
    assert p.returncode == 2
    assert str(empty / "node.toml") in p.stderr and "fednode init" in p.stderr
    bad = fednode("init", tmp_path / "b", "--code", "3203", "--name", "x", "--level", "county", "--json")
    assert bad.returncode == 2
    assert "3203" in json.loads(bad.stdout)["error"]
    assert fednode("status").returncode == 2  # no DIR and no FEDNODE_HOME


def test_refused_init_leaves_no_half_made_home(tmp_path: Path) -> None:
    """`init` with a level that contradicts the code is refused (exit 2); the operator then fixes the
    level and runs it again, which must work."""
    home = tmp_path / "h"
    p = fednode("init", home, "--code", "320303", "--name", "云龙区", "--level", "city")
    assert p.returncode == 2 and "node.level" in p.stderr, p.stderr
    again = fednode("init", home, "--code", "320303", "--name", "云龙区", "--level", "county")
    assert again.returncode == 0, again.stderr


# ---- --json everywhere ----------------------------------------------------------------------------------


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_leaf_commands(sub, f"{prefix}{name} "))
    if not out and prefix:
        out[prefix.strip()] = parser
    return out


def test_every_command_accepts_json(chain: Chain, tmp_path: Path) -> None:
    from node.interfaces.cli.main import build_parser

    leaves = _leaf_commands(build_parser())
    assert {"init", "pki init-root", "pki request", "pki sign", "pki install", "pki rotate", "pki revoke",
            "verify", "proof", "status"} <= set(leaves)
    for name, sub in leaves.items():
        assert any("--json" in a.option_strings for a in sub._actions), f"`fednode {name}` has no --json"
    # the commands the fixture did not run with --json: rotate, revoke, then verify still passes
    county = copy_home(chain.county, tmp_path / "d")
    rotated = js("pki", "rotate", county)
    current = fednode("pki", "revoke", county, rotated["new_key_id"], "--json")
    assert current.returncode == 2 and json.loads(current.stdout)["ok"] is False  # not the key in use
    assert js("pki", "revoke", county, rotated["old_key_id"], "--reason", "test")["revoked"] == rotated["old_key_id"]
    js("ingest", county, "--synthetic", "10", "--seed", "8")
    report = js("verify", county)  # old records stay valid after rotation and revocation
    assert report["ok"] is True, report["problems"]
    assert report["records"] == 401 + 2 + 10  # the new key's announcement, the revocation, more records
