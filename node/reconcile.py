"""Nightly reconciliation (issue "Reconciliation"): placeholder until that issue lands.

The Federation service delegates its Heads, Fetch and Chains RPCs here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from proto.fednode.v1 import fednode_pb2 as pb

if TYPE_CHECKING:
    from node.runtime import NodeRuntime


async def serve_heads(rt: NodeRuntime, child: str, request: pb.HeadsRequest) -> pb.HeadsReply:
    from node import codes

    heads = await rt.db(rt.ledger.store.heads)
    return pb.HeadsReply(heads=[pb.LogHead(origin=o, channel=c, seq=h.seq, chain=h.chain)  # type: ignore[arg-type]
                                for (o, c), h in heads.items() if codes.within(o, child)])


async def serve_fetch(rt: NodeRuntime, child: str, request: pb.FetchRequest) -> AsyncIterator[pb.Batch]:
    raise grpc.RpcError("Fetch is not implemented yet")
    yield pb.Batch()  # pragma: no cover


async def serve_chains(rt: NodeRuntime, child: str, request: pb.ChainsRequest) -> pb.ChainsReply:
    return pb.ChainsReply()
