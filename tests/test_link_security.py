"""Link security and restore, end to end: real `fednode run` processes, real sockets, real mutual TLS.

- Refused peers: a certificate of another subtree (PERMISSION_DENIED), a self-signed certificate and a
  missing client certificate (the TLS handshake fails) are refused, while the real child goes on.
- A batch whose origin lies outside the sender's subtree is refused with ``outside_subtree``; the
  sender's valid traffic on the same stream is then accepted.
- Restored child: recovers its own logs from its parent before it appends (no seq reused, no fork).
- Restored parent: the child re-sends the missing tail; the parent then forwards it up.

On failure the tail of every node.log is printed; processes are always stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.demo import LINKS_ONLY, TREE, build_tree, root_counts, start, stop_all, wait_admin
from node.app import ingest
from node.core import admin_client as admin
from node.core import codes, pki
from node.core import config as config_mod
from node.core.home import Home
from node.core.records import BULK
from node.core.store import Store
from node.link import streams
from node.link.transport import CLIENT_OPTIONS
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.faultlib import hello_after_listening

pytestmark = pytest.mark.slow

PROVINCE, CITY, COUNTY, OTHER, STRANGER = "320000", "320300", "320303", "320311", "320400"
LINE = TREE[:3]  # province ← city ← county 320303
SECURITY_TREE = [*TREE[:4], (STRANGER, "常州市", "city", PROVINCE)]  # + 320311 (city's) and 320400 (province's)

Heads = dict[tuple[str, int], tuple[int, bytes]]


# ---- a running tree --------------------------------------------------------------------------------


class Cluster:
    """Node homes built by node.demo.build_tree; processes started and stopped by node.demo."""

    def __init__(self, base: Path, tree: list[tuple[str, str, str, str | None]]) -> None:
        self.homes = build_tree(base, tree, extra_config=LINKS_ONLY)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None:
                self.print_logs()
        finally:
            stop_all(self.procs)

    def print_logs(self, lines: int = 40) -> None:
        for code, home in self.homes.items():
            log = home.dir / "node.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                print(f"\n----- {code} node.log (last {len(tail)} lines) -----", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    def start(self, *nodes: str) -> None:
        for c in nodes:
            assert c not in self.procs, f"{c} is already running"
            self.procs[c] = start(self.homes[c].dir)
        for c in nodes:
            wait_admin(self.homes[c])

    def stop(self, *nodes: str) -> None:
        procs = {c: self.procs.pop(c) for c in nodes}
        stop_all(procs)
        for c, p in procs.items():
            assert p.returncode == 0, f"{c} did not stop cleanly on SIGTERM (exit {p.returncode})"

    def ingest(self, node: str, n: int, seed: int) -> int:
        resp = admin.call(self.homes[node], {"op": "ingest", "synthetic": n, "seed": seed}, timeout=120)
        assert resp is not None, f"{node} is not running"
        return int(resp["result"]["ingested"])

    def status(self, node: str) -> dict[str, Any]:
        resp = admin.call(self.homes[node], {"op": "status"}, timeout=30)
        assert resp is not None, f"{node} is not running"
        return dict(resp["result"])

    def addr(self, node: str) -> str:
        return self.homes[node].config.listen


def open_store(home: Home) -> Store:
    return Store.open(home.config.store_url, base_dir=home.dir, migrate=False)


def heads_of(home: Home, origin: str) -> Heads:
    """(seq, chain head) of every log born in ``origin``'s subtree that ``home`` holds."""
    store = open_store(home)
    try:
        return {k: (h.seq, h.chain) for k, h in store.heads().items() if codes.within(k[0], origin)}
    finally:
        store.close()


def incidents_of(home: Home) -> list[Any]:
    store = open_store(home)
    try:
        return store.incidents()
    finally:
        store.close()


def total_seq(heads: Heads) -> int:
    return sum(seq for seq, _ in heads.values())


