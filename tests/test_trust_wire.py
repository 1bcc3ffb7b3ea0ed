"""A node's CA vouches only for its own subtree on the wire (issue 24, point 1; and the bind and inbox
parts of points 6 and 8).

Every node holds ``keys/ca.key``: it signs its children. A county is the attacker here. With the REAL CA
key of 320303 (a running tree: province 320000 ← city 320300 ← counties 320303, 320311) the test mints,
with the ``cryptography`` package:

- a TLS client leaf naming its sibling ``320000/320300/320311`` and speaks to the city as it: Link,
  Heads, Fetch and Chains are refused and the city's ticket to 320311 is not obtainable (the same
  calls with 320311's real certificate obtain it: the control). Without a DNS name the leaf passes the
  TLS stack (it bounds DNS names only) and ``pki.validate_chain`` in ``FederationService._authorise_child``
  refuses it (PERMISSION_DENIED, logged, in ``refused_peers``); with one, the county CA's
  NameConstraints fail the handshake first;
- a TLS client leaf naming its own parent ``320000/320300``, spoken with to the province: refused the
  same way; the province's ticket to the city is not obtainable;
- a TLS server certificate naming the city, served by a rogue gRPC server that the real 320311 dials
  (its ``link.parent`` points there): the child's TLS handshake fails on NameConstraints, under both
  server names the dialler tries, and the rogue never sees a call;
- the same rogue chains against cryptography's standards-conforming verifier (``PolicyBuilder``): the
  server certificate and the DNS-named client leaf are rejected, the genuine chains accepted; the
  DNS-less client leaf passes it, which is why the link checks the URI identity with validate_chain.

Also: the path length and the DNS names a chain may carry (validate_chain), a second server on a busy
link port fails to bind (no SO_REUSEPORT), and a link session's inbox is bounded (a peer that floods
batches is held back; all are still applied and acknowledged).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from bench.demo import TREE, free_port
from node.core import pki
from node.core.errors import CertificateError
from node.core.home import Home
from node.core.records import CONTROL
from node.link import transport
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.conftest import Tree, add_person
from tests.faultlib import CITY, COUNTY, OTHER, PROVINCE, Cluster, hello_after_listening, own_heads, wait_for

pytestmark = pytest.mark.slow

TRUST_TREE = TREE[:4]  # province, city, county 320303 (the attacker), 320311 (its sibling, never run but in (c))
FEDNODE = [sys.executable, "-m", "node.interfaces.cli"]
SIBLING_PATH = f"{PROVINCE}/{CITY}/{OTHER}"
PARENT_PATH = f"{PROVINCE}/{CITY}"


def hier(path: str) -> str:
    """The hierarchical DNS name of a tree path, spelled out here (not taken from node.pki)."""
    return ".".join([*reversed(path.lower().split("/")), "fednode"])


# the argv that acts as the 监察员 of each issuing node (`--as jia --password-file F`), set by the fixture
ISSUERS: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("trust"), TRUST_TREE) as cluster:
        cluster.start(PROVINCE, CITY, COUNTY)
        wait_for(lambda: cluster.uplink(COUNTY)["state"] == "connected" and cluster.uplink(CITY)["state"] == "connected",
                 60, "the county and the city are linked")
        for code in (PROVINCE, CITY):  # through the running node's admin socket
            ISSUERS[code] = add_person(cluster.homes[code], "jia", "监察员甲", "监察员")
        yield cluster


# ---- minting with a real CA key ---------------------------------------------------------------------------


def mint(issuer: Home, key: ec.EllipticCurvePrivateKey, path: str, dns: list[str]) -> x509.Certificate:
    """A TLS leaf (client and server use) for ``path``, signed with ``issuer``'s real keys/ca.key."""
    ca_cert, ca_key = issuer.load_cert("ca.crt"), issuer.load_key("ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    code = path.rsplit("/", 1)[-1]
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"fednode:{path}")]
    sans += [x509.DNSName(d) for d in dns]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "tls")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def presented_chain(issuer: Home) -> list[x509.Certificate]:
    """What the holder of ``issuer``'s CA presents above a leaf it minted: its CA certificate and its chain."""
    return [issuer.load_cert("ca.crt"), *issuer.chain()]


