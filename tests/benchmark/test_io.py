"""benchmark.io: helpers that restore what they change, and who owns a piece of work."""

import socket
import subprocess

import pytest
import torch

from benchmark.io import owner_is_alive, process_identity, seeded_torch, torch_threads


def test_torch_threads_sets_and_restores():
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError), torch_threads(2):
            raise RuntimeError("restored on errors too")
        assert torch.get_num_threads() == 3
        with torch_threads(None):
            assert torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="num_threads"), torch_threads(0):
            pass
    finally:
        torch.set_num_threads(previous)


def test_seeded_torch_draws_as_manual_seed_and_restores():
    torch.manual_seed(5)
    expected_after = torch.rand(3)
    torch.manual_seed(5)
    with seeded_torch(11):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_after)
    torch.manual_seed(11)
    assert torch.equal(inside, torch.rand(3))


def test_a_process_is_alive_until_it_ends():
    assert owner_is_alive(process_identity()) is True
    proc = subprocess.Popen(["sleep", "30"])
    try:
        host = socket.gethostname()
        # another process with this pid would have another start time
        assert owner_is_alive(f"{host}:{proc.pid}:") is True
        assert owner_is_alive(f"{host}:{proc.pid}:{process_identity().rsplit(':', 1)[1]}") is False
    finally:
        proc.kill()
        proc.wait()
    assert owner_is_alive(f"{host}:{proc.pid}:") is False
    assert owner_is_alive(f"another-host-{host}:{proc.pid}:") is None
    assert owner_is_alive("garbage") is None
