"""The security suite of issue 9: each attack is refused while the city keeps serving its real child.

One tree of real `fednode run` processes for the module: province 320000 ← city 320300 ← county 320303
(running, the *real child*, fed all along). The test itself speaks to the city over real mutual TLS:
as 320311 (a legitimate child of the city, with its real credentials, never run as a process), as
320400 (a valid node of another subtree), or with forged certificates. Attacks:

- a certificate from another subtree (PERMISSION_DENIED, logged as link_refused);
- an expired certificate issued by the city's own CA (the TLS handshake fails; the same certificate,
  valid, is accepted: the expiry is what is refused);
- a signing key revoked (node.enrol.rotate + Ledger.revoke_key), then a checkpoint signed by the old
  key after the revocation (ack error revoked_key, nothing stored);
- a replayed old batch, in the same stream and after a reconnect (acked as a no-op: no duplicate, no
  fork, heads unchanged);
- a message over the 64 MiB limit (node.transport.MAX_MESSAGE): RESOURCE_EXHAUSTED from the server;
- malformed protobuf, fuzzed with hypothesis: random SignedRecord.body, Checkpoint.body, and whole
  LinkMessage frames on a raw stream: an error ack or a closed stream, never a crash.

After each: the city process is alive, its status answers, and new records of the real child reach the
province, none lost or duplicated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.demo import TREE, root_counts
from node.app import ingest
from node.app.enrol import rotate
from node.core import pki
from node.core.crypto import CHECKPOINT_TYPE, Signer, chain_step
from node.core.home import Home
from node.core.ledger import Ledger
from node.core.records import BULK, build_body, now_us
from node.link.transport import CLIENT_OPTIONS, MAX_MESSAGE
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.faultlib import (
    CITY,
    COUNTY,
    OTHER,
    PROVINCE,
    Cluster,
    Schedule,
    hello_after_listening,
    open_store,
    own_heads,
    wait_for,
)

pytestmark = pytest.mark.slow

STRANGER, THIRD = "320400", "320305"
# + 320311 and 320305 (the city's children, never run: the test speaks for them) and 320400 (the province's)
SECURITY_TREE = [*TREE[:4], (THIRD, "贾汪区", "county", CITY), (STRANGER, "常州市", "city", PROVINCE)]
LINK_METHOD = "/fednode.v1.Federation/Link"
LogKey = tuple[str, int]


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("security"), SECURITY_TREE) as cluster:
        cluster.start(PROVINCE, CITY, COUNTY)
        yield cluster


def real_child_still_served(cl: Cluster, n: int = 200) -> None:
    """The city is alive, answers its status, and new records of its real child reach the province."""
    assert cl.alive(CITY), "the city process died"
    st_ = cl.status(CITY)
    assert st_["running"] and st_["incidents"] == 0, st_
    links = {ln["peer"]: ln["state"] for ln in cl.status(CITY)["links"]}
    cl.ingest(COUNTY, n, seed=now_us() % 100_000)
    want = own_heads(cl.homes[COUNTY])
    wait_for(lambda: all(own_heads(cl.homes[PROVINCE], COUNTY).get(k, 0) >= v for k, v in want.items()), 60,
             lambda: f"the real child's records reach the province: {want} vs {own_heads(cl.homes[PROVINCE], COUNTY)}")
    heads, total, distinct = root_counts(cl.homes[PROVINCE], list(want))
    # the county's services may have appended more (alerts) since `want`: count against what is held
    assert total == distinct == sum(heads[k] for k in want), (total, distinct, heads)
    assert links.get(COUNTY) == "connected" or cl.uplink(COUNTY)["state"] == "connected", links


# ---- speaking to the city as one of its children ----------------------------------------------------


def credentials(home: Home, cert_pem: bytes | None = None) -> grpc.ChannelCredentials:
    k = home.key_path
    return grpc.ssl_channel_credentials(
        root_certificates=k("root.crt").read_bytes(), private_key=k("tls.key").read_bytes(),
        certificate_chain=(cert_pem or k("tls.crt").read_bytes()) + k("chain.pem").read_bytes())


def channel_to_city(cl: Cluster, creds: grpc.ChannelCredentials, *extra: tuple[str, Any]) -> grpc.aio.Channel:
    # gRPC takes the first value of a repeated channel argument: the test's own come first
    names = {name for name, _ in extra}
    options = [*extra, *[o for o in CLIENT_OPTIONS if o[0] not in names],
               ("grpc.ssl_target_name_override", pki.dns_name_for(CITY))]
    return grpc.aio.secure_channel(cl.addr(CITY), creds, options=options)


def offline_ingest(home: Home, n: int, seed_: int) -> None:
    """Append to the logs of a node that is not running (320311 never runs as a process here)."""
    h = Home(home.dir)
    try:
        ingest.run_request(h.ledger(), {"synthetic": n, "seed": seed_})
    finally:
        h.close()


def heads_of(msg_heads: Any) -> dict[LogKey, int]:
    return {(h.origin, int(h.channel)): int(h.seq) for h in msg_heads}


def batch_after(ledger: Ledger, parent: dict[LogKey, int], batch_id: int) -> pb.Batch:
    """Every log of the ledger's own node after what the parent holds, with every key certificate."""
    batch = pb.Batch(batch_id=batch_id)
    for (o, c), h in sorted(ledger.store.heads().items()):
        if o == ledger.code and h.seq > parent.get((o, c), 0):
            seg = ledger.read_segment(o, c, parent.get((o, c), 0), max_records=1_000_000)
            assert seg is not None and seg.records
            batch.segments.append(seg)
    own = [kid for kid, info in ledger.keyring.keys.items() if info.code == ledger.code]
    batch.keys.extend(ledger.key_certificates_for(own))
    return batch


