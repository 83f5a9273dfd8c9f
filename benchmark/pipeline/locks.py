"""Step locks on a shared filesystem: at most one process runs a plan step at any time.

Two ``run`` commands at once, a resubmission while Slurm jobs are in flight, or two workers
of a pool must never train or probe the same step twice; content keys make a finished step
cheap to find, a lock keeps two processes from doing the same unfinished work side by side.

Why not ``fcntl``/``flock``: on NFS they depend on the lock daemon and the mount options
(``local_lock``, ``nolock``), and a lock of a dead client may outlive it or vanish on a server
restart. Why not ``O_EXCL``: not atomic on old NFS clients. This module uses the recipe of
``open(2)``'s manual instead: write a unique file, ``link(2)`` it to the lock's name (atomic on
every filesystem, NFS included), and if ``link`` reports an error (a lost reply of a successful
call on NFS), check whether the unique file's link count became 2. The lock file holds its
owner (:class:`Owner`: host, pid, Slurm job, token), written before it becomes visible.

A lock is *stale* when its owner is known dead, and is then taken over:

- same machine (same boot and PID namespace): the owner's pid is gone, or belongs to a newer
  process (its start time differs), e.g. after ``scancel`` or ``kill -9``;
- a requeued Slurm job finds the lock of its own earlier incarnation (same job id, lower
  ``SLURM_RESTART_COUNT``);
- elsewhere: the owner's heartbeat file (rewritten every ``heartbeat_s`` by a thread that lives
  as long as the lock is held) has not changed for ``stale_s`` seconds of the *waiter's* clock,
  so clocks of different machines never need to agree.

Taking over is race-free among waiters: a stale lock is first hard-linked to
``stale/<name>.<owner token>``, which only one waiter can create; that waiter then removes the
lock, if the tombstone names the owner it judged stale (that owner may have released the lock
meanwhile and another process taken it: the tombstone is then the new holder's lock, and is
removed instead) and the lock is still the same file (inode). The tombstones stay as an audit
trail.

A holder checks that it still holds its lock: its heartbeat thread reads the lock file, and
:meth:`StepLock.check` raises :class:`LockLost` once the file names another owner (or is gone),
e.g. after the holder was suspended or its filesystem stalled for longer than ``stale_s`` and a
waiter took the lock over. What the lock protects is written only after such a check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmark.errors import StageError

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """A lock could not be acquired in time; the message names the lock and its holder."""


class LockLost(StageError):
    """A lock this process held was taken over (it looked dead); the message names the lock
    file. The work it protected belongs to the new holder: leave it alone."""


def _proc_start(pid: int) -> int:
    """Start time of ``pid`` in clock ticks after boot (``/proc/<pid>/stat`` field 22), 0 if
    unknown (no /proc) and -1 if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return -1
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def _machine_id() -> str:
    """This boot of this machine and this PID namespace: pids compare only within one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{socket.gethostname()}:{boot}:{namespace}"


def slurm_job() -> tuple[str, int]:
    """The Slurm job this process runs in (``<array job>_<task>`` for an array element, "" if
    none) and how often it was requeued (``SLURM_RESTART_COUNT``)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job = env.get("SLURM_JOB_ID", "")
    return job, int(env.get("SLURM_RESTART_COUNT", "0") or 0)


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: written into the lock file before the lock exists."""

    token: str  # unique per acquisition
    host: str  # hostname, for people
    machine: str  # hostname + boot id + PID namespace: where ``pid`` means something
    pid: int
    pid_start: int  # the pid's start time (clock ticks after boot): guards against pid reuse
    job: str  # Slurm job ("" outside Slurm)
    restart: int  # SLURM_RESTART_COUNT of that job
    since: float  # time.time() at acquisition (for people; never compared across machines)
    what: str  # what the holder does (a step name)
    plan: str = ""  # the configuration (results hash) of the plan whose step holds it

    def describe(self) -> str:
        where = f"{self.host} pid {self.pid}" + (f", Slurm job {self.job}" if self.job else "")
        return f"{where}, since {time.strftime('%H:%M:%S', time.localtime(self.since))}"


def this_process(what: str = "", plan: str = "") -> Owner:
    job, restart = slurm_job()
    return Owner(
        token=secrets.token_hex(8),
        host=socket.gethostname(),
        machine=_machine_id(),
        pid=os.getpid(),
        pid_start=_proc_start(os.getpid()),
        job=job,
        restart=restart,
        since=time.time(),
        what=what,
        plan=plan,
    )


def read_owner(path: Path) -> Owner | None:
    """The owner recorded in lock file ``path``, or None when there is no lock."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # not ours: never written partially (see module doc)
        raise RuntimeError(f"{path}: unreadable lock file ({exc}); remove it by hand") from None
    return Owner(**data)


