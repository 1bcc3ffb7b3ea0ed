"""Compression of batches on the links (issue 26): negotiated in Hello, never changing the signed bytes.

- packing (no processes): a packed batch decodes to the exact bytes that were packed; the parent picks
  among what the child offers; a decompression bomb (a frame that expands far beyond what it declares
  or beyond the limit) is refused before it costs memory;
- real `fednode run` processes, mutual TLS: records travel compressed province ← city ← county and
  verify; ``[link] compression = "none"`` turns it off on both of that node's sides; a child without
  the Hello field (an old peer) gets no codec and its plain batches are applied, a packed batch on such
  a link ends it; a child whose parent chooses no codec (an old parent) sends plain batches; a child
  sending a bomb is refused with ``packed_batch_refused`` in the log while the city keeps running.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard

from node.core import config as config_mod
from node.core.home import Home
from node.core.records import BULK
from node.link import packing, streams
from node.link.transport import MAX_MESSAGE
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.test_link_security import (
    CITY,
    COUNTY,
    LINE,
    PROVINCE,
    Cluster,
    channel_to,
    credentials_of,
    heads_of,
    incidents_of,
    log_count,
    offline_ingest,
    read_ack,
    wait_for,
    wait_same_heads,
)

GIB = 1 << 30


def bomb_frame(expands_to: int = GIB) -> bytes:
    """A zstd frame of zeros that decodes to ``expands_to`` bytes (~32 KB for 1 GiB), without a content
    size in its header (built streaming, as an attacker would)."""
    co = zstandard.ZstdCompressor(level=3).compressobj()
    chunk = bytes(1 << 20)
    parts = [co.compress(chunk) for _ in range(expands_to // len(chunk))]
    parts.append(co.flush())
    return b"".join(parts)


def a_batch(home: Home, n: int = 500) -> pb.Batch:
    h = Home(home.dir)
    try:
        ledger = h.ledger()
        seg = ledger.read_segment(home.code, BULK, 0, n)
        assert seg is not None and seg.records
        return pb.Batch(batch_id=1, segments=[seg], keys=ledger.key_certificates_for([seg.checkpoint.key_id]))
    finally:
        h.close()


# ---- packing, no processes ---------------------------------------------------------------------------


def test_the_parent_picks_a_codec_the_child_offers_and_none_turns_it_off() -> None:
    assert packing.offered("zstd") == ["zstd"] and packing.offered("none") == []
    assert packing.choose(["zstd"], "zstd") == "zstd"
    assert packing.choose(["gzip", "zstd"], "zstd") == "zstd"
    assert packing.choose([], "zstd") == ""  # an old child: no offer, plain batches
    assert packing.choose(["gzip"], "zstd") == ""
    assert packing.choose(["zstd"], "none") == ""  # the parent turned it off


def test_a_packed_batch_decodes_to_the_exact_bytes_and_the_bomb_is_refused_cheaply(tmp_path: Path) -> None:
    from bench.demo import LINKS_ONLY, build_tree

    homes = build_tree(tmp_path, LINE, extra_config=LINKS_ONLY)
    offline_ingest(homes[COUNTY], 800, seed=1)
    batch = a_batch(homes[COUNTY], 800)
    raw = batch.SerializeToString()
    msg = packing.pack(batch, "zstd")
    assert msg.HasField("packed") and msg.packed.size == len(raw)
    print(f"\n800 records: {len(raw):,} B plain, {len(msg.packed.data):,} B packed")
    assert len(msg.packed.data) < len(raw) / 4
    back = packing.unpack(msg.packed, "zstd", MAX_MESSAGE)
    assert back.SerializeToString() == raw
    assert [r.body for r in back.segments[0].records] == [r.body for r in batch.segments[0].records]
    assert back.segments[0].checkpoint.body == batch.segments[0].checkpoint.body
    assert packing.pack(batch, "").HasField("batch")  # no codec chosen: plain

    frame = bomb_frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lying = pb.PackedBatch(codec="zstd", size=len(raw), data=frame)  # says small, expands to 1 GiB
    with pytest.raises(packing.PackRefused, match="decodes to more than"):
        packing.unpack(lying, "zstd", MAX_MESSAGE)
    huge = pb.PackedBatch(codec="zstd", size=GIB, data=frame)  # says 1 GiB: over the limit, never decoded
    with pytest.raises(packing.PackRefused, match="over the limit"):
        packing.unpack(huge, "zstd", MAX_MESSAGE)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"refusing the bomb grew the peak RSS by {grown_mb:.0f} MB"
    # a frame whose header states its size must state the declared one
    honest = zstandard.ZstdCompressor().compress(b"x" * 5000)
    with pytest.raises(packing.PackRefused, match="not the 100"):
        packing.unpack(pb.PackedBatch(codec="zstd", size=100, data=honest), "zstd", MAX_MESSAGE)
    with pytest.raises(packing.PackRefused, match="chose no compression"):
        packing.unpack(msg.packed, "", MAX_MESSAGE)
    with pytest.raises(packing.PackRefused, match="not a zstd frame|does not decode"):
        packing.unpack(pb.PackedBatch(codec="zstd", size=10, data=b"not zstd at all"), "zstd", MAX_MESSAGE)


# ---- real processes ----------------------------------------------------------------------------------


def link_of(cl: Cluster, node: str, peer: str) -> dict[str, Any]:
    return next(ln for ln in cl.status(node)["links"] if ln["peer"] == peer)


@pytest.mark.slow
def test_records_travel_compressed_and_verify_and_none_turns_it_off(tmp_path: Path) -> None:
    with Cluster(tmp_path, LINE) as cl:
        cl.start(PROVINCE, CITY, COUNTY)
        cl.ingest(COUNTY, 3000, seed=1)
        final = wait_same_heads(cl.homes[PROVINCE], cl.homes[COUNTY], COUNTY)
        assert link_of(cl, COUNTY, CITY)["compression"] == "zstd"
        assert link_of(cl, CITY, COUNTY)["compression"] == "zstd"
        assert link_of(cl, CITY, PROVINCE)["compression"] == "zstd"
        assert incidents_of(cl.homes[CITY]) == [] and incidents_of(cl.homes[PROVINCE]) == []
        # the city turns it off: it offers nothing to the province and picks nothing for the county
        cl.stop(CITY)
        config_mod.set_field(cl.homes[CITY].config.path, "link", "compression", "none")
        cl.start(CITY)
        wait_for(lambda: link_of(cl, COUNTY, CITY)["state"] == "connected"
                 and link_of(cl, CITY, PROVINCE)["state"] == "connected", 60, lambda: "the links came back")
        assert link_of(cl, COUNTY, CITY)["compression"] == "none"
        assert link_of(cl, CITY, COUNTY)["compression"] == "none"
        assert link_of(cl, CITY, PROVINCE)["compression"] == "none"
        assert link_of(cl, PROVINCE, CITY)["compression"] == "none"
        cl.ingest(COUNTY, 500, seed=2)
        after = wait_same_heads(cl.homes[PROVINCE], cl.homes[COUNTY], COUNTY)
        assert after[(COUNTY, BULK)][0] > final[(COUNTY, BULK)][0]


async def speak_as_county(cl: Cluster, compressions: list[str], send: list[pb.LinkMessage]) -> tuple[pb.Hello, Any]:
    """Open a Link to the city with the county's credentials, say Hello offering ``compressions``, send
    ``send`` one by one (reading the ack of each batch); returns the city's Hello and the outcome: the
    acks, or (status code, details) when the city ended the call."""
    county = cl.homes[COUNTY]
    h = Home(county.dir)
    try:
        up = streams.up_heads(h.ledger())
    finally:
        h.close()
    async with channel_to(cl, CITY, credentials_of(county)) as ch:
        call = pbg.FederationStub(ch).Link(timeout=60)
        await call.write(pb.LinkMessage(hello=pb.Hello(node_code=COUNTY, heads=streams.to_heads_pb(up),
                                                       software="test", compressions=compressions)))
        reply = await asyncio.wait_for(call.read(), 30)
        assert reply is not grpc.aio.EOF and reply.HasField("hello"), reply
        acks: list[pb.Ack] = []
        try:
            for m in send:  # batch ids as the caller set them (0 unless set)
                await call.write(m)
                acks.append(await read_ack(call, m.batch.batch_id if m.HasField("batch") else 0))
        except (grpc.aio.AioRpcError, AssertionError, asyncio.InvalidStateError):
            return reply.hello, (await call.code(), await call.details())
        await call.done_writing()
        return reply.hello, acks


@pytest.mark.slow
def test_an_old_child_gets_no_codec_and_a_packed_batch_on_its_link_ends_it(tmp_path: Path) -> None:
    with Cluster(tmp_path, LINE) as cl:
        cl.start(PROVINCE, CITY)
        offline_ingest(cl.homes[COUNTY], 600, seed=1)
        batch = a_batch(cl.homes[COUNTY], 600)
        # an old child: no compressions in its Hello; its plain batch is applied
        hello, acks = asyncio.run(speak_as_county(cl, [], [pb.LinkMessage(batch=batch)]))
        assert hello.compression == "", hello
        assert isinstance(acks, list) and acks[0].ok, acks
        first = len(batch.segments[0].records)
        assert heads_of(cl.homes[CITY], COUNTY)[(COUNTY, BULK)][0] == first > 500
        # the same old child sending a packed batch anyway: the city refuses it and ends the link
        hello, outcome = asyncio.run(speak_as_county(cl, [], [packing.pack(batch, "zstd")]))
        assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert "chose no compression" in outcome[1], outcome
        # a new child: the city picks zstd and applies its packed batch
        offline_ingest(cl.homes[COUNTY], 400, seed=2)
        h = Home(cl.homes[COUNTY].dir)
        try:
            ledger = h.ledger()
            seg = ledger.read_segment(COUNTY, BULK, first, 1000)
            assert seg is not None
            more = pb.Batch(segments=[seg], keys=ledger.key_certificates_for([seg.checkpoint.key_id]))
        finally:
            h.close()
        hello, acks = asyncio.run(speak_as_county(cl, ["zstd"], [packing.pack(more, "zstd")]))
        assert hello.compression == "zstd", hello
        assert isinstance(acks, list) and acks[0].ok, acks
        assert heads_of(cl.homes[CITY], COUNTY)[(COUNTY, BULK)][0] == first + len(seg.records) > first
        assert cl.status(CITY)["running"]


class FakeParent(pbg.FederationServicer):
    """Answers a child's Hello as an old parent (no ``compression``) or a new one, and notes what kind
    of message each batch of the child came in."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self.offers: list[list[str]] = []
        self.kinds: list[str] = []

    async def Link(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        first = await context.read()
        self.offers.append(list(first.hello.compressions))
        await context.write(pb.LinkMessage(hello=pb.Hello(node_code=CITY, software="old-parent",
                                                          compression=self.compression)))
        while (msg := await context.read()) is not grpc.aio.EOF:
            which = msg.WhichOneof("msg")
            if which in ("batch", "packed"):
                self.kinds.append(which)
                return  # enough: the child redials


async def child_to(fake: FakeParent, cl: Cluster) -> None:
    city = cl.homes[CITY]
    k = city.key_path
    creds = grpc.ssl_server_credentials(
        [(k("tls.key").read_bytes(), k("tls.crt").read_bytes() + k("chain.pem").read_bytes())],
        root_certificates=k("root.crt").read_bytes(), require_client_auth=True)
    server = grpc.aio.server()
    pbg.add_FederationServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        config_mod.set_field(cl.homes[COUNTY].config.path, "link", "parent", f"127.0.0.1:{port}")
        await asyncio.to_thread(cl.start, COUNTY)
        deadline = asyncio.get_running_loop().time() + 60
        while not fake.kinds and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.to_thread(cl.stop, COUNTY)
    finally:
        await server.stop(None)


@pytest.mark.slow
@pytest.mark.parametrize("parent_says", ["", "zstd"])
def test_a_child_sends_plain_batches_to_a_parent_that_chose_no_codec(tmp_path: Path, parent_says: str) -> None:
    with Cluster(tmp_path, LINE) as cl:
        offline_ingest(cl.homes[COUNTY], 2000, seed=1)
        fake = FakeParent(parent_says)
        asyncio.run(child_to(fake, cl))
        assert fake.offers and fake.offers[0] == ["zstd"], fake.offers
        assert fake.kinds, "the county sent no batch"
        assert fake.kinds[0] == ("packed" if parent_says else "batch"), fake.kinds


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_a_child_sending_a_decompression_bomb_is_refused_and_the_city_goes_on(tmp_path: Path) -> None:
    with Cluster(tmp_path, LINE) as cl:
        cl.start(PROVINCE, CITY)
        frame = bomb_frame()  # ~32 KB that expand to 1 GiB, 16x the message limit
        lying = pb.LinkMessage(packed=pb.PackedBatch(codec="zstd", size=200_000, data=frame))
        hello, outcome = asyncio.run(speak_as_county(cl, ["zstd"], [lying]))
        assert hello.compression == "zstd"
        assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert "decodes to more than 200,001 bytes" in outcome[1] and "refused" in outcome[1], outcome
        huge = pb.LinkMessage(packed=pb.PackedBatch(codec="zstd", size=GIB, data=frame))
        _hello, outcome = asyncio.run(speak_as_county(cl, ["zstd"], [huge]))
        assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert "over the limit" in outcome[1], outcome
        city = cl.homes[CITY]
        assert log_count(city, "packed_batch_refused") == 2
        st = cl.status(CITY)
        assert st["running"]
        county_link = next(ln for ln in st["links"] if ln["peer"] == COUNTY)
        assert "refused" in county_link["last_error"], county_link
        peak = peak_rss_mb(cl.procs[CITY].pid)
        print(f"\ncity peak RSS after two bombs: {peak:.0f} MB; error: {county_link['last_error'][:160]}")
        assert peak < 512, f"the city's peak RSS reached {peak:.0f} MB: it decoded the bomb"
        # the real county links and delivers as before
        cl.start(COUNTY)
        cl.ingest(COUNTY, 500, seed=3)
        wait_same_heads(cl.homes[PROVINCE], cl.homes[COUNTY], COUNTY)
        assert incidents_of(city) == []