class ChildSession:
    """A Link stream to the city, opened by the test with a child's credentials."""

    def __init__(self, call: Any) -> None:
        self.call = call

    @classmethod
    async def open(cls, ch: grpc.aio.Channel, code: str) -> tuple[ChildSession, dict[LogKey, int]]:
        call = pbg.FederationStub(ch).Link(timeout=60)
        await call.write(pb.LinkMessage(hello=pb.Hello(node_code=code, software="security-test")))
        reply = await asyncio.wait_for(call.read(), 30)
        assert reply is not grpc.aio.EOF and reply.HasField("hello"), reply
        return cls(call), heads_of(reply.hello.heads)

    async def send(self, batch: pb.Batch) -> pb.Ack:
        await self.call.write(pb.LinkMessage(batch=batch))
        while True:
            msg = await asyncio.wait_for(self.call.read(), 30)
            assert msg is not grpc.aio.EOF, f"the city closed the link before acking batch {batch.batch_id}"
            if msg.HasField("ack") and msg.ack.batch_id == batch.batch_id:
                return msg.ack

    async def close(self) -> None:
        await self.call.done_writing()
        self.call.cancel()


def city_holds(cl: Cluster, origin: str) -> tuple[dict[LogKey, int], int, int]:
    heads = own_heads(cl.homes[CITY], origin)
    _, total, distinct = root_counts(cl.homes[CITY], list(heads))
    return heads, total, distinct


# ---- 1. a certificate from another subtree ---------------------------------------------------------------


def test_certificate_from_another_subtree_refused(cl: Cluster) -> None:
    async def attempt() -> tuple[Any, str]:
        async with channel_to_city(cl, credentials(cl.homes[STRANGER])) as ch:
            call = pbg.FederationStub(ch).Link(timeout=15)
            try:
                hello = pb.LinkMessage(hello=pb.Hello(node_code=STRANGER, software="security-test"))
                msg = await (await hello_after_listening(call, hello))
            except grpc.aio.AioRpcError:
                return await call.code(), await call.details() or ""
            return await call.code(), f"the city answered {msg}"

    code, details = asyncio.run(attempt())
    print(f"\n  320400 → city: {code.name}: {details}")
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert "320000/320400" in details and "not a direct child" in details
    assert cl.events(CITY, "link_refused", peer="320000/320400"), "the city did not log link_refused"
    assert "320000/320400" in cl.status(CITY)["refused_peers"]
    real_child_still_served(cl)


# ---- 2. an expired certificate ----------------------------------------------------------------------------


