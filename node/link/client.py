"""The child's reconcile client: the Parent interface of node.link.reconcile over gRPC (mutual TLS)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from node.link.reconcile import Db, ReconcileError, after_ack, tails_batch
from proto.fednode.v1 import fednode_pb2 as pb

# node.schema imports this module (for its table) and node.store/node.ledger import node.schema, so
# those two are imported where they are used, never at module level
if TYPE_CHECKING:
    from node.core.home import Home
    from node.core.ledger import Ledger
    from node.core.store import LogKey

# ---- the parent over the network (sync gRPC: the run happens in the CLI or in a worker thread) --------------


class GrpcParent:
    """Our parent at ``link.parent``, over mutual TLS with this node's own certificates."""

    def __init__(self, home: Home, timeout: float = 120.0) -> None:
        import grpc

        from node.core import pki
        from node.link import transport
        from proto.fednode.v1 import fednode_pb2_grpc as pbg

        cfg = home.config
        if not cfg.parent or not cfg.parent_code:
            raise ReconcileError(f"{home.code} has no parent to reconcile with (link.parent is empty)",
                                 fix="run `fednode reconcile` on the children: each one reconciles with its parent")
        self.code = cfg.parent_code
        self.address = cfg.parent
        self.timeout = timeout
        creds = transport.channel_credentials(cast(Any, SimpleNamespace(home=home)))
        self._grpc = grpc
        # the parent's hierarchical server name first, then the flat name of a parent whose certificate
        # predates it (as the link's dialler does: node.transport.dial_parent)
        names = pki.parent_server_names(home.path())
        for i, name in enumerate(names):
            options = [*transport.CLIENT_OPTIONS, ("grpc.ssl_target_name_override", name)]
            self.channel = grpc.secure_channel(cfg.parent, creds, options=options)
            if i == len(names) - 1:
                break
            try:
                grpc.channel_ready_future(self.channel).result(timeout=min(5.0, timeout))
                break
            except grpc.FutureTimeoutError:
                self.channel.close()
        self.stub = pbg.FederationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _failed(self, e: Any) -> ReconcileError:
        what = f"{e.code().name}: {e.details()}" if hasattr(e, "code") else str(e)
        return ReconcileError(f"the parent {self.code} at {self.address} failed the reconciliation call ({what})",
                              fix="check that the parent runs and that this node's link works (`fednode status`), "
                                  "then run `fednode reconcile` again; nothing was changed by the failed call")

    def heads(self, request: pb.HeadsRequest) -> pb.HeadsReply:
        try:
            return self.stub.Heads(request, timeout=self.timeout)  # type: ignore[no-any-return]
        except self._grpc.RpcError as e:
            raise self._failed(e) from None

    def chains(self, request: pb.ChainsRequest) -> pb.ChainsReply:
        try:
            return self.stub.Chains(request, timeout=self.timeout)  # type: ignore[no-any-return]
        except self._grpc.RpcError as e:
            raise self._failed(e) from None

    def fetch(self, request: pb.FetchRequest) -> Iterator[pb.Batch]:
        try:
            yield from self.stub.Fetch(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise self._failed(e) from None

    def push(self, ledger: Ledger, db: Db, tails: dict[LogKey, int]) -> dict[LogKey, int]:
        """Send the tails over a Link stream, so the parent verifies and stores them exactly as it does
        for a live link (streams.apply_batch → Ledger.accept_many). What the parent sends us meanwhile
        (our own records it holds and we lack, records addressed to us) is verified and stored too."""
        import queue

        from node.link import streams

        outgoing: queue.Queue[pb.LinkMessage | None] = queue.Queue()

        def requests() -> Iterator[pb.LinkMessage]:
            while (m := outgoing.get()) is not None:
                yield m

        heads = db(streams.up_heads, ledger)
        down = db(streams.held_down_heads, ledger)
        outgoing.put(pb.LinkMessage(hello=pb.Hello(node_code=ledger.code, heads=streams.to_heads_pb(heads),
                                                   down_heads=streams.to_heads_pb(down), software="fednode")))
        call = self.stub.Link(requests(), timeout=self.timeout)
        out: dict[LogKey, int] = {}
        try:
            first = next(call)
            if not first.HasField("hello"):
                raise ReconcileError(f"the parent {self.code} did not answer the Hello", fix="check its log")
            batch_id = 0
            pending = dict(tails)
            while pending:
                batch = db(tails_batch, ledger, pending)
                if batch is None:
                    break
                batch_id += 1
                batch.batch_id = batch_id
                outgoing.put(pb.LinkMessage(batch=batch))
                if not after_ack(self._wait_ack(call, batch_id, ledger, db, outgoing), pending, out):
                    break
        except self._grpc.RpcError as e:
            raise self._failed(e) from None
        finally:
            outgoing.put(None)
            call.cancel()
        return out

    def _wait_ack(self, call: Any, batch_id: int, ledger: Ledger, db: Db, outgoing: Any) -> pb.Ack:
        from node.link import streams

        for msg in call:
            which = msg.WhichOneof("msg")
            if which == "ack" and msg.ack.batch_id == batch_id:
                return msg.ack  # type: ignore[no-any-return]
            if which == "batch":
                ack = db(streams.apply_batch, ledger, msg.batch, peer=self.code, from_child=False)
                outgoing.put(pb.LinkMessage(ack=ack))
        raise ReconcileError(f"the parent {self.code} closed the link before acknowledging the tail",
                             fix="run `fednode reconcile` again; what was acknowledged is kept")
