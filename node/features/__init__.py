"""Features: rules, tickets, stats, worklog, quarantine, metrics, notify. Pure logic, store-bound
processors and queries; no event loop, no argparse, no admin socket server.

Rules: imports node.core, node.link and adapters only; never node.app, node.runtime, node.interfaces.
"""
