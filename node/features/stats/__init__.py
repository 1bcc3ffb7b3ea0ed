"""Statistics and performance evaluation (统计分析, 绩效评估) for this node's subtree.

- ``tables``: the projection's tables (on ``node.schema.metadata``; migration 0003_stats);
- ``projection``: folds the change feed (``Store.changes``) into those tables, with a cursor;
- ``indicators``: the pure indicator arithmetic (DOMAIN.md), periods, 环比/同比, scores and grades;
- ``query``: aggregates the tables into ``Totals`` per group (SQL GROUP BY, so 1M cases stay fast);
- ``config``: the ``[stats]`` section of node.toml;
- ``report``: terminal tables, CSV and the self-contained HTML report.
"""
