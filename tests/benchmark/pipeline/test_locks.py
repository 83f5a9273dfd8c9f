"""Step locks: exclusive across processes, stale owners taken over, never two takeovers."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import asdict, replace

import pytest

from benchmark.pipeline import locks
from benchmark.pipeline.locks import LockLost, LockTimeout, StepLock


def _hold(path: str, seconds: float, started, releasing=None) -> None:
    lock = StepLock(path, what="holder", heartbeat_s=0.2, stale_s=1.0)
    lock.acquire()
    started.set()
    time.sleep(seconds)
    if releasing is not None:
        releasing.value = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
    lock.release()


def _start_holder(path, seconds: float, releasing=None):
    """A process holding the lock at ``path`` for ``seconds`` (returned once it holds it);
    ``releasing`` (a shared double) gets the moment it lets go."""
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), seconds, started, releasing))
    holder.start()
    assert started.wait(60)
    return holder


def _count_inside(path: str, counter: str, rounds: int) -> None:
    """Increment a number in a file ``rounds`` times, each under the lock (read, sleep, write):
    without mutual exclusion increments are lost."""
    for _ in range(rounds):
        with StepLock(path, what="counter", heartbeat_s=0.5, stale_s=5.0, poll_s=0.01):
            value = int(open(counter).read())
            time.sleep(0.005)
            with open(counter, "w") as fh:
                fh.write(str(value + 1))


def test_one_holder_at_a_time_across_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_count_inside, args=(str(tmp_path / "x.lock"), str(counter), 25))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert counter.read_text() == "75"
    assert not (tmp_path / "x.lock").exists()


def test_a_waiter_gets_the_lock_when_it_is_released(tmp_path):
    path = tmp_path / "a.lock"
    releasing = multiprocessing.get_context("spawn").Value("d", 0.0)
    holder = _start_holder(path, 1.5, releasing)
    lock = StepLock(path, what="waiter", heartbeat_s=0.2, stale_s=1.0, poll_s=0.05)
    assert not lock.try_acquire()
    assert lock.holder().what == "holder" and lock.holder().pid == holder.pid
    with pytest.raises(LockTimeout, match="still held by .* pid"):
        lock.acquire(timeout=0.3)
    lock.acquire(timeout=30)  # the holder's heartbeat keeps it alive until it releases
    # the waiter got it after the holder let go, not by taking over a live holder (a timed
    # bound on the wait failed on a loaded machine: the holder's 1.5 s had mostly passed)
    acquired = time.monotonic()
    assert 0.0 < releasing.value <= acquired
    holder.join(10)
    assert holder.exitcode == 0
    lock.release()


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    path = tmp_path / "k.lock"
    holder = _start_holder(path, 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    lock = StepLock(path, what="next", heartbeat_s=5, stale_s=600)  # no waiting on heartbeats
    t0 = time.monotonic()
    lock.acquire(timeout=5)
    assert time.monotonic() - t0 < 2
    assert lock.holder().token == lock.owner.token
    (tombstone,) = (tmp_path / "stale").iterdir()
    assert json.loads(tombstone.read_text())["pid"] == holder.pid
    lock.release()


def _foreign_lock(path, **changes) -> locks.Owner:
    """A lock file as another machine's process would have written it."""
    owner = replace(
        locks.this_process("elsewhere"), machine="other:boot:1", host="other", **changes
    )
    path.write_text(json.dumps(asdict(owner)))
    return owner


def test_another_machines_holder_is_stale_only_when_its_heartbeat_stops(tmp_path):
    path = tmp_path / "h.lock"
    owner = _foreign_lock(path)
    beat = path.with_name(f"{path.name}.{owner.token}.beat")
    beat.write_text("0")
    lock = StepLock(path, what="waiter", heartbeat_s=0.1, stale_s=0.6, poll_s=0.05)
    deadline = time.monotonic() + 1.5
    count = 0
    while time.monotonic() < deadline:  # a beating holder is never stale
        count += 1
        beat.write_text(str(count))
        assert not lock.try_acquire()
        time.sleep(0.1)
    # The heartbeat stops: after stale_s of the waiter's own clock the lock is taken over.
    t0 = time.monotonic()
    lock.acquire(timeout=10)
    assert 0.5 < time.monotonic() - t0 < 5
    assert not beat.exists()  # the dead owner's heartbeat goes with its lock
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_earlier_incarnations_lock(tmp_path, monkeypatch):
    path = tmp_path / "r.lock"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    _foreign_lock(path, job="77", restart=0)
    lock = StepLock(path, heartbeat_s=5, stale_s=600)
    assert lock.try_acquire()
    lock.release()
    _foreign_lock(path, job="78", restart=0)  # another job: alive as far as we can tell
    assert not StepLock(path, heartbeat_s=5, stale_s=600).try_acquire()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """Same machine, the owner's pid now belongs to a newer process: the owner is dead."""
    parent = os.getppid()
    owner = replace(locks.this_process(), pid=parent, pid_start=locks._proc_start(parent))
    assert not locks.known_dead(owner)
    assert locks.known_dead(replace(owner, pid_start=owner.pid_start + 12345))