def rogue(cl: Cluster, path: str, dns: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bytes]:
    """(key, leaf, PEM chain leaf-first) of a leaf for ``path`` minted by the county 320303."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = mint(cl.homes[COUNTY], key, path, dns)
    return key, leaf, b"".join(pki.cert_to_pem(c) for c in [leaf, *presented_chain(cl.homes[COUNTY])])


def rogue_credentials(cl: Cluster, path: str, dns: list[str]) -> grpc.ChannelCredentials:
    key, _, chain = rogue(cl, path, dns)
    return grpc.ssl_channel_credentials(root_certificates=cl.homes[PROVINCE].key_path("root.crt").read_bytes(),
                                        private_key=pki.key_to_pem(key), certificate_chain=chain)


def real_credentials(home: Home) -> grpc.ChannelCredentials:
    k = home.key_path
    return grpc.ssl_channel_credentials(root_certificates=k("root.crt").read_bytes(), private_key=k("tls.key").read_bytes(),
                                        certificate_chain=k("tls.crt").read_bytes() + k("chain.pem").read_bytes())


def channel_to(cl: Cluster, node: str, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    options = [*transport.CLIENT_OPTIONS, ("grpc.ssl_target_name_override", pki.dns_name_for(node))]
    return grpc.aio.secure_channel(cl.addr(node), creds, options=options)


def issue_ticket(cl: Cluster, issuer: str, to: str) -> str:
    p = subprocess.run([*FEDNODE, "tickets", "issue", str(cl.homes[issuer].dir), "--to", to, "--subject", "督办(安全测试)",
                        "--body", "只给收件人看", "--case", f"{to}-2026-0001", *ISSUERS[issuer], "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(json.loads(p.stdout)["ticket"])


# ---- what a peer obtains from its parent, per RPC -----------------------------------------------------------

Outcome = tuple[str, str, list[bytes]]  # status code name, details, record bodies obtained


async def link_as(ch: grpc.aio.Channel, claimed: str, listen_s: float = 4.0) -> Outcome:
    """Open a Link, say Hello as ``claimed``, collect every record the parent sends for ``listen_s``.
    The Hello waits for a refusal first (``hello_after_listening``); should a refusal slower than that
    wait still meet the write (grpc's local INTERNAL), the call is made again."""
    for _ in range(3):
        got = await link_once(ch, claimed, listen_s)
        if got[:2] != ("INTERNAL", "Internal error from Core"):
            break
    return got


async def link_once(ch: grpc.aio.Channel, claimed: str, listen_s: float) -> Outcome:
    call = pbg.FederationStub(ch).Link(timeout=30)
    bodies: list[bytes] = []
    hello = pb.LinkMessage(hello=pb.Hello(node_code=claimed, software="trust-test"))
    try:
        pending = await hello_after_listening(call, hello)
        loop = asyncio.get_running_loop()
        until = loop.time() + listen_s
        while (left := until - loop.time()) > 0:
            done, _ = await asyncio.wait({pending}, timeout=left)
            if not done:
                break
            msg = pending.result()
            if msg is grpc.aio.EOF:
                return (await call.code()).name, await call.details() or "", bodies
            if msg.HasField("batch"):
                bodies += [r.body for s in msg.batch.segments for r in s.records]
                await call.write(pb.LinkMessage(ack=pb.Ack(batch_id=msg.batch.batch_id, ok=True)))
            pending = asyncio.ensure_future(call.read())
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", bodies
    except asyncio.InvalidStateError:
        return (await call.code()).name, await call.details() or "", bodies
    call.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    return "OK", "the Link was served", bodies


async def fetch_from(ch: grpc.aio.Channel, origin: str) -> Outcome:
    bodies: list[bytes] = []
    try:
        async for batch in pbg.FederationStub(ch).Fetch(pb.FetchRequest(origin=origin, channel=CONTROL, from_seq=1),  # type: ignore[arg-type]
                                                        timeout=30):
            bodies += [r.body for s in batch.segments for r in s.records]
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", bodies
    return "OK", "the Fetch was served", bodies


async def heads_of(ch: grpc.aio.Channel) -> Outcome:
    try:
        reply = await pbg.FederationStub(ch).Heads(pb.HeadsRequest(), timeout=30)
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", []
    return "OK", f"down heads {[(h.origin, h.seq) for h in reply.down_heads]}", []


async def chains_of(ch: grpc.aio.Channel, origin: str) -> Outcome:
    try:
        await pbg.FederationStub(ch).Chains(pb.ChainsRequest(origin=origin, channel=CONTROL, seqs=[1]), timeout=30)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", []
    return "OK", "the Chains call was served", []


def every_rpc(cl: Cluster, node: str, creds: grpc.ChannelCredentials, claimed: str) -> dict[str, Outcome]:
    """Link, Fetch (the parent's control log: its downward records), Heads and Chains, as ``claimed``."""
    async def run() -> dict[str, Outcome]:
        async with channel_to(cl, node, creds) as ch:
            return {"Link": await link_as(ch, claimed), "Fetch": await fetch_from(ch, node),
                    "Heads": await heads_of(ch), "Chains": await chains_of(ch, claimed)}
    return asyncio.run(run())


def holds(bodies: list[bytes], ticket: str) -> bool:
    return any(ticket.encode() in b for b in bodies)


def assert_refused(cl: Cluster, node: str, got: dict[str, Outcome], ticket: str, *, claimed_path: str,
                   with_dns: bool) -> None:
    for rpc, (code, details, bodies) in got.items():
        print(f"  {rpc}: {code}: {details[:200]}")
        assert not holds(bodies, ticket), f"{rpc}: the rogue obtained the ticket {ticket} addressed to another node"
        if with_dns:
            # the county CA's NameConstraints (a standards TLS stack) fail the handshake
            assert code == "UNAVAILABLE", (rpc, code, details)
        else:
            assert code == "PERMISSION_DENIED", (rpc, code, details)
            assert "outside that issuer's subtree" in details and claimed_path in details, (rpc, details)
    if not with_dns:
        refusals = cl.events(node, "link_refused", peer=claimed_path)
        assert {e["rpc"] for e in refusals} >= {"Link", "Fetch", "Heads", "Chains"}, refusals
        assert all("subtree" in e["reason"] for e in refusals), refusals
        assert claimed_path in cl.status(node)["refused_peers"]


# ---- (a) a county speaks to the city as its sibling -------------------------------------------------------


@pytest.mark.parametrize("with_dns", [False, True], ids=["uri-only", "with-dns-name"])
def test_county_minted_sibling_identity_refused_by_the_city(cl: Cluster, with_dns: bool) -> None:
    ticket = issue_ticket(cl, CITY, OTHER)
    # the control: 320311's real certificate obtains its ticket (so the refusal below is the chain's)
    control = every_rpc(cl, CITY, real_credentials(cl.homes[OTHER]), OTHER)
    assert control["Fetch"][0] == "OK" and holds(control["Fetch"][2], ticket), control["Fetch"][:2]
    assert control["Heads"][0] == control["Chains"][0] == "OK", control
    dns = [hier(SIBLING_PATH), f"{OTHER}.fednode"] if with_dns else []
    got = every_rpc(cl, CITY, rogue_credentials(cl, SIBLING_PATH, dns), OTHER)
    print(f"\n  320303's CA as {SIBLING_PATH} ({'with' if with_dns else 'without'} a DNS name) → the city:")
    assert_refused(cl, CITY, got, ticket, claimed_path=SIBLING_PATH, with_dns=with_dns)
    assert cl.alive(CITY) and cl.uplink(COUNTY)["state"] == "connected"


# ---- (b) a county speaks to the province as its own parent -------------------------------------------------


@pytest.mark.parametrize("with_dns", [False, True], ids=["uri-only", "with-dns-name"])
def test_county_minted_parent_identity_refused_by_the_province(cl: Cluster, with_dns: bool) -> None:
    ticket = issue_ticket(cl, PROVINCE, CITY)
    dns = [hier(PARENT_PATH), f"{CITY}.fednode"] if with_dns else []
    got = every_rpc(cl, PROVINCE, rogue_credentials(cl, PARENT_PATH, dns), CITY)
    print(f"\n  320303's CA as {PARENT_PATH} ({'with' if with_dns else 'without'} a DNS name) → the province:")
    assert_refused(cl, PROVINCE, got, ticket, claimed_path=PARENT_PATH, with_dns=with_dns)
    # the real city still gets the ticket: its link to the province is up and carries it
    wait_for(lambda: cl.uplink(CITY)["state"] == "connected", 30, "the real city is linked")


# ---- (c) a rogue server with a county-minted certificate for the city --------------------------------------


class RogueParent(pbg.FederationServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Link(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        self.calls.append(str(context.auth_context().get("x509_pem_cert", [b"?"])[0][:60]))
        async for _ in request_iterator:
            pass


def test_rogue_server_impersonating_the_city_fails_the_childs_handshake(cl: Cluster) -> None:
    county = cl.homes[COUNTY]
    # every name the dialler may ask for: the hierarchical one and the flat legacy one
    key, leaf, chain = rogue(cl, PARENT_PATH, [hier(PARENT_PATH), f"{CITY}.fednode"])
    port = free_port()
    cl.set_config(OTHER, "link", "parent", f"127.0.0.1:{port}")
    servicer = RogueParent()

    async def run() -> list[dict[str, Any]]:
        server = grpc.aio.server(options=transport.SERVER_OPTIONS)
        pbg.add_FederationServicer_to_server(servicer, server)
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials(
            [(pki.key_to_pem(key), chain)], root_certificates=county.key_path("root.crt").read_bytes(),
            require_client_auth=True))
        await server.start()
        try:
            cl.start(OTHER)
            loop = asyncio.get_running_loop()
            until = loop.time() + 40
            while loop.time() < until and not servicer.calls:
                downs = cl.events(OTHER, "link_down", direction="up")
                if len(downs) >= 3:  # both server names tried, and once more
                    return downs
                await asyncio.sleep(0.3)
            return cl.events(OTHER, "link_down", direction="up")
        finally:
            await server.stop(None)

    try:
        downs = asyncio.run(run())
    finally:
        cl.stop(OTHER)
    print(f"\n  rogue city (minted by 320303's CA, {leaf.subject.rfc4514_string()}): calls {servicer.calls}; "
          f"the child's attempts: {[d['error'][-120:] for d in downs]}")
    assert not servicer.calls, "the real child completed a TLS handshake with a server certified by a county"
    assert len(downs) >= 2 and all("permitted subtree violation" in d["error"] for d in downs), downs
    tried = {name for d in downs for name in (hier(PARENT_PATH), f"{CITY}.fednode") if f"(server name {name})" in d["error"]}
    assert tried == {hier(PARENT_PATH), f"{CITY}.fednode"}, downs  # the dialler tried both names
    assert cl.alive(CITY)


# ---- (d) a standards-conforming verifier ---------------------------------------------------------------------


def test_standard_verifier_rejects_the_rogue_chains(cl: Cluster) -> None:
    root = cl.homes[PROVINCE].load_cert("root.crt")
    store = Store([root])
    city, county = cl.homes[CITY], cl.homes[COUNTY]
    as_city = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(pki.dns_name_for(CITY)))
    clients = PolicyBuilder().store(store).build_client_verifier()
    # the genuine chains pass
    as_city.verify(city.load_cert("tls.crt"), city.chain())
    subjects = clients.verify(county.load_cert("tls.crt"), county.chain()).subjects or []
    assert x509.UniformResourceIdentifier(f"fednode:{county.path()}") in subjects
    # the county's server certificate for the city, and its DNS-named client leaf for its sibling, do not
    _, server_leaf, _ = rogue(cl, PARENT_PATH, [hier(PARENT_PATH), pki.dns_name_for(CITY)])
    with pytest.raises(VerificationError, match="name constraint"):
        as_city.verify(server_leaf, presented_chain(county))
    _, sibling_leaf, _ = rogue(cl, SIBLING_PATH, [hier(SIBLING_PATH)])
    with pytest.raises(VerificationError, match="name constraint"):
        clients.verify(sibling_leaf, presented_chain(county))
    # a leaf with the URI identity only is outside what the standard stack bounds (no URI name constraints
    # for a fednode: URI): validate_chain is what refuses it, on the link and in the keyring
    _, uri_only, _ = rogue(cl, SIBLING_PATH, [])
    clients.verify(uri_only, presented_chain(county))
    with pytest.raises(CertificateError, match="outside that issuer's subtree"):
        pki.validate_chain(uri_only, pki.chain_from_presented(uri_only, presented_chain(county)[::-1], root), root)


# ---- an existing tree: certificates from before, one parent re-issued ---------------------------------------

MIGRATION_TREE = [*TREE[:3], ("320400", "常州市", "city", PROVINCE), ("320402", "天宁区", "county", "320400")]


def old_style(subject_of: x509.Certificate, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey,
              path: str, *, ca: bool) -> x509.Certificate:
    """``subject_of``'s name and key certified as the code before hierarchical names did: no NameConstraints,
    no path length, a TLS leaf named ``<code>.fednode``."""
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"fednode:{path}")]
    if not ca:
        sans.append(x509.DNSName(f"{path.rsplit('/', 1)[-1].lower()}.fednode"))
    b = (x509.CertificateBuilder().subject_name(subject_of.subject).issuer_name(issuer.subject)
         .public_key(subject_of.public_key()).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_of.public_key()), critical=False)  # type: ignore[arg-type]
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False))  # type: ignore[arg-type]
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_old_style(homes: dict[str, Home], tree: list[tuple[str, str, str, str | None]]) -> None:
    """Turn the TLS side of an enrolled tree into what earlier versions issued (CA certificates and TLS
    leaves, top-down, same keys and paths; the signing certificates are left as they are)."""
    province = homes[tree[0][0]]
    root_key = province.load_key("root.key")
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root = province.load_cert("root.crt")
    now = dt.datetime.now(dt.UTC)
    old_root = (x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
                .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
                .sign(root_key, hashes.SHA256()))
    for h in homes.values():
        h.key_path("root.crt").write_bytes(pki.cert_to_pem(old_root))
    for code, _name, _level, parent in tree:
        h = homes[code]
        if parent is None:
            issuer, issuer_key, chain = h.load_cert("root.crt"), h.load_key("root.key"), []
        else:
            p = homes[parent]
            issuer, issuer_key, chain = p.load_cert("ca.crt"), p.load_key("ca.key"), [p.load_cert("ca.crt"), *p.chain()]
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        path = h.path()
        ca = old_style(h.load_cert("ca.crt"), issuer, issuer_key, path, ca=True)
        tls = old_style(h.load_cert("tls.crt"), issuer, issuer_key, path, ca=False)
        h.key_path("ca.crt").write_bytes(pki.cert_to_pem(ca))
        h.key_path("tls.crt").write_bytes(pki.cert_to_pem(tls))
        h.key_path("chain.pem").write_bytes(b"".join(pki.cert_to_pem(c) for c in chain))


