"""How local data gets into a node: one module per source kind.

``adapters.synthetic`` generates seeded, reproducible case flows for the demo, tests and benchmarks.
"""
