"""Key operations on a running tree (issue 24, points 2 and 3; issue 27, key ids of runbook 2).

One tree of real `fednode run` processes for the module: province 320000 ← city 320300 ← county
320303 (each its own process); 320311 and 320305 are children of the city that never run: the test
speaks for them over real mutual TLS with their real credentials (tests/test_security_suite.py).

- a revocation by `fednode pki revoke` at the RUNNING city refuses the revoked key's records beyond
  the position at once (no restart), and the province holds the same revocation;
- the county's key revoked at the city while the county is down, the county appends with it, starts:
  it learns the revocation down its link, rotates, re-signs what the old key signed beyond the position,
  and every record it wrote reaches the province; `fednode verify` exits 0 on all three nodes;
- signing certificates minted with `cryptography` from the real CA key of 320305, one ended seconds ago
  and one valid only in ten days, are refused and their records not stored (the same minted for now
  is accepted);
- key ids: `pki rotate` prints full ids that `pki revoke` takes, in full or by a unique prefix;
  `pki keys` lists them; `pki revoke DIR zz` is exit 2 with the fix, never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from node.app import enrol
from node.core import pki
from node.core.crypto import GENESIS, Signer
from node.core.errors import CertificateError, RevokedKey
from node.core.home import Home
from node.core.integrity import verify_store
from node.core.keyring import Keyring
from node.core.ledger import Ledger, NewRecord
from node.core.records import BULK, CONTROL, MONITOR, SIGNED_CHANNELS, channel_name, now_us, parse_body
from node.core.store import Store
from proto.fednode.v1 import fednode_pb2 as pb
from tests.conftest import Tree as ConfTree
from tests.faultlib import CHAIN, CITY, COUNTY, OTHER, PROVINCE, Cluster, open_store, own_heads, wait_for
from tests.test_security_suite import (
    ChildSession,
    batch_after,
    channel_to_city,
    credentials,
    forged_segment,
    heads_of,
    offline_ingest,
)
from tests.test_store import case_events

pytestmark = pytest.mark.slow

THIRD = "320305"
TREE = [*CHAIN, (OTHER, "泉山区", "county", CITY), (THIRD, "贾汪区", "county", CITY)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("keyops"), TREE) as cluster:
        cluster.start(PROVINCE, CITY, COUNTY)
        yield cluster


def fednode(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process (the running node answers it through admin.sock)."""
    return subprocess.run([sys.executable, "-m", "node.interfaces.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def keys_rows(store: Store) -> dict[bytes, Any]:
    return {bytes(r.key_id): r for r in store.keys()}  # noqa: SIM118 (Store.keys is a query)


def revocation_at(home: Home, key_id: bytes) -> dict[int, int] | None:
    store = open_store(home)
    try:
        row = keys_rows(store).get(key_id)
    finally:
        store.close()
    return {int(c): s for c, s in json.loads(row.revoked_through).items()} if row and row.revoked_through else None


def signed_beyond(home: Home, origin: str, key_id: bytes, through: dict[int, int]) -> list[str]:
    """Records and checkpoints of ``origin`` held by ``home`` beyond ``through`` that ``key_id`` signed."""
    store = open_store(home)
    out = []
    try:
        for c in (CONTROL, MONITOR, BULK):
            if c in SIGNED_CHANNELS:
                out += [f"record {channel_name(c)} {r.seq}" for r in store.records(origin, c, through.get(c, 0) + 1)
                        if bytes(r.key_id) == key_id]
            out += [f"checkpoint {channel_name(c)} {cp.seq}" for cp in store.checkpoints(origin, c, through.get(c, 0) + 1)
                    if cp.key_id == key_id]
    finally:
        store.close()
    return out


# ---- (a) `pki revoke` at the running city bites at once ----------------------------------------------------


def test_revoke_at_running_city_refuses_at_once(cl: Cluster) -> None:
    other = cl.homes[OTHER]
    offline_ingest(other, 60, 11)  # signed and checkpointed by 320311's only key
    h = Home(other.dir)
    ledger = h.ledger()
    key = ledger.signer
    assert key is not None

    async def first() -> pb.Ack:
        async with channel_to_city(cl, credentials(other)) as ch:
            session, parent = await ChildSession.open(ch, OTHER)
            ack = await session.send(batch_after(ledger, parent, 1))
            await session.close()
            return ack

    try:
        ack1 = asyncio.run(first())
        assert ack1.ok, ack1
        held = heads_of(ack1.heads)
        res = fednode("pki", "revoke", cl.homes[CITY].dir, key.key_id.hex(), "--reason", "key leaked (test)", "--json")
        print(f"\n  pki revoke at the running city: exit {res.returncode}\n{res.stdout}{res.stderr[-400:]}")
        assert res.returncode == 0, res.stderr
        assert cl.alive(CITY)
        # 320311 does not know yet (it never runs): it appends more with the revoked key and sends it
        offline_ingest(other, 25, 12)
        ledger.append([NewRecord("audit.note", {"after": "revocation"})])

        async def second() -> pb.Ack:
            async with channel_to_city(cl, credentials(other)) as ch:
                session, parent = await ChildSession.open(ch, OTHER)
                ack = await session.send(batch_after(ledger, parent, 2))
                await session.close()
                return ack

        ack2 = asyncio.run(second())
    finally:
        h.close()
    print(f"  records signed by the revoked key after the revocation: ok={ack2.ok} "
          f"{[(e.origin, channel_name(int(e.channel)), e.error_code) for e in ack2.errors]}")
    assert not ack2.ok
    assert {(e.origin, int(e.channel), e.error_code) for e in ack2.errors} == \
        {(OTHER, BULK, "revoked_key"), (OTHER, CONTROL, "revoked_key")}, ack2
    assert own_heads(cl.homes[CITY], OTHER) == held, "the running city stored records of the revoked key"
    through = revocation_at(cl.homes[CITY], key.key_id)
    assert through == {c: held.get((OTHER, c), 0) for c in (CONTROL, MONITOR, BULK)}, through
    # the province holds the same revocation (in the city's control log) and refuses the same positions
    wait_for(lambda: revocation_at(cl.homes[PROVINCE], key.key_id) == through, 30,
             lambda: f"the province holds the revocation: {revocation_at(cl.homes[PROVINCE], key.key_id)}")
    store = open_store(cl.homes[PROVINCE])
    try:
        ring = Keyring.from_rows(Home(cl.homes[PROVINCE].dir).root(), store.keys())
    finally:
        store.close()
    ring.lookup(key.key_id, OTHER, now_us(), channel="bulk", seq=through[BULK])  # what it signed before: valid
    with pytest.raises(RevokedKey):
        ring.lookup(key.key_id, OTHER, 0, channel="bulk", seq=through[BULK] + 1)
    assert not signed_beyond(cl.homes[PROVINCE], OTHER, key.key_id, through)


# ---- (b) the county rotates, re-signs, and everything arrives ---------------------------------------------------


def test_revoked_county_resigns_and_everything_arrives(cl: Cluster) -> None:
    county, city, province = cl.homes[COUNTY], cl.homes[CITY], cl.homes[PROVINCE]
    cl.ingest(COUNTY, 300, seed=21)
    want = own_heads(county, COUNTY)
    wait_for(lambda: own_heads(province, COUNTY) == want, 60, "the province holds the county's logs")
    old = Home(county.dir).key_certificate().key_id
    cl.stop(COUNTY)
    # revoked at the running city by a unique prefix of its id, while the county is down
    res = fednode("pki", "revoke", city.dir, old.hex()[:12], "--reason", "county key leaked (test)", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["revoked"] == old.hex() and data["code"] == COUNTY and data["via"] == "admin", data
    through = {c: want.get((COUNTY, c), 0) for c in (CONTROL, MONITOR, BULK)}
    assert data["through"] == {channel_name(c): s for c, s in through.items()}, data
    # the county, not knowing, goes on with the revoked key: bulk, control and monitor records
    offline_ingest(county, 200, 22)
    h = Home(county.dir)
    try:
        h.ledger().append([NewRecord("audit.note", {"n": 1}), NewRecord("alert", {"alert_id": "k1", "level": 1})])
    finally:
        h.close()
    assert signed_beyond(county, COUNTY, old, through)
    cl.start(COUNTY)
    # it learns the revocation down its link, rotates, re-signs, and its logs reach the province
    wait_for(lambda: bool(cl.events(COUNTY, "own_keys_recovered")), 60, "the county re-signs")
    written = own_heads(county, COUNTY)

    def arrived() -> bool:
        return all(own_heads(province, COUNTY).get(k, 0) >= v for k, v in written.items())

    wait_for(arrived, 90, lambda: f"every county record at the province: {written} vs {own_heads(province, COUNTY)}")
    ev = cl.events(COUNTY, "own_keys_recovered")[0]
    print(f"\n  county recovered: {json.dumps({k: v for k, v in ev.items() if k in ('rotated', 'resigned')})}")
    refused = [e for e in cl.events(CITY, "batch_refused", peer=COUNTY) if e["code"] == "revoked_key"]
    print(f"  the city refused {len(refused)} batch(es) of the revoked key before the re-signed ones")
    assert ev["rotated"]["old_key_id"] == old.hex() and ev["rotated"]["why"] == "revoked"
    assert old.hex() in ev["resigned"]
    new = Home(county.dir).key_certificate().key_id
    assert new != old
    # nothing dropped, nothing twice, the same content everywhere
    for home in (city, province):
        store, cstore = open_store(home), open_store(county)
        try:
            for (o, c), h_ in cstore.heads().items():
                if o == COUNTY and h_.seq <= written.get((o, c), 0):
                    assert store.chains_at(o, c, [h_.seq]) == cstore.chains_at(o, c, [h_.seq]), (home.code, o, c)
            assert store.count("incidents") == 0
        finally:
            store.close()
            cstore.close()
        assert not signed_beyond(home, COUNTY, old, through), home.code
    assert not signed_beyond(county, COUNTY, old, through), "the county's own log still holds the old signatures"
    cstore = open_store(county)
    try:
        kinds = [r.kind for r in cstore.records(COUNTY, CONTROL, through[CONTROL] + 1)]
    finally:
        cstore.close()
    assert "key.resign" in kinds and "key.announce" in kinds, kinds
    status = json.loads(fednode("status", county.dir, "--json").stdout)
    assert status["signing_key"] == new.hex() and status["key_recovery"]["last"]["resigned"], status["key_recovery"]
    for home in (county, city, province):
        res = fednode("verify", home.dir, "--json")
        print(f"  fednode verify {home.code}: exit {res.returncode}")
        assert res.returncode == 0, f"{home.code}: {res.stdout[-2000:]}"


def test_revoke_while_the_county_runs_and_appends(cl: Cluster) -> None:
    """The lead's case on a live tree: the county's current key revoked at the running city while the
    running county keeps appending; it rotates and re-signs by itself, and nothing is lost."""
    county, city, province = cl.homes[COUNTY], cl.homes[CITY], cl.homes[PROVINCE]
    old = Home(county.dir).key_certificate().key_id
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for i in range(12):
                cl.ingest(COUNTY, 40, seed=500 + i)
                time.sleep(0.15)
        except BaseException as e:  # noqa: BLE001 (reported by the test below)
            errors.append(e)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.6)
    res = fednode("pki", "revoke", city.dir, old.hex(), "--reason", "live revocation (test)", "--json")
    feeder.join(120)
    assert res.returncode == 0 and not errors, (res.stderr, errors)
    through = {c: s for c, s in zip((CONTROL, MONITOR, BULK), json.loads(res.stdout)["through"].values(), strict=True)}
    wait_for(lambda: Home(county.dir).key_certificate().key_id != old, 60, "the county rotates by itself")
    time.sleep(1.0)
    written = own_heads(county, COUNTY)
    wait_for(lambda: all(own_heads(province, COUNTY).get(k, 0) >= v for k, v in written.items()), 90,
             lambda: f"every county record at the province: {written} vs {own_heads(province, COUNTY)}")
    print(f"\n  revoked through {through}; the county wrote {written}")
    for home in (county, city, province):
        assert not signed_beyond(home, COUNTY, old, through), home.code
        res = fednode("verify", home.dir, "--json")
        assert res.returncode == 0, f"{home.code}: {res.stdout[-2000:]}"


# ---- (c) signing certificates outside their validity ----------------------------------------------------------


def signing_cert(home: Home, key: Ed25519PrivateKey, *, not_before: dt.datetime, not_after: dt.datetime
                 ) -> pb.KeyCertificate:
    """A signing certificate for ``home``'s node, issued by its own real CA key, with this validity."""
    ca_cert, ca_key = home.load_cert("ca.crt"), home.load_key("ca.key")
    path = home.path()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, home.code),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sign")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"fednode:{path}")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    der = serialization.Encoding.DER
    return pb.KeyCertificate(key_id=pki.signing_key_id(cert), certificate=cert.public_bytes(der),
                             chain=[c.public_bytes(der) for c in (ca_cert, *home.chain())])


def test_signing_certificate_outside_validity_refused(cl: Cluster) -> None:
    third = Home(cl.homes[THIRD].dir)
    ledger = third.ledger()
    now = dt.datetime.now(dt.UTC)
    ca_start = third.load_cert("ca.crt").not_valid_before_utc  # the tree was enrolled moments ago
    cases = {
        # from just before its CA (a certificate valid for some minutes, inside its chain's validity then)
        "ended 5 s ago": (ca_start - dt.timedelta(minutes=4), now - dt.timedelta(seconds=5)),
        "valid only in 10 days": (now + dt.timedelta(days=10), now + dt.timedelta(days=40)),
        "valid now (control)": (now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)),
    }

    async def run() -> dict[str, pb.Ack]:
        out = {}
        async with channel_to_city(cl, credentials(third)) as ch:
            session, parent = await ChildSession.open(ch, THIRD)
            first = await session.send(batch_after(ledger, parent, 1))  # its real key announcement
            assert first.ok, first
            for i, (label, (nb, na)) in enumerate(cases.items(), start=2):
                key = Ed25519PrivateKey.generate()
                kc = signing_cert(third, key, not_before=nb, not_after=na)
                after = own_heads(cl.homes[CITY], THIRD).get((THIRD, BULK), 0)
                store = open_store(cl.homes[CITY])
                try:
                    chain = store.chains_at(THIRD, BULK, [after]).get(after, GENESIS)
                finally:
                    store.close()
                seg = forged_segment(Signer(key), after, chain, origin=THIRD)
                out[label] = await session.send(pb.Batch(batch_id=i, segments=[seg], keys=[kc]))
            await session.close()
        return out

    try:
        acks = asyncio.run(run())
    finally:
        third.close()
    for label, ack in acks.items():
        print(f"\n  signing certificate {label}: ok={ack.ok} "
              f"{[(e.error_code, e.error[:140]) for e in ack.errors]}")
    ended, future, control = acks.values()
    for ack in (ended, future):
        assert not ack.ok and [(e.origin, int(e.channel), e.error_code) for e in ack.errors] == \
            [(THIRD, BULK, "unknown_key")], ack
        assert "certificate was refused" in ack.errors[0].error, ack.errors[0].error
    assert control.ok, control
    assert own_heads(cl.homes[CITY], THIRD).get((THIRD, BULK)) == 1, "only the valid key's record is stored"
    store = open_store(cl.homes[CITY])
    try:
        n_keys = len(store.keys(THIRD))
    finally:
        store.close()
    assert n_keys == 2, "the refused certificates were stored"  # its real key and the control's
    assert cl.events(CITY, "key_certificate_refused")


