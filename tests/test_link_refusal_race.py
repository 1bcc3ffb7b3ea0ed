"""A refusal as the stream opens, raced by the Hello's write (a CI failure of test_trust_wire).

A node refuses a peer in ``FederationService.Link`` before reading anything. A client that writes its
Hello at once may have the write meet the closed stream; grpc.aio then reports that failed write
(INTERNAL, "Internal error from Core") in place of the server's status. On this machine about 1 in 300
attempts against a real grpc server on loopback (counted while writing this test: 1 of 300).

- ``tests.faultlib.hello_after_listening`` (the hand-made Links of the trust and security suites)
  listens before writing: each of 300 attempts against such a server sees the refusal and its details;
- the node's own uplink (``transport.failure_details``) names the case for the operator rather than
  showing grpc's words alone.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from node.link import transport
from proto.fednode.v1 import fednode_pb2 as pb
from proto.fednode.v1 import fednode_pb2_grpc as pbg
from tests.faultlib import hello_after_listening

ATTEMPTS = 300


class Refusing(pbg.FederationServicer):
    async def Link(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "320000/320300 refused by 320000: a test")


async def attempts(listen_first: bool) -> collections.Counter[str]:
    server = grpc.aio.server()
    pbg.add_FederationServicer_to_server(Refusing(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    seen: collections.Counter[str] = collections.Counter()
    hello = pb.LinkMessage(hello=pb.Hello(node_code="320300", software="race-test"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for _ in range(ATTEMPTS):
                call = pbg.FederationStub(ch).Link(timeout=10)
                try:
                    if listen_first:
                        await (await hello_after_listening(call, hello))
                    else:
                        await call.write(hello)
                        await call.read()
                    seen[f"{(await call.code()).name}: {await call.details()}"] += 1
                except grpc.aio.AioRpcError as e:
                    seen[f"{e.code().name}: {e.details()}"] += 1
                except asyncio.InvalidStateError:  # a write after the end: the call keeps the server's status
                    seen[f"{(await call.code()).name}: {await call.details()}"] += 1
    finally:
        await server.stop(None)
    return seen


def test_listening_before_the_hello_always_sees_the_refusal() -> None:
    seen = asyncio.run(attempts(listen_first=True))
    print(f"\n  listening first, {ATTEMPTS} attempts: {dict(seen)}")
    assert seen == {"PERMISSION_DENIED: 320000/320300 refused by 320000: a test": ATTEMPTS}


def test_the_uplink_names_a_write_that_met_a_closed_stream() -> None:
    said = transport.failure_details(grpc.StatusCode.INTERNAL, transport.LOCAL_WRITE_FAILED, established=False)
    assert "before our Hello" in said and "link_refused" in said
    # once the link was up, or any other status: grpc's own words
    assert transport.failure_details(grpc.StatusCode.INTERNAL, transport.LOCAL_WRITE_FAILED,
                                     established=True) == transport.LOCAL_WRITE_FAILED
    assert transport.failure_details(grpc.StatusCode.PERMISSION_DENIED, "refused", established=False) == "refused"
