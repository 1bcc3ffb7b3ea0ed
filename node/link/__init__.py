"""Links between nodes: the sans-I/O protocol (protocol.py), the store side of a link (streams.py),
reconciliation (reconcile.py, client.py) and the gRPC shell (transport.py).

Rules: imports node.core only (the runtime's type under TYPE_CHECKING, see tests/test_layers.py).
"""
