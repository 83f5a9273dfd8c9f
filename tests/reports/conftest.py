import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _cheap_garbage_collection():
    """statsmodels' Holm (``multipletests``, the tests' reference) calls ``gc.collect()`` on
    every call: 0.5 to 1 s each in a test process holding torch and hypothesis. Freezing the
    objects that exist now makes those collections scan only new objects; nothing else changes."""
    gc.freeze()
    yield
    gc.unfreeze()
