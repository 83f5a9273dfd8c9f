"""Data: audio decoding and the log-mel front end, the feature store, dataset loaders and the
synthetic corpus. Imports only ``benchmark.config``/``io``/``errors`` (layering: docs/CONTRACTS.md)."""