def tls_cert_for(cl: Cluster, code: str, *, now: dt.datetime, days: int) -> bytes:
    """A TLS certificate for ``code`` (its real key), issued by the city's CA with the city's CA key."""
    city, child = cl.homes[CITY], cl.homes[code]
    key = child.load_key("tls.key")
    cert = pki._build(subject=child.load_cert("tls.crt").subject, public_key=key.public_key(),  # type: ignore[attr-defined]
                      issuer_cert=city.load_cert("ca.crt"), issuer_key=city.load_key("ca.key"),  # type: ignore[arg-type]
                      path=f"{city.path()}/{code}", role="tls", days=days, now=now)
    return pki.cert_to_pem(cert)


def test_expired_certificate_refused(cl: Cluster) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = tls_cert_for(cl, OTHER, now=now - dt.timedelta(days=30), days=1)  # valid 30..29 days ago
    fresh = tls_cert_for(cl, OTHER, now=now, days=1)

    async def attempt(cert: bytes) -> tuple[Any, str]:
        async with channel_to_city(cl, credentials(cl.homes[OTHER], cert)) as ch:
            try:
                session, _ = await ChildSession.open(ch, OTHER)
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details() or ""
            await session.close()
            return grpc.StatusCode.OK, "Hello answered"

    got_expired, got_fresh = asyncio.run(attempt(expired)), asyncio.run(attempt(fresh))
    print(f"\n  expired certificate: {got_expired[0].name}: {got_expired[1][:160]}\n  same, valid: {got_fresh}")
    assert got_expired[0] == grpc.StatusCode.UNAVAILABLE, got_expired  # the TLS handshake fails
    assert got_fresh[0] == grpc.StatusCode.OK, got_fresh  # the control: only the expiry differs
    real_child_still_served(cl)


# ---- 3. a revoked signing key -------------------------------------------------------------------------------


def test_revoked_key_refused(cl: Cluster) -> None:
    other = cl.homes[OTHER]
    offline_ingest(other, 120, 1)  # signed and checkpointed by the key about to be revoked
    h = Home(other.dir)
    old = h.signer()
    h.close()
    assert old is not None
    _, new_id = rotate(Home(other.dir))
    h = Home(other.dir)
    h.ledger().revoke_key(old.key_id, "key leaked (security test)")
    h.close()

    async def run() -> tuple[pb.Ack, pb.Ack, pb.Ack, int]:
        h = Home(other.dir)
        ledger = h.ledger()
        try:
            async with channel_to_city(cl, credentials(other)) as ch:
                session, parent = await ChildSession.open(ch, OTHER)
                # the revocation reaches the city in 320311's control log (signed by the new key)
                ack1 = await session.send(batch_after(ledger, parent, 1))
                head = ledger.store.head(OTHER, BULK)
                forged = forged_segment(old, head.seq, head.chain)
                ack2 = await session.send(pb.Batch(batch_id=2, segments=[forged],
                                                   keys=ledger.key_certificates_for([old.key_id])))
                # what the new key signs is accepted on the same stream
                ingest.run_request(ledger, {"synthetic": 40, "seed": 2})
                ack3 = await session.send(batch_after(ledger, heads_of(ack1.heads), 3))
                await session.close()
                return ack1, ack2, ack3, head.seq
        finally:
            h.close()

    ack1, ack2, ack3, bulk_before = asyncio.run(run())
    print(f"\n  old key {old.key_id.hex()[:16]} revoked, new {new_id.hex()[:16]}; forged checkpoint: ok={ack2.ok} "
          f"code={ack2.error_code!r}: {ack2.error[:160]}")
    assert ack1.ok, ack1
    assert not ack2.ok and ack2.error_code == "revoked_key", ack2
    assert [(e.origin, int(e.channel), e.error_code) for e in ack2.errors] == [(OTHER, BULK, "revoked_key")]
    assert ack3.ok and heads_of(ack3.heads)[(OTHER, BULK)] == bulk_before + 40, ack3
    heads, total, distinct = city_holds(cl, OTHER)
    assert heads[(OTHER, BULK)] == bulk_before + 40 and total == distinct == sum(heads.values())
    store = open_store(cl.homes[CITY])
    try:
        revoked = {bytes(row.key_id): row.revoked_us for row in store.keys()}  # noqa: SIM118
    finally:
        store.close()
    assert revoked[old.key_id] is not None and revoked[new_id] is None
    assert [e for e in cl.events(CITY, "batch_refused", peer=OTHER) if e["code"] == "revoked_key"]
    real_child_still_served(cl)