def wait_for(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting until {what()}")


def wait_same_heads(a: Home, b: Home, origin: str, timeout: float = 60.0) -> Heads:
    """Wait until ``a`` and ``b`` hold identical logs (seq AND chain head) for ``origin``'s subtree."""
    wait_for(lambda: heads_of(a, origin) == heads_of(b, origin) and bool(heads_of(a, origin)), timeout,
             lambda: f"{a.code} and {b.code} hold the same logs of {origin}: "
                     f"{_fmt(heads_of(a, origin))} vs {_fmt(heads_of(b, origin))}")
    return heads_of(a, origin)


def _fmt(heads: Heads) -> str:
    return ", ".join(f"{o}/{c}={s}:{h.hex()[:8]}" for (o, c), (s, h) in sorted(heads.items())) or "nothing"


def store_files(home: Home) -> list[Path]:
    db = home.dir / "store.db"
    return [db, db.with_name("store.db-wal"), db.with_name("store.db-shm")]


def backup_store(home: Home, dest: Path) -> None:
    """Copy the store (with its -wal/-shm) of a STOPPED node."""
    dest.mkdir(parents=True)
    for f in store_files(home):
        if f.exists():
            shutil.copy2(f, dest / f.name)


def restore_store(home: Home, src: Path) -> None:
    """Replace the store of a STOPPED node by an older copy."""
    for f in store_files(home):
        f.unlink(missing_ok=True)
        if (src / f.name).exists():
            shutil.copy2(src / f.name, f)


def verify_cli(home: Home) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "node.interfaces.cli", "verify", str(home.dir), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"fednode verify {home.code} exit {r.returncode}: {r.stdout}{r.stderr}"
    report = json.loads(r.stdout)
    return dict(report)


def offline_ingest(home: Home, n: int, seed: int) -> int:
    """Ingest into a STOPPED node's store (the CLI's path when no node runs)."""
    h = Home(home.dir)
    try:
        return int(ingest.run_request(h.ledger(), {"synthetic": n, "seed": seed})["ingested"])
    finally:
        h.close()


def log_count(home: Home, event: str) -> int:
    return (home.dir / "node.log").read_text(errors="replace").count(f'"{event}"')


# ---- gRPC clients driven by the test ----------------------------------------------------------------


def credentials_of(home: Home) -> grpc.ChannelCredentials:
    k = home.key_path
    return grpc.ssl_channel_credentials(
        root_certificates=k("root.crt").read_bytes(), private_key=k("tls.key").read_bytes(),
        certificate_chain=k("tls.crt").read_bytes() + k("chain.pem").read_bytes())


def self_signed_credentials(root_pem: bytes, path: str) -> grpc.ChannelCredentials:
    """An ECDSA P-256 certificate with a fednode URI SAN, signed by its own key (no chain to the root)."""
    key = ec.generate_private_key(ec.SECP256R1())
    code = path.rsplit("/", 1)[-1]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(pki.URI_PREFIX + path),
                                                    x509.DNSName(pki.dns_name_for(code))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return grpc.ssl_channel_credentials(root_certificates=root_pem, private_key=pki.key_to_pem(key),
                                        certificate_chain=pki.cert_to_pem(cert))


def channel_to(cl: Cluster, server: str, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    options = [*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", pki.dns_name_for(server))]
    return grpc.aio.secure_channel(cl.addr(server), creds, options=options)


async def try_link(cl: Cluster, server: str, creds: grpc.ChannelCredentials, claimed: str) -> tuple[Any, str]:
    """Open a Link to ``server``, say Hello as ``claimed``; return how the server answered."""
    async with channel_to(cl, server, creds) as ch:
        call = pbg.FederationStub(ch).Link(timeout=15)
        try:
            msg = await (await hello_after_listening(call, pb.LinkMessage(hello=pb.Hello(node_code=claimed,
                                                                                          software="test"))))
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        if msg is grpc.aio.EOF:
            return await call.code(), await call.details()
        call.cancel()
        return grpc.StatusCode.OK, f"the server answered: {msg}"


async def try_heads(cl: Cluster, server: str, creds: grpc.ChannelCredentials) -> tuple[Any, str]:
    async with channel_to(cl, server, creds) as ch:
        try:
            await pbg.FederationStub(ch).Heads(pb.HeadsRequest(), timeout=15)
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        return grpc.StatusCode.OK, "answered"


async def read_ack(call: Any, batch_id: int) -> pb.Ack:
    while True:
        msg = await asyncio.wait_for(call.read(), 30)
        assert msg is not grpc.aio.EOF, f"the parent closed the link before acking batch {batch_id}"
        if msg.HasField("ack") and msg.ack.batch_id == batch_id:
            return msg.ack


# ---- 1. refused peers ---------------------------------------------------------------------------------


def test_refused_peers_while_real_child_keeps_delivering(tmp_path: Path) -> None:
    with Cluster(tmp_path, SECURITY_TREE) as cl:
        cl.start(PROVINCE, CITY, COUNTY)
        province, city, county = cl.homes[PROVINCE], cl.homes[CITY], cl.homes[COUNTY]
        n1 = cl.ingest(COUNTY, 300, seed=1)
        assert n1 == 300
        wait_same_heads(province, county, COUNTY)

        root_pem = city.key_path("root.crt").read_bytes()

        async def attempts() -> dict[str, tuple[Any, str]]:
            return {
                # a valid certificate from the province, but 320400 is not a child of 320300
                "other_subtree": await try_link(cl, CITY, credentials_of(cl.homes[STRANGER]), STRANGER),
                "other_subtree_heads": await try_heads(cl, CITY, credentials_of(cl.homes[STRANGER])),
                # claims to be a child of 320300, but nothing in the tree issued its certificate
                "self_signed": await try_link(cl, CITY, self_signed_credentials(root_pem, "320000/320300/320399"),
                                              "320399"),
                # the same, impersonating the real child 320303
                "self_signed_as_child": await try_link(
                    cl, CITY, self_signed_credentials(root_pem, "320000/320300/320303"), COUNTY),
                # no client certificate at all
                "no_client_cert": await try_link(cl, CITY, grpc.ssl_channel_credentials(root_certificates=root_pem),
                                                 COUNTY),
            }

        got = asyncio.run(attempts())
        print("\nrefused peers:", {k: (c.name, d[:100]) for k, (c, d) in got.items()})
        code, details = got["other_subtree"]
        assert code == grpc.StatusCode.PERMISSION_DENIED, got["other_subtree"]
        assert "320000/320400" in details and "not a direct child" in details, details
        assert got["other_subtree_heads"][0] == grpc.StatusCode.PERMISSION_DENIED, got["other_subtree_heads"]
        for k in ("self_signed", "self_signed_as_child"):
            assert got[k][0] == grpc.StatusCode.UNAVAILABLE, (k, got[k])
        assert got["no_client_cert"][0] == grpc.StatusCode.UNAVAILABLE, got["no_client_cert"]

        st = cl.status(CITY)
        assert "320000/320400" in st["refused_peers"], st["refused_peers"]
        assert not any("320399" in p for p in st["refused_peers"]), "a TLS-refused peer reached the service"
        links = {ln["peer"]: ln for ln in st["links"]}
        assert links[COUNTY]["state"] == "connected", links
        assert STRANGER not in links and "320399" not in links, links

        # the city keeps serving its real child: new records of 320303 reach the province
        n2 = cl.ingest(COUNTY, 400, seed=2)
        final = wait_same_heads(province, county, COUNTY)
        assert total_seq(final) == total_seq(heads_of(county, COUNTY))
        _, total, distinct = root_counts(province, list(final))
        assert total == distinct == total_seq(final) and total >= n1 + n2
        assert cl.status(COUNTY)["links"][0]["state"] == "connected"
        assert incidents_of(city) == [] and incidents_of(province) == []


# ---- 2. a batch whose origin lies outside the sender's subtree -------------------------------------------


def test_batch_outside_sender_subtree_refused_and_valid_traffic_goes_on(tmp_path: Path) -> None:
    with Cluster(tmp_path, SECURITY_TREE) as cl:
        province, city, county, other = (cl.homes[c] for c in (PROVINCE, CITY, COUNTY, OTHER))
        cl.start(PROVINCE, CITY, COUNTY)
        cl.ingest(COUNTY, 300, seed=1)
        before = wait_same_heads(city, county, COUNTY)
        # the test now speaks for 320303 with its own credentials: the real process must not also link
        cl.stop(COUNTY)
        offline_ingest(county, 250, seed=2)
        offline_ingest(other, 120, seed=3)  # 320311 never ran: the city holds nothing of it
        assert heads_of(city, OTHER) == {}

        county_home, other_home = Home(county.dir), Home(other.dir)
        county_ledger, other_ledger = county_home.ledger(), other_home.ledger()
        try:
            foreign = other_ledger.read_segment(OTHER, BULK, 0, 1000)
            assert foreign is not None and foreign.records
            bad = pb.Batch(batch_id=1, segments=[foreign],
                           keys=other_ledger.key_certificates_for([foreign.checkpoint.key_id]))

            async def session() -> tuple[pb.Hello, pb.Ack, pb.Ack, pb.Segment]:
                async with channel_to(cl, CITY, credentials_of(county)) as ch:
                    call = pbg.FederationStub(ch).Link()
                    up = streams.up_heads(county_ledger)
                    down = streams.held_down_heads(county_ledger)
                    await call.write(pb.LinkMessage(hello=pb.Hello(
                        node_code=COUNTY, heads=streams.to_heads_pb(up), down_heads=streams.to_heads_pb(down),
                        software="test")))
                    reply = await asyncio.wait_for(call.read(), 30)
                    assert reply is not grpc.aio.EOF and reply.HasField("hello"), reply
                    await call.write(pb.LinkMessage(batch=bad))
                    ack1 = await read_ack(call, 1)
                    parent_has = {(h.origin, int(h.channel)): int(h.seq) for h in reply.hello.heads}
                    own = county_ledger.read_segment(COUNTY, BULK, parent_has.get((COUNTY, BULK), 0), 1000)
                    assert own is not None and own.records
                    good = pb.Batch(batch_id=2, segments=[own],
                                    keys=county_ledger.key_certificates_for([own.checkpoint.key_id]))
                    await call.write(pb.LinkMessage(batch=good))
                    ack2 = await read_ack(call, 2)
                    await call.done_writing()
                    return reply.hello, ack1, ack2, own

            hello, ack1, ack2, own = asyncio.run(session())
        finally:
            county_home.close()
            other_home.close()

        print(f"\nrefused batch: ok={ack1.ok} code={ack1.error_code!r} error={ack1.error!r}")
        # the refusal: clear, machine-readable, and nothing of 320311 stored at the city
        assert not ack1.ok
        assert ack1.error_code == "outside_subtree", ack1
        assert OTHER in ack1.error and "outside its subtree" in ack1.error and COUNTY in ack1.error, ack1.error
        assert [(e.origin, int(e.channel), e.error_code) for e in ack1.errors] == [(OTHER, BULK, "outside_subtree")]
        assert heads_of(city, OTHER) == {}
        # the valid segment on the same stream is accepted and the city's heads advance
        last = own.records[-1]
        last_seq = pb.RecordBody.FromString(last.body).seq
        assert ack2.ok and not ack2.errors and ack2.error_code == "", ack2
        acked = {(h.origin, int(h.channel)): int(h.seq) for h in ack2.heads}
        assert acked == {(COUNTY, BULK): last_seq}, acked
        assert last_seq > before[(COUNTY, BULK)][0] == dict(
            ((h.origin, int(h.channel)), int(h.seq)) for h in hello.heads)[(COUNTY, BULK)]
        assert heads_of(city, COUNTY)[(COUNTY, BULK)][0] == last_seq
        assert log_count(city, "batch_refused") >= 1
        # ... and the city forwards what it accepted to the province
        wait_for(lambda: heads_of(province, COUNTY).get((COUNTY, BULK), (0, b""))[0] == last_seq, 30,
                 lambda: f"the province holds 320303/bulk up to {last_seq}: {_fmt(heads_of(province, COUNTY))}")
        assert heads_of(province, OTHER) == {}
        assert incidents_of(city) == [] and incidents_of(province) == []


# ---- 3. restored child ------------------------------------------------------------------------------------


def test_restored_child_recovers_its_logs_before_it_appends(tmp_path: Path) -> None:
    with Cluster(tmp_path, LINE) as cl:
        province, city, county = cl.homes[PROVINCE], cl.homes[CITY], cl.homes[COUNTY]
        born = total_seq(heads_of(county, COUNTY))  # key announcement(s) written at enrolment
        cl.start(PROVINCE, CITY, COUNTY)
        born += cl.ingest(COUNTY, 1500, seed=1)
        wait_same_heads(city, county, COUNTY)
        cl.stop(COUNTY)
        backup_store(county, tmp_path / "backup-320303")
        old = heads_of(county, COUNTY)

        cl.start(COUNTY)
        born += cl.ingest(COUNTY, 2500, seed=2)
        sent = wait_same_heads(city, county, COUNTY)
        assert sent[(COUNTY, BULK)][0] > old[(COUNTY, BULK)][0]
        cl.stop(COUNTY)

        restore_store(county, tmp_path / "backup-320303")
        assert heads_of(county, COUNTY) == old, "the restore did not bring back the older store"

        cl.start(COUNTY)
        # first it recovers what it had already sent, from its parent
        wait_for(lambda: cl.status(COUNTY)["recovered"] and heads_of(county, COUNTY) == sent, 30,
                 lambda: f"320303 recovered its own logs: recovered={cl.status(COUNTY)['recovered']}, "
                         f"heads {_fmt(heads_of(county, COUNTY))}, city {_fmt(heads_of(city, COUNTY))}")
        # then it appends after them
        born += cl.ingest(COUNTY, 1000, seed=3)
        final = wait_same_heads(city, county, COUNTY)
        wait_same_heads(province, county, COUNTY)
        # appended after what it had recovered: every new seq follows the recovered heads (chains verified below)
        assert total_seq(final) == total_seq(sent) + 1000
        assert all(final[k][0] >= seq for k, (seq, _) in sent.items())
        assert total_seq(final) == born, f"{born} records born at 320303 but its logs hold {total_seq(final)}"
        _, total, distinct = root_counts(province, list(final))
        assert total == distinct == born

        # restored again, and an ingest arrives at once: the node itself must hold it until it has
        # recovered (the admin ingest waits), so it still never reuses a seq
        cl.stop(COUNTY)
        restore_store(county, tmp_path / "backup-320303")
        cl.start(COUNTY)
        born += cl.ingest(COUNTY, 700, seed=4)
        assert cl.status(COUNTY)["recovered"]
        again = wait_same_heads(city, county, COUNTY)
        wait_same_heads(province, county, COUNTY)
        assert total_seq(again) == total_seq(final) + 700 == born
        _, total, distinct = root_counts(province, list(again))
        assert total == distinct == born
        cl.stop(PROVINCE, CITY, COUNTY)

        for h in (province, city, county):
            assert incidents_of(h) == [], f"{h.code} recorded integrity incidents (a fork)"
            report = verify_cli(h)
            assert report["ok"] and not report["problems"], report
        assert heads_of(county, COUNTY) == heads_of(city, COUNTY) == heads_of(province, COUNTY)


def test_a_node_restarted_while_its_parent_is_down_appends_but_an_old_store_waits(tmp_path: Path) -> None:
    """Store and forward through an outage: a county restarted while its city is down takes new records
    after [link] recover_wait_s; a store restored from an older copy is behind own-heads.json and waits
    for the city however long the outage lasts, then recovers before it appends."""
    with Cluster(tmp_path, LINE) as cl:
        province, city, county = cl.homes[PROVINCE], cl.homes[CITY], cl.homes[COUNTY]
        config_mod.set_field(county.config.path, "link", "recover_wait_s", 2)
        born = total_seq(heads_of(county, COUNTY))
        cl.start(PROVINCE, CITY, COUNTY)
        born += cl.ingest(COUNTY, 500, seed=1)
        wait_same_heads(city, county, COUNTY)
        cl.stop(COUNTY)
        backup_store(county, tmp_path / "backup-320303")
        cl.start(COUNTY)
        born += cl.ingest(COUNTY, 300, seed=2)
        sent = wait_same_heads(city, county, COUNTY)
        wait_for(lambda: county.recorded_own_heads() == {f"{o}/{c}": s for (o, c), (s, _h) in sent.items()}, 10,
                 lambda: f"own-heads.json follows the store: {county.recorded_own_heads()}")
        cl.stop(COUNTY, CITY)

        # the city is down; a plain restart of the county still takes records (after the grace period)
        cl.start(COUNTY)
        assert not cl.status(COUNTY)["recovered"]
        born += cl.ingest(COUNTY, 200, seed=3)  # the admin ingest waits until the node may append
        assert cl.status(COUNTY)["recovered"]
        offline = heads_of(county, COUNTY)
        assert total_seq(offline) == total_seq(sent) + 200
        cl.stop(COUNTY)

        # the store restored from the older copy, the city still down: behind own-heads.json, it waits
        restore_store(county, tmp_path / "backup-320303")
        cl.start(COUNTY)
        time.sleep(4)  # twice the grace period
        assert not cl.status(COUNTY)["recovered"]
        assert "store_behind_own_heads" in (county.dir / "node.log").read_text(errors="replace")
        # the city comes back: the county first recovers what it had sent, then appends after it
        cl.start(CITY)
        wait_for(lambda: cl.status(COUNTY)["recovered"], 30, lambda: f"320303 recovered: {cl.status(COUNTY)}")
        assert total_seq(heads_of(county, COUNTY)) >= total_seq(sent)
        born += cl.ingest(COUNTY, 100, seed=4)
        final = wait_same_heads(city, county, COUNTY)
        wait_same_heads(province, county, COUNTY)
        cl.stop(PROVINCE, CITY, COUNTY)
        # the 200 records appended offline were never sent before the restore: they are lost with the
        # old store (the operator restored over them), and nothing else is
        assert total_seq(final) == total_seq(sent) + 100 == born - 200
        for h in (province, city, county):
            assert incidents_of(h) == [], f"{h.code} recorded integrity incidents (a fork)"
            report = verify_cli(h)
            assert report["ok"] and not report["problems"], report


# ---- 4. restored parent -----------------------------------------------------------------------------------


def test_restored_parent_gets_missing_tail_from_child(tmp_path: Path) -> None:
    with Cluster(tmp_path, LINE) as cl:
        province, city, county = cl.homes[PROVINCE], cl.homes[CITY], cl.homes[COUNTY]
        born = total_seq(heads_of(county, COUNTY))
        cl.start(PROVINCE, CITY, COUNTY)
        born += cl.ingest(COUNTY, 1500, seed=1)
        wait_same_heads(province, county, COUNTY)
        cl.stop(CITY)
        backup_store(city, tmp_path / "backup-320300")
        old = heads_of(city, COUNTY)

        cl.start(CITY)
        born += cl.ingest(COUNTY, 2500, seed=2)
        wait_same_heads(province, county, COUNTY)
        # province down too, so the tail can only come from the county
        cl.stop(CITY, PROVINCE)
        restore_store(city, tmp_path / "backup-320300")
        assert heads_of(city, COUNTY) == old
        assert heads_of(city, COUNTY) != heads_of(county, COUNTY)

        cl.start(CITY)
        wait_same_heads(city, county, COUNTY, timeout=90)
        assert incidents_of(city) == []

        cl.start(PROVINCE)
        born += cl.ingest(COUNTY, 1000, seed=3)
        final = wait_same_heads(province, county, COUNTY, timeout=90)
        assert heads_of(city, COUNTY) == final
        assert total_seq(final) == born
        _, total, distinct = root_counts(province, list(final))
        assert total == distinct == born

        # restored again while the province runs: the county (from below) and the province (from
        # above) may both re-send the tail; idempotent appends, no fork
        cl.stop(CITY)
        restore_store(city, tmp_path / "backup-320300")
        cl.start(CITY)
        born += cl.ingest(COUNTY, 600, seed=4)
        again = wait_same_heads(city, county, COUNTY, timeout=90)
        wait_same_heads(province, county, COUNTY, timeout=90)
        assert total_seq(again) == born
        _, total, distinct = root_counts(province, list(again))
        assert total == distinct == born
        cl.stop(PROVINCE, CITY, COUNTY)

        for h in (province, city, county):
            assert incidents_of(h) == [], f"{h.code} recorded integrity incidents (a fork)"
            report = verify_cli(h)
            assert report["ok"] and not report["problems"], report