def known_dead(owner: Owner) -> bool:
    """Whether ``owner`` certainly holds its lock no more (see the module docstring); False
    when this process cannot tell (another machine: the heartbeat decides)."""
    if owner.machine and owner.machine == _machine_id():
        start = _proc_start(owner.pid)
        return start == -1 or (start > 0 and owner.pid_start > 0 and start != owner.pid_start)
    job, restart = slurm_job()
    return bool(owner.job) and owner.job == job and owner.restart < restart


class StepLock:
    """An exclusive lock named by a file, for one step; a context manager.

    Args:
        path: the lock file (its folder is created); ``path.parent`` must be on the filesystem
            every process sees (e.g. under ``runs/``).
        what: what the holder does, shown to waiters (e.g. the step name).
        plan: the configuration whose plan holds it (``status`` shows its own plan's holders).
        heartbeat_s: how often the holder rewrites its heartbeat file, seconds.
        stale_s: a holder on another machine whose heartbeat stood still this long (seconds of
            the waiter's clock) is taken to be dead. Must exceed ``heartbeat_s`` by a margin
            for filesystem caches (NFS attribute caching: seconds).
        poll_s: how often a waiter looks again, seconds.

    Raises ``ValueError`` for ``stale_s <= heartbeat_s`` or non-positive times.
    """

    def __init__(
        self,
        path: Path,
        what: str = "",
        plan: str = "",
        heartbeat_s: float = 10.0,
        stale_s: float = 120.0,
        poll_s: float = 0.5,
    ):
        if min(heartbeat_s, stale_s, poll_s) <= 0 or stale_s <= heartbeat_s:
            raise ValueError(
                f"lock times must be positive and stale_s > heartbeat_s, got heartbeat_s="
                f"{heartbeat_s}, stale_s={stale_s}, poll_s={poll_s}"
            )
        self.path = Path(path)
        self.what, self.plan = what, plan
        self.heartbeat_s, self.stale_s, self.poll_s = heartbeat_s, stale_s, poll_s
        self.owner: Owner | None = None  # set while we hold it
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._lost = ""  # why the lock is no longer ours ("" while it is)
        self._seen: dict[str, tuple[str | None, float]] = {}  # token -> (beat, first seen)

    # -- files ------------------------------------------------------------------------
    def _beat_path(self, token: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{token}.beat")

    def _read_beat(self, token: str) -> str | None:
        try:
            return self._beat_path(token).read_text()
        except OSError:
            return None

    def holder(self) -> Owner | None:
        """Who holds the lock now (None: nobody)."""
        return read_owner(self.path)

    # -- acquiring --------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """One attempt; takes over a stale lock. True when the lock is now ours."""
        if self.owner is not None:
            raise RuntimeError(f"{self.path}: already held by this StepLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second attempt right after taking over a stale lock
            owner = this_process(self.what, self.plan)
            unique = self.path.with_name(f".{self.path.name}.{owner.token}")
            with open(unique, "w") as fh:
                json.dump(asdict(owner), fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                try:
                    os.link(unique, self.path)
                    linked = True
                except OSError:
                    # NFS: the link may have succeeded though its reply was lost.
                    linked = os.stat(unique).st_nlink == 2
            finally:
                unique.unlink()
            if linked:
                self._hold(owner)
                return True
            holder = self.holder()
            if holder is None or not self._is_stale(holder):
                return False
            self._take_over(holder)
        return False

    def acquire(self, timeout: float | None = None) -> None:
        """Wait until the lock is ours (taking over a stale one); ``LockTimeout`` after
        ``timeout`` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = ""
        while not self.try_acquire():
            holder = self.holder()
            if holder is not None and holder.token != announced:
                log.info("%s: waiting for %s (%s)", self.what, holder.what, holder.describe())
                announced = holder.token
            if deadline is not None and time.monotonic() > deadline:
                who = holder.describe() if holder else "nobody"
                raise LockTimeout(f"{self.path}: still held by {who} after {timeout} s")
            time.sleep(self.poll_s)

    def _is_stale(self, holder: Owner) -> bool:
        if known_dead(holder):
            return True
        beat = self._read_beat(holder.token)
        now = time.monotonic()
        seen = self._seen.get(holder.token)
        if seen is None or seen[0] != beat:
            self._seen[holder.token] = (beat, now)
            return False
        return now - seen[1] > self.stale_s

    def _take_over(self, holder: Owner) -> None:
        tombstone = self.path.parent / "stale" / f"{self.path.name}.{holder.token}"
        tombstone.parent.mkdir(exist_ok=True)
        try:
            os.link(self.path, tombstone)  # only one waiter can create this name
        except FileExistsError:
            return  # another waiter took this holder's lock over
        except FileNotFoundError:
            return  # released meanwhile
        if read_owner(tombstone).token != holder.token:
            # The holder released after it was judged stale and another process acquired:
            # this is the new holder's lock, which stays.
            tombstone.unlink()
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.stat(tombstone).st_ino:
                os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            self._beat_path(holder.token).unlink()
        log.warning(
            "%s: took over the stale lock of %s (%s)", self.what, holder.what, holder.describe()
        )

    # -- holding ----------------------------------------------------------------------
    def _hold(self, owner: Owner) -> None:
        self.owner = owner
        self._lost = ""
        self._stop.clear()
        self._write_beat(0)
        self._beater = threading.Thread(
            target=self._beat_loop, name=f"heartbeat {self.path.name}", daemon=True
        )
        self._beater.start()

    def _write_beat(self, count: int) -> None:
        assert self.owner is not None
        beat = self._beat_path(self.owner.token)
        tmp = beat.with_name(beat.name + ".tmp")
        tmp.write_text(f"{count} {time.time():.3f}")
        os.replace(tmp, beat)  # readers see the old beat or the new one, never half of one

    def _beat_loop(self) -> None:
        count = 0
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
            except LockLost as exc:
                log.error("%s", exc)
                return  # someone else's lock now: no more beats
            except RuntimeError as exc:  # an unreadable lock file: the next beat looks again
                log.warning("%s", exc)
            count += 1
            try:
                self._write_beat(count)
            except OSError as exc:  # a full or unreachable disk must not kill the step
                log.warning("%s: heartbeat not written: %s", self.path, exc)

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lock file still names this holder: call it
        before writing what the lock protects (the heartbeat thread calls it too)."""
        if self.owner is None:
            raise RuntimeError(f"{self.path}: not held by this StepLock")
        if not self._lost:
            holder = self.holder()
            if holder is None or holder.token != self.owner.token:
                by = f"taken over by {holder.describe()}" if holder else "removed"
                self._lost = (
                    f"{self.path}: lost the lock of {self.what} ({by}: this process looked "
                    f"dead, e.g. no heartbeat for over {self.stale_s:g} s while it was suspended "
                    "or its filesystem stalled); its work is left to the new holder"
                )
        if self._lost:
            raise LockLost(self._lost)

    def heartbeat_age(self, owner: Owner) -> float | None:
        """Seconds since ``owner`` last wrote its heartbeat (None: no heartbeat file), by this
        machine's clock against the file's modification time: for people (``status``); a
        waiter judges staleness on its own clock alone (:meth:`_is_stale`)."""
        try:
            return max(0.0, time.time() - self._beat_path(owner.token).stat().st_mtime)
        except OSError:
            return None

    def release(self) -> None:
        """Give the lock back (idempotent). Warns if it had been taken over meanwhile."""
        owner = self.owner
        if owner is None:
            return
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
            self._beater = None
        self.owner = None  # after the heartbeat thread, which reads it, has ended
        holder = self.holder()
        if holder is not None and holder.token == owner.token:
            self.path.unlink()
        else:
            log.warning("%s: the lock had been taken over while %s held it", self.path, owner.what)
        with contextlib.suppress(FileNotFoundError):
            self._beat_path(owner.token).unlink()

    def __enter__(self) -> StepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def sqlite_lock(url: str) -> contextlib.AbstractContextManager:
    """Hold while a process opens the SQLite database of SQLAlchemy ``url`` for the first
    time: MLflow and Optuna create or migrate its schema then, and two processes doing that at
    once fail ("no such index", "table already exists"). Other URLs: nothing to hold (a
    database server serialises schema changes itself)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return contextlib.nullcontext()
    path = Path(url[len(prefix) :])
    return StepLock(path.with_name(path.name + ".init.lock"), what=f"opening {path.name}")