def forged_segment(signer: Signer, after: int, chain: bytes, origin: str = OTHER, time_us: int = 0) -> pb.Segment:
    """One bulk record of ``origin`` continuing its log, under a checkpoint signed by ``signer``, dated
    ``time_us`` (default: now)."""
    time_us = time_us or now_us()
    body = build_body(origin=origin, channel=BULK, seq=after + 1, kind="case.accept", payload=b'{"forged": true}',
                      time_us=time_us)
    cp = pb.CheckpointBody(origin=origin, channel=BULK, seq=after + 1, chain=chain_step(chain, body),  # type: ignore[arg-type]
                           time_us=time_us, key_id=signer.key_id).SerializeToString()
    return pb.Segment(origin=origin, channel=BULK, records=[pb.SignedRecord(body=body)],  # type: ignore[arg-type]
                      checkpoint=pb.Checkpoint(body=cp, signature=signer.sign(CHECKPOINT_TYPE, cp),
                                               key_id=signer.key_id))


def test_revoked_key_backdated_checkpoint_refused(cl: Cluster) -> None:
    """The holder of a leaked, revoked key dates its checkpoint an hour before the revocation."""
    third = cl.homes[THIRD]  # its own identity: a forged record accepted here must not disturb other tests
    offline_ingest(third, 30, 6)
    h = Home(third.dir)
    old = h.signer()
    h.close()
    assert old is not None
    rotate(Home(third.dir))
    h = Home(third.dir)
    revoked_at = now_us()
    h.ledger().revoke_key(old.key_id, "key leaked (security test)", effective_us=revoked_at)
    h.close()

    async def run() -> tuple[pb.Ack, pb.Ack]:
        h = Home(third.dir)
        ledger = h.ledger()
        try:
            async with channel_to_city(cl, credentials(third)) as ch:
                session, parent = await ChildSession.open(ch, THIRD)
                ack1 = await session.send(batch_after(ledger, parent, 1))
                head = ledger.store.head(THIRD, BULK)
                forged = forged_segment(old, head.seq, head.chain, origin=THIRD, time_us=revoked_at - 3600_000_000)
                ack2 = await session.send(pb.Batch(batch_id=2, segments=[forged],
                                                   keys=ledger.key_certificates_for([old.key_id])))
                await session.close()
                return ack1, ack2
        finally:
            h.close()

    ack1, ack2 = asyncio.run(run())
    print(f"\n  backdated checkpoint by the revoked key: ok={ack2.ok} code={ack2.error_code!r}")
    assert ack1.ok, ack1
    assert not ack2.ok and ack2.error_code == "revoked_key", \
        f"the city accepted a record signed by a revoked key, dated before the revocation: {ack2}"


# ---- 4. a replayed old batch ---------------------------------------------------------------------------------


def test_replayed_batch_is_a_no_op(cl: Cluster) -> None:
    other = cl.homes[OTHER]
    offline_ingest(other, 300, 3)

    async def session(batches: list[pb.Batch]) -> tuple[dict[LogKey, int], list[pb.Ack]]:
        async with channel_to_city(cl, credentials(other)) as ch:
            s, parent = await ChildSession.open(ch, OTHER)
            acks = [await s.send(b) for b in batches]
            await s.close()
            return parent, acks

    h = Home(other.dir)
    try:
        ledger = h.ledger()
        parent, _ = asyncio.run(session([]))
        old = batch_after(ledger, parent, 1)
        _, (first, again, renumbered) = asyncio.run(session([old, old, pb.Batch(
            batch_id=7, segments=old.segments, keys=old.keys)]))
        after_first = city_holds(cl, OTHER)
        ingest.run_request(ledger, {"synthetic": 50, "seed": 4})
        newer = batch_after(ledger, heads_of(first.heads), 2)
        # after a reconnect: the old batch replayed, then the new one, then the old one once more
        _, (replay, fresh, replay_late) = asyncio.run(session([old, newer, old]))
    finally:
        h.close()
    print(f"\n  replayed batch of {sum(len(s.records) for s in old.segments)} records: acks "
          f"{[(a.batch_id, a.ok, a.error_code) for a in (first, again, renumbered, replay, fresh, replay_late)]}")
    for a in (first, again, renumbered, replay, fresh, replay_late):
        assert a.ok and not a.errors, a
    # replays acknowledge the heads the city holds, never rewind them
    assert heads_of(again.heads) == heads_of(renumbered.heads) == heads_of(first.heads) == heads_of(replay.heads)
    late, now_held = heads_of(replay_late.heads), heads_of(fresh.heads)
    assert late and all(now_held[k] == v for k, v in late.items()), (late, now_held)
    assert heads_of(fresh.heads)[(OTHER, BULK)] == heads_of(first.heads)[(OTHER, BULK)] + 50
    heads, total, distinct = after_first
    assert total == distinct == sum(heads.values()), "a replay duplicated records"
    heads, total, distinct = city_holds(cl, OTHER)
    assert heads == heads_of(fresh.heads) and total == distinct == sum(heads.values())
    wait_for(lambda: own_heads(cl.homes[PROVINCE], OTHER) == heads, 60, "the province holds 320311's logs")
    _, total, distinct = root_counts(cl.homes[PROVINCE], list(heads))
    assert total == distinct == sum(heads.values())
    real_child_still_served(cl)


