"""Reports: pure functions from results (plain DataFrames and arrays) to the leaderboard.

The one entry point is :func:`reports.build.build_report`. Imports only ``benchmark.config``,
``benchmark.io``, ``benchmark.errors`` and ``benchmark.evaluation.metrics`` (docs/CONTRACTS.md).
"""
