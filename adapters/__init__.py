"""How local data gets into a node.

- ``adapters.base``: the one small interface every adapter implements (validated records, each with its
  source position; the node commits records and position in one transaction), and the registry by
  entry point (group ``fednode.adapters``), so a jurisdiction can ship its own adapter as a package;
- ``adapters.sql_poll``: any SQLAlchemy URL, incremental by a watermark column, with ready mappings in
  ``adapters.mappings`` (GB/T 39046-style tables, the 2009-era 申办/受理/审批/办结 exchange tables);
- ``adapters.filedrop``: CSV and JSON Lines dropped in a directory, UTF-8 or GB18030;
- ``adapters.push``: the local-push Ingest gRPC service;
- ``adapters.synthetic``: a seeded generator of realistic case flows (demo, benchmarks, smoke tests).
"""