def fednode_cli(*args: Any) -> str:
    p = subprocess.run([*FEDNODE, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"fednode {' '.join(map(str, args))}: {p.stdout} {p.stderr}"
    return p.stdout


def test_existing_tree_keeps_linking_while_reissued_top_down(tmp_path: Path) -> None:
    """The runbook of deploy/README.md on a tree whose certificates predate hierarchical names: the city
    320300 is re-issued (its parent, the province, is not: its names do not change), its county 320303 is
    not yet. Every link comes up with this version: 320303 (old certificates) reaches its re-issued
    parent, 320402 dials its old-style parent 320400 by the flat name after the hierarchical one fails."""
    with Cluster(tmp_path / "tree", MIGRATION_TREE) as mc:
        make_old_style(mc.homes, MIGRATION_TREE)
        city = mc.homes[CITY]
        csr, bundle = tmp_path / "320300.csr", tmp_path / "320300.bundle"
        csr.write_text(fednode_cli("pki", "request", city.dir), encoding="utf-8")
        bundle.write_text(fednode_cli("pki", "sign", mc.homes[PROVINCE].dir, csr), encoding="utf-8")
        fednode_cli("pki", "install", city.dir, bundle)
        tls, ca = city.load_cert("tls.crt"), city.load_cert("ca.crt")
        assert tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == [hier(PARENT_PATH)]
        assert ca.extensions.get_extension_for_class(x509.NameConstraints).value.permitted_subtrees == \
            [x509.DNSName(hier(PARENT_PATH))]
        # the county still holds what its old parent issued: a flat name, a chain without constraints
        assert mc.homes[COUNTY].load_cert("tls.crt").extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [f"{COUNTY}.fednode"]
        mc.start(PROVINCE, CITY, "320400")
        mc.start(COUNTY, "320402")
        for node in (CITY, COUNTY, "320400", "320402"):
            wait_for(lambda node=node: mc.uplink(node)["state"] == "connected", 60,  # type: ignore[misc]
                     lambda node=node: f"{node} links up: {mc.uplink(node)}")  # type: ignore[misc]
        for i, leaf in enumerate((COUNTY, "320402")):
            mc.ingest(leaf, 100, seed=i + 1)
        want = {leaf: own_heads(mc.homes[leaf]) for leaf in (COUNTY, "320402")}
        wait_for(lambda: all(own_heads(mc.homes[PROVINCE], leaf).get(k, 0) >= v for leaf, w in want.items()
                             for k, v in w.items()), 60, "both counties' records reach the province")
        # `fednode health` probes the node's own gRPC port by the name its own certificate carries
        for node in (CITY, "320400"):
            fednode_cli("health", mc.homes[node].dir)
        downs = mc.events("320402", "link_down", direction="up")
        print(f"\n  320402 → old-style 320400: {[d['error'][-60:] for d in downs]}")
        assert any("verification" in d["error"].lower() and "(server name 320400.320000.fednode)" in d["error"]
                   for d in downs), downs


# ---- validate_chain: path length, DNS names, presented order ----------------------------------------------------


def test_validate_chain_orders_presented_chains_and_binds_dns_names(tree: Tree) -> None:
    root = tree.province.root()
    assert root is not None
    county = tree.county
    leaf = county.load_cert("tls.crt")
    shuffled = [*county.chain()[::-1], root, leaf]
    assert pki.validate_chain(leaf, pki.chain_from_presented(leaf, shuffled, root), root) == county.path()
    with pytest.raises(CertificateError, match="does not lead"):
        pki.chain_from_presented(leaf, county.chain()[1:], root)  # the city's CA left out
    # a county may certify its own department, but not under the city's server name
    key = ec.generate_private_key(ec.SECP256R1())
    dept = f"{county.path()}/320303-GA"
    good = mint(county, key, dept, [hier(dept)])
    assert pki.validate_chain(good, presented_chain(county), root) == dept
    for name in (hier(f"{PROVINCE}/{CITY}"), "320300.fednode", "evil.example"):
        bad = mint(county, key, dept, [hier(dept), name])
        with pytest.raises(CertificateError, match="names only its own node"):
            pki.validate_chain(bad, presented_chain(county), root)


def test_path_length_and_depth(tree: Tree) -> None:
    root, ca_key = tree.province.root(), tree.province.load_key("root.key")
    assert root is not None and isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == pki.MAX_DEPTH
    for home, depth in ((tree.province, 1), (tree.city, 2), (tree.county, 3)):
        ca = home.load_cert("ca.crt")
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == pki.MAX_DEPTH - depth
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
        assert nc.critical and nc.value.permitted_subtrees == [x509.DNSName(hier(home.path()))]
    # a chain of CAs down to the deepest level, each issued by the one above with its real rule
    path, issuer, issuer_key, chain = tree.county.path(), tree.county.load_cert("ca.crt"), tree.county.load_key("ca.key"), \
        [tree.county.load_cert("ca.crt"), *tree.county.chain()]
    code = tree.county.code
    while len(path.split("/")) < pki.MAX_DEPTH:
        code, key = f"{code}-D", ec.generate_private_key(ec.SECP256R1())
        path = f"{path}/{code}"
        issuer = pki._build(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]), public_key=key.public_key(),
                            issuer_cert=issuer, issuer_key=issuer_key, path=path, role="ca", days=30)  # type: ignore[arg-type]
        issuer_key = key
        chain.insert(0, issuer)
    assert issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    # the deepest CA still certifies its own signing key (a leaf below it)
    sign = pki.issue_signing_cert(public_key=pki.new_signing_key().public_key(), code=code, path=path,
                                  ca_cert=issuer, ca_key=issuer_key)  # type: ignore[arg-type]
    assert pki.validate_chain(sign, chain, root) == path
    # but no child: `pki sign` refuses one level deeper, and a CA minted there by hand breaks the path length
    deeper = f"{code}-E"
    req = pki.make_request(deeper, "", "department", pki.new_tls_key(), pki.new_tls_key(), pki.new_signing_key())
    with pytest.raises(CertificateError, match="levels deep"):
        pki.sign_request(req, signer_code=code, signer_path=path, signer_ca_cert=issuer,
                         signer_ca_key=issuer_key, signer_chain=chain[1:], root=root)  # type: ignore[arg-type]
    key = ec.generate_private_key(ec.SECP256R1())
    too_deep = pki._build(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, deeper)]), public_key=key.public_key(),
                          issuer_cert=issuer, issuer_key=issuer_key, path=f"{path}/{deeper}", role="ca", days=30,  # type: ignore[arg-type]
                          path_length=0)
    leaf = pki.issue_signing_cert(public_key=pki.new_signing_key().public_key(), code=deeper, path=f"{path}/{deeper}",
                                  ca_cert=too_deep, ca_key=key)
    with pytest.raises(CertificateError, match="allows 0 CA levels below it"):
        pki.validate_chain(leaf, [too_deep, *chain], root)