def test_two_waiters_never_both_take_over_one_stale_lock(tmp_path):
    path = tmp_path / "s.lock"
    dead = _foreign_lock(path, pid=999999)
    first = StepLock(path, heartbeat_s=5, stale_s=600)
    second = StepLock(path, heartbeat_s=5, stale_s=600)
    first._take_over(dead)  # judged stale by both; the first takes it over ...
    assert first.try_acquire()
    second._take_over(dead)  # ... the second's takeover of the same owner is a no-op
    assert first.holder().token == first.owner.token
    assert not second.try_acquire()
    first.release()


def test_a_takeover_never_removes_the_lock_of_a_newer_holder(tmp_path, monkeypatch):
    """A waiter judges the holder stale; the holder, only slow, releases and another process
    acquires before the waiter takes the lock over: the newer lock stays, and the waiter
    does not get the lock too."""
    path = tmp_path / "n.lock"
    slow = _foreign_lock(path)
    newer = StepLock(path, heartbeat_s=5, stale_s=600)
    waiter = StepLock(path, heartbeat_s=5, stale_s=600)

    def judged(holder):
        if holder.token != slow.token:
            return False  # the newer holder beats
        path.unlink()  # the slow holder releases ...
        assert newer.try_acquire()  # ... and another process acquires, then the takeover
        return True

    monkeypatch.setattr(waiter, "_is_stale", judged)
    assert not waiter.try_acquire()
    assert newer.holder().token == newer.owner.token
    assert not list((tmp_path / "stale").iterdir())  # no tombstone: nothing was stale
    newer.check()
    newer.release()


def test_a_holder_notices_that_its_lock_was_taken_over(tmp_path, caplog):
    """A holder stalled for longer than stale_s (suspended, a hung filesystem) has had its lock
    taken over: its heartbeat thread notices, and ``check`` raises a one-line LockLost naming
    the lock; releasing leaves the new holder's lock alone."""
    path = tmp_path / "l.lock"
    lock = StepLock(path, what="slow step", heartbeat_s=0.05, stale_s=1.0)
    lock.acquire()
    lock.check()
    path.unlink()  # what a takeover leaves: the new holder's lock under the same name
    taker = _foreign_lock(path)
    with caplog.at_level(logging.ERROR, logger="benchmark.pipeline.locks"):
        deadline = time.monotonic() + 10
        while "lost the lock" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert f"{path}: lost the lock of slow step (taken over by other pid" in caplog.text
    with pytest.raises(LockLost, match="lost the lock of slow step"):
        lock.check()
    lock.release()
    assert locks.read_owner(path).token == taker.token


def test_bad_timing_is_refused():
    with pytest.raises(ValueError, match="stale_s > heartbeat_s"):
        StepLock("x.lock", heartbeat_s=10, stale_s=5)


def _open_stores(folder: str, barrier) -> None:
    from benchmark.evaluation.tuning import init_storage
    from benchmark.pipeline.locks import sqlite_lock
    from benchmark.pipeline.tracking import Tracker

    barrier.wait(60)
    Tracker(f"sqlite:///{folder}/mlflow.db", "both")
    url = f"sqlite:///{folder}/optuna.db"
    with sqlite_lock(url):
        init_storage(url)


def test_two_processes_open_new_sqlite_stores_at_once(tmp_path):
    """MLflow and Optuna create a new SQLite file's schema on first use; two processes doing
    it at once fail (alembic: "no such index") unless the first use is serialised."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    workers = [ctx.Process(target=_open_stores, args=(str(tmp_path), barrier)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert [w.exitcode for w in workers] == [0, 0, 0]
