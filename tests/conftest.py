"""Shared fixtures of the tests: the smoke synthetic corpus, generated once per session."""

from __future__ import annotations

import pytest

from benchmark.data.synth import generate


@pytest.fixture(scope="session")
def synth_smoke(tmp_path_factory):
    """``(root, manifest)`` of the "smoke" synthetic corpus (seed 0), shared by the session."""
    root = tmp_path_factory.mktemp("synth_smoke")
    manifest = generate(root, size="smoke", seed=0, workers=2, progress=False)
    return root, manifest
