"""Fixtures of the pre-training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, OpenMP threads spinning against other
    processes made the encoder and loss tests several times slower. Restored after each test.
    (Not for the loop's tests: their resumption checks compare runs made in other processes.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
