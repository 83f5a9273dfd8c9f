"""Slurm job states, asked of slurmctld (``squeue``) and, where it exists, the accounting
database (``sacct``).

submitit reads states with ``sacct`` only; without accounting (small clusters, the test
cluster) that fails and every state stays UNKNOWN (docs/SCALEOUT.md). slurmctld knows every
job until ``MinJobAge`` seconds after it ended, accounting for much longer: this module asks
``squeue --states=all`` first and ``sacct`` for the jobs squeue no longer knows. It never
changes submitit's own watcher (a class attribute shared by the whole process).

A job squeue does not list has ended; a squeue that fails (slurmctld down or busy, a timeout)
says nothing, and is an error (:class:`~benchmark.errors.StageError`), never an empty answer:
taken as "not listed", the running steps' jobs would look gone and be submitted again, and
the duplicates would wait for the originals' step locks while holding their allocations.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

from benchmark.errors import StageError

log = logging.getLogger(__name__)

# Slurm job states (squeue --format=%T, sacct State), grouped as the plan shows them.
QUEUED = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}
)
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
IN_FLIGHT = QUEUED | RUNNING
# Ended without success; PREEMPTED is final where PreemptMode=CANCEL (with REQUEUE the job is
# PENDING again right away).
FAILED = frozenset(
    {
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

_ARRAY = re.compile(r"^(?P<job>\d+)_\[(?P<ranges>[\d,\-]+)(%\d+)?\]$")


def available() -> bool:
    """Whether this machine can talk to a Slurm cluster (squeue on the PATH)."""
    return shutil.which("squeue") is not None


def parse_states(text: str) -> dict[str, str]:
    """``JobID|State`` lines (squeue or sacct ``--parsable2``) -> job id -> state.

    Array elements are ``<job>_<task>``; a pending range ``123_[4-6,9%2]`` gives one entry per
    element; ``CANCELLED by 0`` becomes ``CANCELLED``; job steps (``123.batch``) are skipped.
    """
    states: dict[str, str] = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        state = state.split("|")[0].split(" ")[0].strip()
        if not job or not state or "." in job:
            continue
        match = _ARRAY.match(job)
        if match is None:
            states[job] = state
            continue
        for part in match["ranges"].split(","):
            first, _, last = part.partition("-")
            for task in range(int(first), int(last or first) + 1):
                states[f"{match['job']}_{task}"] = state
    return states


# What squeue says, exit status 1, when a job id is unknown to slurmctld (purged).
UNKNOWN_JOB = "Invalid job id specified"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm client; :class:`StageError` naming the command when it cannot run at all."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StageError(f"{' '.join(argv)}: {exc}") from None


def _failed(argv: list[str], done: subprocess.CompletedProcess) -> str:
    """``<command> failed (exit N): <its stderr on one line>``."""
    said = " ".join((done.stderr or done.stdout).split()) or "no message"
    return f"{' '.join(argv)} failed (exit {done.returncode}): {said}"


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """The states squeue lists for ``job_ids``; None when it refuses them because one is
    unknown to slurmctld (purged): a lone id always, a list in some Slurm versions (22.05
    lists the others). Any other failure raises :class:`StageError`."""
    argv = ["squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(job_ids)}"]
    done = _run(argv)
    if done.returncode == 0:
        return parse_states(done.stdout)
    if UNKNOWN_JOB in done.stderr:
        return None
    raise StageError(f"{_failed(argv, done)}; cannot tell which jobs are still queued or running")


def job_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job (``"123"`` or an array element ``"123_4"``) that Slurm still knows.

    Jobs neither slurmctld nor the accounting database knows (purged, or another cluster's)
    are absent from the result. Raises :class:`StageError` (naming the command and what it
    printed) when squeue fails: then nobody can tell which jobs are still in flight. A failing
    sacct only leaves out states of jobs that have ended anyway (squeue no longer lists them).
    """
    wanted = sorted({j for j in job_ids if j})
    if not wanted or not available():
        return {}
    base = sorted({j.split("_")[0] for j in wanted})
    states = _squeue(base)
    if states is None:  # an id purged: ask one by one
        states = {}
        for job in base:
            states.update(_squeue([job]) or {})
    known = {k.split("_")[0] for k in states}
    missing = [b for b in base if b not in known]
    if missing and shutil.which("sacct"):
        argv = ["sacct", "--noheader", "--parsable2", "-X", "-o", "JobID,State"]
        argv += ["-j", ",".join(missing)]
        done = _run(argv)
        if done.returncode == 0:
            states.update({k: v for k, v in parse_states(done.stdout).items() if k not in states})
        else:  # e.g. "Slurm accounting storage is disabled"
            log.debug("%s", _failed(argv, done))
    return {j: states[j] for j in wanted if j in states}


def cancel(job_ids: list[str]) -> None:
    """``scancel`` the jobs (e.g. a report job that a newer submission replaces); a failure is
    logged: the job then runs after all, and lists what its plan has so far."""
    if job_ids:
        argv = ["scancel", *job_ids]
        done = _run(argv)
        if done.returncode != 0:
            log.warning("%s", _failed(argv, done))
