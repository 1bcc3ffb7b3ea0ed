"""The `fednode` command line: main.py (parser, dispatch, the node-level commands), base.py (the
@command registry, emit, open_home), one module per command group.

Rules: a handler parses, calls one node.app function (or the running node through the admin socket),
renders; no business logic, no transactions. Only main.py may import bench/ (demo, bench).
"""