# ---- (d) key ids: rotate → revoke, and bad ids -----------------------------------------------------------------


def test_key_ids_round_trip(cl: Cluster) -> None:
    city = cl.homes[CITY]
    res = fednode("pki", "rotate", city.dir, "--json")
    assert res.returncode == 0, res.stderr
    rotated = json.loads(res.stdout)
    old, new = rotated["old_key_id"], rotated["new_key_id"]
    assert len(old) == len(new) == 64 and rotated["via"] == "admin", rotated
    human = fednode("pki", "rotate", city.dir)  # the human text prints the full ids and the revoke command
    assert human.returncode == 0, human.stderr
    newest = json.loads(fednode("pki", "keys", city.dir, "--json", "--code", CITY).stdout)
    printed_old = human.stdout.split("old ")[1].split()[0]
    assert printed_old == new and f"fednode pki revoke {city.dir} {new}" in human.stdout, human.stdout
    by_id = {r["key_id"]: r for r in newest}
    assert by_id[old]["state"] == by_id[new]["state"] == "valid" and sum(r["current"] for r in newest) == 1
    # revoke both old keys: one by the full id `rotate` printed, one by a unique prefix
    for key_text in (old[:10], printed_old):
        res = fednode("pki", "revoke", city.dir, key_text, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["revoked"] in (old, new)
    listed = {r["key_id"]: r for r in json.loads(fednode("pki", "keys", city.dir, "--json").stdout)}
    assert listed[old]["state"] == listed[new]["state"] == "revoked", listed
    assert listed[old]["revoked_through"] and listed[old]["cert_sha256"]
    status = json.loads(fednode("status", city.dir, "--json").stdout)
    current = status["signing_key"]
    assert current not in (old, new) and listed[current]["current"], status["signing_key"]
    assert {k["key_id"] for k in status["keys"]} >= {old, new, current}
    # the current key cannot be revoked; bad ids are usage errors with the fix, on a running and a stopped node
    for home, key_text, expect in ((city, current[:8], "current signing key"), (city, "zz", "not a key id"),
                                   (city, "0000000", "not known here"), (cl.homes[OTHER], "zz", "not a key id")):
        res = fednode("pki", "revoke", home.dir, key_text)
        print(f"\n  pki revoke {home.code} {key_text}: exit {res.returncode}: {res.stderr.strip()}")
        assert res.returncode == 2 and expect in res.stderr and "fix:" in res.stderr, res
        assert "Traceback" not in res.stderr
    # the city keeps working with its current key: the county's new records reach the province
    cl.ingest(COUNTY, 50, seed=31)
    want = own_heads(cl.homes[COUNTY], COUNTY)
    wait_for(lambda: all(own_heads(cl.homes[PROVINCE], COUNTY).get(k, 0) >= v for k, v in want.items()), 60,
             "the county's records still reach the province")


# ---- the same rules at the ledger, where the processes cannot reach in a test -----------------------------------


def down_record(ledger: Ledger, kind: str) -> pb.SignedRecord:
    r = next(r for r in reversed(ledger.store.records(ledger.code, CONTROL)) if r.kind == kind)
    return pb.SignedRecord(body=bytes(r.body), signature=bytes(r.signature), key_id=bytes(r.key_id))


def send(src: Ledger, dst: Ledger, origin: str, channel: int, after: int, n: int = 1000) -> Any:
    seg = src.read_segment(origin, channel, after, n)
    assert seg is not None
    dst.admit_keys(src.key_certificates_for(src.keyring.keys))
    return dst.accept_segment(seg, sender_subtree=COUNTY if src.code == COUNTY else CITY)


def test_ancestor_revocation_refreshes_the_copy_in_between(tree: ConfTree) -> None:
    """The province revokes the county's key while the city holds more of the county's logs than the
    province: the city's copy beyond the position is replaced by the re-signed one, then forwarded."""
    county, city, province = tree.county.ledger(), tree.city.ledger(), tree.province.ledger()
    old = county.signer.key_id  # type: ignore[union-attr]
    county.append(case_events(5))
    county.append(case_events(5, 5))
    county.append([NewRecord("alert", {"alert_id": "a1", "level": 1})])
    for ch in (CONTROL, MONITOR, BULK):
        send(county, city, COUNTY, ch, 0, 5)
        send(city, province, COUNTY, ch, 0, 5)
    send(county, city, COUNTY, BULK, 5)  # the city holds bulk 1..10, the province 1..5
    through = province.revoke_key(old, "county key leaked (test)")
    assert through == {CONTROL: 1, MONITOR: 1, BULK: 5}
    rec = down_record(province, "key.revoke")
    assert parse_body(rec.body).dest == COUNTY  # addressed to the owner: it travels down too
    city.admit_keys(province.key_certificates_for(province.keyring.keys))
    city.accept_down([rec], sender=PROVINCE)
    assert [p["seq"] for p in verify_store(city.store, city.keyring).problems] == ["10"]  # cp 10 of the old key
    county.admit_keys(city.key_certificates_for(city.keyring.keys))
    county.accept_down([rec], sender=CITY)
    assert county.own_key_revoked
    done = enrol.recover_own_keys(tree.county, county)
    assert done is not None and done["rotated"]["old_key_id"] == old.hex()
    assert done["resigned"][old.hex()]["resigned"] == {"bulk": [10, 10, 0, 1]}
    assert county.resend_from == {(COUNTY, BULK): 5}
    res = send(county, city, COUNTY, BULK, 5)  # the county resends from the position
    assert (res.appended, res.duplicates) == (0, 5) and city.resend_from == {(COUNTY, BULK): 5}
    send(county, city, COUNTY, CONTROL, 1)  # the new key's announcement, key.resign
    send(city, province, COUNTY, BULK, 5)
    send(city, province, COUNTY, CONTROL, 1)
    for ledger in (county, city, province):
        report = verify_store(ledger.store, Keyring.from_rows(ledger.keyring.root, ledger.store.keys()))
        assert report.ok, (ledger.code, report.problems)
    assert province.store.head(COUNTY, BULK) == city.store.head(COUNTY, BULK) == county.store.head(COUNTY, BULK)


def test_certificate_end_bounds_the_key_by_position(tree: ConfTree) -> None:
    from node.core.keyring import (
        ExpiredKey,  # (imported here: the module's other tests also run on older code)
    )

    county, city = tree.county.ledger(), tree.city.ledger()
    key = Ed25519PrivateKey.generate()
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    kc = signing_cert(tree.county, key, not_before=end - dt.timedelta(minutes=10), not_after=end)
    county.admit_keys([kc])
    county.set_signer(Signer(key))
    county.append(case_events(5))
    assert send(county, city, COUNTY, BULK, 0).appended == 5
    county.append(case_events(5, 5))  # signed before the end, sent after it: refused by position
    time.sleep(max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
    with pytest.raises(ExpiredKey):
        send(county, city, COUNTY, BULK, 5)
    assert city.keyring.keys[kc.key_id].ended_through == {CONTROL: 0, MONITOR: 0, BULK: 5}  # its heads then
    assert city.store.head(COUNTY, BULK).seq == 5
    # what it signed before stays valid, at rest too; a new admission of the ended certificate is refused
    assert send(county, city, COUNTY, BULK, 0, 5).duplicates == 5
    assert verify_store(city.store, Keyring.from_rows(city.keyring.root, city.store.keys())).ok
    with pytest.raises(CertificateError):
        Keyring(city.keyring.root).admit(kc)


def test_a_clock_that_jumped_past_the_end_and_came_back_lifts_the_position(tree: ConfTree) -> None:
    """The judge of a certificate's end is this node's clock: a clock that jumped years ahead bounds the
    key only while it is wrong (the fault suite's clock jumps), never for good."""
    from node.core.keyring import ExpiredKey

    county, city = tree.county.ledger(), tree.city.ledger()
    county.append(case_events(5))
    assert send(county, city, COUNTY, BULK, 0).appended == 5
    county.append(case_events(5, 5))
    ahead = time.time_ns() + 3 * 365 * 86400 * 10**9  # past the county key's certificate (825 days)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time_ns", lambda: ahead)  # the clock (node.records.now_us)
        with pytest.raises(ExpiredKey):
            send(county, city, COUNTY, BULK, 5)
    key_id = county.signer.key_id  # type: ignore[union-attr]
    assert city.keyring.keys[key_id].ended_through == {CONTROL: 0, MONITOR: 0, BULK: 5}
    assert send(county, city, COUNTY, BULK, 5).appended == 5  # the clock is right again: accepted
    assert city.keyring.keys[key_id].ended_through is None and city.store.head(COUNTY, BULK).seq == 10


def test_renewed_certificate_of_a_known_key_replaces_the_old(tree: ConfTree) -> None:
    county, city = tree.county.ledger(), tree.city.ledger()
    county.append(case_events(3))
    send(county, city, COUNTY, BULK, 0)
    key_id = county.signer.key_id  # type: ignore[union-attr]
    before = city.keyring.keys[key_id].not_after_us
    now = dt.datetime.now(dt.UTC)
    renewed = signing_cert(tree.county, tree.county.load_key("sign.key"),  # type: ignore[arg-type]
                           not_before=now - dt.timedelta(minutes=1), not_after=now + dt.timedelta(days=3000))
    shorter = signing_cert(tree.county, tree.county.load_key("sign.key"),  # type: ignore[arg-type]
                           not_before=now - dt.timedelta(minutes=1), not_after=now + dt.timedelta(days=1))
    county.admit_keys([shorter, renewed])
    assert county.keyring.keys[key_id].not_after_us > before
    county.append(case_events(3, 3))
    send(county, city, COUNTY, BULK, 3)  # the batch carries the county's renewed certificate
    assert city.keyring.keys[key_id].not_after_us == county.keyring.keys[key_id].not_after_us > before
    again = Ledger(city.store, CITY, None, city.keyring.root)  # stored, not only in memory
    assert again.keyring.keys[key_id].not_after_us > before
