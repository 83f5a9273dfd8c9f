"""Small helpers shared by every stage: atomic writes, safe JSON, file digests, safe weights,
device choice, torch threads and seeding that restore what they change, and the identity of a
process.

Library code never leaves process-wide state changed behind its caller's back: the thread
count and the random generators are set inside context managers that restore them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import socket
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmark.errors import CheckpointError


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def scratch_path(beside: Path, suffix: str = ""):
    """Yield a temporary file's path beside ``beside`` (same filesystem, so large scratch data
    does not fill /tmp); it is deleted on exit, success or not."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=f".tmp{suffix}", dir=beside.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


def atomic_torch_save(path: Path, obj) -> None:
    """``torch.save`` atomically, with the same bytes for the same tensors: saved through a
    file object, the archive's inner folder is torch's fixed "archive" rather than the name of
    the temporary file (content digests of weights, e.g. the embedding cache's, stay put)."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (64 hex digits); a file is read once per (path, size, mtime)
    in a process (checkpoints, audio files, model files)."""
    st = Path(path).stat()
    return _digest_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=65536)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    # Pure given its arguments: a rewritten file has another size or mtime. (A cache of
    # results of a pure function, not process state that changes behaviour.)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_device(prefer: str = "auto"):
    """CUDA when present (or when asked), else the CPU."""
    import torch

    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


def load_weights(path: Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code.

    Raises :class:`CheckpointError` naming the file when it holds pickled code (a custom
    class, a function call): torch's own message would suggest ``weights_only=False``, the
    unsafe way out.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: contains pickled code, not only tensors; it will not be loaded"
        ) from None


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """Run the block with ``num_threads`` torch intra-op CPU threads, then restore the caller's
    count (None: leave it). Results on the CPU depend on the thread count (reductions are split
    differently), so every computing stage pins it."""
    import torch

    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def seeded_torch(seed: int):
    """Run the block with torch's global generators (CPU and every CUDA device) seeded with
    ``seed``; the caller's generator states are restored afterwards.

    For code that draws from torch's global generator (module initialisation, drop connect):
    the draws are those of ``torch.manual_seed(seed)`` and the caller sees no change.
    """
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# -- which process owns a piece of work ------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" where /proc is absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity() -> str:
    """``host:pid:start`` of this process, where ``start`` tells a reused pid apart (boot id
    and start time on Linux; empty elsewhere)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_boot_id()}/{_start_ticks(pid)}"


def owner_is_alive(identity: str) -> bool | None:
    """Whether the process named by :func:`process_identity` ``identity`` still runs: True or
    False on this host, None (cannot tell) for another host or a malformed identity."""
    try:
        host, pid_text, start = identity.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    boot, _, ticks = start.partition("/")
    if boot and boot != _boot_id():
        return False  # the machine rebooted since
    return not ticks or _start_ticks(pid) == ticks
