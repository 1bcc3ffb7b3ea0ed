"""The core: what every other layer stands on. codes (the jurisdiction tree), crypto, records, schema/ and
migrations/, store, ledger, keyring, pki, verify, integrity, calendar, indicators (the stats vocabulary),
config and configschema (node.toml and its one description), home, storecopy, admin_client (the client
of a running node's admin socket), errors.

Rules: imports nothing of node outside node.core (``node.__version__`` and ``proto`` excepted), nothing
of adapters, bench or tests. No event loop, no argparse. A module belongs here when a feature, the link
and the adapters all need it.
"""