# ---- point 6: a busy link port; point 8: a bounded inbox -----------------------------------------------------


def test_a_second_server_on_a_busy_link_port_fails_to_bind(tree: Tree) -> None:
    port = free_port()

    class _Rt:
        home = tree.city

    async def run() -> tuple[int, str]:
        first = grpc.aio.server(options=transport.SERVER_OPTIONS)
        assert first.add_secure_port(f"127.0.0.1:{port}", transport.server_credentials(_Rt())) == port  # type: ignore[arg-type]
        await first.start()
        try:
            second = grpc.aio.server(options=transport.SERVER_OPTIONS)
            try:
                bound = second.add_secure_port(f"127.0.0.1:{port}", transport.server_credentials(_Rt()))  # type: ignore[arg-type]
            except RuntimeError as e:
                return 0, str(e)
            await second.stop(None)
            return bound, "bound"
        finally:
            await first.stop(None)

    bound, how = asyncio.run(run())
    print(f"\n  second server on {port}: {how}")
    assert bound == 0, f"a second server bound the busy port {port} (SO_REUSEPORT)"


def test_link_session_inbox_is_bounded(tree: Tree) -> None:
    """A child floods the city with batches faster than it applies them: the session stops reading at
    INBOX_BATCHES (the rest waits in the transport), and every batch is still applied and acknowledged."""
    from node.runtime.process import LinkState, NodeRuntime

    n = 120
    bound = getattr(transport, "INBOX_BATCHES", 17)

    async def run() -> tuple[int, list[int]]:
        rt = NodeRuntime(tree.city)
        sent, acks, peak = iter(range(1, n + 1)), [], [0]

        async def read() -> Any:
            await asyncio.sleep(0)
            peak[0] = max(peak[0], len(getattr(session, "_inbox", [])))
            i = next(sent, None)
            return grpc.aio.EOF if i is None else pb.LinkMessage(batch=pb.Batch(batch_id=i))

        async def write(msg: pb.LinkMessage) -> None:
            acks.append(msg.ack.batch_id)

        session = transport.Session(rt, LinkState(COUNTY, "down"), read, write)

        with pytest.raises(ConnectionError, match="closed the link"):
            await session._reader()
        rt._executor.shutdown(wait=True)
        return peak[0], acks

    peak, acks = asyncio.run(run())
    print(f"\n  {n} batches flooded: at most {peak} queued (bound {bound}), {len(acks)} acked")
    assert peak <= bound, f"the session queued {peak} batches unread-ahead (bound {bound})"
    assert sorted(acks) == list(range(1, n + 1))