# ---- 5. an oversized message ---------------------------------------------------------------------------------


def test_oversized_message_rejected(cl: Cluster) -> None:
    big = pb.LinkMessage(report=pb.LinkReport(node_code=OTHER, json=b"x" * (MAX_MESSAGE + 4096)))
    assert big.ByteSize() > MAX_MESSAGE

    async def attempt() -> tuple[Any, str]:
        # the test's own send limit is lifted, so it is the city that refuses
        async with channel_to_city(cl, credentials(cl.homes[OTHER]), ("grpc.max_send_message_length", -1)) as ch:
            s, _ = await ChildSession.open(ch, OTHER)
            try:
                await s.call.write(big)
                # the city may be sending us batches (it repairs a child's logs): read until the end
                while (msg := await asyncio.wait_for(s.call.read(), 60)) is not grpc.aio.EOF:
                    assert not msg.HasField("ack"), f"the city acked something: {msg.ack}"
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details() or ""
            return await s.call.code(), await s.call.details()

    code, details = asyncio.run(attempt())
    print(f"\n  {big.ByteSize()} byte message: {code.name}: {details}")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "Received message larger than max" in details, details  # the server's limit, not our own
    real_child_still_served(cl)


# ---- 6. malformed protobuf, fuzzed --------------------------------------------------------------------------


REFUSALS = {"malformed_record", "chain_mismatch", "missing_record", "out_of_order", "wrong_log", "unknown_key",
            "revoked_key", "key_not_for_origin", "bad_signature", "missing_checkpoint", "outside_subtree",
            # node/streams.py apply_batch: a child's segment with an empty checkpoint body is treated as a
            # downward segment and refused with a bare FednodeError, whose code is the generic "error"
            "error"}
PROBE = 999_999


async def raw_exchange(ch: grpc.aio.Channel, frames: list[bytes]) -> tuple[str, list[pb.Ack]]:
    """Send raw frames on a Link stream, then a probe (an empty batch). How the city answered:
    ("served", acks) when it acked the probe, or (status code name, acks) when it closed the stream."""
    call = ch.stream_stream(LINK_METHOD, request_serializer=None,
                            response_deserializer=pb.LinkMessage.FromString)(timeout=30)
    acks: list[pb.Ack] = []
    try:
        for f in frames:
            await call.write(f)
        await call.write(pb.LinkMessage(batch=pb.Batch(batch_id=PROBE)).SerializeToString())
        await call.done_writing()
        while True:
            msg = await asyncio.wait_for(call.read(), 30)
            if msg is grpc.aio.EOF:
                return (await call.code()).name, acks
            if msg.HasField("ack"):
                if msg.ack.batch_id == PROBE:
                    call.cancel()
                    return "served", acks
                acks.append(msg.ack)
    except grpc.aio.AioRpcError as e:
        return e.code().name, acks
    except asyncio.InvalidStateError:  # a write after the city ended the call
        return (await call.code()).name, acks


def test_malformed_protobuf_fuzzed(cl: Cluster) -> None:
    rng = Schedule("fuzzed protobuf")
    other = cl.homes[OTHER]
    offline_ingest(other, 60, 5)
    h = Home(other.dir)
    try:
        ledger = h.ledger()
        loop = asyncio.new_event_loop()

        async def connect() -> tuple[grpc.aio.Channel, dict[LogKey, int]]:
            ch = channel_to_city(cl, credentials(other))
            s, parent = await ChildSession.open(ch, OTHER)
            await s.close()
            return ch, parent

        ch, parent = loop.run_until_complete(connect())
        base = batch_after(ledger, parent, 1)
        bulk = next(s for s in base.segments if s.channel == BULK)
        template = pb.Batch(batch_id=1, segments=[bulk], keys=base.keys)
        hello = pb.LinkMessage(hello=pb.Hello(node_code=OTHER, software="fuzz")).SerializeToString()
        before = city_holds(cl, OTHER)
        outcomes: dict[str, dict[str, int]] = {"record body": {}, "checkpoint body": {}, "frame": {}}

        def exchange(kind: str, frames: list[bytes]) -> tuple[str, list[pb.Ack]]:
            how, acks = loop.run_until_complete(raw_exchange(ch, frames))
            key = how if how != "served" else "served: " + ",".join(a.error_code or "ok" for a in acks)
            outcomes[kind][key] = outcomes[kind].get(key, 0) + 1
            return how, acks

        common = settings(max_examples=25, deadline=None, database=None, derandomize=False,
                          suppress_health_check=list(HealthCheck))

        @common
        @seed(rng.seed_value)
        @given(i=st.integers(0, len(bulk.records) - 1), body=st.binary(max_size=300))
        def fuzz_record_body(i: int, body: bytes) -> None:
            b = pb.Batch()
            b.CopyFrom(template)
            b.segments[0].records[i].body = body
            how, acks = exchange("record body", [hello, pb.LinkMessage(batch=b).SerializeToString()])
            assert how == "served" and len(acks) == 1, (how, acks)
            assert not acks[0].ok and acks[0].error_code in REFUSALS, acks[0]

        @common
        @seed(rng.seed_value + 1)
        @given(body=st.binary(max_size=300))
        def fuzz_checkpoint_body(body: bytes) -> None:
            b = pb.Batch()
            b.CopyFrom(template)
            b.segments[0].checkpoint.body = body
            how, acks = exchange("checkpoint body", [hello, pb.LinkMessage(batch=b).SerializeToString()])
            assert how == "served" and len(acks) == 1, (how, acks)
            assert not acks[0].ok and acks[0].error_code in REFUSALS, acks[0]

        valid = pb.LinkMessage(batch=template).SerializeToString()

        @common
        @seed(rng.seed_value + 2)
        @given(frame=st.one_of(
            st.binary(max_size=2000),
            # a valid frame with a few bytes overwritten: parses more often, and reaches deeper
            st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=8)).map(
                lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]):]),
        ), first=st.booleans())
        def fuzz_frame(frame: bytes, first: bool) -> None:
            how, acks = exchange("frame", [frame] if first else [hello, frame])
            # either the city answers (an ack, ok only if nothing new was stored) or it closes the stream
            assert how in ("served", "INTERNAL", "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT"), how
            for a in acks:
                assert a.ok or a.error_code in REFUSALS | {"certificate"}, a
            assert cl.alive(CITY)

        fuzz_record_body()
        fuzz_checkpoint_body()
        fuzz_frame()
        loop.run_until_complete(ch.close())
        loop.close()
    finally:
        h.close()
    print(f"\n  outcomes: {outcomes}")
    # nothing malformed was stored; a mutation that left the batch valid (e.g. only its batch_id changed)
    # may have delivered the template's records, exactly once
    heads, total, distinct = city_holds(cl, OTHER)
    assert heads in (before[0], {**before[0], (OTHER, BULK): before[0].get((OTHER, BULK), 0) + len(bulk.records)}), \
        f"{rng}: the city holds {heads}, before the fuzzing {before[0]}"
    assert total == distinct == sum(heads.values())
    assert cl.alive(CITY) and cl.status(CITY)["incidents"] == 0
    real_child_still_served(cl)
